"""Numbers to verdicts about a model.

Binary metrics with bootstrap intervals, and the paired significance tests of cross-validation folds.
"""
