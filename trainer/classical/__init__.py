"""The classical stage on extracted features.

Fusion, the five classifiers, weighted voting or stacking, calibration and the Youden threshold, and one
such model per image kind.
"""
