"""The notes an image's result carries for its reader: what makes the result unsafe or not meaningful.

The predictor gives each :class:`~trainer.inference.results.ImagePrediction` these notes; the app shows
them as cautions and ``allgui-train predict`` writes them in its ``notes`` column.
"""
from __future__ import annotations

from trainer.inference.results import DOMAIN_CHECK_TEXT, MODEL_NAMES, CellPrediction
from trainer.vision.crop_flags import QUALITY_TEXT


def outside_note(whole: CellPrediction, cells: list[CellPrediction], by_cells: bool) -> str:
    """The note on an image of which the whole or some cells lie outside the model's domain."""
    units = [c for c in cells if c.in_domain is False] if by_cells else [whole]
    fired = [c for c in DOMAIN_CHECK_TEXT if any(c in u.domain_checks for u in units)]
    what = "; ".join(DOMAIN_CHECK_TEXT.get(f, f) for f in fired)
    if by_cells and units:
        return (f"{len(units)} of {len(cells)} white cells are outside training ({what}): they get no class.")
    return f"This image is outside the model's training ({what}): its probability is not meaningful."


def image_notes(whole: CellPrediction, cells: list[CellPrediction], single: bool, found: bool, key: str,
                has_domain_check: bool, by_cells: bool, has_model_for_kind: bool) -> list[str]:
    """Notes on one image's result, most pressing first.

    ``whole``/``cells``: its predictions; ``single``: a single-cell crop; ``found``: a nucleus or white cell
    was found; ``key``: the model that judged it; ``by_cells``: a field decided by its cells;
    ``has_model_for_kind``: the bundle has a model for this kind of image.
    """
    notes = []
    if whole.quality_flags:
        notes.append("Check this crop: " + "; ".join(QUALITY_TEXT[f] for f in whole.quality_flags)
                     + ". It gets no class without review.")
    if not found:
        notes.append("No nucleus was found in this crop: the result is not meaningful." if single else
                     "No white cell was found in this image: the result is not meaningful.")
    if not has_domain_check:
        notes.append(f"The {MODEL_NAMES[key]} was saved before allgui checked whether an image is like its "
                     "training images: it cannot say so; retrain it for that check.")
    elif any(c.in_domain is False for c in [whole, *cells]):
        notes.append(outside_note(whole, cells, by_cells))
    if not has_model_for_kind:
        notes.append(f"This bundle has no model for {'single-cell crops' if single else 'smear fields'}: "
                     f"the {MODEL_NAMES[key]} judged it, outside what it was trained on.")
    return notes
