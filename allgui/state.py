"""The application's state, free of Qt: images, cached predictions, selection, threshold, overlay.

Views observe it through :meth:`AppState.subscribe`; they never keep their own copy. Moving the
threshold only re-decides from cached probabilities: nothing here computes features.

A model bundle may hold one model per image kind (crop model, field model), each with its own
threshold and uncertain band: ``thresholds`` and ``bands`` map model key -> value, and
:attr:`AppState.threshold` / :attr:`AppState.band` are those of the *active* model (the model that
judged the current image). :meth:`AppState.threshold_for` and :meth:`AppState.band_for` give the ones
that decide any prediction, and :meth:`AppState.decision` its decision ("outside training" included).

The batch table's default order is the review queue (:func:`review_priority`): what most needs a
person first.

The topics it emits are declared in :class:`Topic`; subscribing to (or emitting) any other name
fails at once, so a mistyped topic cannot go silently unheard.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from trainer.config import BACKBONE_NAMES
from trainer.inference.results import (
    DECISION_ALL,
    DECISION_NORMAL,
    DECISION_NOT_ASSESSABLE,
    DECISION_OUTSIDE,
    DECISION_UNCERTAIN,
    DEFAULT_UNCERTAINTY_BAND,
    CellPrediction,
    ImagePrediction,
    decide,
)

OVERLAY_MODES = ("outline", "fill")
HEATMAP_BACKBONES = BACKBONE_NAMES
MAX_EXPLANATIONS = 256  # explanations kept (each a few small maps)
#: a band narrower than this counts as this wide when the review queue measures closeness to the threshold
#: (|p - t| / band): a fitted band may be 0 where the model was right on every held-out image
MIN_QUEUE_BAND = 0.01
#: widest uncertain band (half-width): a model whose fitted band reached no target may decide nothing, and a
#: band of 1 covers every probability
MAX_BAND = 1.0


class Topic(str, Enum):
    """What an :class:`AppState` tells its subscribers (callback arguments in brackets).

    A topic's value is its name in lower case, so ``"threshold"`` and ``Topic.THRESHOLD`` are the
    same subscription.
    """

    IMAGES = "images"          #: [] the list of opened images changed
    CURRENT = "current"        #: [] another image became current (or it was cleared)
    PREDICTION = "prediction"  #: [path] a prediction (or an error) arrived for ``path``
    SELECTION = "selection"    #: [] the selected cell changed
    THRESHOLD = "threshold"    #: [] threshold or uncertainty band changed
    OVERLAY = "overlay"        #: [] overlay visibility, mode or opacity changed
    MODEL = "model"            #: [] the model changed (all predictions were dropped)
    HEATMAP = "heatmap"        #: [] heatmap shown/hidden, its backbone or opacity changed, or an explanation arrived

    @classmethod
    def of(cls, topic: Topic | str) -> Topic:
        """The declared topic named ``topic``; ValueError for any other name."""
        try:
            return cls(topic)
        except ValueError:
            known = ", ".join(t.value for t in cls)
            raise ValueError(f"unknown state topic {topic!r}; the topics are: {known}") from None


@dataclass
class Row:
    """One line of the batch table (plain values, ready to show or export)."""

    path: str
    file: str
    kind: str                    # "single_cell", "field", "" while pending, "error"
    cells: int | None            # white cells found; None while pending / on error
    n_all: int | None
    n_uncertain: int | None
    probability: float | None    # calibrated, image level
    raw_probability: float | None
    vote_share: float | None
    decision: str                # decision in words ("not assessable" without a nucleus, "outside training"),
                                 # "pending" or "error"
    flagged: bool                # any cell "ALL blast", "uncertain, review" or outside training, not assessable,
                                 # or an error
    error: str = ""
    model: str = ""              # the model that judged it, e.g. "crop model"
    threshold: float | None = None  # the threshold that decided it
    band: float | None = None    # the uncertain band (half-width) that decided it
    novelty: float | None = None  # the domain check's novelty of the deciding unit (> 1: outside training);
                                  # None where the model has no domain check
    domain_checks: tuple[str, ...] = ()  # the checks that fired on the deciding unit
    n_outside: int = 0           # deciding units (cells of a field decided by cells, else the image) outside training
    queue: float = 0.0           # place in the review queue, smallest first (:func:`review_priority`)
    quality_flags: tuple[str, ...] = ()  # a crop's quality flags (several or touching cells, cut by the edge)

    @property
    def outside(self) -> bool:
        """True when the image, or any of the cells that decide it, lies outside the model's training."""
        return self.decision == DECISION_OUTSIDE or self.n_outside > 0


def review_priority(row: Row) -> float:
    """The row's place in the review queue: what most needs a person comes first (smallest).

    Outside training (the most unlike the training images first), then no class (not assessable, or
    the image could not be read), then uncertain, then decided, each by closeness to the threshold
    (|p - t| / band), then images still being analysed.
    """
    if row.decision == DECISION_OUTSIDE:
        return 1.0 / (1.0 + max(row.novelty or 0.0, 0.0))
    if row.decision in (DECISION_NOT_ASSESSABLE, "error"):
        return 1000.0
    if row.probability is None or row.threshold is None:
        return 4000.0
    closeness = min(abs(row.probability - row.threshold) / max(row.band or 0.0, MIN_QUEUE_BAND), 999.0)
    return (2000.0 if row.decision == DECISION_UNCERTAIN else 3000.0) + closeness


class AppState:
    """Everything the window shows, in one observable object."""

    def __init__(self, threshold: float = 0.5, band: float = DEFAULT_UNCERTAINTY_BAND) -> None:
        self._subs: dict[Topic, list[Callable[..., Any]]] = defaultdict(list)
        self.paths: list[str] = []
        self.current: str | None = None
        self.predictions: dict[str, ImagePrediction] = {}
        self.errors: dict[str, str] = {}
        self.selected_cell: int = -1          # -1 = the whole image
        self.thresholds: dict[str, float] = {"any": float(threshold)}
        self.default_thresholds: dict[str, float] = {"any": float(threshold)}
        #: model key -> the half-width of its uncertain band in use, and the model's own (fitted) one
        self.bands: dict[str, float] = {"any": float(band)}
        self.default_bands: dict[str, float] = {"any": float(band)}
        self.overlay_visible: bool = True
        self.overlay_mode: str = "outline"
        self.overlay_opacity: float = 0.45   # fill alpha, 0..1
        self.model_name: str = ""
        self.heatmap_visible: bool = False
        self.heatmap_backbone: str = HEATMAP_BACKBONES[0]
        self.heatmap_opacity: float = 0.7  # at the map's peak; lower heat is more transparent
        #: explanations (trainer.inference.explain.Explanation) and errors, by (path, cell; -1 = whole image)
        self.explanations: dict[tuple[str, int], Any] = {}
        self.explanation_errors: dict[tuple[str, int], str] = {}

    # ---- observers -------------------------------------------------------------------------
    def subscribe(self, topic: Topic | str, callback: Callable[..., Any]) -> None:
        """Call ``callback`` whenever ``topic`` is emitted; ValueError for an undeclared topic."""
        self._subs[Topic.of(topic)].append(callback)

    def unsubscribe(self, topic: Topic | str, callback: Callable[..., Any]) -> None:
        """Stop calling ``callback`` for ``topic``."""
        subs = self._subs.get(Topic.of(topic), [])
        if callback in subs:
            subs.remove(callback)

    def emit(self, topic: Topic | str, *args: Any) -> None:
        """Call the subscribers of ``topic`` with ``args``."""
        for cb in list(self._subs.get(Topic.of(topic), [])):
            cb(*args)

    # ---- images ----------------------------------------------------------------------------
    def set_images(self, paths: list[str | Path], current: str | Path | None = None) -> None:
        """Replace the image list; keeps cached predictions of paths that stay."""
        seen: set[str] = set()
        self.paths = [p for p in (str(x) for x in paths) if not (p in seen or seen.add(p))]
        self.emit(Topic.IMAGES)
        self.set_current(str(current) if current is not None else (self.paths[0] if self.paths else None))

    def add_images(self, paths: list[str | Path], make_current: bool = True) -> None:
        """Add images to the list (the first becomes current, or the current one stays)."""
        new = list(dict.fromkeys(str(p) for p in paths if str(p) not in self.paths))  # no duplicates
        if new:
            self.paths.extend(new)
            self.emit(Topic.IMAGES)
        if paths and (make_current or self.current is None):
            self.set_current(str(paths[0]))

    def set_current(self, path: str | None) -> None:
        if path is not None and path not in self.paths:
            self.paths.append(path)
            self.emit(Topic.IMAGES)
        if path == self.current:
            return
        self.current = path
        self.selected_cell = -1
        self.emit(Topic.CURRENT)

    def step(self, delta: int) -> None:
        """Make the next (+1) or previous (-1) image current, wrapping around."""
        if not self.paths:
            return
        i = self.paths.index(self.current) if self.current in self.paths else -1
        self.set_current(self.paths[(i + delta) % len(self.paths)])

    # ---- predictions -----------------------------------------------------------------------
    def set_prediction(self, path: str, prediction: ImagePrediction) -> None:
        self.predictions[path] = prediction
        self.errors.pop(path, None)
        self.emit(Topic.PREDICTION, path)

    def set_error(self, path: str, message: str) -> None:
        self.predictions.pop(path, None)
        self.errors[path] = message
        self.emit(Topic.PREDICTION, path)

    def clear_predictions(self, model_name: str = "") -> None:
        """Drop every prediction (the model changed)."""
        self.predictions.clear()
        self.errors.clear()
        self.explanations.clear()
        self.explanation_errors.clear()
        self.selected_cell = -1
        self.model_name = model_name
        self.emit(Topic.MODEL)

    @property
    def prediction(self) -> ImagePrediction | None:
        return self.predictions.get(self.current) if self.current else None

    def pending(self) -> list[str]:
        """Paths with neither a prediction nor an error yet, current image first."""
        todo = [p for p in self.paths if p not in self.predictions and p not in self.errors]
        if self.current in todo:
            todo.remove(self.current)
            todo.insert(0, self.current)
        return todo

    # ---- selection -------------------------------------------------------------------------
    def select_cell(self, index: int) -> None:
        if index != self.selected_cell:
            self.selected_cell = index
            self.emit(Topic.SELECTION)

    @property
    def selected(self) -> CellPrediction | None:
        """The selected cell of the current prediction, or its whole-image result."""
        pred = self.prediction
        if pred is None:
            return None
        if 0 <= self.selected_cell < len(pred.cells):
            return pred.cells[self.selected_cell]
        return pred.whole

    # ---- threshold -------------------------------------------------------------------------
    def set_models(self, defaults: dict[str, float], saved: dict[str, float] | None = None,
                   bands: dict[str, float] | None = None, saved_bands: dict[str, float] | None = None) -> None:
        """The loaded model's keys with their default thresholds and own bands, and any saved by the user."""
        self.default_thresholds = {k: float(v) for k, v in defaults.items()}
        saved = saved or {}
        self.thresholds = {k: _clip(saved.get(k, v), 1.0) for k, v in self.default_thresholds.items()}
        own, saved_bands = bands or {}, saved_bands or {}
        self.default_bands = {k: _clip(own.get(k, DEFAULT_UNCERTAINTY_BAND), MAX_BAND) for k in self.default_thresholds}
        self.bands = {k: _clip(saved_bands.get(k, v), MAX_BAND) for k, v in self.default_bands.items()}
        self.emit(Topic.THRESHOLD)

    @property
    def active_model(self) -> str:
        """Key of the model whose threshold the slider shows: the current image's model, else the first."""
        pred = self.prediction
        if pred is not None and pred.model in self.thresholds:
            return pred.model
        return next(iter(self.thresholds))

    @property
    def threshold(self) -> float:
        """The active model's threshold."""
        return self.thresholds[self.active_model]

    @property
    def default_threshold(self) -> float:
        return self.default_thresholds.get(self.active_model, self.threshold)

    @property
    def band(self) -> float:
        """The active model's uncertain band (half-width around its threshold)."""
        return self.bands.get(self.active_model, DEFAULT_UNCERTAINTY_BAND)

    @property
    def default_band(self) -> float:
        """The active model's own band (fitted when it was trained)."""
        return self.default_bands.get(self.active_model, self.band)

    def _key(self, pred: ImagePrediction | str | None) -> str:
        key = pred if isinstance(pred, str) or pred is None else pred.model
        return key if key in self.thresholds else self.active_model

    def threshold_for(self, pred: ImagePrediction | str | None) -> float:
        """The threshold that decides ``pred`` (a prediction or a model key)."""
        return self.thresholds[self._key(pred)]

    def band_for(self, pred: ImagePrediction | str | None) -> float:
        """The uncertain band that decides ``pred`` (a prediction or a model key): its model's."""
        return self.bands.get(self._key(pred), DEFAULT_UNCERTAINTY_BAND)

    def set_threshold(self, threshold: float, model: str | None = None) -> None:
        """Set the threshold of ``model`` (default: the active model)."""
        key = model if model in self.thresholds else self.active_model
        t = _clip(threshold, 1.0)
        if t != self.thresholds[key]:
            self.thresholds[key] = t
            self.emit(Topic.THRESHOLD)

    def set_band(self, band: float, model: str | None = None) -> None:
        """Set the uncertain band of ``model`` (default: the active model)."""
        key = model if model in self.thresholds else self.active_model
        b = _clip(band, MAX_BAND)
        if b != self.bands.get(key):
            self.bands[key] = b
            self.emit(Topic.THRESHOLD)

    def decide(self, probability: float, model: ImagePrediction | str | None = None) -> str:
        """Decision in words on a probability alone, at the threshold and band of ``model`` (default: the active one).

        It knows nothing of the training domain: :meth:`decision` gives a prediction's decision.
        """
        return decide(probability, self.threshold_for(model), self.band_for(model))

    def decision(self, pred: ImagePrediction, cell: int = -1) -> str:
        """The model's decision on image ``pred`` (``cell`` -1) or on one of its cells.

        At the threshold and band of its model; "outside training" and "not assessable" included.
        """
        t, b = self.threshold_for(pred), self.band_for(pred)
        if 0 <= cell < len(pred.cells):
            return pred.cells[cell].decision(t, b)
        return pred.decision(t, b)

    # ---- overlay ---------------------------------------------------------------------------
    def set_overlay(self, visible: bool | None = None, mode: str | None = None,
                    opacity: float | None = None) -> None:
        if mode is not None and mode not in OVERLAY_MODES:
            raise ValueError(f"overlay mode must be one of {OVERLAY_MODES}")
        changed = False
        for name, value in (("overlay_visible", visible), ("overlay_mode", mode),
                            ("overlay_opacity", None if opacity is None else min(1.0, max(0.0, float(opacity))))):
            if value is not None and getattr(self, name) != value:
                setattr(self, name, value)
                changed = True
        if changed:
            self.emit(Topic.OVERLAY)

    # ---- heatmap (explanation) ----------------------------------------------------------------
    def set_heatmap(self, visible: bool | None = None, backbone: str | None = None,
                    opacity: float | None = None) -> None:
        """Show or hide the heatmap, pick its backbone (one of HEATMAP_BACKBONES), set its opacity."""
        if backbone is not None and backbone not in HEATMAP_BACKBONES:
            raise ValueError(f"heatmap backbone must be one of {HEATMAP_BACKBONES}")
        changed = False
        for name, value in (("heatmap_visible", visible), ("heatmap_backbone", backbone),
                            ("heatmap_opacity", None if opacity is None else min(1.0, max(0.0, float(opacity))))):
            if value is not None and getattr(self, name) != value:
                setattr(self, name, value)
                changed = True
        if changed:
            self.emit(Topic.HEATMAP)

    @property
    def heatmap_target(self) -> tuple[str, int] | None:
        """(path, cell) the heatmap explains now; None without a result.

        The selected cell of a field, else its most suspicious cell where its cells decide, else
        the whole image (cell -1).
        """
        pred = self.prediction
        if pred is None or not pred.assessable:
            return None
        if pred.kind == "field" and 0 <= self.selected_cell < len(pred.cells):
            return self.current, self.selected_cell
        return self.current, (pred.deciding.index if pred.field_by_cells else -1)

    @property
    def explanation(self):
        """The explanation of :attr:`heatmap_target`, or None (not computed yet, or it failed)."""
        target = self.heatmap_target
        return None if target is None else self.explanations.get(target)

    def set_explanation(self, path: str, cell: int, explanation) -> None:
        """Keep ``explanation`` of (path, cell) (the oldest of more than MAX_EXPLANATIONS go)."""
        self.explanations.pop((path, cell), None)
        self.explanations[(path, cell)] = explanation
        while len(self.explanations) > MAX_EXPLANATIONS:
            del self.explanations[next(iter(self.explanations))]
        self.explanation_errors.pop((path, cell), None)
        self.emit(Topic.HEATMAP)

    def set_explanation_error(self, path: str, cell: int, message: str) -> None:
        self.explanation_errors[(path, cell)] = message
        self.emit(Topic.HEATMAP)

    # ---- table rows ------------------------------------------------------------------------
    def row(self, path: str) -> Row:
        """The batch-table line for ``path`` at the current thresholds and bands."""
        row = self._row(path)
        row.queue = review_priority(row)
        return row

    def _row(self, path: str) -> Row:
        name = Path(path).name
        if path in self.errors:
            return Row(path, name, "error", None, None, None, None, None, None, "error", True, self.errors[path])
        pred = self.predictions.get(path)
        if pred is None:
            return Row(path, name, "", None, None, None, None, None, None, "pending", False)
        if not pred.assessable:  # no nucleus / white cell: no class, and a person should look
            return Row(path, name, pred.kind, 0, 0, 0, None, None, None, DECISION_NOT_ASSESSABLE, True,
                       model=pred.model_name)
        threshold, band = self.threshold_for(pred), self.band_for(pred)
        counts = pred.count(threshold, band)
        image_level = pred.deciding
        decision = pred.decision(threshold, band)
        flagged = decision != DECISION_NORMAL
        if pred.field_by_cells or pred.kind != "field":
            flagged = flagged or any(counts[d] > 0 for d in (DECISION_ALL, DECISION_UNCERTAIN, DECISION_OUTSIDE))
        n_cells = len(pred.cells) if pred.kind == "field" else 1
        return Row(path, name, pred.kind, n_cells, counts[DECISION_ALL], counts[DECISION_UNCERTAIN],
                   float(pred.probability), float(image_level.raw_probability),
                   float(image_level.vote_share), decision, flagged, model=pred.model_name,
                   threshold=threshold, band=band, novelty=image_level.novelty,
                   domain_checks=tuple(image_level.domain_checks), n_outside=counts[DECISION_OUTSIDE],
                   quality_flags=tuple(image_level.quality_flags))

    def rows(self) -> list[Row]:
        return [self.row(p) for p in self.paths]


def _clip(value: float, top: float) -> float:
    return min(top, max(0.0, float(value)))


__all__ = ["AppState", "Row", "OVERLAY_MODES", "DECISION_ALL", "DECISION_NORMAL", "DECISION_UNCERTAIN",
           "DECISION_NOT_ASSESSABLE", "DECISION_OUTSIDE", "review_priority"]
