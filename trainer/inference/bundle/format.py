"""What a bundle is: its format name and versions, its members' names, and the bundle in memory."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainer.config import TrainConfig

FORMAT = "allgui-model"
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
SUFFIX = ".allmodel"

MANIFEST = "manifest.json"
ARRAYS = "arrays.safetensors"
BACKBONES = "backbones.safetensors"
#: the one member of all models in bundles of versions 1 and 2
SINGLE_MODEL = "model.skops"
#: a model key: a lower-case word (``single_cell``, ``field``, ``any``)
MODEL_KEY = re.compile(r"^[a-z_]{1,32}$")


def model_member(key: str) -> str:
    """The member that holds model ``key`` (format 3)."""
    return f"model-{key}.skops"


@dataclass
class ModelBundle:
    """A fitted model with everything needed to use and to describe it."""

    model: Any                          # a KindModels (one AllModel writes a bundle of the one-model layout)
    config: TrainConfig
    card: dict[str, Any] = field(default_factory=dict)     # JSON-able model card
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    backbone_state: dict[str, dict[str, Any]] | None = None  # name -> state_dict (torch tensors)
    path: Path | None = None
