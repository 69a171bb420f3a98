"""The one trust boundary of a bundle: every model is rebuilt here, by skops, against one allow-list.

skops reconstructs only skops' default-trusted types (numpy arrays and dtypes, builtins) and the types
named here: the scikit-learn estimators allgui writes (``trainer.classical.serialise``), four
scikit-learn internals and this package's estimators. Anything else in a member's schema (a function such
as ``posix.system``, ``operator.methodcaller``, another estimator) is refused before any object is built,
and a rebuilt model's base classifiers must be of the five kinds allgui writes.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from trainer.inference.bundle.legacy import current_type_names
from trainer.util.errors import BundleError

OWN_TYPES = frozenset({
    "trainer.classical.model.AllModel", "trainer.classical.model.KindModels", "trainer.classical.kinds.KindModels",
    "trainer.classical.stacking.StackedCombiner", "trainer.classical.fusion.FeatureFusion",
    "trainer.classical.ensemble.WeightedVotingEnsemble", "trainer.classical.calibration.ScoreCalibrator",
    "trainer.classical.domain.DomainCheck", "trainer.classical.domain._Scorer",
})
#: scikit-learn internals an AllModel holds that skops does not trust by default; nothing else is
#: accepted beyond these, SKLEARN_ESTIMATORS and skops' own defaults (numpy, builtins).
SKLEARN_INTERNALS = frozenset({
    "sklearn.calibration._CalibratedClassifier", "sklearn.calibration._SigmoidCalibration",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer", "sklearn.tree._tree.Tree",
})
#: the classes each base classifier of a model written by allgui may have
CLASSIFIER_TYPES = frozenset({
    "CalibratedClassifierCV", "KNeighborsClassifier", "RandomForestClassifier",
    "AdaBoostClassifier", "MLPClassifier",
})


def rebuild(data: bytes, path: Path) -> Any:
    """The object a skops member holds, rebuilt in one audited pass. Raises BundleError.

    ``path`` names the bundle in messages.
    """
    # scikit-learn and skops cost a second of start-up: imported when a model is rebuilt, not to read a bundle
    from trainer.classical.serialise import SKLEARN_ESTIMATORS, skops_io

    try:
        return skops_io.loads(current_type_names(data),
                              trusted=sorted(OWN_TYPES | SKLEARN_INTERNALS | SKLEARN_ESTIMATORS))
    except skops_io.exceptions.UntrustedTypesFoundException as e:
        found = re.findall(r"'([^']+)'", str(e)) or [str(e)]
        raise BundleError(f"{path.name} contains object types allgui does not load: "
                          f"{', '.join(sorted(found)[:5])}. It was not written by allgui.") from None
    except Exception as e:  # malformed skops payload
        raise BundleError(f"{path.name}: the model part cannot be reconstructed ({e}).") from None


def check_model(m: Any, path: Path) -> None:
    """Raise BundleError unless ``m`` is an AllModel whose base classifiers are of the kinds allgui writes."""
    from trainer.classical.model import AllModel  # scikit-learn: imported by the rebuild that made ``m``

    if not isinstance(m, AllModel):
        raise BundleError(f"{path.name} does not hold an allgui model.")
    estimators = getattr(getattr(m, "ensemble_", None), "estimators_", {}) or {}
    odd = sorted({type(e).__name__ for e in estimators.values()} - CLASSIFIER_TYPES)
    if odd:
        raise BundleError(f"{path.name} holds classifiers allgui does not write ({', '.join(odd)}); refused.")


def rebuild_model(data: bytes, path: Path) -> Any:
    """The AllModel a format-3 member holds: :func:`rebuild`, then :func:`check_model`."""
    m = rebuild(data, path)
    check_model(m, path)
    return m
