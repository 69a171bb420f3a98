"""The statistics the domain check reads from the nucleus block (see :mod:`trainer.classical.domain`)."""
from __future__ import annotations

from collections.abc import Sequence

from trainer.vision import handcrafted
from trainer.vision.features import BLOCKS, NUCLEUS

#: the domain check's input checks (see :mod:`trainer.classical.domain`): name -> the nucleus-block
#: statistics it reads. Stain: the nucleus' and cytoplasm's mean Lab colour; scale: the nucleus' equivalent
#: diameter and the cell's area in pixels; blur: the chromatin's grey-level contrast at one pixel, which
#: blur removes.
INPUT_CHECKS = {
    "stain": ("nucleus_L_mean", "nucleus_a_mean", "nucleus_b_mean",
              "cytoplasm_L_mean", "cytoplasm_a_mean", "cytoplasm_b_mean"),
    "scale": ("log_eq_diameter", "log_cell_area"),
    "blur": ("glcm_contrast_d1",),
}


def input_check_columns(blocks: Sequence[str]) -> dict[str, list[int]]:
    """The domain check's input checks as column indices of ``blocks`` stacked side by side.

    Check name -> columns of the nucleus block it reads (:data:`INPUT_CHECKS`); empty without the
    nucleus block.
    """
    if NUCLEUS not in blocks:
        return {}
    offset = sum(BLOCKS[b] for b in blocks[:list(blocks).index(NUCLEUS)])
    return {check: [offset + handcrafted.FEATURE_NAMES.index(n) for n in names]
            for check, names in INPUT_CHECKS.items()}
