"""Library versions read without importing the library (importing torchvision doubles torch's import time)."""
from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import re
from pathlib import Path

_VERSION_LINE = re.compile(r"""^__version__\s*=\s*['"]([^'"]+)['"]""", re.MULTILINE)


@functools.cache
def torchvision_version() -> str:
    """``torchvision.__version__`` (local tag included, e.g. ``0.29.1+cpu``), or ``'absent'``.

    Read from the installed package's ``version.py``; from the distribution metadata where that file
    is missing (which drops the local tag).
    """
    spec = importlib.util.find_spec("torchvision")
    if spec is None:
        return "absent"
    for folder in spec.submodule_search_locations or ():
        try:
            match = _VERSION_LINE.search((Path(folder) / "version.py").read_text(encoding="utf-8"))
        except OSError:
            continue
        if match:
            return match.group(1)
    try:
        return importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        return "absent"
