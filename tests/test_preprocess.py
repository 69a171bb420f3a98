import pickle

import numpy as np
import pytest
import torch

from trainer.io.synthetic import make_cell_image
from trainer.vision.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    StainJitter,
    eval_transform,
    gamma_correct,
    to_tensor_batch,
    train_transform,
)


def test_gamma_matches_equation_one():
    img = np.arange(256, dtype=np.uint8).reshape(16, 16)
    for gamma in (0.8, 1.0, 1.2):
        out = gamma_correct(img, gamma)
        expected = np.round(255 * (img / 255.0) ** gamma)
        assert out.dtype == np.uint8 and out.shape == img.shape
        assert np.abs(out.astype(int) - expected).max() == 0
    # endpoints fixed; < 1 brightens mid-tones, > 1 darkens them
    assert gamma_correct(np.array([0, 255], np.uint8), 0.8).tolist() == [0, 255]
    assert gamma_correct(np.array([128], np.uint8), 0.8)[0] == 147
    assert gamma_correct(np.array([128], np.uint8), 1.2)[0] == 112


def test_gamma_keeps_colour_shape_and_rejects_bad_input():
    img, _ = make_cell_image(32, rng=0)
    assert gamma_correct(img, 1.1).shape == (32, 32, 3)
    for bad in (0.5, 1.3, 0.0):
        with pytest.raises(ValueError, match="gamma"):
            gamma_correct(img, bad)
    with pytest.raises(ValueError, match="uint8"):
        gamma_correct(img.astype(np.float32), 1.0)


def test_eval_transform_shape_and_normalisation():
    img = np.full((40, 30, 3), 255, np.uint8)
    img[:, :, 1] = 0
    x = eval_transform(24)(img)
    assert x.shape == (3, 24, 24) and x.dtype == torch.float32
    expected = [(1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], (0 - IMAGENET_MEAN[1]) / IMAGENET_STD[1],
                (1 - IMAGENET_MEAN[2]) / IMAGENET_STD[2]]
    assert torch.allclose(x.mean(dim=(1, 2)), torch.tensor(expected), atol=1e-5)
    # deterministic, and accepts negative-stride views (BGR -> RGB slicing)
    cell, _ = make_cell_image(32, rng=1)
    t = eval_transform(32)
    assert torch.equal(t(cell), t(cell.copy()))
    assert torch.allclose(t(cell[..., ::-1][..., ::-1]), t(cell))


def test_eval_transform_with_gamma_applies_eq1():
    img = np.full((8, 8, 3), 128, np.uint8)
    x = eval_transform(8, gamma=1.2)(img)
    v = (112 / 255 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    assert torch.allclose(x[0], torch.full((8, 8), v), atol=1e-5)
    with pytest.raises(ValueError):
        eval_transform(8, gamma=2.0)


def test_train_transform_augments_randomly_but_keeps_shape():
    img, _ = make_cell_image(32, malignant=True, rng=2)
    t = train_transform(32)
    torch.manual_seed(0)
    a, b = t(img), t(img)
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    assert not torch.allclose(a, b)
    # flips and noise only perturb: the mean image intensity stays close to the eval one
    e = eval_transform(32)(img)
    assert abs(a.mean().item() - e.mean().item()) < 0.5
    torch.manual_seed(5)
    c = t(img)
    torch.manual_seed(5)
    assert torch.equal(c, t(img))


def test_transforms_pickle_for_dataloader_workers():
    t = pickle.loads(pickle.dumps(train_transform(16, gamma=0.9)))
    assert t(np.zeros((20, 20, 3), np.uint8)).shape == (3, 16, 16)


def test_to_tensor_batch():
    imgs = [make_cell_image(32, rng=s)[0] for s in range(3)]
    batch = to_tensor_batch(imgs, size=16)
    assert batch.shape == (3, 3, 16, 16)
    with pytest.raises(ValueError):
        to_tensor_batch([])


def test_stain_jitter_redraws_the_stains_but_keeps_the_cell_and_its_black_background():
    img, _ = make_cell_image(64, malignant=True, rng=3)
    background = img.max(axis=2) == 0
    assert background.any() and not background.all()
    jitter = StainJitter(0.1)
    torch.manual_seed(1)
    a = jitter(img)
    assert a.shape == img.shape and a.dtype == np.uint8
    assert (a[background] == 0).all()                      # the cut-out stays on black
    cell = ~background
    shift = np.abs(a[cell].astype(int) - img[cell].astype(int)).mean()
    assert 0.5 < shift < 60                                 # colours move, the cell is still the cell
    torch.manual_seed(1)
    assert np.array_equal(jitter(img), a)                   # torch's generator fixes the draw
    assert not np.array_equal(jitter(img), a)
    assert StainJitter(0.0)(img) is img
    with pytest.raises(ValueError):
        StainJitter(0.9)


def test_fine_tuning_with_stain_jitter_augments_colour_only_when_asked():
    from trainer.config import ConfigError, FinetuneConfig, TrainConfig
    from trainer.training.finetune_data import FinetuneDataset

    img, _ = make_cell_image(32, malignant=True, rng=4)
    plain = FinetuneDataset([img], [1], 32, train=True, seed=0)
    jittered = FinetuneDataset([img], [1], 32, train=True, seed=0, stain_jitter=0.2)
    assert "StainJitter" in repr(jittered.transform) and "StainJitter" not in repr(plain.transform)
    assert not torch.equal(plain[(0, 0)][0], jittered[(0, 0)][0])   # same seed, same geometry: colour differs
    assert torch.equal(jittered[(0, 3)][0], jittered[(0, 3)][0])
    cfg = TrainConfig(finetuning=FinetuneConfig(stain_jitter=0.05))
    assert cfg.finetune_summary()["stain_jitter"] == 0.05
    with pytest.raises(ConfigError):
        TrainConfig(finetuning=FinetuneConfig(stain_jitter=0.9)).validate()
