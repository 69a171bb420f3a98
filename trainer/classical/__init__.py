"""The classical stage on extracted features: fusion, the five classifiers, weighted voting or
stacking, calibration and the Youden threshold, and one such model per image kind."""
