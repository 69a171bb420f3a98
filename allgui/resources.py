"""Where the app finds its bundled files (default model, sample images, icon).

The ``resources`` folder sits next to the ``allgui`` package in the source tree; the environment
variable ALLGUI_RESOURCES points elsewhere (e.g. for an installed copy).
"""
from __future__ import annotations

import os
from pathlib import Path


def resources_dir() -> Path:
    env = os.environ.get("ALLGUI_RESOURCES")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "resources"


def default_model_path() -> Path:
    return resources_dir() / "models" / "default.allmodel"


def samples_dir() -> Path:
    return resources_dir() / "samples"


def icon_path() -> Path:
    return resources_dir() / "icons" / "allgui.svg"
