"""Cases: the pathologist's reviews of a set of images, kept in one SQLite file per case (an
append-only audit trail), the case report (PDF) and the reviewed images as training data.

Qt-free: the app and ``allgui-train report`` / ``allgui-train train --add-case`` share it.
"""
from .store import (  # noqa: F401
    DEFAULT_CASE_NAME, REVIEW_ALL, REVIEW_DECISIONS, REVIEW_LABELS, REVIEW_NORMAL, REVIEW_UNCLASSIFIABLE,
    CaseStore, Prediction, Review, ReviewState, file_sha256, model_review_decision, replay,
)
