"""Backbones: output shapes, seeding, weights from local files and from the torch cache (offline)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.util.errors import AllguiError
from trainer.vision import backbones as bb
from trainer.vision.backbones import BACKBONES, build_backbone, build_classifier_model, weights_identity

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def run(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return model(x).numpy()


@pytest.mark.parametrize("name", list(BACKBONES))
def test_feature_dims_and_seeding(name, x):
    a = build_backbone(name, "none", seed=3)
    out = run(a, x)
    assert out.shape == (2, BACKBONES[name]) and out.dtype == np.float32
    assert np.isfinite(out).all() and out.std() > 0
    assert not a.training
    np.testing.assert_array_equal(out, run(build_backbone(name, "none", seed=3), x))
    assert not np.allclose(out, run(build_backbone(name, "none", seed=4), x))


def test_seed_does_not_disturb_global_rng():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    build_backbone("resnet34", seed=5)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("name", list(BACKBONES))
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_state_dict_file_round_trip(name, suffix, tmp_path, x):
    from safetensors.torch import save_file

    ref = build_backbone(name, "none", seed=11)
    path = tmp_path / f"weights{suffix}"
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    torch.save(sd, path) if suffix == ".pth" else save_file(sd, str(path))
    loaded = build_backbone(name, path)
    np.testing.assert_array_equal(run(loaded, x), run(ref, x))
    ident = weights_identity(name, path)
    assert ident.startswith("file:") and len(ident) == len("file:") + 16
    assert ident != weights_identity(name, "none")


def test_full_torchvision_classifier_state_dict_is_accepted(tmp_path, x):
    from torchvision.models import resnet34

    torch.manual_seed(7)
    full = resnet34(weights=None).eval()
    path = tmp_path / "resnet34_full.pt"
    torch.save({"state_dict": full.state_dict()}, path)  # also unwraps a common checkpoint layout
    got = run(build_backbone("resnet34", path), x)
    trunk = torch.nn.Sequential(*list(full.children())[:-1])
    with torch.inference_mode():
        expected = torch.flatten(trunk(x), 1).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_classifier_model_state_dict_feeds_build_backbone(x):
    clf = build_classifier_model("densenet121", "none", num_classes=2, seed=2)
    with torch.inference_mode():
        assert clf(x).shape == (2, 2)
    with torch.no_grad():
        clf.backbone.features.conv0.weight.mul_(1.5)  # "fine-tuned"
    sd = clf.state_dict()
    back = build_backbone("densenet121", state_dict=sd)
    np.testing.assert_array_equal(run(back, x), run(clf.backbone, x))
    ident = weights_identity("densenet121", "none", state_dict=sd)
    assert ident.startswith("finetuned:")
    assert weights_identity("densenet121", "none", state_dict=clf.state_dict()) == ident  # stable
    assert ident != weights_identity("densenet121", "none", state_dict=build_classifier_model(
        "densenet121", seed=2).state_dict())


def test_foreign_and_broken_files_are_refused(tmp_path):
    other = tmp_path / "densenet.pth"
    torch.save(build_backbone("densenet121", seed=0).state_dict(), other)
    with pytest.raises(AllguiError, match="do not fit resnet34"):
        build_backbone("resnet34", other)
    junk = tmp_path / "notes.pth"
    junk.write_text("these are not weights")
    with pytest.raises(AllguiError, match="not a PyTorch state_dict"):
        build_backbone("resnet34", junk)
    pickled = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 2), pickled)  # a whole pickled module: refused by weights_only
    with pytest.raises(AllguiError):
        build_backbone("resnet34", pickled)
    with pytest.raises(AllguiError, match="not found"):
        build_backbone("resnet34", tmp_path / "missing.pth")
    with pytest.raises(AllguiError, match="Unknown backbone"):
        build_backbone("vgg16")


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch cache in tmp_path; any download attempt fails the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    calls = []

    def no_download(url, *args, **kwargs):
        calls.append(url)
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    yield tmp_path / "hub", calls
    torch.hub.set_dir(old)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_imagenet_weights_come_from_the_torch_cache_without_network(name, torch_home, x):
    hub, calls = torch_home
    from torchvision.models import DenseNet121_Weights, ResNet34_Weights

    enum = {"densenet121": DenseNet121_Weights, "resnet34": ResNet34_Weights}[name].IMAGENET1K_V1
    expected_file = hub / "checkpoints" / enum.url.rsplit("/", 1)[1]
    assert bb.imagenet_cache_path(name) == expected_file
    ref = build_backbone(name, "none", seed=21)
    sd = ref.state_dict()
    if name == "densenet121":  # torchvision's file uses the old 'norm.1' style keys and has a head
        sd = {k.replace("norm1", "norm.1").replace("conv2", "conv.2"): v for k, v in sd.items()
              if not k.endswith("num_batches_tracked")}
        sd["classifier.weight"], sd["classifier.bias"] = torch.zeros(1000, 1024), torch.zeros(1000)
    else:
        sd["fc.weight"], sd["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    expected_file.parent.mkdir(parents=True)
    torch.save(sd, expected_file)
    got = build_backbone(name, "imagenet")
    np.testing.assert_array_equal(run(got, x), run(ref, x))
    assert calls == []
    assert weights_identity(name, "imagenet") == "imagenet:IMAGENET1K_V1"


def test_missing_imagenet_cache_gives_clear_error(torch_home):
    hub, calls = torch_home
    with pytest.raises(AllguiError) as info:
        build_backbone("resnet34", "imagenet")
    msg = str(info.value)
    assert "resnet34-b627a593.pth" in msg and str(hub / "checkpoints") in msg and "TORCH_HOME" in msg
    assert len(calls) == 1  # one (failed) attempt, then the message
