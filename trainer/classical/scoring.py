"""How a fitted model scores on labelled rows.

The metrics of each classifier and of the two ensemble read-outs, as training (the model card) and the
evaluation report both state them.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from trainer.stats import metrics as M

ENSEMBLE = "ensemble"                # paper, eq. 8: weighted hard vote, score = weighted soft vote
ENSEMBLE_CAL = "ensemble_calibrated"  # calibrated probability at the validation Youden threshold


def score_report(model, det: dict[str, np.ndarray], y: np.ndarray, n_boot: int = 1000, seed: int = 0,
                 groups: np.ndarray | None = None, unit: str = "subject") -> dict[str, dict[str, Any]]:
    """:func:`trainer.stats.metrics.binary_report` of every read-out of a model on rows ``y``.

    Parameters
    ----------
    model : AllModel
        The fitted model (its ``classifier_names_`` and ``threshold_``).
    det : dict
        ``model.predict_details`` of the rows.
    y : ndarray of shape (N,)
        0/1 labels.
    n_boot, seed : int
        Bootstrap resamples for the AUC interval, and their seed.
    groups : ndarray of shape (N,), optional
        Subject ids: every AUC interval then resamples subjects (group bootstrap), else images.
    unit : str
        What a group is ("subject" or "image block"), for the note that replaces an interval on fewer
        than 3 of a class.

    Returns
    -------
    dict
        One report per classifier at its own decision rule; ``"ensemble"``: the paper's weighted
        hard vote (eq. 8) with AUC, AP and Brier from the weighted soft vote;
        ``"ensemble_calibrated"``: the calibrated probability at the model's threshold, the rule
        the app applies.
    """
    out: dict[str, dict[str, Any]] = {}
    for j, name in enumerate(model.classifier_names_):
        out[name] = M.binary_report(y, det["probabilities"][:, j], 0.5, n_boot=n_boot, seed=seed,
                                    pred=det["votes"][:, j], groups=groups, unit=unit)
    out[ENSEMBLE] = M.binary_report(y, det["raw"], 0.5, n_boot=n_boot, seed=seed,
                                    pred=(det["vote_share"] > 0.5).astype(int), groups=groups, unit=unit)
    out[ENSEMBLE_CAL] = M.binary_report(y, det["calibrated"], model.threshold_, n_boot=n_boot, seed=seed,
                                        groups=groups, unit=unit)
    return out
