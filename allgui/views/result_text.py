"""The side panel's result in words, free of Qt: the probability beside its threshold, the training domain, a cell.

Rich text (Qt's HTML subset) for labels: what is shown but not meaningful (a probability outside training)
or not validated (a cell's score from a model that judges whole fields) is small and grey.
"""
from __future__ import annotations

from allgui.imaging import DECISION_COLOURS, probability_colour
from trainer.inference.results import (
    DECISION_OUTSIDE,
    DOMAIN_CHECK_TEXT,
    NO_CYTOPLASM,
    OUTLINE_UNCERTAIN,
    CellPrediction,
    ImagePrediction,
)

GREY = "#8c8c8c"        # what is shown but not meaningful or not validated
NO_DOMAIN_CHECK = "this model cannot tell images unlike its training (saved before the check); retrain it"
NOT_MEANINGFUL = "not meaningful outside training"


def rgb(colour: tuple[int, int, int]) -> str:
    return "rgb({},{},{})".format(*colour)


def checks_text(checks) -> str:
    """The domain checks that fired, in words (e.g. "stain or colour unlike the training images")."""
    return "; ".join(DOMAIN_CHECK_TEXT.get(c, c) for c in checks)


def probability_text(p: float, threshold: float, band: float, outside: bool) -> str:
    """The calibrated P(ALL) with the threshold beside it: greyed and "not meaningful" outside training."""
    if outside:
        return (f"<span style='color:{GREY}'>{p:.3f} \u2014 threshold {threshold:.3f}</span><br>"
                f"<small style='color:{GREY}'>{NOT_MEANINGFUL}</small>")
    colour = rgb(probability_colour(p, threshold, band))
    return f"<b style='color:{colour}'>{p:.3f}</b> \u2014 threshold {threshold:.3f}"


def domain_text(pred: ImagePrediction) -> str:
    """Whether the image (the unit that gives its result) is like the model's training images, in words."""
    unit = pred.deciding
    if unit.in_domain is None:
        return f"<span style='color:#8a5a00'>{NO_DOMAIN_CHECK}</span>"
    outside = [c for c in pred.cells if c.in_domain is False] if pred.field_by_cells else []
    cells = f"; {len(outside)} of {len(pred.cells)} white cells outside training" if outside else ""
    if unit.in_domain is False:
        return (f"<b>{DECISION_OUTSIDE}</b>: {checks_text(unit.domain_checks)} "
                f"(novelty {unit.novelty:.2f}; above 1 is outside){cells}")
    return f"like its training images (novelty {unit.novelty:.2f}; above 1 is outside){cells}"


def cell_text(pred: ImagePrediction, cell: CellPrediction, threshold: float, band: float) -> str:
    """A selected cell's own result: small and grey where a model judging whole fields scored it."""
    if not pred.field_by_cells:
        return f"<small style='color:{GREY}'>cell score {cell.probability:.3f}, not validated</small>"
    decision = cell.decision(threshold, band)
    colour = rgb(DECISION_COLOURS[decision])
    if decision == DECISION_OUTSIDE:
        return (f"<b style='color:{colour}'>{decision}</b> ({checks_text(cell.domain_checks)}); "
                f"<span style='color:{GREY}'>P(ALL) {cell.probability:.3f}, {NOT_MEANINGFUL}</span>")
    return (f"<b style='color:{colour}'>{decision}</b>, P(ALL) {cell.probability:.3f} "
            f"\u2014 threshold {threshold:.3f}")


def morphology_text(cell: CellPrediction) -> str:
    """The nucleus measurements of a cell in words, with a note where the outline or the N:C is not reliable.

    E.g. "area 1520 px, circularity 0.84, N:C 0.52", "..., N:C — (no cytoplasm visible)", and
    "; nucleus outline uncertain (confidence 0.71)" where the segmentation confidence is low.
    """
    text = f"area {cell.area_px:.0f} px, circularity {cell.circularity:.2f}"
    if cell.nc_ratio is not None:
        text += f", N:C {cell.nc_ratio:.2f}" if cell.nc_measured else f", N:C — ({NO_CYTOPLASM})"
    if cell.outline_uncertain:
        text += f"; {OUTLINE_UNCERTAIN} (confidence {cell.segmentation_confidence:.2f})"
    return text
