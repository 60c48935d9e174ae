"""Grad-CAM for the abnormal logit, with hooks owned by a context manager.

Why not ``monai.visualize.GradCAM``: its ``ModelWithHooks`` registers hooks on the network when
constructed and never removes them, and its ``default_normalizer`` maps (min, max) to (1, 0), so
the *strongest* evidence would be drawn as the weakest. Here the map is normalised by its own
maximum: 1 = strongest evidence for "abnormal", 0 = none.

Only one forward hook is registered (in ``__enter__``, removed in ``__exit__``). The backbone runs
without autograd; the hook swaps the target block's output for a leaf tensor and turns autograd on
for the rest of that forward pass (the enclosing ``no_grad`` restores the mode on exit), so only the
head (global pool + fc) is recorded and differentiated, and no parameter ``.grad`` is touched. The
map is computed in float32 without autocast, for a whole batch at a time: in eval mode the images
of a batch are independent, so ``d sum(logits) / dA`` gives each image its own gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

TARGET_LAYER = "layer4"


class GradCAM:
    """``with GradCAM(net) as cam: maps, logits = cam(x)``; raw ReLU maps ``(B, h, w)`` at the block resolution."""

    def __init__(self, net: nn.Module, target_layer: str = TARGET_LAYER, class_index: int = 0) -> None:
        self.net = net
        self.layer = net.get_submodule(target_layer)
        self.class_index = class_index
        self._handle: torch.utils.hooks.RemovableHandle | None = None
        self._activation: torch.Tensor | None = None
        self._armed = False  # the hook acts only inside __call__, never on someone else's forward

    def _hook(self, _module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if not self._armed:
            return None
        leaf = output.detach().float().requires_grad_(True)
        self._activation = leaf
        torch.set_grad_enabled(True)  # record the head only; the caller's no_grad() restores the mode
        return leaf

    def __enter__(self) -> GradCAM:
        if self._handle is not None:
            raise RuntimeError("GradCAM context is already active")
        self._handle = self.layer.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
        self._handle = None
        self._activation = None

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(maps (B, h, w), logits (B,))`` for a ``(B, C, H, W)`` batch; fp32, no autocast."""
        if self._handle is None:
            raise RuntimeError("use GradCAM inside a 'with' block")
        if self.net.training:
            raise RuntimeError("GradCAM needs the network in eval mode (batch statistics would mix images)")
        device_type = x.device.type
        with torch.inference_mode(False), torch.autocast(device_type, enabled=False):
            x = x.detach().clone().float()
            self._armed, self._activation = True, None
            try:
                with torch.no_grad():
                    logits = self.net(x).float()
            finally:
                self._armed = False
            act = self._activation
            if act is None or not logits.requires_grad:
                raise RuntimeError("the target layer was not reached in the forward pass")
            logits = logits.reshape(logits.shape[0], -1)[:, self.class_index]
            (grad,) = torch.autograd.grad(logits.sum(), act)
            with torch.no_grad():
                weights = grad.mean(dim=(2, 3), keepdim=True)
                maps = F.relu((weights * act).sum(dim=1))
        self._activation = None
        return maps, logits.detach()


def normalise(maps: torch.Tensor, valid: torch.Tensor | None = None, eps: float = 1e-8) -> torch.Tensor:
    """Per image: zero outside ``valid``, divide by the maximum → [0, 1], high = evidence. Never flips."""
    if valid is not None:
        maps = maps * valid.to(maps.dtype)
    peak = maps.flatten(1).amax(dim=1).clamp_min(eps).view(-1, *([1] * (maps.dim() - 1)))
    return (maps / peak).clamp_(0.0, 1.0)


def compute_cams(
    net: nn.Module,
    images: torch.Tensor,
    valid: torch.Tensor | np.ndarray | None = None,
    batch_size: int = 8,
    target_layer: str = TARGET_LAYER,
) -> np.ndarray:
    """Grad-CAM maps ``(B, S, S)`` in [0, 1] for a ``(B, 1, S, S)`` batch of model inputs.

    Maps are upsampled (bilinear) to the input size; ``valid`` (``(B, S, S)`` bool, True where
    the image is, False in the aspect-preserving padding) zeroes the padding before normalising.
    The network must already sit on the device of ``images`` and be in eval mode.
    """
    if images.dim() != 4:
        raise ValueError(f"expected a (B, C, H, W) batch, got shape {tuple(images.shape)}")
    size = tuple(images.shape[-2:])
    out: list[torch.Tensor] = []
    valid_t = None if valid is None else torch.as_tensor(np.asarray(valid), dtype=torch.bool)
    with GradCAM(net, target_layer) as cam:
        for start in range(0, images.shape[0], batch_size):
            maps, _ = cam(images[start:start + batch_size])
            up = F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1).cpu()
            v = None if valid_t is None else valid_t[start:start + batch_size]
            out.append(normalise(up, v))
    if not out:
        return np.zeros((0, *size), dtype=np.float32)
    return torch.cat(out).numpy().astype(np.float32, copy=False)


def content_box(valid: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box ``(y0, y1, x0, x1)`` of the True region of a 2-D mask (whole array if empty)."""
    rows, cols = np.flatnonzero(valid.any(axis=1)), np.flatnonzero(valid.any(axis=0))
    if rows.size == 0 or cols.size == 0:
        return 0, valid.shape[0], 0, valid.shape[1]
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def resize_map(cam: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Bilinear resize of one 2-D map to ``shape`` (H, W), values kept in [0, 1]."""
    t = torch.as_tensor(np.ascontiguousarray(cam), dtype=torch.float32)[None, None]
    out = F.interpolate(t, size=(int(shape[0]), int(shape[1])), mode="bilinear", align_corners=False)
    return out[0, 0].clamp_(0.0, 1.0).numpy()
