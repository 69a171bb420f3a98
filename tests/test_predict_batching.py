"""The batched prediction path gives exactly the per-image results (float32), reuses the
segmentation without changing the nucleus block, cancels, and loads bundles in either precision."""
import numpy as np
import pytest

from trainer.io.synthetic import make_cell_image, make_smear_field
from trainer.util.errors import AllguiError, Cancelled, ImageReadError
from trainer.vision import handcrafted, segmentation


@pytest.fixture(scope="module")
def fp32_predictor(tiny_bundle):
    from trainer.inference.predictor import Predictor
    return Predictor.from_bundle(tiny_bundle, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def images():
    g = np.random.default_rng(3)
    crops = [make_cell_image(64, bool(i % 2), g)[0] for i in range(4)]
    fields = [make_smear_field(160, 2, g, malignant=bool(i % 2))[0] for i in range(2)]
    return crops[:2] + fields[:1] + crops[2:] + fields[1:]


def _flat(r):
    return [(c.index, c.bbox, c.probability, c.raw_probability, tuple(v.probability for v in c.votes))
            for c in [r.whole] + list(r.cells)]


def test_nucleus_block_with_the_predictors_segmentation_is_unchanged(images):
    for img in images:
        seg = segmentation.segment_nuclei(img)
        assert np.array_equal(handcrafted.nucleus_features(img), handcrafted.nucleus_features(img, seg=seg))


def test_batched_equals_one_by_one_in_fp32(fp32_predictor, images):
    """Same cells, boxes and decisions; probabilities equal up to float32 rounding (the convolution
    kernels sum in a different order for a batch of one than for a batch of six)."""
    batched = fp32_predictor.predict_batch(images)
    single = [fp32_predictor.predict(img) for img in images]
    assert [r.kind for r in batched] == [r.kind for r in single]
    for b, s in zip(batched, single):
        fb, fs = _flat(b), _flat(s)
        assert [c[:2] for c in fb] == [c[:2] for c in fs]
        np.testing.assert_allclose(np.array([c[2:4] + c[4] for c in fb]), np.array([c[2:4] + c[4] for c in fs]),
                                   rtol=0, atol=1e-5)
        t = fp32_predictor.thresholds[b.model]
        assert [c.probability >= t for c in [b.whole] + b.cells] == [c.probability >= t for c in [s.whole] + s.cells]


def test_prepared_images_give_the_same_results(fp32_predictor, images):
    prepared = [fp32_predictor.prepare(img) for img in images]
    a = fp32_predictor.predict_batch(images, prepared=prepared)
    b = fp32_predictor.predict_batch(images)
    assert [_flat(r) for r in a] == [_flat(r) for r in b]


def test_a_failed_preparation_is_raised_by_predict_batch(fp32_predictor, images):
    prepared = [fp32_predictor.prepare(images[0]), ImageReadError("bad.png cannot be read")]
    with pytest.raises(ImageReadError, match="bad.png"):
        fp32_predictor.predict_batch(images[:2], prepared=prepared)


def test_cancel_stops_the_batch(fp32_predictor, images):
    with pytest.raises(Cancelled):
        fp32_predictor.predict_batch(images, cancel=lambda: True)


def test_cli_path_with_prefetch_equals_predict_batch(fp32_predictor, tiny_cnmc, tmp_path, monkeypatch):
    from trainer.cli import predict as cli

    files = sorted((tiny_cnmc / "all").glob("*.bmp"))[:5]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    files = files[:2] + [bad] + files[2:]
    monkeypatch.setattr(cli, "PREDICT_BATCH", 2)
    rows = []
    n_ok, n_err, interrupted = cli.classify_files(fp32_predictor, files, dict(fp32_predictor.thresholds),
                                                  rows.extend)
    assert (n_ok, n_err, interrupted) == (5, 1, False)
    by_file = {r["file"]: r for r in rows}
    assert "error" in by_file[str(bad)]
    for f, r in zip(files, [None, None, None] + fp32_predictor.predict_batch(files[3:])):
        if r is not None:
            assert by_file[str(f)]["probability"] == round(r.whole.probability, 4) or \
                float(by_file[str(f)]["probability"]) == pytest.approx(r.whole.probability, abs=1e-4)


def test_precision_choice(tiny_bundle):
    from trainer.inference.predictor import Predictor, inference_precision

    assert inference_precision("fp32") == "fp32"
    assert inference_precision(None) in ("fp32", "bf16")
    with pytest.raises(AllguiError):
        inference_precision("fp8")
    # the fingerprint is checked in float32: a bundle loads whatever precision predicts
    p = Predictor.from_bundle(tiny_bundle, device="cpu", precision="bf16")
    assert p.precision == "bf16"
    p.warm_up()


def test_fingerprint_is_computed_in_fp32_whatever_the_extractor_precision(fp32_predictor):
    from trainer.vision import fingerprint

    ex = fp32_predictor.extractor
    ref = fingerprint.compute(ex)
    ex.precision = "bf16"
    try:
        got = fingerprint.compute(ex)
    finally:
        ex.precision = "fp32"
    assert ex.precision == "fp32"
    for k in ref:
        assert np.array_equal(ref[k], got[k])


def test_freed_memory_is_given_back_between_batches(tmp_path, monkeypatch):
    """classify_files trims the C heap after every batch it emits (RSS flat in the number of images)."""
    import trainer.cli.predict as predict_cli
    from trainer.util.memory import release_freed_memory

    calls = []
    monkeypatch.setattr(predict_cli, "release_freed_memory", lambda: calls.append(len(emitted)))
    emitted = []

    class OneModel:
        def predict_batch(self, batch):
            raise RuntimeError("unreadable")  # every image redone alone and reported as an error row

        def predict(self, f):
            raise RuntimeError("unreadable")

    files = [tmp_path / f"{i}.png" for i in range(predict_cli.PREDICT_BATCH + 3)]
    n_ok, n_err, _ = predict_cli.classify_files(OneModel(), files, {}, emitted.append)
    assert (n_ok, n_err) == (0, len(files))
    assert calls == [0, 1]  # once for each of the two batches, just before its rows go out
    import platform
    import sys
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert release_freed_memory() is glibc  # trims on glibc; a no-op elsewhere, never an error


def test_prediction_on_the_cpu_forwards_at_most_16_images_at_a_time(tiny_bundle):
    """Memory: the networks' activations for a batch are bounded, whatever batch the model was trained with."""
    import dataclasses

    from trainer.inference.bundle import load_bundle
    from trainer.inference.predictor import CPU_FORWARD_BATCH, Predictor

    bundle = load_bundle(tiny_bundle)
    bundle.config = dataclasses.replace(bundle.config, batch_size=32)
    p = Predictor(bundle, device="cpu", precision="fp32")
    sizes = []
    for model in p.extractor.models().values():
        model.register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[0]))
    g = np.random.default_rng(5)
    p.predict_batch([make_cell_image(48, bool(i % 2), g)[0] for i in range(20)])
    assert CPU_FORWARD_BATCH == 16 and max(sizes) == 16 and sum(sizes) == 20 * len(p.extractor.networks)
