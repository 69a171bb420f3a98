"""The retraining job that runs in a child process: Qt-free and light to import."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from trainer.config import TrainConfig
from trainer.util.errors import Cancelled
from trainer.util.plain import to_plain
from trainer.util.progress import Stages

#: share of the progress bar the comparison with the current model takes at the end
COMPARE_SHARE = 0.1


def run_training(config: dict[str, Any], progress: Callable[[float, str], None],
                 cancel: Callable[[], bool], emit: Callable[[Any], None], compare_with: str | None = None,
                 compare_cases: Sequence[str] = ()) -> dict[str, Any]:
    """Child-process entry: train with ``config`` (TrainConfig as dict); picklable summary back.

    Then the new model beside ``compare_with`` (the model in use) on the held-out figures of both and on
    the reviewed images of ``compare_cases`` that neither learnt from (``comparison``; a comparison that
    fails is said in ``comparison_error``, and the new model stays).
    """
    from trainer.training.pipeline import train  # in the child process only: the app never loads it

    cfg = TrainConfig.from_dict(config)
    t0 = time.perf_counter()
    stages = Stages(progress, [("training", 1.0 - COMPARE_SHARE), ("comparison", COMPARE_SHARE)])
    result = train(cfg, progress=stages.start("training"), cancel=cancel)
    model = getattr(result, "model", None)
    threshold = getattr(model, "threshold_", None)
    out = {"bundle_path": str(result.bundle_path), "metrics": _plain(getattr(result, "metrics", {})),
           "evaluation": _plain(getattr(result, "evaluation", {})), "card": _plain(getattr(result, "card", {})),
           "threshold": None if threshold is None else float(threshold)}
    try:
        from allgui.model.comparison import comparison_job  # with the training: in the child process only

        out["comparison"] = _plain(comparison_job(compare_with, str(result.bundle_path), list(compare_cases),
                                                  stages.start("comparison")))
    except Cancelled:
        raise
    except Exception as exc:  # the new model is written: a comparison that fails must not lose it
        logging.getLogger(__name__).exception("comparison failed")
        out["comparison_error"] = f"{exc.__class__.__name__}: {exc}"
    out["seconds"] = time.perf_counter() - t0
    return out


def _plain(x: Any) -> Any:
    """Dicts / lists / arrays / numbers only (safe to pickle across processes)."""
    return to_plain(x, keep_arrays=True, strict_json=False)
