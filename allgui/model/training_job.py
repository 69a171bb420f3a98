"""The retraining job that runs in a child process: Qt-free and light to import."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from trainer.config import TrainConfig
from trainer.util.plain import to_plain


def run_training(config: dict[str, Any], progress: Callable[[float, str], None],
                 cancel: Callable[[], bool], emit: Callable[[Any], None]) -> dict[str, Any]:
    """Child-process entry: train with ``config`` (TrainConfig as dict); picklable summary back."""
    from trainer.training.pipeline import train  # in the child process only: the app never loads it

    cfg = TrainConfig.from_dict(config)
    t0 = time.perf_counter()
    result = train(cfg, progress=progress, cancel=cancel)
    model = getattr(result, "model", None)
    threshold = getattr(model, "threshold_", None)
    return {"bundle_path": str(result.bundle_path), "metrics": _plain(getattr(result, "metrics", {})),
            "evaluation": _plain(getattr(result, "evaluation", {})), "card": _plain(getattr(result, "card", {})),
            "threshold": None if threshold is None else float(threshold),
            "seconds": time.perf_counter() - t0}


def _plain(x: Any) -> Any:
    """Dicts / lists / arrays / numbers only (safe to pickle across processes)."""
    return to_plain(x, keep_arrays=True, strict_json=False)
