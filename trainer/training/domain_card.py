"""The model card's account of a model's domain check and fitted band (see :mod:`trainer.classical.domain`)."""
from __future__ import annotations

from trainer.classical.model import AllModel


def band_section(model: AllModel, unit: str = "subject") -> dict:
    """The card's account of a model's fitted uncertain band: its width, target and what it rests on.

    ``unit``: what a group id is (``"subject"`` or ``"image block"``), named so in the text.
    """
    report = dict(model.band_report_)
    rows = report.pop("rows")
    report["group_kind"] = unit
    report["rests_on"] = (f"{report['n_rows']} images of the cross-fit pool (out-of-fold scores of the training "
                          f"{unit}s, and the validation split)" if rows == "cross-fit"
                          else f"{report['n_rows']} images of the validation split")
    return report


def domain_section(model: AllModel, unit: str = "subject") -> dict:
    """The card's account of a model's domain check: its checks, flag rate and the groups it rests on.

    ``unit``: what a group id is (``"subject"`` or ``"image block"``), named so in the text.
    """
    d = model.domain_
    basis = d.basis_
    held = (f"{unit}s held out in turn" if basis["held_out"] == "subjects"
            else "images held out in turn (the data have no subject ids)")
    who = f"{basis['n_groups']} {unit}s" if basis["n_groups"] else "unknown subjects"
    return {"checks": list(d.checks_), "neighbours": int(d.k), "target_rate": float(d.target_rate),
            "flagged_rate_held_out": round(float(d.oof_rate_), 4), "folds": int(basis["folds"]),
            "n_rows": int(basis["n_rows"]), "n_groups": basis["n_groups"], "group_kind": unit,
            "rests_on": f"{basis['n_rows']} training images of {who}, {held} ({basis['folds']} folds)"}
