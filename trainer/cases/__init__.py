"""Cases: the pathologist's reviews of a set of images in one SQLite file per case.

The case file is an append-only audit trail (:mod:`~trainer.cases.store`); the case report is a PDF
(:mod:`~trainer.cases.report`); reviewed images become training data (:mod:`~trainer.cases.corrections`).
Case metadata, the sign-off and addenda: :mod:`~trainer.cases.signoff` (methods of :class:`CaseStore`).
Qt-free: the app and ``allgui-train report`` / ``sign`` / ``predict --case`` / ``train --add-case`` share it.
"""
from trainer.cases.events import Event
from trainer.cases.reviews import Prediction, Review, ReviewState, model_review_decision, replay
from trainer.cases.schema import (
    DEFAULT_CASE_NAME,
    METADATA_FIELDS,
    REVIEW_ALL,
    REVIEW_DECISIONS,
    REVIEW_LABELS,
    REVIEW_NORMAL,
    REVIEW_UNCLASSIFIABLE,
    file_sha256,
)
from trainer.cases.store import CaseStore

__all__ = ["DEFAULT_CASE_NAME", "METADATA_FIELDS", "REVIEW_ALL", "REVIEW_DECISIONS", "REVIEW_LABELS", "REVIEW_NORMAL",
           "REVIEW_UNCLASSIFIABLE", "CaseStore", "Event", "Prediction", "Review", "ReviewState", "file_sha256",
           "model_review_decision", "replay"]
