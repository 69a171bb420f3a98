"""The pathologist's review, free of Qt: decisions, undo / redo and the table filter, kept in a case file.

Decisions on images and on cells of fields, undo / redo, the filter of the batch table; every action
goes into the case file (:mod:`trainer.cases.store`) at once.

Reviews are keyed by the image's content (SHA-256 of the file) and the cell (-1 = the whole image),
so a case finds its images again after they were renamed or moved, and a changed file shows as not
reviewed. Views observe the model through :meth:`ReviewModel.subscribe`:

  "review"  [path or None] a review of ``path`` changed (None: possibly every image's)
  "case"    []             another case file was opened, created or closed
  "filter"  []             the table filter changed
"""
from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from allgui.state import AppState, Topic
from trainer.cases import (
    DEFAULT_CASE_NAME,
    REVIEW_DECISIONS,
    REVIEW_UNCLASSIFIABLE,
    CaseStore,
    Review,
    file_sha256,
    model_review_decision,
)
from trainer.cases.records import prediction_record, review_record
from trainer.inference.results import DECISION_OUTSIDE, DECISION_UNCERTAIN
from trainer.util.errors import AllguiError

#: table filters: key -> label
FILTERS = {"all": "All images", "unreviewed": "Not reviewed", "flagged": "Flagged",
           "attention": "Flagged or not reviewed", "outside": "Outside training", "overrides": "Overrides"}


class ReviewRefused(AllguiError):
    """A review action that cannot be done now; the message says why."""


@dataclass(frozen=True)
class ImageReview:
    """What the batch table shows of one image's review."""

    review: Review | None          # the whole-image review in effect
    n_cells: int = 0               # cells of a field with a review in effect
    cell_overrides: int = 0

    @property
    def reviewed(self) -> bool:
        return self.review is not None

    @property
    def override(self) -> bool:
        return self.review is not None and self.review.override

    def text(self) -> str:
        """Short text for the table: 'confirmed', 'override: normal', 'normal', '' (not reviewed)."""
        r = self.review
        parts = []
        if r is not None:
            if r.override:
                parts.append(f"override: {r.reviewer_decision}")
            elif model_review_decision(r.model_decision) is None:
                parts.append(r.reviewer_decision)        # the model was uncertain: the reviewer decided
            else:
                parts.append(f"confirmed {r.reviewer_decision}")
        if self.n_cells:
            parts.append(f"{self.n_cells} cell{'s' if self.n_cells != 1 else ''}"
                         + (f" ({self.cell_overrides} overr.)" if self.cell_overrides else ""))
        return "; ".join(parts)


class ReviewModel:
    """Review state of the images open in ``state``, persisted through a :class:`CaseStore`.

    ``hasher(path) -> sha256`` identifies an image's content (the file's bytes).
    """

    def __init__(self, state: AppState, hasher: Callable[[str], str] = file_sha256) -> None:
        self.state = state
        self.hasher = hasher
        self.store: CaseStore | None = None
        self.explicit_case = False            # the user chose the case file (New / Open case)
        self.hashes: dict[str, str] = {}      # path -> content hash
        self.reviewer = ""
        self.model_sha256 = ""
        self.model_name = ""
        self.model_card: dict[str, Any] = {}
        self.filter = "all"
        #: folder -> case file to use instead of ``<folder>/allgui-case.sqlite`` (e.g. the bundled samples)
        self.case_redirects: dict[Path, Path] = {}
        self._recorded: set[tuple[str, str]] = set()   # (image hash, model hash) with a prediction row
        self._subs: dict[str, list[Callable[..., Any]]] = defaultdict(list)
        # The case is the unit of work: images added to the open ones join its case, and a case made for
        # them goes where the work began, not to the common folder of everything added since.
        self._seen: set[str] = set(state.paths)
        self._added = False                     # the last change of the open images only added some
        self._home = self._folder_of(state.paths)
        state.subscribe(Topic.PREDICTION, self._on_prediction)
        state.subscribe(Topic.IMAGES, self._on_images)

    # ---- observers -------------------------------------------------------------------------
    def subscribe(self, topic: str, callback: Callable[..., Any]) -> None:
        self._subs[topic].append(callback)

    def emit(self, topic: str, *args: Any) -> None:
        for cb in list(self._subs.get(topic, [])):
            cb(*args)

    # ---- case file -------------------------------------------------------------------------
    @property
    def case_path(self) -> Path | None:
        return self.store.path if self.store is not None else None

    def _on_images(self) -> None:
        paths = set(self.state.paths)
        self._added = bool(self._seen) and self._seen <= paths
        if not self._added or self._home is None:
            self._home = self._folder_of(self.state.paths)
        self._seen = paths

    def default_case_path(self, paths: list[str] | None = None) -> Path | None:
        """``allgui-case.sqlite`` in the folder that holds the open images (their common folder).

        Images added later (from other folders) leave it where it was.
        """
        folder = self._home if paths is None else self._folder_of(paths)
        if folder is None:
            return None
        return self.case_redirects.get(folder.resolve(), folder / DEFAULT_CASE_NAME)

    @staticmethod
    def _folder_of(paths: list[str]) -> Path | None:
        """The common folder of ``paths`` (None for none)."""
        if not paths:
            return None
        try:
            common = Path(os.path.commonpath([os.path.abspath(p) for p in paths]))
        except ValueError:    # different drives
            common = Path(os.path.abspath(paths[0]))
        return common if common.is_dir() else common.parent

    def open_case(self, path: str | os.PathLike, explicit: bool = True) -> CaseStore:
        """Open an existing case file (raises :class:`trainer.errors.CaseError`)."""
        store = CaseStore.open(path)
        self._switch(store, explicit)
        return store

    def new_case(self, path: str | os.PathLike, explicit: bool = True, name: str = "") -> CaseStore:
        """Create a case file at ``path`` (refused where one exists) and make it the open case."""
        store = CaseStore.create(path, name=name)
        self._switch(store, explicit)
        return store

    def close_case(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None
            self.explicit_case = False
            self._recorded.clear()
            self.emit("case")
            self.emit("review", None)

    def _switch(self, store: CaseStore, explicit: bool) -> None:
        if self.store is not None:
            self.store.close()
        self.store = store
        self.explicit_case = explicit
        self._recorded = {(p.image_sha256, p.model_sha256) for p in store.predictions()}
        self._record_all()
        self.emit("case")
        self.emit("review", None)

    def follow_images(self) -> Path | None:
        """After the open images changed: open the case file beside them, if there is one.

        Not when the user chose a case, nor when images were only added to those open (they join the
        open case). Returns the case opened, if any; raises CaseError for a refused file.
        """
        if self.explicit_case or (self.store is not None and self._added):
            return None
        default = self.default_case_path()
        if self.store is not None and default is not None and self.store.path == default:
            return None
        if self.store is not None:
            self.close_case()
        if default is not None and default.is_file():
            self.open_case(default, explicit=False)
            return default
        return None

    def has_reviews(self) -> bool:
        """Whether the open case holds a review in effect of an open image (or of one of its cells)."""
        if self.store is None:
            return False
        open_hashes = {self.hashes[p] for p in self.state.paths if p in self.hashes}
        return any(sha in open_hashes for sha, _ in self.store.state.current)

    def unopened_images(self) -> tuple[list[str], int]:
        """The open case's images that are not open: where those still there are, and how many are not."""
        if self.store is None:
            return [], 0
        found, missing, open_paths = [], 0, set(self.state.paths)
        for p, rel in self.store.image_paths().values():
            where = self.store.resolve(p, rel)
            if where is None:
                missing += 1
            elif os.path.abspath(where) not in open_paths:   # '..' of a path beside the case resolved
                found.append(os.path.abspath(where))
        return found, missing

    def ensure_case(self) -> CaseStore:
        """The open case, or a new one in the default place (raises CaseError where it cannot be)."""
        if self.store is None:
            default = self.default_case_path()
            if default is None:
                raise ReviewRefused("Open images before reviewing.")
            if default.is_file():
                self.open_case(default, explicit=False)
            else:
                self.new_case(default, explicit=False)
        return self.store  # type: ignore[return-value]

    # ---- images and model ------------------------------------------------------------------
    def set_hashes(self, hashes: dict[str, str]) -> None:
        """Content hashes of open images (computed in the background)."""
        new = {p: h for p, h in hashes.items() if self.hashes.get(p) != h}
        if not new:
            return
        self.hashes.update(new)
        self._record_paths(list(new))
        for p in new:
            self.emit("review", p)

    def hash_of(self, path: str) -> str:
        sha = self.hashes.get(path)
        if sha is None:
            try:
                sha = self.hasher(path)
            except OSError as exc:
                raise ReviewRefused(f"Cannot read {Path(path).name}: {exc.strerror or exc}") from None
            self.hashes[path] = sha
        return sha

    def missing_hashes(self) -> list[str]:
        return [p for p in self.state.paths if p not in self.hashes]

    def set_model(self, sha256: str, name: str, card: dict[str, Any] | None = None) -> None:
        """The loaded model: SHA-256 of its bundle, its name and :func:`card_summary` of its card."""
        self.model_sha256, self.model_name, self.model_card = sha256, name, dict(card or {})
        self._record_all()

    def _on_prediction(self, path: str) -> None:
        self._record_paths([path])

    def _record_paths(self, paths: list[str]) -> None:
        """Keep the model's results for ``paths`` in the case, once per image and model, in one transaction."""
        st = self.state
        if self.store is None or not self.model_sha256:
            return
        records, keys = [], set()
        for path in paths:
            pred = st.predictions.get(path)
            sha = self.hashes.get(path)
            key = (sha, self.model_sha256)
            if pred is None or sha is None or key in self._recorded or key in keys:
                continue
            keys.add(key)
            records.append(prediction_record(pred, sha, path, self.model_sha256, st.threshold_for(pred),
                                                 st.band_for(pred)))
        if records:
            self.store.record_model(self.model_sha256, self.model_name, self.model_card)
            self.store.record_predictions(records)
            self._recorded |= keys

    def _record_all(self) -> None:
        self._record_paths(list(self.state.paths))

    # ---- actions ---------------------------------------------------------------------------
    def target(self, path: str | None = None, cell: int | None = None) -> tuple[str, int]:
        path = path or self.state.current
        if not path:
            raise ReviewRefused("No image is open.")
        if cell is None:
            cell = self.state.selected_cell if path == self.state.current else -1
        pred = self.state.predictions.get(path)
        if cell >= 0 and (pred is None or cell >= len(pred.cells)):
            cell = -1
        return path, cell

    def model_decision(self, path: str | None = None, cell: int | None = None) -> str | None:
        """The model's decision in words on the image (or cell) now, None without a result."""
        path, cell = self.target(path, cell)
        pred = self.state.predictions.get(path)
        if pred is None:
            return None
        return self.state.decision(pred, cell)

    def decide(self, decision: str, comment: str = "", path: str | None = None, cell: int | None = None,
               confirmed: bool = False) -> Review:
        """Record the reviewer's ``decision`` (ALL blast / normal / unclassifiable).

        On the image (``cell`` -1) or a cell (default: the selected one of the current image).
        """
        if decision not in REVIEW_DECISIONS:
            raise ReviewRefused(f"Unknown decision '{decision}'.")
        if not self.reviewer.strip():
            raise ReviewRefused("Set the reviewer's name first (Review \u2192 Reviewer name\u2026).")
        path, cell = self.target(path, cell)
        st = self.state
        pred = st.predictions.get(path)
        if pred is None and path not in st.errors:
            raise ReviewRefused(f"{Path(path).name} has not been analysed yet.")
        if pred is not None and not self.model_sha256:
            raise ReviewRefused("The model is still being identified; try again in a moment.")
        store = self.ensure_case()
        sha = self.hash_of(path)
        self._record_paths([path])
        if pred is not None:
            record = review_record(pred, sha, path, cell, self.model_sha256, st.threshold_for(pred), st.band_for(pred))
        else:        # the image could not be analysed: the reviewer's decision stands alone
            record = {"image_sha256": sha, "path": path, "cell": -1, "model_sha256": self.model_sha256 or None,
                      "model_name": self.model_name or None, "model_decision": "error"}
        r = store.add_review(record, decision, self.reviewer, comment.strip(), confirmed=confirmed)
        self.emit("review", path)
        return r

    def confirm(self, comment: str = "", path: str | None = None, cell: int | None = None) -> Review:
        """Agree with the model's decision (refused where the model was uncertain)."""
        path, cell = self.target(path, cell)
        model = self.model_decision(path, cell)
        agreed = model_review_decision(model)
        if model == DECISION_UNCERTAIN:
            raise ReviewRefused("The model is uncertain here: choose ALL blast (A), normal (N) or "
                                "unclassifiable (U).")
        if model == DECISION_OUTSIDE:
            raise ReviewRefused("The model gives no class here: this image is unlike its training images. Choose "
                                "ALL blast (A), normal (N) or unclassifiable (U).")
        if agreed is None:
            raise ReviewRefused(f"{Path(path).name} has no result to confirm yet.")
        return self.decide(agreed, comment, path, cell, confirmed=True)

    def undo(self) -> Review | None:
        """Undo the latest review action in effect; returns it (None: nothing to undo)."""
        if self.store is None:
            return None
        r = self.store.undo(self.reviewer)
        if r is not None:
            self.emit("review", self.path_of(r))
        return r

    def redo(self) -> Review | None:
        if self.store is None:
            return None
        r = self.store.redo(self.reviewer)
        if r is not None:
            self.emit("review", self.path_of(r))
        return r

    @property
    def can_undo(self) -> bool:
        return self.store is not None and bool(self.store.state.applied)

    @property
    def can_redo(self) -> bool:
        return self.store is not None and bool(self.store.state.redoable)

    # ---- queries ---------------------------------------------------------------------------
    def path_of(self, r: Review) -> str | None:
        """The open image a review belongs to (None when that image is not open)."""
        for p, sha in self.hashes.items():
            if sha == r.image_sha256 and p in self.state.paths:
                return p
        return None

    def review_for(self, path: str, cell: int = -1) -> Review | None:
        sha = self.hashes.get(path)
        if self.store is None or sha is None:
            return None
        return self.store.state.current.get((sha, cell))

    def cell_reviews(self, path: str) -> dict[int, Review]:
        sha = self.hashes.get(path)
        if self.store is None or sha is None:
            return {}
        return {cell: r for cell, r in self.store.state.by_image.get(sha, {}).items() if cell >= 0}

    def status(self, path: str) -> ImageReview:
        cells = self.cell_reviews(path)
        return ImageReview(self.review_for(path), len(cells), sum(1 for r in cells.values() if r.override))

    def counts(self) -> dict[str, int]:
        """Open images reviewed / not reviewed / overridden."""
        statuses = [self.status(p) for p in self.state.paths]
        return {"images": len(statuses), "reviewed": sum(s.reviewed for s in statuses),
                "overrides": sum(s.override for s in statuses),
                "unclassifiable": sum(1 for s in statuses if s.review is not None
                                      and s.review.reviewer_decision == REVIEW_UNCLASSIFIABLE)}

    def set_filter(self, name: str) -> None:
        if name not in FILTERS:
            raise ValueError(f"filter must be one of {', '.join(FILTERS)}")
        if name != self.filter:
            self.filter = name
            self.emit("filter")

    def visible(self, path: str) -> bool:
        """Whether the batch table shows ``path`` under the current filter."""
        f = self.filter
        if f == "all":
            return True
        s = self.status(path)
        if f == "unreviewed":
            return not s.reviewed
        if f == "overrides":
            return s.override or s.cell_overrides > 0
        if f == "outside":
            return self.state.row(path).outside
        flagged = self.state.row(path).flagged
        return flagged if f == "flagged" else (flagged or not s.reviewed)
