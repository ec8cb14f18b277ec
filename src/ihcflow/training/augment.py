"""Batch augmentations for stained microscopy, applied on the device after transfer.

Convention: float tensors (N, 3, S, S), RGB, values in [0, 1]. Every random transform draws
its parameters from the ``torch.Generator`` it is given (on the CPU; parameters are then moved
to the batch's device), so a run is reproducible and a resumed run augments exactly like an
uninterrupted one when the generator is reseeded per epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

# Ruifrok & Johnston stain vectors (rows: haematoxylin, eosin, DAB), as in skimage.color.
_RGB_FROM_HED = torch.tensor(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64
)
_RGB_FROM_HED = _RGB_FROM_HED / _RGB_FROM_HED.norm(dim=1, keepdim=True)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)
_OD_FLOOR = 1.0 / 255.0  # smallest transmitted light, avoids log(0) on black pixels


def _check(x: torch.Tensor, channels: int | None = 3) -> None:
    if x.ndim != 4 or (channels is not None and x.shape[1] != channels):
        want = "C" if channels is None else channels
        raise ValueError(f"expected a batch (N, {want}, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"expected a float batch in [0, 1], got dtype {x.dtype}")


def _uniform(n: int, low: float, high: float, gen: torch.Generator, like: torch.Tensor):
    u = torch.rand(n, generator=gen, dtype=torch.float32)
    return (low + (high - low) * u).to(device=like.device, dtype=like.dtype)


class RandFlipRot90:
    """Horizontal/vertical flips and rotations by multiples of 90° (each image on its own).

    Tissue and cells have no canonical orientation, so these are label-preserving and exact
    (no interpolation). Rotation needs square images. Any number of channels: stack an image
    with its per-pixel targets to move them together.
    """

    def __init__(self, hflip: float = 0.5, vflip: float = 0.5, rot90: bool = True) -> None:
        for name, p in (("hflip", hflip), ("vflip", vflip)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} probability is {p}, expected a value in [0, 1]")
        self.hflip, self.vflip, self.rot90 = hflip, vflip, rot90

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        _check(x, channels=None)
        n = x.shape[0]
        for p, dim in ((self.hflip, -1), (self.vflip, -2)):
            if p > 0:
                mask = (torch.rand(n, generator=gen) < p).to(x.device)
                x = torch.where(mask[:, None, None, None], x.flip(dim), x)
        if self.rot90:
            if x.shape[-1] != x.shape[-2]:
                raise ValueError(f"rot90 needs square images, got {x.shape[-2]}x{x.shape[-1]}")
            k = torch.randint(0, 4, (n,), generator=gen).to(x.device)
            out = x.clone()
            for turns in (1, 2, 3):
                idx = k == turns
                out[idx] = torch.rot90(x[idx], turns, dims=(-2, -1))
            x = out
        return x


class RandColorJitter:
    """Small brightness, contrast and saturation changes: factors drawn from [1-a, 1+a]."""

    def __init__(
        self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0
    ) -> None:
        for name, a in (
            ("brightness", brightness),
            ("contrast", contrast),
            ("saturation", saturation),
        ):
            if not 0.0 <= a < 1.0:
                raise ValueError(f"{name} jitter is {a}, expected a value in [0, 1)")
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        _check(x)
        n = x.shape[0]
        if self.brightness > 0:
            b = _uniform(n, 1 - self.brightness, 1 + self.brightness, gen, x)
            x = x * b[:, None, None, None]
        if self.contrast > 0:
            c = _uniform(n, 1 - self.contrast, 1 + self.contrast, gen, x)
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * c[:, None, None, None] + mean
        if self.saturation > 0:
            s = _uniform(n, 1 - self.saturation, 1 + self.saturation, gen, x)
            gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
            x = (x - gray) * s[:, None, None, None] + gray
        return x.clamp(0.0, 1.0)


class RandStainJitter:
    """Stain augmentation in haematoxylin-eosin-DAB optical-density space (Tellez et al. 2018).

    Each image's stain concentrations are scaled by factors from [1-sigma, 1+sigma] and
    shifted by values from [-bias, bias], then recombined: it mimics slides stained a little
    stronger or weaker, which is the main colour variation between labs and scanners.
    """

    def __init__(self, sigma: float = 0.05, bias: float = 0.02) -> None:
        if not 0.0 <= sigma < 1.0 or not 0.0 <= bias < 1.0:
            raise ValueError(f"stain jitter sigma={sigma}, bias={bias}: expected values in [0, 1)")
        self.sigma, self.bias = sigma, bias

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        _check(x)
        n = x.shape[0]
        alpha = (1 - self.sigma) + 2 * self.sigma * torch.rand(n, 3, generator=gen)
        beta = self.bias * (2 * torch.rand(n, 3, generator=gen) - 1)
        to_hed = _HED_FROM_RGB.to(device=x.device, dtype=x.dtype)
        to_rgb = _RGB_FROM_HED.to(device=x.device, dtype=x.dtype)
        alpha = alpha.to(device=x.device, dtype=x.dtype)[:, None, None, :]
        beta = beta.to(device=x.device, dtype=x.dtype)[:, None, None, :]
        od = -torch.log(x.clamp_min(_OD_FLOOR)).permute(0, 2, 3, 1)  # (N, H, W, 3)
        hed = (od @ to_hed) * alpha + beta
        rgb = torch.exp(-(hed @ to_rgb)).permute(0, 3, 1, 2)
        return rgb.clamp(0.0, 1.0).contiguous()


@dataclass
class AugmentParams:
    """params ``train.augment``: probabilities of the flips, rot90, and jitter strengths
    (0: off)."""

    hflip: float
    vflip: float
    rot90: bool
    stain_sigma: float
    stain_bias: float
    brightness: float
    contrast: float
    saturation: float


class Augment:
    """The training augmentation built from params ``train.augment``."""

    def __init__(self, params: AugmentParams | None) -> None:
        self.steps: list[Any] = []
        if params is None:
            return
        flips = RandFlipRot90(params.hflip, params.vflip, params.rot90)
        if flips.hflip or flips.vflip or flips.rot90:
            self.steps.append(flips)
        stain = RandStainJitter(params.stain_sigma, params.stain_bias)
        if stain.sigma or stain.bias:
            self.steps.append(stain)
        color = RandColorJitter(params.brightness, params.contrast, params.saturation)
        if color.brightness or color.contrast or color.saturation:
            self.steps.append(color)

    def __bool__(self) -> bool:
        return bool(self.steps)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        for step in self.steps:
            x = step(x, gen)
        return x
