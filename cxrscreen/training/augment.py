"""Augmentation that breaks a source's look: what a film's hospital, scanner and export leave on it.

A model trained on films from a few hospitals can learn the hospital instead of the disease: crop
tightness, aspect, contrast curve, sharpness, noise, resolution, borders and burned-in text all tell
sources apart. :func:`source_breaking_transforms` randomises each of them, on every source alike,
so that none of them predicts the label. Input and output: a ``(1, S, S)`` float tensor in [0, 1]
(the chain's :func:`cxrscreen.preprocess.base_transforms` output, before normalisation).
"""

from __future__ import annotations

import string

import numpy as np
import torch
from monai.transforms import (
    Compose,
    RandAdjustContrast,
    RandAffine,
    RandGaussianNoise,
    RandGaussianSharpen,
    RandGaussianSmooth,
    RandHistogramShift,
    Randomizable,
    RandSimulateLowResolution,
    Transform,
)
from PIL import Image, ImageDraw, ImageFont

#: Words seen burned into chest films: side markers, projections, technologists' notes, dates.
TEXT_WORDS = ("L", "R", "PA", "AP", "AP PORTABLE", "SUPINE", "ERECT", "UPRIGHT", "SEMI-ERECT", "INSP",
              "PORTABLE", "CHEST", "LAT", "DX", "CR", "1", "2", "15:42", "2019-03-07", "08/11/2020", "kVp 110")


class RandWindow(Randomizable, Transform):
    """Re-window the film between two random percentiles (a workstation's or an export's window)."""

    def __init__(self, prob: float = 0.5, lower: tuple[float, float] = (0.0, 12.0),
                 upper: tuple[float, float] = (88.0, 100.0)) -> None:
        self.prob, self.lower, self.upper = prob, lower, upper
        self._do, self._lo, self._hi = False, 0.0, 100.0

    def randomize(self, data: object = None) -> None:
        self._do = self.R.random() < self.prob
        self._lo, self._hi = self.R.uniform(*self.lower), self.R.uniform(*self.upper)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        self.randomize()
        img = torch.as_tensor(img)
        if not self._do:
            return img
        lo, hi = np.percentile(img.numpy(), (self._lo, self._hi))
        return ((img - float(lo)) / max(float(hi - lo), 1e-3)).clamp_(0.0, 1.0)


class RandBorders(Randomizable, Transform):
    """Flat bands along random edges: collimator shadows, detector edges, letterboxing of an export."""

    def __init__(self, prob: float = 0.3, max_fraction: float = 0.12) -> None:
        self.prob, self.max_fraction = prob, max_fraction
        self._do, self._widths, self._value = False, (0, 0, 0, 0), 0.0

    def randomize(self, data: object = None) -> None:
        self._do = self.R.random() < self.prob
        on = self.R.random(4) < 0.5
        self._widths = tuple(float(w) if o else 0.0 for w, o in zip(self.R.uniform(0.02, self.max_fraction, 4), on,
                                                                    strict=True))
        self._value = float(self.R.choice([0.0, 1.0, self.R.uniform(0.0, 1.0)]))

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        self.randomize()
        img = torch.as_tensor(img)
        if not self._do:
            return img
        img = img.clone()
        h, w = img.shape[-2:]
        top, bottom, left, right = (int(f * n) for f, n in zip(self._widths, (h, h, w, w), strict=True))
        if top:
            img[..., :top, :] = self._value
        if bottom:
            img[..., h - bottom:, :] = self._value
        if left:
            img[..., :, :left] = self._value
        if right:
            img[..., :, w - right:] = self._value
        return img


class RandBurnedText(Randomizable, Transform):
    """One to three burned-in words (markers, dates, notes) at random places, sizes and grey levels."""

    def __init__(self, prob: float = 0.4) -> None:
        self.prob = prob
        self._do = False
        self._items: list[tuple[str, float, float, int, float]] = []

    def randomize(self, data: object = None) -> None:
        self._do = self.R.random() < self.prob
        self._items = []
        for _ in range(int(self.R.randint(1, 4))):
            word = str(self.R.choice(TEXT_WORDS)) if self.R.random() < 0.8 else "".join(
                self.R.choice(list(string.ascii_uppercase + string.digits), int(self.R.randint(2, 9))))
            self._items.append((word, float(self.R.uniform(0, 0.9)), float(self.R.uniform(0, 0.95)),
                                int(self.R.randint(7, 22)), float(self.R.uniform(0.6, 1.0))))

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        self.randomize()
        img = torch.as_tensor(img)
        if not self._do:
            return img
        h, w = img.shape[-2:]
        mask = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(mask)
        values = torch.zeros((h, w))
        for word, fx, fy, size, grey in self._items:
            layer = Image.new("L", (w, h), 0)
            ImageDraw.Draw(layer).text((fx * w, fy * h), word, fill=255, font=ImageFont.load_default(size=size))
            draw.bitmap((0, 0), layer, fill=255)
            values = torch.where(torch.from_numpy(np.asarray(layer) > 0), grey, values)
        on = torch.from_numpy(np.asarray(mask) > 0)
        return torch.where(on, values.to(img.dtype), img)


def source_breaking_transforms() -> list:
    """The training augmentation: pose and framing, contrast curve, resolution, sharpness, noise,
    borders and burned-in text, each drawn independently for every sample."""
    return [
        RandAffine(prob=0.9, rotate_range=0.15, shear_range=0.05, translate_range=(18, 18),
                   scale_range=((-0.3, 0.3), (-0.3, 0.3)), padding_mode="zeros"),
        RandBorders(prob=0.3),
        RandWindow(prob=0.5),
        RandAdjustContrast(prob=0.6, gamma=(0.5, 2.0)),
        RandHistogramShift(prob=0.25, num_control_points=(5, 10)),
        RandSimulateLowResolution(prob=0.3, downsample_mode="area", upsample_mode="bilinear",
                                  zoom_range=(0.3, 0.8)),
        RandGaussianSmooth(prob=0.25, sigma_x=(0.3, 1.5), sigma_y=(0.3, 1.5)),
        RandGaussianSharpen(prob=0.2),
        RandGaussianNoise(prob=0.3, std=0.05, sample_std=True),
        RandBurnedText(prob=0.4),
    ]


class Clip01(Transform):
    """Back into [0, 1] after the augmentation (sharpening and noise overshoot)."""

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(img).clamp(0.0, 1.0)


def source_breaking_chain(seed: int | None = None) -> Compose:
    """:func:`source_breaking_transforms` and a clip to [0, 1], seeded when ``seed`` is given."""
    chain = Compose([*source_breaking_transforms(), Clip01()])
    if seed is not None:
        chain.set_random_state(seed=seed)
    return chain
