"""Using a trained model.

The bundle file format, the predictor that turns an image into a decision, and the result types the app
shows.
"""

# skops before torch: see trainer.classical.serialise (about 2 s of start-up)
from trainer.classical import serialise as _serialise  # noqa: F401
