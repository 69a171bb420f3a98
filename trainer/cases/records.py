"""What a case file keeps of a prediction: plain numbers and short outlines, no arrays."""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from trainer.inference.card_text import headline_lines
from trainer.inference.results import CellPrediction, ImagePrediction

MAX_OUTLINE_POINTS = 200


def votes_of(cell: CellPrediction) -> list[list]:
    """[[classifier, P(ALL), vote, weight], ...] of one cell or image."""
    return [[v.name, round(float(v.probability), 6), int(v.vote), round(float(v.weight), 6)] for v in cell.votes]


def outline(contour: np.ndarray, bbox=None) -> list[list[int]]:
    """A contour as a short list of [x, y] (simplified to within a pixel), or the bbox's corners."""
    c = np.asarray(contour, dtype=np.int32).reshape(-1, 2)
    if len(c) < 3:
        if bbox is None:
            return []
        x, y, w, h = (int(v) for v in bbox)
        return [[x, y], [x + w, y], [x + w, y + h], [x, y + h]]
    c = cv2.approxPolyDP(c.reshape(-1, 1, 2), 1.0, True).reshape(-1, 2)
    if len(c) > MAX_OUTLINE_POINTS:
        c = c[np.linspace(0, len(c) - 1, MAX_OUTLINE_POINTS).astype(int)]
    return c.astype(int).tolist()


def regions_of(pred: ImagePrediction) -> list[dict[str, Any]]:
    """The outlines the app draws.

    One per white cell of a field (``p`` None where the model judges whole fields), else the crop's
    nucleus (its contour, or the nucleus mask's outlines).
    """
    if pred.kind == "field" and pred.cells:
        return [{"cell": c.index if c.index >= 0 else i, "outline": outline(c.contour, c.bbox),
                 "p": round(float(c.probability), 6) if pred.field_by_cells else None}
                for i, c in enumerate(pred.cells)]
    p = round(float(pred.whole.probability), 6) if pred.assessable else None
    contour = outline(pred.whole.contour)
    if contour:
        return [{"cell": -1, "outline": contour, "p": p}]
    mask = np.asarray(pred.nucleus_mask) if pred.nucleus_mask is not None else None
    if mask is None or not mask.any():
        return []
    cs, _ = cv2.findContours(np.ascontiguousarray(mask, np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [{"cell": -1, "outline": outline(c), "p": p} for c in cs if cv2.contourArea(c) >= 4.0]


def _cell(c: CellPrediction) -> dict[str, Any]:
    return {"index": int(c.index), "bbox": [int(v) for v in c.bbox], "probability": round(float(c.probability), 6),
            "raw_probability": round(float(c.raw_probability), 6), "vote_share": round(float(c.vote_share), 6),
            "votes": votes_of(c)}


def prediction_record(pred: ImagePrediction, image_sha256: str, path: str, model_sha256: str,
                      threshold: float, band: float) -> dict[str, Any]:
    """The row :meth:`CaseStore.record_prediction` appends for ``pred`` decided at ``threshold``."""
    deciding = pred.deciding
    ok = pred.assessable
    h, w = (int(v) for v in pred.shape[:2])
    return {"image_sha256": image_sha256, "path": str(path), "model_sha256": model_sha256,
            "model_key": pred.model, "model_name": pred.model_name, "kind": pred.kind, "unit": pred.unit,
            "width": w, "height": h, "threshold": float(threshold), "band": float(band),
            "probability": float(pred.probability) if ok else None,
            "raw_probability": float(deciding.raw_probability) if ok else None,
            "vote_share": float(deciding.vote_share) if ok else None,
            "decision": pred.decision(threshold, band), "votes": votes_of(deciding) if ok else [],
            "regions": regions_of(pred), "cells": [_cell(c) for c in pred.cells]}


def review_record(pred: ImagePrediction, image_sha256: str, path: str, cell: int, model_sha256: str,
                  threshold: float, band: float) -> dict[str, Any]:
    """The model's side of a review of image ``path`` (``cell`` -1) or of one of its cells.

    The result the reviewer saw, kept with the decision.
    """
    rec = {"image_sha256": image_sha256, "path": str(path), "cell": int(cell), "model_sha256": model_sha256,
           "model_name": pred.model_name, "model_key": pred.model, "threshold": float(threshold),
           "band": float(band)}
    if 0 <= cell < len(pred.cells):
        c = pred.cells[cell]
        rec.update(cell_bbox=[int(v) for v in c.bbox], probability=float(c.probability),
                   raw_probability=float(c.raw_probability), vote_share=float(c.vote_share), votes=votes_of(c),
                   model_decision=c.decision(threshold, band))
    elif pred.assessable:
        d = pred.deciding
        rec.update(probability=float(pred.probability), raw_probability=float(d.raw_probability),
                   vote_share=float(d.vote_share), votes=votes_of(d), model_decision=pred.decision(threshold, band))
    else:
        rec.update(votes=[], model_decision=pred.decision(threshold, band))
    return rec


def card_summary(card: dict[str, Any]) -> dict[str, Any]:
    """What a case keeps of a model card.

    Name, creation, intended use, limitations, notes, and each model's headline numbers (calibrated
    ensemble on the held-out test split, else validation) and, for cards that have them, its labelled
    headline lines (:func:`trainer.inference.card_text.headline_lines`).
    """
    out: dict[str, Any] = {k: card.get(k) for k in ("name", "created", "intended_use") if card.get(k)}
    out["limitations"] = [str(x) for x in (card.get("limitations") or [])]
    out["notes"] = [str(x) for x in (card.get("notes") or [])]
    trained = card.get("trained_on") or {}
    if trained:
        out["trained_on"] = {k: trained.get(k) for k in ("data", "n_images", "class_counts", "reviewed")
                             if trained.get(k) is not None}
    headline = {}
    sections = card.get("models") or {"any": {"name": "model", "metrics": card.get("metrics") or {}}}
    for key, sec in sections.items():
        metrics = sec.get("metrics") or {}
        for split in ("test", "validation"):
            ens = (metrics.get(split) or {}).get("ensemble_calibrated") or {}
            if ens:
                headline[str(sec.get("name", key))] = {
                    "split": split, **{k: ens.get(k) for k in ("n", "accuracy", "auc", "sensitivity", "specificity")
                                       if isinstance(ens.get(k), (int, float))}}
                break
    out["headline"] = headline
    # the labelled headline the app's model card shows (cross-validation first, subject counts beside each figure)
    out["headline_lines"] = {str(sec.get("name", key)): headline_lines(sec) for key, sec in sections.items()
                             if sec.get("cv") or sec.get("calibration_data")}
    return out
