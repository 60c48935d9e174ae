"""The one MONAI transform chain shared by ``scan``, ``train`` and ``evaluate``.

Input: a 2-D float32 array in [0, 1] (already windowed, display polarity: air dark, bone
bright), as produced by :mod:`cxrscreen.ingest.decode`. Output: a ``(1, S, S)`` float tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from functools import cached_property, lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import (
    CenterScaleCrop,
    Compose,
    EnsureChannelFirst,
    EnsureType,
    NormalizeIntensity,
    RandAdjustContrast,
    RandAffine,
    RandGaussianNoise,
    RandGaussianSmooth,
    Resize,
    ScaleIntensityRangePercentiles,
    SpatialPad,
)


@dataclass(frozen=True)
class PreprocessSpec:
    """Everything the chain needs; stored in each model's metadata."""

    input_size: int = 224
    border_crop: float = 0.04  # fraction trimmed from each edge (collimation, burned-in text)
    lower_percentile: float = 1.0
    upper_percentile: float = 99.0
    mean: float = 0.5
    std: float = 0.25

    @property
    def decode_target(self) -> int:
        """Long side (px) films are decoded to at least before this chain: twice the model input."""
        return 2 * self.input_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessSpec:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


WINDOW_EPS = 1e-6  # the least window width: a flat film maps to 0 (and whatever rises above it to 1)


def percentile_window(img: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """``img`` (float32) scaled so its ``lower`` and ``upper`` percentiles (numpy's linear interpolation)
    map to 0 and 1, clipped to [0, 1]: the intensity window of the model input and of the report's display."""
    lo, hi = np.percentile(img, (lower, upper))
    width = float(hi - lo)
    x = img.astype(np.float32, copy=False) - float(lo)
    return np.clip(x / np.float32(width if width > WINDOW_EPS else WINDOW_EPS), 0.0, 1.0)


class PercentileWindow(ScaleIntensityRangePercentiles):
    """MONAI's ``ScaleIntensityRangePercentiles`` as :func:`percentile_window` computes it on the CPU.

    MONAI computes each percentile of a CPU tensor with ``torch.quantile`` (a full sort each), where one
    ``np.percentile`` selects both (docs/benchmarks.md); a flat film maps to 0 rather than being shifted
    unclipped. GPU tensors and other settings (``relative``, other output ranges) go through MONAI unchanged.
    """

    def _normalize(self, img: Any) -> Any:
        if (self.relative or not isinstance(img, torch.Tensor) or img.device.type != "cpu"
                or (self.b_min, self.b_max, self.clip) != (0.0, 1.0, True)):
            return super()._normalize(img)
        return torch.from_numpy(percentile_window(img.numpy(), self.lower, self.upper))


def _crop(spec: PreprocessSpec) -> CenterScaleCrop:
    return CenterScaleCrop(roi_scale=1.0 - 2.0 * spec.border_crop)


def _resize(spec: PreprocessSpec, mode: str = "area") -> Resize:
    return Resize(spatial_size=spec.input_size, size_mode="longest", mode=mode)


def _pad(spec: PreprocessSpec) -> SpatialPad:
    return SpatialPad(spatial_size=(spec.input_size, spec.input_size), mode="constant", value=0.0)


def base_transforms(spec: PreprocessSpec) -> list:
    """Deterministic geometry + robust intensity scaling to [0, 1] at the model size.

    Percentiles are taken after the resize (at most S×S pixels, 5–30× fewer than the decoded
    film, so a few ms) and before the padding (which must not count as anatomy).
    """
    return [
        EnsureChannelFirst(channel_dim="no_channel"),
        _crop(spec),
        _resize(spec),
        PercentileWindow(
            lower=spec.lower_percentile, upper=spec.upper_percentile, b_min=0.0, b_max=1.0, clip=True
        ),
        _pad(spec),
        EnsureType(data_type="tensor", dtype=torch.float32, track_meta=False),
    ]


@dataclass(frozen=True)
class Placement:
    """Where a decoded film lands in the ``S×S`` model input: the one mapping between film and model space.

    ``crop``: ``(y0, y1, x0, x1)`` of the border crop in film pixels; ``box``: ``(y0, y1, x0, x1)`` of
    that crop, resized, in model space (the rest is padding). Made by :func:`placement` from the
    chain's own MONAI transforms, so it cannot drift from what the model is fed.
    """

    size: int
    crop: tuple[int, int, int, int]
    box: tuple[int, int, int, int]

    @cached_property
    def valid(self) -> np.ndarray:
        """``(S, S)`` bool: True where the film is, False in the padding."""
        mask = np.zeros((self.size, self.size), dtype=bool)
        y0, y1, x0, x1 = self.box
        mask[y0:y1, x0:x1] = True
        return mask

    def crop_film(self, film: np.ndarray) -> np.ndarray:
        """The part of the decoded film the model sees (the border crop), at film resolution."""
        y0, y1, x0, x1 = self.crop
        return film[y0:y1, x0:x1]

    def to_model(self, film_map: np.ndarray) -> np.ndarray:
        """A map on the decoded film (e.g. a mask of a finding), cropped, resized (bilinear) and padded
        into model space ``(S, S)`` as the chain does with the film."""
        y0, y1, x0, x1 = self.box
        t = torch.as_tensor(np.ascontiguousarray(self.crop_film(film_map)), dtype=torch.float32)[None, None]
        out = np.zeros((self.size, self.size), dtype=np.float32)
        out[y0:y1, x0:x1] = F.interpolate(t, size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)[0, 0]
        return out

    def to_film(self, model_map: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """A model-space ``(S, S)`` map, padding dropped, resized (bilinear) onto an image of the cropped
        film at any resolution ``shape`` (H, W); values clipped to [0, 1]."""
        y0, y1, x0, x1 = self.box
        t = torch.as_tensor(np.ascontiguousarray(model_map[y0:y1, x0:x1]), dtype=torch.float32)[None, None]
        out = F.interpolate(t, size=(int(shape[0]), int(shape[1])), mode="bilinear", align_corners=False)
        return out[0, 0].clamp_(0.0, 1.0).numpy()


def _extent(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


@lru_cache(maxsize=512)
def placement(shape: tuple[int, int], spec: PreprocessSpec) -> Placement:
    """The :class:`Placement` of a decoded film of ``shape`` (H, W), by running the chain's geometry.

    The crop is found by cropping a grid of pixel indices, the model-space box by pushing a
    ones image through crop → resize (nearest) → pad: the very transforms of :func:`base_transforms`.
    """
    h, w = int(shape[0]), int(shape[1])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    crop = _crop(spec)
    ys, xs = np.asarray(crop(yy[None]))[0], np.asarray(crop(xx[None]))[0]
    film_box = (int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1)
    ones = Compose([EnsureChannelFirst(channel_dim="no_channel"), crop, _resize(spec, "nearest"), _pad(spec)])
    box = _extent(np.asarray(ones(np.ones((h, w), dtype=np.float32)))[0] > 0.5)
    return Placement(spec.input_size, film_box, box)


def augment_transforms() -> list:
    """Random transforms for training: pose, scanner contrast and sharpness, noise."""
    return [
        RandAffine(
            prob=0.8,
            rotate_range=0.17,
            scale_range=(0.15, 0.15),
            translate_range=(12, 12),
            padding_mode="zeros",
        ),
        RandAdjustContrast(prob=0.5, gamma=(0.7, 1.5)),
        RandGaussianSmooth(prob=0.2, sigma_x=(0.3, 1.2), sigma_y=(0.3, 1.2)),
        RandGaussianNoise(prob=0.2, std=0.02),
    ]


def normalize_transforms(spec: PreprocessSpec) -> list:
    return [
        NormalizeIntensity(subtrahend=spec.mean, divisor=spec.std),
        EnsureType(data_type="tensor", dtype=torch.float32, track_meta=False),
    ]


def build_transform(spec: PreprocessSpec, augment: bool = False) -> Compose:
    """The chain: base (+ augmentation when training) + fixed normalization."""
    parts = base_transforms(spec)
    if augment:
        parts += augment_transforms()
    parts += normalize_transforms(spec)
    return Compose(parts)


def to_display(tensor: torch.Tensor | np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Undo the fixed normalization: model input → [0, 1] grey image for reports."""
    arr = np.asarray(tensor, dtype=np.float32).squeeze()
    return np.clip(arr * spec.std + spec.mean, 0.0, 1.0)
