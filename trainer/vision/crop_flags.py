"""The names of a crop's quality flags and what each says to a reader.

No image code here: the app's table imports these without scikit-image;
:mod:`trainer.vision.crop_quality` computes the flags.
"""
from __future__ import annotations

QUALITY_SEVERAL = "more than one cell"
QUALITY_TOUCHING = "touching cells"
QUALITY_EDGE = "cell cut by the image edge"
#: what each flag means, for the reader
QUALITY_TEXT = {
    QUALITY_SEVERAL: "the crop holds more than one cell",
    QUALITY_TOUCHING: "the cell touches another cell",
    QUALITY_EDGE: "the cell is cut by the image edge",
}
