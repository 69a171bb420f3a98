"""Numbers to verdicts about a model: binary metrics with bootstrap intervals, and the paired
significance tests of cross-validation folds."""
