"""Pre-processing: gamma correction (paper eq. 1), the evaluation transform and the training augmentations.

Transforms take one RGB uint8 image ``(H, W, 3)`` numpy array and return a float32 tensor
``(3, size, size)`` normalised with the ImageNet mean and standard deviation. The evaluation
transform computes exactly what torchvision's v2 pipeline (ToImage, Resize with antialias,
ToDtype with scale, Normalize) computes, without importing torchvision, which would add more to
prediction's start-up than importing torch itself (benchmarks/README.md); the training augmentations
use torchvision.
"""
from __future__ import annotations

import platform
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from trainer.config import GAMMA_RANGE, STAIN_JITTER_MAX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# paper's augmentation settings
ROTATION_DEGREES = 20.0
FLIP_P = 0.5
CONTRAST = 0.2      # contrast factor drawn from [1 - 0.2, 1 + 0.2]
NOISE_SIGMA = 0.02  # Gaussian noise std on intensities in [0, 1]


def _gamma_lut(gamma: float) -> np.ndarray:
    x = np.arange(256, dtype=np.float64) / 255.0
    return np.round(255.0 * x ** gamma).astype(np.uint8)


def gamma_correct(img: np.ndarray, gamma: float) -> np.ndarray:
    """Eq. 1: ``I' = I ** gamma`` on intensities scaled to [0, 1], per channel, via a lookup table.

    ``img`` is uint8 of any shape; returns uint8 of the same shape. gamma must lie in [0.8, 1.2]
    (gamma < 1 brightens, > 1 darkens); gamma = 1 returns an unchanged copy.
    """
    gamma = float(gamma)
    if not (GAMMA_RANGE[0] - 1e-9 <= gamma <= GAMMA_RANGE[1] + 1e-9):
        raise ValueError(f"gamma must be between {GAMMA_RANGE[0]} and {GAMMA_RANGE[1]}, got {gamma:g}")
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise ValueError(f"gamma_correct expects a uint8 image, got {img.dtype}")
    if gamma == 1.0:
        return img.copy()
    return _gamma_lut(gamma)[img]


class GammaCorrect:
    """Picklable transform step applying :func:`gamma_correct` to a uint8 numpy image."""

    def __init__(self, gamma: float = 1.0) -> None:
        gamma_correct(np.zeros(1, np.uint8), gamma)  # validate now
        self.gamma = float(gamma)

    def __call__(self, img: np.ndarray) -> np.ndarray:
        img = np.ascontiguousarray(img)  # flipped views (e.g. BGR->RGB slices) have negative strides
        return img if self.gamma == 1.0 else gamma_correct(img, self.gamma)

    def __repr__(self) -> str:
        return f"GammaCorrect(gamma={self.gamma:g})"


def _native_uint8_resize() -> bool:
    """Whether torch resizes uint8 images natively here (torchvision's rule for bilinear on the CPU)."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") or platform.machine() in (
        "aarch64", "arm64")


def resize_uint8(img: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear antialiased resize of a uint8 ``(3, H, W)`` tensor to ``(3, size, size)``, uint8.

    The arithmetic of torchvision's ``v2.Resize((size, size), antialias=True)`` on the CPU: native
    uint8 interpolation where torch has it, else float32 interpolation rounded back to uint8.
    """
    if tuple(img.shape[-2:]) == (size, size):
        return img
    x = img.reshape(-1, *img.shape[-3:])
    if _native_uint8_resize():
        out = F.interpolate(x, size=[size, size], mode="bilinear", align_corners=False, antialias=True)
    else:
        out = F.interpolate(x.to(torch.float32), size=[size, size], mode="bilinear", align_corners=False,
                            antialias=True).round_().to(torch.uint8)
    return out.reshape(*img.shape[:-2], size, size)


class EvalTransform:
    """Deterministic: gamma, resize to ``size x size``, scale to [0, 1], ImageNet normalisation.

    Called on an RGB uint8 ``(H, W, 3)`` array; returns a float32 ``(3, size, size)`` tensor.
    """

    def __init__(self, size: int = 224, gamma: float = 1.0) -> None:
        self.size = int(size)
        self.gamma = GammaCorrect(gamma)
        self._mean = torch.as_tensor(IMAGENET_MEAN, dtype=torch.float32).view(-1, 1, 1)
        self._std = torch.as_tensor(IMAGENET_STD, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, img: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.atleast_3d(self.gamma(img))).permute((2, 0, 1)).contiguous()
        x = resize_uint8(x, self.size).to(torch.float32).mul_(1.0 / 255)
        return x.sub(self._mean).div_(self._std)

    def __repr__(self) -> str:
        return f"EvalTransform(size={self.size}, gamma={self.gamma.gamma:g})"


def eval_transform(size: int = 224, gamma: float = 1.0) -> EvalTransform:
    """Deterministic: gamma, resize to ``size x size``, scale to [0, 1], ImageNet normalisation."""
    return EvalTransform(size, gamma)


class StainJitter:
    """Colour augmentation in stain space (Tellez et al., 2018): each image's stains drawn a little stronger or weaker.

    The RGB uint8 image (H, W, 3) is split by colour deconvolution (:func:`skimage.color.rgb2hed`) into three
    optical-density channels; each is scaled by a factor drawn from [1 - sigma, 1 + sigma] and shifted by one
    drawn from [-sigma, sigma], and the image recomposed. skimage's basis is haematoxylin, eosin and DAB:
    for a Romanowsky-stained smear it is a basis of stain-like colour directions, not the stains' own
    vectors, which is what an augmentation needs. Black pixels (a crop's cut-out background) stay black.
    Draws come from torch's generator, so the fine-tuning dataset's per-sample seed fixes them.
    """

    def __init__(self, sigma: float) -> None:
        if not 0.0 <= float(sigma) <= STAIN_JITTER_MAX:
            raise ValueError(f"stain jitter must lie in [0, {STAIN_JITTER_MAX}], got {sigma!r}")
        self.sigma = float(sigma)

    def __call__(self, img: np.ndarray) -> np.ndarray:
        if self.sigma == 0.0:
            return img
        from skimage.color import hed2rgb, rgb2hed  # training only

        from trainer.vision.nuclei import brightest_channel  # with skimage: training only

        alpha = 1.0 + (torch.rand(3).numpy() * 2.0 - 1.0) * self.sigma
        beta = (torch.rand(3).numpy() * 2.0 - 1.0) * self.sigma
        hed = rgb2hed(img)
        out = np.clip(hed2rgb(hed * alpha + beta), 0.0, 1.0)
        out = np.rint(out * 255.0).astype(np.uint8)
        out[brightest_channel(img) == 0] = 0
        return out

    def __repr__(self) -> str:
        return f"StainJitter(sigma={self.sigma:g})"


def train_transform(size: int = 224, gamma: float = 1.0, stain_jitter: float = 0.0):
    """Eval pipeline plus the paper's augmentations (a torchvision ``v2.Compose``).

    Rotation +-20 deg, horizontal and vertical flips (p = 0.5 each), contrast jitter and additive Gaussian
    noise, before normalisation; with ``stain_jitter`` > 0 first a :class:`StainJitter` of that sigma.
    """
    from torchvision.transforms import v2  # training only: keeps torchvision out of prediction start-up

    return v2.Compose(
        [GammaCorrect(gamma)] + ([StainJitter(stain_jitter)] if stain_jitter else [])
        + [v2.ToImage(), v2.Resize((size, size), antialias=True)]
        + [
            v2.RandomRotation(ROTATION_DEGREES, interpolation=v2.InterpolationMode.BILINEAR, fill=0),
            v2.RandomHorizontalFlip(FLIP_P),
            v2.RandomVerticalFlip(FLIP_P),
            v2.ColorJitter(contrast=CONTRAST),
            v2.ToDtype(torch.float32, scale=True),
            v2.GaussianNoise(mean=0.0, sigma=NOISE_SIGMA, clip=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def to_tensor_batch(images: Sequence[np.ndarray], transform: Callable | None = None,
                    size: int = 224) -> torch.Tensor:
    """Stack RGB uint8 images into a float batch ``(N, 3, size, size)`` (eval transform by default)."""
    t = transform if transform is not None else eval_transform(size)
    if len(images) == 0:
        raise ValueError("no images to stack")
    return torch.stack([t(img) for img in images])
