"""The network cache: seeded random networks read back from disk instead of drawn at every start-up."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.inference.predictor import Predictor
from trainer.io.synthetic import make_cell_image
from trainer.vision import initcache
from trainer.vision.backbones import build_backbone

NAME, SEED = "resnet34", 7


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(initcache.ENV, str(tmp_path / "networks"))
    return tmp_path / "networks"


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def drawn() -> dict[str, torch.Tensor]:
    """The numbers drawn for (NAME, SEED) with no cache at all."""
    return _state(build_backbone(NAME, "none", seed=SEED))


def test_a_network_read_back_is_the_drawn_network_bit_for_bit(cache, drawn):
    torch.manual_seed(0)
    expected_rng = torch.rand(3)
    torch.manual_seed(0)
    first = build_backbone(NAME, "none", seed=SEED)  # drawn, and written
    files = list(cache.glob("*.safetensors"))
    assert [f.name.split("-")[:2] for f in files] == [[NAME, f"seed{SEED}"]]
    second = build_backbone(NAME, "none", seed=SEED)  # read back
    assert torch.equal(torch.rand(3), expected_rng)  # the global generator is untouched either way
    assert _same(_state(first), drawn) and _same(_state(second), drawn)
    assert not second.training and all(p.requires_grad for p in second.parameters())
    assert not any(t.is_meta for t in [*second.parameters(), *second.buffers()])
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(first(x), second(x))
    # fine-tuning changes the read-back numbers in memory, never the file
    with torch.no_grad():
        next(second.parameters()).add_(1.0)
    assert _same(_state(build_backbone(NAME, "none", seed=SEED)), drawn)


def test_the_file_is_what_is_read_and_a_damaged_or_foreign_one_is_drawn_again(cache, drawn):
    other = _state(build_backbone(NAME, "none", seed=SEED + 1))
    path = initcache.store(NAME, SEED, other)  # well-formed numbers, but not the ones SEED draws
    assert _same(_state(build_backbone(NAME, "none", seed=SEED)), other)  # read, not drawn
    # a flipped byte fails the CRC: drawn again, and the file written anew
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    assert _same(_state(build_backbone(NAME, "none", seed=SEED)), drawn)
    assert initcache.load(NAME, SEED, {k: (tuple(v.shape), v.dtype) for k, v in drawn.items()}) is not None
    # a truncated file, and a file made for another library version, are ignored too
    for spoil in (lambda: path.write_bytes(path.read_bytes()[:5000]),
                  lambda: _store_as(path, other, f"{NAME}|seed={SEED}|torch=0.0")):
        spoil()
        assert _same(_state(build_backbone(NAME, "none", seed=SEED)), drawn)


def _store_as(path, state, identity):
    import safetensors.torch
    tensors = {k: v.contiguous() for k, v in state.items()}
    path.write_bytes(safetensors.torch.save(tensors, metadata={"identity": identity,
                                                               "crc32": initcache._crc(tensors)}))


def test_other_versions_files_are_removed_and_a_cache_that_cannot_be_written_costs_only_time(
        cache, drawn, tmp_path, monkeypatch):
    cache.mkdir(parents=True)
    stale = cache / f"{NAME}-seed{SEED}-000000000000000000000000.safetensors"
    stale.write_bytes(b"numbers of an older torch")
    keep = cache / f"{NAME}-seed{SEED + 1}-000000000000000000000000.safetensors"
    keep.write_bytes(b"another seed")
    build_backbone(NAME, "none", seed=SEED)
    assert not stale.exists() and keep.exists()
    assert len(list(cache.glob(f"{NAME}-seed{SEED}-*"))) == 1
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    monkeypatch.setenv(initcache.ENV, str(blocked / "networks"))
    assert _same(_state(build_backbone(NAME, "none", seed=SEED)), drawn)
    for off in ("off", "0", ""):
        monkeypatch.setenv(initcache.ENV, off)
        assert initcache.folder() is None and initcache.path(NAME, SEED) is None


def test_a_bundle_whose_networks_came_wrong_from_the_cache_loads_after_one_fresh_draw(cache, tiny_bundle,
                                                                                      tiny_predictor, monkeypatch):
    from trainer.inference.bundle import load_bundle
    seed = load_bundle(tiny_bundle).config.seed
    img = make_cell_image(64, malignant=True, rng=np.random.default_rng(5))[0]
    want = tiny_predictor.predict(img).whole.probability  # a predictor built without the cache
    names = ("densenet121", "resnet34")
    with monkeypatch.context() as m:
        m.setenv(initcache.ENV, "off")
        right = {n: _state(build_backbone(n, "none", seed=seed)) for n in names}
    # plant well-formed numbers of another seed under the bundle's seed, for both networks
    for name in names:
        initcache.store(name, seed, build_backbone(name, "none", seed=seed + 1).state_dict())
    p = Predictor.from_bundle(tiny_bundle)  # the fingerprint catches them; drawn afresh, then checked
    assert p.predict(img).whole.probability == pytest.approx(want, abs=1e-12)
    for name in names:  # the cache now holds the right numbers, and a second start reads them
        expected = {k: (tuple(v.shape), v.dtype) for k, v in right[name].items()}
        assert _same(initcache.load(name, seed, expected), right[name])
    assert Predictor.from_bundle(tiny_bundle).predict(img).whole.probability == pytest.approx(want, abs=1e-12)
