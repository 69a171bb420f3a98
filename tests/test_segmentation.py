import cv2
import numpy as np
import pytest
from scipy import ndimage as ndi

from trainer.io.synthetic import make_cell_image, make_smear_field
from trainer.vision.kmeans import kmeans
from trainer.vision.segmentation import (
    find_cells,
    is_single_cell_crop,
    measure,
    purple_score,
    segment_nuclei,
    to_lab,
)


def dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


@pytest.mark.parametrize("malignant", [False, True])
def test_single_cell_nucleus_matches_known_mask(malignant):
    for seed in range(4):
        img, truth = make_cell_image(64, malignant, seed)
        seg = segment_nuclei(img)
        assert seg.kind == "single_cell"
        assert dice(seg.mask, truth) > 0.85, (seed, dice(seg.mask, truth))
        # the black background never becomes nucleus
        assert not (seg.mask & (img.max(axis=2) < 25)).any()
        (nucleus,) = seg.nuclei
        cell = img.max(axis=2) >= 25
        true_ratio = truth.sum() / cell.sum()
        assert nucleus.nc_ratio == pytest.approx(true_ratio, abs=0.08)
        assert nucleus.area_px == seg.mask.sum()


def test_nc_ratio_separates_the_classes():
    normal = [segment_nuclei(make_cell_image(64, False, s)[0]).nuclei[0].nc_ratio for s in range(3)]
    blast = [segment_nuclei(make_cell_image(64, True, s)[0]).nuclei[0].nc_ratio for s in range(3)]
    assert max(normal) < 0.45 < min(blast)


def test_smear_field_finds_each_white_cell_and_no_red_cell():
    saw_lobed = False
    for seed in range(4):
        img, truths = make_smear_field(160, n_wbc=3, rng=seed)
        saw_lobed |= any(ndi.label(t)[1] > 1 for t in truths)
        seg = segment_nuclei(img)
        assert seg.kind == "field"
        assert len(seg.nuclei) == 3, seed
        for i, n in enumerate(seg.nuclei):
            found = seg.labels == i + 1
            best = max(iou(found, t) for t in truths)
            assert best > 0.7, (seed, i, best)  # every detection is a white-cell nucleus
        # nothing outside the white-cell nuclei (red cells, background) is marked
        union = np.logical_or.reduce(truths)
        assert (seg.mask & ~union).sum() < 0.1 * union.sum()
    assert saw_lobed  # the merge of nucleus lobes into one cell was exercised


def test_field_without_white_cells_has_no_nuclei():
    img, masks = make_smear_field(128, n_wbc=0, rng=2)
    assert masks == []
    seg = segment_nuclei(img)
    assert seg.nuclei == [] and not seg.mask.any()
    assert find_cells(img) == []


def test_is_single_cell_crop():
    assert is_single_cell_crop(make_cell_image(48, True, 0)[0])
    assert not is_single_cell_crop(make_smear_field(96, 2, 0)[0])
    assert not is_single_cell_crop(np.zeros((32, 32, 3), np.uint8))  # all black: no cell


def test_find_cells_crop_and_field():
    img, _ = make_cell_image(64, False, 1)
    (cell,) = find_cells(img)
    assert cell.bbox == (0, 0, 64, 64)
    assert cell.contour.ndim == 2 and cell.contour.shape[1] == 2 and len(cell.contour) > 20
    assert cell.nc_ratio is not None and 0.2 < cell.nc_ratio < 0.5
    assert cell.area_px == pytest.approx((img.max(axis=2) >= 25).sum(), rel=0.05)

    img, truths = make_smear_field(160, n_wbc=2, rng=5)
    cells = find_cells(img)
    assert len(cells) == 2
    for c in cells:
        x, y, w, h = c.bbox
        nx, ny, nw, nh = c.nucleus.bbox
        assert w == h and 0 <= x and 0 <= y and x + w <= 160 and y + h <= 160
        assert x <= nx and y <= ny and nx + nw <= x + w and ny + nh <= y + h
        assert w >= 1.3 * max(nw, nh)  # includes cytoplasm around the nucleus
        assert c.crop(img).shape == (h, w, 3)
        assert c.nc_ratio is None  # cell edge not measured in fields


def test_deterministic_and_gamma():
    img, truth = make_smear_field(128, n_wbc=2, rng=7)
    a, b = segment_nuclei(img), segment_nuclei(img.copy())
    assert np.array_equal(a.labels, b.labels)
    assert [n.area_px for n in a.nuclei] == [n.area_px for n in b.nuclei]
    cimg, ctruth = make_cell_image(64, True, 3)
    for gamma in (0.8, 1.2):
        assert dice(segment_nuclei(cimg, gamma=gamma).mask, ctruth) > 0.8
    with pytest.raises(ValueError):
        segment_nuclei(cimg, gamma=3.0)
    with pytest.raises(ValueError):
        segment_nuclei(cimg[..., 0])
    with pytest.raises(ValueError):
        segment_nuclei(cimg, kind="nope")


def test_measurements_of_drawn_shapes():
    m = np.zeros((80, 80), np.uint8)
    cv2.circle(m, (40, 40), 20, 1, -1)
    n = measure(m.astype(bool))
    assert n.area_px == pytest.approx(np.pi * 20 ** 2, rel=0.02)
    assert n.perimeter_px == pytest.approx(2 * np.pi * 20, rel=0.05)
    assert n.circularity > 0.95
    assert n.bbox == (20, 20, 41, 41)
    assert n.contour.dtype == np.int32 and n.contour.shape[1] == 2
    assert n.n_lobes == 1 and n.centroid == pytest.approx((40, 40), abs=0.01)
    sq = np.zeros((80, 80), bool)
    sq[10:50, 20:60] = True
    s = measure(sq, cell_area=3200.0)
    assert s.circularity == pytest.approx(np.pi / 4, abs=0.05)
    assert s.nc_ratio == pytest.approx(0.5)
    two = sq.copy()
    two[60:70, 60:70] = True  # two lobes: one nucleus, hull around both
    t = measure(two)
    assert t.n_lobes == 2 and t.area_px == 1700
    assert cv2.pointPolygonTest(t.contour.reshape(-1, 1, 2).astype(np.float32), (55, 55), False) >= 0


def test_kmeans_and_purple_score():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.1, (50, 2)), rng.normal(5, 0.1, (30, 2))])
    centres, labels, inertia = kmeans(x, 2)
    assert centres[:, 0] == pytest.approx([0, 5], abs=0.1)
    assert np.bincount(labels).tolist() == [50, 30]
    assert inertia < 80 * 0.1 ** 2 * 2 * 2
    purple = to_lab(np.array([[[90, 45, 140]]], np.uint8))
    pink = to_lab(np.array([[[222, 160, 166]]], np.uint8))
    black = to_lab(np.zeros((1, 1, 3), np.uint8))
    assert purple_score(purple)[0, 0] > 20 > 0 >= purple_score(pink)[0, 0]
    assert abs(purple_score(black)[0, 0]) < 1


def test_the_brightest_channel_is_the_channel_maximum():
    from trainer.vision.segmentation import brightest_channel

    rng = np.random.default_rng(0)
    for img in (rng.integers(0, 256, (37, 53, 3), dtype=np.uint8), make_cell_image(48, True, 0)[0]):
        np.testing.assert_array_equal(brightest_channel(img), img.max(axis=2))


def test_squared_distances_are_the_numbers_of_the_plain_numpy_expression():
    from trainer.vision.kmeans import sq_dist
    rng = np.random.default_rng(4)
    for dtype, d in ((np.float32, 3), (np.float64, 3), (np.float64, 5)):
        x = (rng.standard_normal((5000, d)) * 40).astype(dtype)
        c = (rng.standard_normal(d) * 40).astype(dtype)
        got = sq_dist(x, c)
        assert got.dtype == dtype
        assert np.array_equal(got, ((x - c) ** 2).sum(1))


def test_label_sizes_are_scipys_sums_of_the_labelled_mask():
    from trainer.vision.segmentation import _label_sizes
    mask = np.random.default_rng(5).random((120, 90)) > 0.6
    lab, n = ndi.label(mask)
    assert n > 20
    want = ndi.sum(mask, lab, index=np.arange(1, n + 1))
    assert np.array_equal(_label_sizes(lab, n), want)
