"""Files in: images, data-set folders and labels, splits and folds.

Image decoding, data-set folders and labels.csv, train/validation/test splits and cross-validation folds,
and the synthetic images the tests use.
"""
