"""Review actions and model results as read from a case file, and the replay of the actions."""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from trainer.cases.schema import REVIEW_ALL, REVIEW_NORMAL, REVIEW_UNCLASSIFIABLE


@dataclass(frozen=True)
class Review:
    """One row of ``reviews``: a review, undo or redo action."""

    id: int
    at: str
    action: str
    target: int | None
    image_sha256: str
    path: str
    rel_path: str | None
    cell: int
    cell_bbox: str | None
    model_sha256: str | None
    model_name: str | None
    model_key: str | None
    threshold: float | None
    band: float | None
    probability: float | None
    raw_probability: float | None
    vote_share: float | None
    votes: str | None
    model_decision: str | None
    reviewer_decision: str | None
    confirmed: int
    comment: str
    reviewer: str

    @property
    def key(self) -> tuple[str, int]:
        """(image content hash, cell index; -1 = the whole image)."""
        return self.image_sha256, self.cell

    @property
    def override(self) -> bool:
        """The reviewer decided otherwise than the model did.

        An uncertain result that the reviewer resolved is not an override; a 'not assessable' image
        judged a blast or normal is.
        """
        expected = model_review_decision(self.model_decision)
        return expected is not None and self.reviewer_decision != expected


def model_review_decision(model_decision: str | None) -> str | None:
    """The reviewer decision that agrees with the model's decision in words.

    None where there is no such decision (the model was uncertain).
    """
    return {"ALL blast": REVIEW_ALL, "normal": REVIEW_NORMAL,
            "not assessable": REVIEW_UNCLASSIFIABLE}.get(model_decision or "")


@dataclass(frozen=True)
class Prediction:
    """One row of ``predictions``: the model's result for one image."""

    id: int
    at: str
    image_sha256: str
    path: str
    rel_path: str | None
    model_sha256: str
    model_key: str
    model_name: str
    kind: str
    unit: str
    width: int
    height: int
    threshold: float
    band: float
    probability: float | None
    raw_probability: float | None
    vote_share: float | None
    decision: str
    votes: str
    regions: str
    cells: str

    def votes_list(self) -> list[dict[str, Any]]:
        return json.loads(self.votes or "[]")

    def regions_list(self) -> list[dict[str, Any]]:
        return json.loads(self.regions or "[]")

    def cells_list(self) -> list[dict[str, Any]]:
        return json.loads(self.cells or "[]")


@dataclass
class ReviewState:
    """The replay of the review actions: what is decided now and what can be undone / redone."""

    applied: list[Review] = field(default_factory=list)    # review actions in effect, oldest first
    redoable: list[Review] = field(default_factory=list)   # undone actions, the next to redo last
    current: dict[tuple[str, int], Review] = field(default_factory=dict)
    by_image: dict[str, dict[int, Review]] = field(default_factory=dict)   # image hash -> cell -> review

    def apply(self, r: Review) -> None:
        if r.action == "review":
            self.applied.append(r)
            self.redoable.clear()
            self._set(r.key, r)
        elif r.action == "undo":
            if self.applied and self.applied[-1].id == r.target:
                undone = self.applied.pop()
                self.redoable.append(undone)
                self._recompute(undone.key)
        elif r.action == "redo":
            if self.redoable and self.redoable[-1].id == r.target:
                redone = self.redoable.pop()
                self.applied.append(redone)
                self._set(redone.key, redone)

    def _set(self, key: tuple[str, int], r: Review | None) -> None:
        cells = self.by_image.setdefault(key[0], {})
        if r is None:
            self.current.pop(key, None)
            cells.pop(key[1], None)
            if not cells:
                del self.by_image[key[0]]
        else:
            self.current[key] = r
            cells[key[1]] = r

    def _recompute(self, key: tuple[str, int]) -> None:
        for r in reversed(self.applied):
            if r.key == key:
                self._set(key, r)
                return
        self._set(key, None)


def replay(actions: Iterable[Review]) -> ReviewState:
    """The review state after ``actions`` (rows of ``reviews`` in order)."""
    st = ReviewState()
    for r in actions:
        st.apply(r)
    return st

