"""Files in: image decoding, data-set folders and labels.csv, train/validation/test splits and
cross-validation folds, and the synthetic images the tests use."""
