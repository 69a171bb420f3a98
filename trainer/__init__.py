"""allgui trainer: the ML core (pre-processing, segmentation, deep features, ensemble, calibration,
evaluation) and its command-line interface. Knows nothing of Qt."""

__version__ = "0.1.0"
