"""Backbone fine-tuning on tiny synthetic cell crops (CPU, 32 px, a few epochs)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainer.cli.finetune import main
from trainer.config import FinetuneConfig, TrainConfig
from trainer.io.synthetic import make_cell_image, write_dataset
from trainer.training.checkpoints import EarlyStopping, checkpoint_path, load_checkpoint
from trainer.training.finetune import finetune_backbone
from trainer.training.finetune_data import EpochShardSampler
from trainer.training.weights import load_state_dicts, save_state_dicts
from trainer.util.errors import Cancelled, DataError
from trainer.vision.backbones import build_backbone
from trainer.vision.preprocess import eval_transform

SIZE = 32
NAME = "resnet34"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cells(n: int, rng: np.random.Generator) -> tuple[list[np.ndarray], list[int]]:
    labels = [i % 2 for i in range(n)]
    return [make_cell_image(SIZE, bool(m), rng)[0] for m in labels], labels


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    tr, ytr = _cells(24, rng)
    va, yva = _cells(8, rng)
    return tr, ytr, va, yva


def _cfg(**kw) -> TrainConfig:
    """A small, deterministic fine-tuning run: the TrainConfig with its fine-tuning part."""
    shared = {k: kw.pop(k) for k in ("image_size", "seed", "weights", "gamma", "num_workers", "batch_size")
              if k in kw}
    ft = dict(epochs=3, patience=5, lr=3e-4, deterministic=True, channels_last=True)
    ft.update(kw)
    return TrainConfig(**{**dict(image_size=SIZE, num_workers=0, seed=1, batch_size=8), **shared},
                       finetuning=FinetuneConfig(**ft))


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """An uninterrupted 3-epoch run with checkpoints."""
    ckdir = tmp_path_factory.mktemp("ref")
    sd, hist = finetune_backbone(NAME, *data, _cfg(), device="cpu", checkpoint_dir=ckdir)
    return sd, hist, ckdir


@pytest.fixture(scope="module")
def interrupted(data, tmp_path_factory):
    """The same run cancelled as soon as epoch 1's checkpoint exists."""
    ckdir = tmp_path_factory.mktemp("interrupted")
    path = checkpoint_path(ckdir, NAME)
    with pytest.raises(Cancelled):
        finetune_backbone(NAME, *data, _cfg(), device="cpu", checkpoint_dir=ckdir,
                          cancel=lambda: path.exists())
    return ckdir, load_checkpoint(path)


def _features(sd, images) -> torch.Tensor:
    model = build_backbone(NAME, state_dict=sd)
    t = eval_transform(SIZE)
    with torch.inference_mode():
        return model(torch.stack([t(im) for im in images]))


def test_training_loss_decreases(reference):
    _, hist, _ = reference
    assert hist["epoch"] == [1, 2, 3]
    losses = hist["train_loss"]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0], losses
    assert hist["pos_weight"] == pytest.approx(1.0)
    assert hist["amp"] == "off" and hist["device"] == "cpu"
    assert hist["best_val_loss"] == min(hist["val_loss"])
    assert hist["best_epoch"] == 1 + int(np.argmin(hist["val_loss"]))


def test_checkpoint_is_safe_to_load_and_complete(reference):
    _, hist, ckdir = reference
    ckpt = torch.load(checkpoint_path(ckdir, NAME), map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 3 and ckpt["history"]["epoch"] == [1, 2, 3]
    assert ckpt["config"]["lr"] == pytest.approx(3e-4)
    assert set(ckpt) >= {"model", "optimizer", "scaler", "stopper", "best_model"}
    assert not list(ckdir.glob("*.tmp")) and not list(ckdir.glob("*tmp"))


def test_resume_continues_and_matches_uninterrupted(data, reference, interrupted):
    ref_sd, ref_hist, _ = reference
    ckdir, ckpt1 = interrupted
    assert ckpt1["epoch"] == 1
    messages = []
    sd, hist = finetune_backbone(NAME, *data, _cfg(), device="cpu", checkpoint_dir=ckdir,
                                 progress=lambda f, m: messages.append(m))
    assert hist["resumed_from_epoch"] == 1
    assert hist["epoch"] == [1, 2, 3]
    assert any("resumed after epoch 1" in m for m in messages)
    np.testing.assert_allclose(hist["train_loss"], ref_hist["train_loss"], rtol=1e-6)
    np.testing.assert_allclose(hist["val_loss"], ref_hist["val_loss"], rtol=1e-6)
    for k in ref_sd:
        torch.testing.assert_close(sd[k], ref_sd[k], rtol=1e-6, atol=1e-7)
    # a finished run resumes to its result without training again
    sd2, hist2 = finetune_backbone(NAME, *data, _cfg(), device="cpu", checkpoint_dir=ckdir)
    assert hist2["resumed_from_epoch"] == 3 and hist2["epoch"] == [1, 2, 3]
    assert all(torch.equal(sd2[k], sd[k]) for k in sd)


def test_checkpoint_of_other_data_is_not_resumed(data, interrupted, tmp_path):
    ckdir, _ = interrupted
    tr, ytr, va, yva = data
    other = tmp_path / "ck"
    other.mkdir()
    checkpoint_path(other, NAME).write_bytes(checkpoint_path(ckdir, NAME).read_bytes())
    messages = []
    _, hist = finetune_backbone(NAME, tr, [1 - v for v in ytr], va, yva, _cfg(epochs=1), device="cpu",
                                checkpoint_dir=other, progress=lambda f, m: messages.append(m))
    assert hist["resumed_from_epoch"] == 0 and hist["epoch"] == [1]
    assert any("starting afresh" in m for m in messages)


def test_early_stopping_rule():
    stop = EarlyStopping(patience=2)
    assert stop.step(1.0) and not stop.should_stop
    assert not stop.step(1.0) and not stop.should_stop  # equal is no improvement
    assert stop.step(0.5) and stop.bad_epochs == 0      # improvement resets the count
    assert not stop.step(0.7)
    assert not stop.step(0.6)
    assert stop.should_stop and stop.best == 0.5 and stop.best_epoch == 3


def test_early_stopping_stops_and_keeps_best_weights(data, tmp_path):
    tr, ytr, va, yva = data
    flipped = [1 - v for v in yva]  # learning the training labels makes this validation loss worse
    sd, hist = finetune_backbone(NAME, tr, ytr, va, flipped, _cfg(epochs=4, patience=1), device="cpu",
                                 checkpoint_dir=tmp_path)
    n = len(hist["epoch"])
    assert hist["stopped_early"] and n < 4
    assert hist["best_epoch"] == n - 1  # stopped after one epoch without improvement
    assert hist["val_loss"][-1] >= hist["best_val_loss"]
    ckpt = load_checkpoint(checkpoint_path(tmp_path, NAME))
    last = {k[len("backbone."):]: v for k, v in ckpt["model"].items() if k.startswith("backbone.")}
    assert ckpt["epoch"] == n and ckpt["best_model"] is not None  # best weights kept apart from the last
    assert all(torch.equal(sd[k], ckpt["best_model"]["backbone." + k]) for k in sd)
    assert any(not torch.equal(sd[k], last[k]) for k in sd if sd[k].is_floating_point())


def test_finetuned_weights_reproduce_features_after_saving(data, reference, tmp_path):
    """Saved in the bundle's safetensors layout (``<backbone>/<param>``), loaded back, the weights give
    the same features through build_backbone and through FeatureExtractor(state_dicts=...)."""
    from trainer.vision.features import FeatureExtractor

    sd, _, _ = reference
    images = data[2]
    direct = _features(sd, images)
    assert not torch.allclose(direct, _features(build_backbone(NAME, seed=1).state_dict(), images))

    path = save_state_dicts(tmp_path / "ft.safetensors", {NAME: sd}, {"note": "test"})
    loaded, meta = load_state_dicts(path)
    assert meta == {"note": "test"}
    torch.testing.assert_close(_features(loaded[NAME], images), direct, rtol=0, atol=0)
    feats = FeatureExtractor(backbones=(NAME,), image_size=SIZE, num_workers=0, device="cpu",
                             state_dicts=loaded).extract(images)[NAME]
    np.testing.assert_allclose(feats, direct.numpy(), rtol=1e-4, atol=1e-5)


def test_ddp_world_size_one_matches_single_process(data, interrupted, tmp_path):
    dist = torch.distributed
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    _, ckpt1 = interrupted  # the single-process model after epoch 1
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        sd, hist = finetune_backbone(NAME, *data, _cfg(epochs=1), device="cpu")
    finally:
        dist.destroy_process_group()
    assert hist["world_size"] == 1 and hist["epoch"] == [1]
    assert hist["train_loss"] == pytest.approx(ckpt1["history"]["train_loss"], rel=1e-6)
    for k, v in sd.items():
        torch.testing.assert_close(v, ckpt1["model"]["backbone." + k], rtol=1e-5, atol=1e-6)


def test_sampler_shards_cover_every_sample_once_per_epoch():
    shards = [list(EpochShardSampler(10, True, seed=3, rank=r, world_size=3, pad=False)) for r in range(3)]
    idx = sorted(i for s in shards for i, _ in s)
    assert idx == list(range(10))
    padded = [len(EpochShardSampler(10, True, seed=3, rank=r, world_size=3)) for r in range(3)]
    assert padded == [4, 4, 4]
    a, b = EpochShardSampler(10, True, seed=3), EpochShardSampler(10, True, seed=3)
    b.set_epoch(1)
    assert [i for i, _ in a] != [i for i, _ in b]  # reshuffled per epoch
    assert all(e == 1 for _, e in b)


def test_config_from_train_config_and_bad_inputs(data):
    tc = TrainConfig(finetuning=FinetuneConfig(epochs=7, patience=2, lr=5e-4), image_size=64, seed=4)
    run = tc.finetune_summary()
    assert (run["epochs"], run["patience"], run["lr"], run["image_size"], run["seed"]) == (7, 2, 5e-4, 64, 4)
    assert run["weight_decay"] == pytest.approx(1e-3) and run["batch_size"] == 32
    assert TrainConfig.from_dict(tc.to_dict()) == tc
    # bundles written before the nesting store flat finetune_* keys
    old = {k: v for k, v in tc.to_dict().items() if k != "finetuning"}
    old.update(finetune_epochs=7, finetune_patience=2, finetune_lr=5e-4)
    assert TrainConfig.from_dict(old) == tc
    tr, _, va, yva = data
    with pytest.raises(DataError, match="only one class"):
        finetune_backbone(NAME, tr, [1] * len(tr), va, yva, _cfg(), device="cpu")


def test_cli_writes_weights(tmp_path, capsys):
    root = write_dataset(tmp_path / "data", layout="cnmc", n_per_class=8, size=SIZE, seed=0)
    out = tmp_path / "w.safetensors"
    code = main([str(root), "--backbones", "densenet121", "--image-size", str(SIZE), "--epochs", "1",
                 "--batch-size", "8", "--num-workers", "0", "--device", "cpu", "--split", "image",
                 "--output", str(out)])
    assert code == 0
    states, meta = load_state_dicts(out)
    assert set(states) == {"densenet121"}
    assert meta["finetune_config"]["epochs"] == 1
    assert len(meta["history"]["densenet121"]["epoch"]) == 1
    assert "written to" in capsys.readouterr().out
    # the file works as ``--weights`` (bundle layout ``<backbone>/<param>``): same weights as loaded
    from_file = build_backbone("densenet121", weights=str(out)).state_dict()
    assert all(torch.equal(from_file[k], states["densenet121"][k]) for k in from_file)


def test_ablation_compares_frozen_and_finetuned_features(data, reference):
    from trainer.evaluation.finetune_ablation import frozen_vs_finetuned

    sd, _, _ = reference
    tr, ytr, va, yva = data
    rng = np.random.default_rng(5)
    te, yte = _cells(8, rng)
    items, y = tr + va + te, np.array(ytr + yva + yte)
    idx = np.arange(len(items))
    config = TrainConfig(backbones=(NAME,), image_size=SIZE, seed=1, num_workers=0)
    res = frozen_vs_finetuned(items, y, idx[:24], idx[24:32], idx[32:], config,
                              state_dicts={NAME: sd}, classifiers=("logreg",), device="cpu")
    for kind in ("frozen", "finetuned"):
        m = res[kind]["logreg"]
        assert 0.0 <= m["auc"] <= 1.0 and m["threshold"] == 0.5
        assert m["accuracy"] * 8 == pytest.approx(round(m["accuracy"] * 8))  # a share of 8 test images
    assert res["state_dicts"][NAME] is sd and res["histories"] == {}
    assert res["frozen"] != res["finetuned"] or res["frozen"]["logreg"]["auc"] == 1.0


def test_weights_record_their_finetuning_images_and_tests_on_them_are_refused(tmp_path, capsys):
    """The weights file lists the content hashes of its fine-tuning images; evaluating or training
    with it refuses test images among them unless explicitly allowed, and then says so."""
    import dataclasses
    import json

    from trainer.cli.main import main as train_main
    from trainer.evaluation import run_evaluation
    from trainer.io.data import load_dataset
    from trainer.io.imageio import pixel_hash
    from trainer.training.pipeline import split_dataset, train

    root = write_dataset(tmp_path / "data", layout="cnmc", n_per_class=8, size=SIZE, seed=2,
                         n_subjects=4)
    out = tmp_path / "ft.safetensors"
    assert main([str(root), "--backbones", "resnet34", "--image-size", str(SIZE), "--epochs", "1",
                 "--batch-size", "8", "--num-workers", "0", "--device", "cpu", "--split", "subject",
                 "--output", str(out)]) == 0
    ds = load_dataset(root)
    tr, va, te = split_dataset(ds.samples, "subject", TrainConfig(split="subject"))
    _, meta = load_state_dicts(out)
    # recorded by decoded pixels (a BMP re-saved as PNG is still recognised) and by subject
    assert meta["finetune_images"]["hash"] == "pixels"
    assert meta["finetune_images"]["train"] == sorted(pixel_hash(ds.paths[i]) for i in tr)
    assert meta["finetune_images"]["validation"] == sorted(pixel_hash(ds.paths[i]) for i in va)
    assert meta["finetune_images"]["train_subjects"] == sorted(set(ds.groups[tr]))

    cfg = TrainConfig(data=str(root), backbones=("resnet34",), weights=str(out), image_size=SIZE,
                      batch_size=8, num_workers=0, device="cpu", classifiers=("knn",), seed=0,
                      output=str(tmp_path / "m.allmodel"))
    # evaluation: every image is a CV test image, and most were fine-tuned on
    with pytest.raises(DataError, match=rf"{len(tr) + len(va)} of the 16 evaluated.*"
                                        "--allow-finetune-overlap"):
        run_evaluation(cfg, tmp_path / "report", n_boot=20, n_folds=2, protocols=("subject",),
                       ablation=False)
    assert train_main(["evaluate", str(root), "--weights", str(out), "--backbones", "resnet34",
                       "--image-size", str(SIZE), "--no-cache", "--device", "cpu", "-q",
                       "--out", str(tmp_path / "r")]) == 2
    assert "fine-tune the backbone weights ft.safetensors" in capsys.readouterr().err
    # the image-level split of `train` puts fine-tuning images into its test split
    img = dataclasses.replace(cfg, split="image")
    with pytest.raises(DataError, match="held-out test images were used to fine-tune"):
        train(img)
    # the same split as the fine-tuning run: its test images were never fine-tuned on
    ok = train(dataclasses.replace(cfg, split="subject"))
    test_part = ok.card["finetune_provenance"]["test"]
    assert test_part["n_train"] + test_part["n_validation"] == 0
    # the networks were trained on the training split: calibration and threshold from the validation split
    assert ok.card["finetune_provenance"]["training"]["n_train"] == len(tr)
    assert all(sec["calibration_data"]["source"] == "validation split" for sec in ok.card["models"].values())
    # allowed explicitly: evaluated, and the report states it
    rep = run_evaluation(dataclasses.replace(cfg, allow_finetune_overlap=True), tmp_path / "report",
                         n_boot=20, n_folds=2, protocols=("subject",), ablation=False)
    data = json.loads(rep.json_path.read_text())
    ov = data["meta"]["finetune_overlap"]
    assert ov["allowed"] and (ov["n_train"], ov["n_validation"]) == (len(tr), len(va))
    md = rep.markdown_path.read_text()
    assert f"{len(tr) + len(va)} of the 16 evaluated images were used to fine-tune" in md
    assert "--allow-finetune-overlap" in md and "Design caveat of fine-tuning" in md
