"""Result types the predictor returns and the app displays, and the threshold decision rule.

All coordinates are pixels in the original image, x to the right, y down.
Probabilities are P(ALL blast) in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DECISION_ALL = "ALL blast"
DECISION_NORMAL = "normal"
DECISION_UNCERTAIN = "uncertain, review"
#: The decision for an image in which no nucleus (no white cell) was found: the classifiers' output
#: on such an image means nothing (a blank white image scores p = 0.97), so no class is given.
DECISION_NOT_ASSESSABLE = "not assessable"
#: The decision for an image (or a white cell) unlike the model's training images (see
#: :mod:`trainer.classical.domain`): its probability is not meaningful, so no class is given.
DECISION_OUTSIDE = "outside training"
#: what each check of the domain check (trainer.classical.domain) means, for the reader of a flag
DOMAIN_CHECK_TEXT = {
    "features": "unlike the training images as a whole",
    "stain": "stain or colour unlike the training images",
    "scale": "cell size in pixels unlike the training images (another magnification?)",
    "blur": "sharper or more blurred than the training images",
}
#: the uncertain band of models saved before bands were fitted per model (absolute probability)
DEFAULT_UNCERTAINTY_BAND = 0.05
#: display names of the models a bundle may hold, by model key (see trainer.classical.model.KindModels)
MODEL_NAMES = {"single_cell": "crop model", "field": "field model", "any": "model"}


def band_report(card: dict, key: str) -> dict | None:
    """The model card's account of model ``key``'s fitted band (``method.uncertain_band``); None for an older model."""
    section = ((card or {}).get("models") or {}).get(key) or {}
    report = (section.get("method") or {}).get("uncertain_band") if isinstance(section, dict) else None
    return dict(report) if isinstance(report, dict) else None


def decide(probability: float, threshold: float, band: float = DEFAULT_UNCERTAINTY_BAND) -> str:
    """Decision in words for a calibrated probability at a threshold.

    Within ``band`` (absolute probability) either side of ``threshold`` the answer is
    "uncertain, review"; above it "ALL blast", below it "normal".
    """
    if abs(probability - threshold) < band:
        return DECISION_UNCERTAIN
    return DECISION_ALL if probability >= threshold else DECISION_NORMAL


#: below this segmentation confidence the nucleus outline is called uncertain: the outlines below it agreed
#: clearly less with experts' than the rest (see benchmarks/README.md), and few clear ones fall below it
LOW_SEGMENTATION_CONFIDENCE = 0.85
NO_CYTOPLASM = "no cytoplasm visible"
OUTLINE_UNCERTAIN = "nucleus outline uncertain"


@dataclass
class ClassifierVote:
    """One base classifier's output for one cell or image."""

    name: str            # "svm", "knn", "rf", "adaboost", "mlp"
    probability: float   # P(ALL) from this classifier
    vote: int            # 1 = ALL, 0 = normal (its own 0.5 rule)
    weight: float        # ensemble weight = validation accuracy, normalised to sum 1


@dataclass
class CellPrediction:
    """Prediction for one white cell (or for the whole image when ``index`` is -1)."""

    index: int                        # -1 for the whole image, else cell number 0..n-1
    bbox: tuple[int, int, int, int]   # (x, y, w, h) of the region classified
    contour: np.ndarray               # (N, 2) int32 x, y: nucleus outline; may be empty
    area_px: float = 0.0              # nucleus area
    perimeter_px: float = 0.0
    circularity: float = 0.0          # 4*pi*area/perimeter^2, 1 = perfect circle
    nc_ratio: float | None = None     # nucleus area / cell area, None where the cell edge is unknown
    cytoplasm_visible: bool | None = None   # False: a crop with no cytoplasm beside the nucleus, so nc_ratio
                                            # is not a measurement; None where the cell edge is unknown
    segmentation_confidence: float | None = None  # in [0, 1]: how little the nucleus outline moves under a
                                                  # small change of the segmentation threshold; None: not given
    votes: list[ClassifierVote] = field(default_factory=list)
    vote_share: float = 0.0           # weighted hard vote for ALL (eq. 8), in [0, 1]
    raw_probability: float = 0.0      # weighted mean of the classifiers' probabilities
    probability: float = 0.0          # calibrated ensemble probability
    novelty: float | None = None      # domain check: largest score / threshold, > 1 outside training;
                                      # None where the model has no domain check
    domain_checks: list[str] = field(default_factory=list)  # the domain checks that fired
    #: what makes a crop's one-cell result unsafe (trainer.vision.crop_quality): several or touching cells,
    #: a cell cut by the image edge; such a unit gets "uncertain, review" whatever its probability
    quality_flags: list[str] = field(default_factory=list)

    @property
    def nc_measured(self) -> bool:
        """True when ``nc_ratio`` is a measurement: the cell edge is known and cytoplasm is visible."""
        return self.nc_ratio is not None and self.cytoplasm_visible is not False

    @property
    def outline_uncertain(self) -> bool:
        """True when the nucleus outline is uncertain (confidence below :data:`LOW_SEGMENTATION_CONFIDENCE`)."""
        return self.segmentation_confidence is not None and self.segmentation_confidence < LOW_SEGMENTATION_CONFIDENCE

    @property
    def in_domain(self) -> bool | None:
        """False when the domain check calls this cell unlike the training images; None without a check."""
        return None if self.novelty is None else not self.domain_checks

    def decision(self, threshold: float, band: float = DEFAULT_UNCERTAINTY_BAND) -> str:
        """The unit's decision: outside training, uncertain with a quality flag, else :func:`decide`.

        :data:`DECISION_OUTSIDE` outside the model's domain; :data:`DECISION_UNCERTAIN` with a quality flag
        (no class without review).
        """
        if self.in_domain is False:
            return DECISION_OUTSIDE
        if self.quality_flags:
            return DECISION_UNCERTAIN
        return decide(self.probability, threshold, band)


@dataclass
class ImagePrediction:
    """Everything the predictor found in one image."""

    path: str | None
    shape: tuple[int, int]            # (height, width)
    kind: str                         # "single_cell" or "field"
    nucleus_mask: np.ndarray          # (H, W) bool, all nuclei found
    whole: CellPrediction             # the whole image classified as one crop
    cells: list[CellPrediction] = field(default_factory=list)  # one per white cell (fields)
    seconds: float = 0.0              # wall time of the prediction
    unit: str = "cells"               # what decides a field: "cells" (its most suspicious cell) or
                                      # "image" (the whole field), whichever the model was trained on
    notes: list[str] = field(default_factory=list)  # warnings for the reader (e.g. no cell found)
    model: str = "any"                # key of the model that judged it: "single_cell", "field" or "any"

    @property
    def model_name(self) -> str:
        """The deciding model in words, e.g. "crop model"."""
        return MODEL_NAMES.get(self.model, self.model)

    @property
    def field_by_cells(self) -> bool:
        """True when a field's image-level result is its most suspicious cell's."""
        return self.kind == "field" and bool(self.cells) and self.unit == "cells"

    @property
    def deciding(self) -> CellPrediction:
        """The prediction that gives the image its result.

        The most suspicious cell within the model's domain of a field decided by cells (the most
        suspicious of all when none is), else the whole image.
        """
        if self.field_by_cells:
            inside = [c for c in self.cells if c.in_domain is not False] or self.cells
            return max(inside, key=lambda c: c.probability)
        return self.whole

    @property
    def in_domain(self) -> bool | None:
        """Whether the unit that gives the image its result lies within the model's domain (None: no check)."""
        return self.deciding.in_domain

    @property
    def novelty(self) -> float | None:
        """The domain check's novelty of the unit that gives the image its result (None: no check)."""
        return self.deciding.novelty

    @property
    def probability(self) -> float:
        """Image-level probability (see :attr:`deciding`)."""
        return self.deciding.probability

    @property
    def assessable(self) -> bool:
        """False when no nucleus (no white cell) was found.

        The image then gets no class, only :data:`DECISION_NOT_ASSESSABLE`. White cells of a field are found
        from their nuclei.
        """
        return bool(self.cells) or bool(np.any(self.nucleus_mask))

    def decision(self, threshold: float, band: float = DEFAULT_UNCERTAINTY_BAND) -> str:
        """The image-level decision.

        :data:`DECISION_NOT_ASSESSABLE` without a nucleus, :data:`DECISION_OUTSIDE` where the deciding
        unit is outside the model's domain, else :func:`decide` on :attr:`probability`.
        """
        if not self.assessable:
            return DECISION_NOT_ASSESSABLE
        return self.deciding.decision(threshold, band)

    def count(self, threshold: float, band: float = DEFAULT_UNCERTAINTY_BAND) -> dict[str, int]:
        """Number of deciding units per decision at ``threshold``.

        The cells of a field decided by cells, else the whole image as one.
        """
        cells = self.cells if self.field_by_cells else [self.whole]
        out = {DECISION_ALL: 0, DECISION_NORMAL: 0, DECISION_UNCERTAIN: 0, DECISION_OUTSIDE: 0,
               DECISION_NOT_ASSESSABLE: 0}
        if not self.assessable:
            out[DECISION_NOT_ASSESSABLE] = 1
            return out
        for c in cells:
            out[c.decision(threshold, band)] += 1
        return out
