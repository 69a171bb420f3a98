"""What a user sees of the nucleus segmentation: the N:C note and the outline confidence in the side panel's
text and in the predict CSV; a model trained on the older nucleus block segments and measures as it was trained."""
import csv

import cv2
import numpy as np
import pytest
from conftest import rewrite_bundle

from allgui.views.result_text import morphology_text
from trainer.cli.main import main
from trainer.inference.predictor import Predictor
from trainer.inference.results import LOW_SEGMENTATION_CONFIDENCE, NO_CYTOPLASM, OUTLINE_UNCERTAIN
from trainer.io.synthetic import cut_out, make_stained_cell
from trainer.util.errors import BundleError
from trainer.vision.handcrafted import nucleus_features

BLENDED = dict(background="white", cytoplasm="purple", nucleus_colour=(150, 100, 150), mottle=0.35)


def _crops(seed=1):
    """(the cell cut out with its cytoplasm, the same cell cut along its nucleus) as RGB crops."""
    img, nucleus, cell = make_stained_cell(rng=seed)
    return cut_out(img, cell)[0], cut_out(img, nucleus)[0]


def _with_nucleus_version(version):
    def change(manifest):
        card = manifest["card"]
        for section in [card, *card.get("models", {}).values()]:
            blocks = section.get("method", {}).get("feature_blocks")
            if blocks is not None and "nucleus" in blocks:
                blocks["nucleus"] = version
    return change


def test_the_cell_text_says_no_cytoplasm_where_there_is_none_instead_of_a_ratio(tiny_predictor):
    with_cytoplasm, without = _crops()
    a, b = tiny_predictor.predict(with_cytoplasm).whole, tiny_predictor.predict(without).whole
    text_a, text_b = morphology_text(a), morphology_text(b)
    assert f"N:C {a.nc_ratio:.2f}" in text_a and 0.2 < a.nc_ratio < 0.8 and NO_CYTOPLASM not in text_a
    assert NO_CYTOPLASM in text_b and "N:C 1.00" not in text_b


def test_the_cell_text_warns_where_the_nucleus_outline_is_uncertain(tiny_predictor):
    flagged = 0
    for seed in range(5):
        clear = tiny_predictor.predict(_crops(seed)[0]).whole
        assert OUTLINE_UNCERTAIN not in morphology_text(clear)
        img, _, cell = make_stained_cell(rng=seed, **BLENDED)
        unit = tiny_predictor.predict(cut_out(img, cell)[0]).whole
        low = unit.segmentation_confidence < LOW_SEGMENTATION_CONFIDENCE
        assert (OUTLINE_UNCERTAIN in morphology_text(unit)) == low
        flagged += low
    assert flagged >= 2


def test_predict_csv_has_the_confidence_and_the_nc_note(tiny_bundle, tmp_path):
    with_cytoplasm, without = _crops()
    for name, crop in (("with.png", with_cytoplasm), ("without.png", without)):
        cv2.imwrite(str(tmp_path / name), crop[:, :, ::-1])
    out = tmp_path / "pred.csv"
    main(["predict", str(tmp_path / "with.png"), str(tmp_path / "without.png"), "-m", str(tiny_bundle),
          "-o", str(out), "-q"])
    rows = {r["file"].rsplit("/", 1)[-1]: r for r in csv.DictReader(open(out))}
    assert 0.2 < float(rows["with.png"]["nc_ratio"]) < 0.8
    assert rows["without.png"]["nc_ratio"] == NO_CYTOPLASM
    for r in rows.values():
        assert 0.0 <= float(r["segmentation_confidence"]) <= 1.0


def test_a_model_trained_on_the_older_nucleus_block_segments_and_measures_as_then(tiny_bundle, tmp_path):
    crop = _crops()[0]
    old = Predictor.from_bundle(rewrite_bundle(tiny_bundle, tmp_path / "v1.allmodel",
                                               change=_with_nucleus_version("nucleus-v1")))
    new = Predictor.from_bundle(tiny_bundle)
    assert (old.segmentation_method, new.segmentation_method) == ("kmeans", "stain")
    assert old.prepare(crop).seg.method == "kmeans"
    for predictor, version in ((old, "nucleus-v1"), (new, "nucleus-v2")):
        got = predictor.extractor.extract([crop])["nucleus"][0]
        np.testing.assert_array_equal(got, nucleus_features(crop, version=version))
    assert not np.array_equal(nucleus_features(crop, version="nucleus-v1"), nucleus_features(crop))
    # the older model's cell carries no confidence: the k-means method does not measure one
    assert old.predict(crop).whole.segmentation_confidence is None


def test_a_model_with_a_nucleus_block_this_version_does_not_know_is_refused(tiny_bundle, tmp_path):
    path = rewrite_bundle(tiny_bundle, tmp_path / "future.allmodel", change=_with_nucleus_version("nucleus-v9"))
    with pytest.raises(BundleError, match="nucleus-v9"):
        Predictor.from_bundle(path)
