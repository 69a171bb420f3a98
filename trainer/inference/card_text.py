"""The model card's headline in words: every figure named for the data it comes from, with its subject counts.

One vocabulary, the same in the app's model card and side panel, the case report and the README:

* **cross-validation**: repeated subject-grouped cross-validation of the whole pipeline on all of a model's
  images (``card["models"][kind]["cv"]``, see :mod:`trainer.training.crossval`); the headline, shown first;
* **test split**: the one held-out split of the shipped model; one draw of subjects, shown second;
* **validation split**: the held-out rows that set the ensemble weights;
* **cross-fit pool**: the out-of-fold scores of the training split together with the validation split,
  which set the calibration and the threshold (or the validation split alone, where the card says so).

:func:`headline_lines` turns a card's model section into these lines; nothing here computes a figure.
"""
from __future__ import annotations

from typing import Any

from trainer.stats.intervals import not_estimable

CROSS_VALIDATION = "cross-validation"
TEST_SPLIT = "test split"
VALIDATION_SPLIT = "validation split"
CROSS_FIT_POOL = "cross-fit pool"


def _units(group_kind: str | None, n: int) -> str:
    one = {"image block": "image block", "subject": "subject", "image": "image"}.get(group_kind or "subject",
                                                                                  str(group_kind))
    return one if n == 1 else one + "s"


def _counts(n_groups: dict | None, group_kind: str | None, n_images: int | None = None) -> str:
    """"3 normal / 9 ALL subjects, 560 images" (what is known of it)."""
    parts = []
    if isinstance(n_groups, dict) and "0" in n_groups and "1" in n_groups:
        parts.append(f"{n_groups['0']} normal / {n_groups['1']} ALL "
                     f"{_units(group_kind, int(n_groups['0']) + int(n_groups['1']))}")
    if n_images:
        parts.append(f"{n_images:,} images")
    return ", ".join(parts)


def _pct(v) -> str:
    return f"{100 * v:.1f} %" if isinstance(v, (int, float)) else "n/a"


def _ci(lo_hi, note, fmt: str) -> str:
    if isinstance(lo_hi, (list, tuple)) and len(lo_hi) == 2:
        return f" (95 % CI {format(lo_hi[0], fmt)}\u2013{format(lo_hi[1], fmt)})"
    return f" ({note})" if note else ""


def _cv_line(cv: dict[str, Any]) -> str:
    kind = cv.get("group_kind")
    counts = _counts(cv.get("n_groups"), kind, sum((cv.get("n_images") or {}).values()) or None)
    how = (f"{cv.get('repeats')} \u00d7 {cv.get('folds')} "
           + ("subject-grouped" if kind == "subject" else f"{kind}-grouped" if cv.get("grouped") else "image")
           + " folds")
    head = f"Cross-validation ({how}; {counts})"
    auc = cv.get("auc")
    if not isinstance(auc, dict):
        return head + ": " + ("; ".join(cv.get("notes") or []) or "no figures")
    figs = [f"AUC {auc['mean']:.3f}{_ci(auc.get('ci'), auc.get('ci_note'), '.2f')}"]
    for key, label in (("sensitivity", "sensitivity"), ("specificity", "specificity"),
                       ("balanced_accuracy", "balanced accuracy")):
        m = cv.get(key) or {}
        figs.append(f"{label} {_pct(m.get('mean'))}" + _ci([100 * x for x in m["ci"]] if m.get("ci") else None,
                                                            None, ".0f"))
    cov, acc = cv.get("coverage") or {}, cv.get("accuracy_decided") or {}
    figs.append(f"decided (outside the uncertain band) {_pct(cov.get('mean'))}, accuracy of those "
                f"{_pct(acc.get('mean'))}")
    return head + ": " + ", ".join(figs) + "."


def _split_line(label: str, m: dict[str, Any], n_groups, group_kind) -> str:
    head = f"{label} ({_counts(n_groups, group_kind, m.get('n'))})"
    figs = []
    if isinstance(m.get("auc"), (int, float)):
        # cards written before the rule may hold an interval on one subject: withheld here as well
        note = not_estimable(n_groups if isinstance(n_groups, dict) else None, group_kind or "subject")
        ci = None if note else m.get("auc_ci")
        figs.append(f"AUC {m['auc']:.3f}{_ci(ci, note or m.get('ci_warning'), '.2f')}")
    figs += [f"sensitivity {_pct(m.get('sensitivity'))}", f"specificity {_pct(m.get('specificity'))}"]
    return head + ": " + ", ".join(figs) + "."


def calibration_source(section: dict[str, Any]) -> str:
    """What set a model's calibration and threshold: "cross-fit pool" or "validation split"."""
    cal = section.get("calibration_data") or {}
    if cal.get("source"):
        return str(cal["source"])
    rule = str((section.get("method") or {}).get("threshold_rule", ""))
    return CROSS_FIT_POOL if "out-of-fold" in rule else VALIDATION_SPLIT


def headline_lines(section: dict[str, Any]) -> list[str]:
    """The labelled headline of one model section of a card (``card["models"][kind]``), as sentences.

    Cross-validation first (or why there is none), then the test split as one split, then the data that set
    the threshold; every figure with its subject counts, and "not estimable: ..." where a class has fewer
    than 3 subjects. Older cards (no ``cv``, no ``calibration_data``) give what they hold.
    """
    kind = section.get("group_kind") or (section.get("cv") or {}).get("group_kind") or "subject"
    metrics = section.get("metrics") or {}
    parts = section.get("parts") or {}
    lines = []
    cv = section.get("cv")
    lines.append(_cv_line(cv) if isinstance(cv, dict) else "Cross-validation: not run for this model.")
    test = (metrics.get("test") or {}).get("ensemble_calibrated") or {}
    if test:
        n_groups = test.get("n_groups") or (parts.get("test") or {}).get("subjects")
        lines.append(_split_line("Test split, one split", test, n_groups, kind))
    cal = section.get("calibration_data") or {}
    threshold = (section.get("method") or {}).get("threshold")
    if cal and isinstance(threshold, (int, float)):
        at = cal.get("at_threshold") or {}
        lines.append(f"Threshold {threshold:.3f} and calibration set on the {cal.get('source')} "
                     f"({_counts(cal.get('n_groups'), kind, cal.get('n_images'))}; "
                     f"{_pct(cal.get('prevalence'))} ALL): sensitivity {_pct(at.get('sensitivity'))}, "
                     f"specificity {_pct(at.get('specificity'))} there.")
        if cal.get("note"):
            lines.append(str(cal["note"]))
    val = (metrics.get("validation") or {}).get("ensemble_calibrated") or {}
    if val:
        n_groups = (parts.get("validation") or {}).get("subjects")
        lines.append(_split_line("Validation split", val, n_groups, kind))
    return lines
