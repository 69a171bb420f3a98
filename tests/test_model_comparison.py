"""The comparison of the model in use with a newly trained one, free of Qt: figures, warnings, notes."""
from __future__ import annotations

import numpy as np
import pytest

from allgui.model.comparison import band_figures, compare, cv_figures, trained_on_image


def _figs(**kw):
    base = {"auc": 0.9, "auc_ci": None, "sensitivity": 0.8, "specificity": 0.9, "accuracy_decided": 0.92,
            "coverage": 0.85, "n": 100, "n_all": 50, "n_normal": 50, "n_subjects": 6}
    return dict(base, **kw)


def _facts(name, keys, split=("fp", "subject", 0, [0.7, 0.15, 0.15])):
    return {"label": name, "name": name, "split": list(split) if split else None,
            "keys": {k: {"name": k, "threshold": 0.5, "band": 0.05, "test": t, "cv": cv}
                     for k, (t, cv) in keys.items()}}


def test_band_figures_decide_as_the_app_does():
    y = [1, 1, 0, 0, 1, 0]
    p = [0.9, 0.52, 0.1, 0.6, np.nan, 0.3]         # 0.52: inside the band; NaN: not assessable
    f = band_figures(y, p, threshold=0.5, band=0.05, groups=["a", "a", "b", "c", "d", "c"])
    assert f["coverage"] == 4 / 6 and f["accuracy_decided"] == 3 / 4   # 0.6 called ALL on a normal cell
    assert f["sensitivity"] == 1.0 and f["specificity"] == pytest.approx(2 / 3) and f["n_subjects"] == 4
    only_normal = band_figures([0, 0], [0.2, 0.7], 0.5, 0.05)
    assert only_normal["auc"] is None and only_normal["sensitivity"] is None and only_normal["specificity"] == 0.5


def test_a_worse_model_or_a_missing_kind_is_warned_about():
    current = _facts("old", {"single_cell": (_figs(), None), "field": (_figs(), None)})
    new = _facts("new", {"single_cell": (_figs(auc=0.656, sensitivity=0.0), None)})
    out = compare(current, new)
    w = " ".join(out["warnings"])
    assert "no model for smear fields" in w and "current model has one (field)" in w
    assert "worse on single-cell crops, held-out test split: AUC 0.656 vs 0.900; sensitivity 0.0% vs 80.0%" in w
    assert "specificity" not in w                     # only what is worse
    assert "same held-out subjects" in out["notes"][0]
    same = compare(current, _facts("new", {"single_cell": (_figs(auc=0.9004), None),
                                           "field": (_figs(), None)}, split=("other", "subject", 0, None)))
    assert same["warnings"] == []                     # below the shown digits is not worse
    assert "each model on its own held-out subjects" in same["notes"][0]


def test_the_cross_validated_headline_is_used_where_the_card_has_one():
    cv = {"auc": {"mean": 0.88, "ci": [0.8, 0.93]}, "sensitivity": {"mean": 0.7, "ci": None},
          "specificity": 0.9, "balanced_accuracy": 0.8, "coverage": 0.75, "accuracy_decided": 0.9, "n_groups": 9}
    figs = cv_figures({"cv": cv})
    assert figs["auc"] == 0.88 and figs["auc_ci"] == [0.8, 0.93] and figs["sensitivity"] == 0.7
    assert figs["n_subjects"] == 9 and cv_figures({}) is None and cv_figures({"cv": {"auc": None}}) is None
    current = _facts("old", {"any": (_figs(), figs)})
    new = _facts("new", {"any": (_figs(), cv_figures({"cv": dict(cv, coverage=0.5)}))})
    out = compare(current, new)
    assert [r["kind"] for r in out["rows"]] == ["any"] and set(out["rows"][0]["sources"]) == {"test", "cv"}
    assert out["warnings"] == ["The new model is worse on all images, cross-validated by subject: "
                               "coverage 50.0% vs 75.0%."]


def test_reviewed_images_a_model_learnt_from_are_left_out(tmp_path):
    data = tmp_path / "train"
    data.mkdir()
    card = {"trained_on": {"data": str(data),
                           "reviewed": {"cases": [{"case_id": "c1", "n_used": 3}], "test_images": ["held"]}}}
    assert trained_on_image(card, "c1", "seen", str(tmp_path / "x.png"))
    assert not trained_on_image(card, "c1", "held", str(tmp_path / "x.png"))   # in its held-out test split
    assert not trained_on_image(card, "c2", "seen", str(tmp_path / "x.png"))   # another case
    assert trained_on_image(card, "c2", "seen", str(data / "sub" / "x.png"))   # in its training folder
