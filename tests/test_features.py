"""FeatureExtractor: shapes, determinism, batching, DataLoader workers, the disk cache, cancel."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from trainer.io.synthetic import make_cell_image
from trainer.util.errors import AllguiError, Cancelled, ImageReadError
from trainer.vision import devices
from trainer.vision import features as feats_mod
from trainer.vision.backbones import build_backbone
from trainer.vision.features import FeatureExtractor

torch.set_num_threads(1)
SIZE = 32  # network input side for tests


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [make_cell_image(48, malignant=bool(i % 2), rng=rng)[0] for i in range(5)]


@pytest.fixture(scope="module")
def paths(images, tmp_path_factory) -> list:
    folder = tmp_path_factory.mktemp("imgs")
    out = []
    for i, img in enumerate(images):
        p = folder / f"img_{i}.png"
        cv2.imwrite(str(p), img[:, :, ::-1])
        out.append(p)
    return out


class Counter:
    """Counts forward passes (images) of an extractor's models and image decodes."""

    def __init__(self, extractor: FeatureExtractor, monkeypatch) -> None:
        self.forward = 0
        self.decoded = 0
        for model in extractor.models().values():
            model.register_forward_hook(self._hook)
        real_read, real_rgb = feats_mod.read_image, feats_mod.as_rgb_uint8

        def read(p):
            self.decoded += 1
            return real_read(p)

        def rgb(a):
            self.decoded += 1
            return real_rgb(a)

        monkeypatch.setattr(feats_mod, "read_image", read)
        monkeypatch.setattr(feats_mod, "as_rgb_uint8", rgb)

    def _hook(self, module, inputs, output) -> None:
        self.forward += inputs[0].shape[0]


def make(**kw) -> FeatureExtractor:
    kw.setdefault("backbones", ("resnet34",))
    kw.setdefault("image_size", SIZE)
    kw.setdefault("num_workers", 0)
    kw.setdefault("device", "cpu")
    return FeatureExtractor(**kw)


def test_both_backbones_dims_order_and_paths_equal_arrays(images, paths):
    ext = make(backbones=("densenet121", "resnet34"), batch_size=2)
    a = ext.extract(images)
    assert set(a) == {"densenet121", "resnet34"}
    assert a["densenet121"].shape == (5, 1024) and a["resnet34"].shape == (5, 512)
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in a.values())
    # distinct images give distinct rows, in input order
    assert np.linalg.matrix_rank(a["resnet34"]) == 5
    rev = ext.extract(images[::-1])
    np.testing.assert_allclose(rev["densenet121"], a["densenet121"][::-1], rtol=1e-4, atol=1e-5)
    # lossless files on disk give the same features as the arrays
    b = ext.extract(paths)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    # same as the plain backbone on the eval transform
    from trainer.vision.preprocess import eval_transform

    x = torch.stack([eval_transform(SIZE)(im) for im in images])
    with torch.inference_mode():
        ref = build_backbone("resnet34", "none", seed=0)(x).numpy()
    np.testing.assert_allclose(a["resnet34"], ref, rtol=1e-4, atol=1e-5)


def test_deterministic_and_batch_size_independent(images):
    a = make(batch_size=5).extract(images)["resnet34"]
    b = make(batch_size=5).extract(images)["resnet34"]
    np.testing.assert_array_equal(a, b)
    single = np.concatenate([make(batch_size=1).extract([im])["resnet34"] for im in images[:3]])
    np.testing.assert_allclose(single, a[:3], rtol=1e-4, atol=1e-5)
    other_seed = make(seed=1).extract(images[:2])["resnet34"]
    assert not np.allclose(other_seed, a[:2])


def test_dataloader_workers_give_same_features(paths):
    ref = make(batch_size=2).extract(paths)["resnet34"]
    got = make(batch_size=2, num_workers=2).extract(paths)["resnet34"]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_cache_hits_compute_and_decode_nothing(paths, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = make(cache_dir=cache, batch_size=2).extract(paths[:3])["resnet34"]
    assert len(list(cache.rglob("*.npy"))) == 3

    ext = make(cache_dir=cache, batch_size=2)
    count = Counter(ext, monkeypatch)
    again = ext.extract(paths[:3])["resnet34"]
    np.testing.assert_array_equal(again, first)
    assert (count.forward, count.decoded) == (0, 0)

    # two new images: only those are decoded and computed
    progress = []
    mixed = ext.extract(paths, progress=lambda f, m: progress.append(f))["resnet34"]
    assert (count.forward, count.decoded) == (2, 2)
    np.testing.assert_array_equal(mixed[:3], first)
    assert progress[0] == pytest.approx(3 / 5) and progress[-1] == pytest.approx(1.0)
    assert progress == sorted(progress)
    assert len(list(cache.rglob("*.npy"))) == 5


def test_cache_is_keyed_by_content_not_name(images, paths, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    make(cache_dir=cache).extract(paths[:2])
    copy = tmp_path / "renamed.png"
    copy.write_bytes(paths[0].read_bytes())
    ext = make(cache_dir=cache)
    count = Counter(ext, monkeypatch)
    ext.extract([copy])
    assert count.forward == 0
    img = images[0].copy()
    img[0, 0] ^= 1  # one pixel changed: a new entry
    ext.extract([img])
    assert count.forward == 1


@pytest.mark.parametrize("change", [{"gamma": 0.9}, {"image_size": 40}, {"seed": 3}, {"weights": "file"}])
def test_cache_invalidates_when_preprocessing_or_weights_change(change, paths, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    base = make(cache_dir=cache).extract(paths[:2])["resnet34"]
    if change.get("weights") == "file":
        wfile = tmp_path / "w.pth"
        torch.save(build_backbone("resnet34", seed=9).state_dict(), wfile)
        change = {"weights": wfile}
    ext = make(cache_dir=cache, **change)
    count = Counter(ext, monkeypatch)
    got = ext.extract(paths[:2])["resnet34"]
    assert count.forward == 2
    assert not np.allclose(got, base)


def test_damaged_cache_entry_is_recomputed(paths, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    ref = make(cache_dir=cache).extract(paths[:1])["resnet34"]
    (entry,) = cache.rglob("*.npy")
    entry.write_bytes(b"garbage")
    ext = make(cache_dir=cache)
    count = Counter(ext, monkeypatch)
    np.testing.assert_array_equal(ext.extract(paths[:1])["resnet34"], ref)
    assert count.forward == 1


def test_finetuned_state_dict_changes_features_and_key(images, tmp_path):
    model = build_backbone("resnet34", seed=0)
    with torch.no_grad():
        model.conv1.weight.mul_(-1.0)
    cache = tmp_path / "cache"
    base = make(cache_dir=cache)
    tuned = make(cache_dir=cache, state_dicts={"resnet34": model.state_dict()})
    assert tuned.identities()["resnet34"].startswith("finetuned:")
    assert base.identities()["resnet34"] == "none:seed=0"
    a, b = base.extract(images[:2])["resnet34"], tuned.extract(images[:2])["resnet34"]
    assert not np.allclose(a, b)
    assert len(list(cache.rglob("*.npy"))) == 4


def test_cancel_raises_and_unreadable_file_is_named(paths, tmp_path):
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 1  # let the first check pass, cancel after that

    with pytest.raises(Cancelled):
        make(batch_size=1).extract(paths, cancel=cancel)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(ImageReadError, match="broken.png"):
        make(batch_size=2, num_workers=1).extract([paths[0], bad, paths[1]])


def test_invalid_settings_are_clear_errors():
    with pytest.raises(AllguiError, match="gamma is 2.0; allowed: 0.8 to 1.2"):
        make(gamma=2.0).extract([np.zeros((40, 40, 3), np.uint8)])
    with pytest.raises(AllguiError, match="Unknown backbone"):
        make(backbones=("alexnet",)).extract([np.zeros((40, 40, 3), np.uint8)])
    if not torch.cuda.is_available():
        with pytest.raises(AllguiError, match="cuda"):
            make(device="cuda").extract([np.zeros((40, 40, 3), np.uint8)])
    assert make().extract([])["resnet34"].shape == (0, 512)


def test_precision_modes(images):
    fp32 = make(precision="fp32").extract(images)
    assert make().preprocessing_tag().endswith("fp32")  # auto is float32 on the CPU
    fast = make(precision="bf16")
    if not devices.cpu_has_bf16():
        assert fast.preprocessing_tag().endswith("fp32")  # no native bfloat16: stays exact
        return
    assert fast.preprocessing_tag().endswith("amp-bfloat16")  # its own cache entries
    bf16 = fast.extract(images)
    for name in fp32:
        err = np.linalg.norm(bf16[name] - fp32[name]) / np.linalg.norm(fp32[name])
        assert 0 < err < 0.02  # close to float32 (well inside the bundle fingerprint's tolerance), not equal
    with pytest.raises(AllguiError, match="precision"):
        make(precision="fp8").extract(images)
