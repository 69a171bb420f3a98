"""Nuclei on another laboratory's slides: generated cells with known masks, through both paths a user takes
(a smear field as the camera frames it, and the cell cut out onto black as a crop)."""
import numpy as np
import pytest

from trainer.inference.results import LOW_SEGMENTATION_CONFIDENCE
from trainer.io.synthetic import cut_out, make_stained_cell
from trainer.vision.segmentation import segment_nuclei

#: the failure modes of the k-means segmentation on such slides
CASES = {
    "yellowish background": dict(background="yellowish"),
    "purple cytoplasm": dict(background="white", cytoplasm="purple", nucleus_colour=(87, 19, 124)),
    "cell fills most of a small field": dict(size=90, cell_share=0.8),
}
#: nucleus and cytoplasm of one hue, the chromatin mottled: where the nucleus ends is a matter of judgement
BLENDED = dict(background="white", cytoplasm="purple", nucleus_colour=(150, 100, 150), mottle=0.35)


def dice(a, b):
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def in_crop(mask, offset, side):
    """``mask`` of the field moved to where :func:`cut_out` put its pixels in a crop of ``side``."""
    out = np.zeros((side, side), bool)
    ys, xs = np.nonzero(mask)
    out[ys + offset[1], xs + offset[0]] = True
    return out


@pytest.mark.parametrize("case", CASES)
def test_the_white_cell_nucleus_of_a_field_is_found_and_the_cytoplasm_left_out(case):
    for seed in range(3):
        img, nucleus, cell = make_stained_cell(rng=seed, **CASES[case])
        seg = segment_nuclei(img)
        assert seg.kind == "field" and seg.nuclei, (case, seed)
        best = max(dice(seg.labels == i + 1, nucleus) for i in range(len(seg.nuclei)))
        assert best > 0.9, (case, seed, best)
        assert (seg.mask & cell & ~nucleus).sum() < 0.1 * nucleus.sum()
        # red cells and background are never a nucleus
        assert (seg.mask & ~cell).sum() < 0.05 * nucleus.sum()


@pytest.mark.parametrize("case", CASES)
def test_the_nucleus_of_the_cut_out_cell_and_its_nc_ratio(case):
    for seed in range(3):
        img, nucleus, cell = make_stained_cell(rng=seed, **CASES[case])
        crop, offset = cut_out(img, cell)
        seg = segment_nuclei(crop)
        assert seg.kind == "single_cell"
        (found,) = seg.nuclei
        assert dice(seg.mask, in_crop(nucleus, offset, crop.shape[0])) > 0.9, (case, seed)
        assert found.nc_ratio == pytest.approx(nucleus.sum() / cell.sum(), abs=0.06)
        assert found.cytoplasm_visible is True


def test_a_crop_cut_along_the_nucleus_shows_no_cytoplasm():
    for seed in range(3):
        img, nucleus, cell = make_stained_cell(rng=seed)
        with_cytoplasm = segment_nuclei(cut_out(img, cell)[0]).nuclei[0]
        without = segment_nuclei(cut_out(img, nucleus)[0]).nuclei[0]
        assert with_cytoplasm.cytoplasm_visible is True
        assert without.cytoplasm_visible is False


def test_the_confidence_drops_where_nucleus_and_cytoplasm_blend():
    clear_crop, clear_field, blended_crop, blended_field = [], [], [], []
    for seed in range(5):
        img, _, cell = make_stained_cell(rng=seed, **CASES["purple cytoplasm"])
        clear_crop.append(segment_nuclei(cut_out(img, cell)[0]).nuclei[0].confidence)
        clear_field.append(min(n.confidence for n in segment_nuclei(img).nuclei))
        img, _, cell = make_stained_cell(rng=seed, **BLENDED)
        blended_crop.append(segment_nuclei(cut_out(img, cell)[0]).nuclei[0].confidence)
        blended_field.append(max(n.confidence for n in segment_nuclei(img).nuclei))
    assert all(0.0 <= c <= 1.0 for c in clear_crop + clear_field + blended_crop + blended_field)
    assert max(blended_crop) < min(clear_crop)
    assert max(blended_field) < min(clear_field)
    # the clear cells are never called uncertain; most blended crops are
    assert min(clear_crop + clear_field) >= LOW_SEGMENTATION_CONFIDENCE
    assert sum(c < LOW_SEGMENTATION_CONFIDENCE for c in blended_crop) >= 2


def test_a_nucleus_that_covers_most_of_the_field_is_still_found():
    for seed in range(3):
        img, nucleus, _ = make_stained_cell(size=80, rng=seed, cell_share=1.4)
        assert nucleus.mean() > 0.5
        seg = segment_nuclei(img)
        assert len(seg.nuclei) == 1 and dice(seg.mask, nucleus) > 0.9, seed


def test_the_paper_method_stays_available_and_differs_on_such_slides():
    img, nucleus, _ = make_stained_cell(rng=0, **CASES["yellowish background"])
    new, old = segment_nuclei(img), segment_nuclei(img, method="kmeans")
    assert new.method == "stain" and old.method == "kmeans"
    assert all(n.confidence is None for n in old.nuclei)
    with pytest.raises(ValueError):
        segment_nuclei(img, method="nope")
