import csv

import cv2
import numpy as np
import pytest

from trainer.io.synthetic import make_cell_image, make_smear_field, write_dataset


def test_cell_image_shapes_and_determinism():
    img, mask = make_cell_image(48, malignant=True, rng=3)
    assert img.shape == (48, 48, 3) and img.dtype == np.uint8
    assert mask.shape == (48, 48) and mask.dtype == bool
    img2, mask2 = make_cell_image(48, malignant=True, rng=3)
    assert np.array_equal(img, img2) and np.array_equal(mask, mask2)
    img3, _ = make_cell_image(48, malignant=True, rng=4)
    assert not np.array_equal(img, img3)
    # black background at the corners, nucleus away from the border
    assert img[:3, :3].max() < 20
    assert not mask[0].any() and not mask[-1].any()


def test_malignant_nucleus_is_larger_and_lighter():
    ratios, lightness = {True: [], False: []}, {True: [], False: []}
    for seed in range(6):
        for malignant in (True, False):
            img, mask = make_cell_image(64, malignant, seed)
            cell = img.max(axis=2) > 30
            ratios[malignant].append(mask.sum() / cell.sum())
            lightness[malignant].append(img[mask].mean())
    # classes separate with a margin, not just on average
    assert min(ratios[True]) > max(ratios[False]) + 0.1
    assert min(lightness[True]) > max(lightness[False]) + 20


def test_smear_field_masks_are_disjoint_purple_nuclei():
    img, masks = make_smear_field(160, n_wbc=4, rng=1)
    assert img.shape == (160, 160, 3) and len(masks) == 4
    total = np.zeros(masks[0].shape, int)
    for m in masks:
        assert m.sum() > 50
        total += m
        r, g, b = img[m].mean(axis=0)
        assert b > g + 40 and r > g  # purple: blue and red over green
    assert total.max() == 1
    # the background is pale pink, and red cells exist (reddish pixels that are not nucleus)
    r, g, b = (img[..., i].astype(int) for i in range(3))
    reddish = (r - g > 40) & (r > b) & (total == 0)
    assert reddish.sum() > 0.1 * img.shape[0] * img.shape[1]


def test_smear_field_too_crowded_raises():
    with pytest.raises(ValueError):
        make_smear_field(64, n_wbc=30, rng=0)


def test_write_dataset_cnmc(tmp_path):
    root = write_dataset(tmp_path / "c", layout="cnmc", n_per_class=3, size=32, n_subjects=2)
    alls = sorted(p.name for p in (root / "all").iterdir())
    hems = sorted(p.name for p in (root / "hem").iterdir())
    assert alls == ["UID_1_0_1_all.bmp", "UID_1_2_1_all.bmp", "UID_2_1_1_all.bmp"]
    assert hems == ["UID_H1_0_1_hem.bmp", "UID_H1_2_1_hem.bmp", "UID_H2_1_1_hem.bmp"]
    img = cv2.imread(str(root / "all" / alls[0]))
    assert img.shape == (32, 32, 3)


def test_write_dataset_folders_with_labels(tmp_path):
    root = write_dataset(tmp_path / "f", layout="folders", n_per_class=2, size=32, kind="field")
    with open(root / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert {r["class"]: r["label"] for r in rows} == {"Pro": "1", "Benign": "0"}
    for r in rows:
        assert (root / r["path"]).is_file()
    with pytest.raises(ValueError):
        write_dataset(tmp_path / "x", layout="nope")
