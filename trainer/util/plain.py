"""Plain Python values from results that hold numpy types.

For JSON files, and for handing a result from a child process to the app.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np


def to_plain(obj: Any, *, keep_arrays: bool = False, strict_json: bool = True) -> Any:
    """``obj`` with dicts, lists and tuples rebuilt of plain values.

    Parameters
    ----------
    obj : object
        Nested dicts, lists, tuples, numpy arrays and scalars, numbers, strings.
    keep_arrays : bool
        Leave numpy arrays as they are (they pickle fine between processes) instead of making
        them lists.
    strict_json : bool
        Make NaN and infinities None, as strict JSON has neither.

    Returns
    -------
    object
        Dict keys become strings; numpy scalars Python numbers; any other object its ``str``.
    """
    def walk(x: Any) -> Any:
        if isinstance(x, dict):
            return {str(k): walk(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [walk(v) for v in x]
        if isinstance(x, np.ndarray):
            return x if keep_arrays else walk(x.tolist())
        if isinstance(x, (bool, np.bool_)):
            return bool(x)
        if isinstance(x, (int, np.integer)):
            return int(x)
        if isinstance(x, (float, np.floating)):
            v = float(x)
            return None if strict_json and not math.isfinite(v) else v
        if x is None or isinstance(x, str):
            return x
        return str(x)

    return walk(obj)


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types; NaN and infinities become None (strict JSON has neither)."""
    return to_plain(obj)
