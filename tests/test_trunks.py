"""The networks and the evaluation transform built without torchvision compute what torchvision computes.

Bundles name their backbones by seed, not by weights: a seeded DenseNet-121 or ResNet-34 must draw the
same numbers, and an image must become the same tensor, as with torchvision, or every shipped model
would fail its fingerprint (or worse, silently drift).
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torchvision import models
from torchvision.transforms import v2

from trainer.vision import preprocess, trunks
from trainer.vision.preprocess import IMAGENET_MEAN, IMAGENET_STD, GammaCorrect, eval_transform


@pytest.mark.parametrize("ours,theirs", [
    (trunks.densenet121, lambda: models.densenet121(weights=None)),
    (trunks.resnet34, lambda: models.resnet34(weights=None)),
], ids=["densenet121", "resnet34"])
@pytest.mark.parametrize("seed", [0, 7])
def test_seeded_network_equals_torchvision_bit_for_bit(ours, theirs, seed):
    torch.manual_seed(seed)
    a = ours().eval()
    after_ours = torch.rand(3)
    torch.manual_seed(seed)
    b = theirs().eval()
    after_theirs = torch.rand(3)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)  # same names, same order: torchvision's state_dicts load unchanged
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(after_ours, after_theirs)  # the same amount of randomness was drawn
    x = torch.randn(2, 3, 64, 80)
    with torch.inference_mode():
        assert torch.equal(a(x), b(x))


def _torchvision_eval(size, gamma):
    return v2.Compose([GammaCorrect(gamma), v2.ToImage(), v2.Resize((size, size), antialias=True),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


@pytest.mark.parametrize("native", [True, False], ids=["native-uint8-resize", "float-resize"])
def test_eval_transform_equals_torchvision_pipeline(native, monkeypatch):
    if not native:  # CPUs without AVX2: both resize in float32 and round back to uint8
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
        assert not preprocess._native_uint8_resize()
    rng = np.random.default_rng(0)
    for h, w, size, gamma in [(450, 450, 224, 1.0), (100, 130, 224, 0.9), (224, 224, 224, 1.0),
                              (31, 517, 64, 1.2), (600, 800, 96, 1.0)]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for view in (img, img[:, ::-1]):  # flipped views have negative strides
            got = eval_transform(size, gamma)(view)
            want = torch.as_tensor(_torchvision_eval(size, gamma)(view))
            assert got.dtype == torch.float32 and got.shape == (3, size, size)
            assert torch.equal(got, want)


def test_prediction_path_does_not_import_torchvision():
    code = ("import sys; from trainer.inference.predictor import Predictor; import trainer.cli.predict; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torchvision'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
