"""Evaluation that reproduces the paper's Results section.

Held-out metrics with bootstrap CIs, cross-validation with significance tests, ablation, both split
protocols, and a report.
"""
from trainer.evaluation.core import (
                                     ENSEMBLE,
                                     ENSEMBLE_CAL,
                                     PROTOCOLS,
                                     evaluate_ablation,
                                     evaluate_cv,
                                     evaluate_features,
                                     evaluate_holdout,
)
from trainer.evaluation.report import to_jsonable, write_report
from trainer.evaluation.runner import EvaluationOutput, run_evaluation

__all__ = ["ENSEMBLE", "ENSEMBLE_CAL", "PROTOCOLS", "evaluate_features", "evaluate_holdout",
           "evaluate_cv", "evaluate_ablation", "write_report", "to_jsonable",
           "run_evaluation", "EvaluationOutput"]
