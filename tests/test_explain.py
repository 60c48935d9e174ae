"""Grad-CAM: hooks released, batched maps in [0, 1], agreement with MONAI, and the blob orientation test."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from monai.transforms import CenterScaleCrop, Compose, EnsureChannelFirst, Resize
from monai.visualize import GradCAM as MonaiGradCAM
from monai.visualize.class_activation_maps import default_normalizer

from cxrscreen.explain import GradCAM, compute_cams, content_box, normalise
from cxrscreen.model.files import load_model
from cxrscreen.preprocess import PreprocessSpec, build_transform
from tests.factory import chest_phantom


def _no_hooks(net: torch.nn.Module) -> bool:
    return all(not m._forward_hooks and not m._backward_hooks and not m._forward_pre_hooks for m in net.modules())


def test_hooks_removed_after_context(random_model) -> None:
    net = random_model.net.eval()
    x = torch.randn(2, 1, 64, 64)
    with GradCAM(net) as cam:
        assert len(net.layer4._forward_hooks) == 1
        maps, logits = cam(x)
    assert _no_hooks(net)
    assert maps.shape == (2, 2, 2) and logits.shape == (2,)
    with pytest.raises(RuntimeError), GradCAM(net) as cam:
        raise RuntimeError("boom")
    assert _no_hooks(net)
    with pytest.raises(RuntimeError, match="with"):
        GradCAM(net)(x)


def test_hook_is_inert_for_other_forwards(random_model) -> None:
    net = random_model.net.eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.inference_mode():
        ref = net(x)
    with GradCAM(net), torch.inference_mode():
        inside = net(x)  # someone else's forward while the context is open: untouched
    assert torch.equal(ref, inside)


def test_compute_cams_batched_range_and_side_effects(random_model) -> None:
    net = random_model.net.eval()
    x = torch.randn(5, 1, 64, 64)
    with torch.inference_mode():  # callers may hold inference mode; CAM still works
        cams = compute_cams(net, x, batch_size=2)
    assert cams.shape == (5, 64, 64) and cams.dtype == np.float32
    assert cams.min() >= 0.0 and cams.max() <= 1.0
    peaks = cams.reshape(5, -1).max(axis=1)
    assert np.all(np.isclose(peaks, 1.0) | (peaks == 0.0))
    one_by_one = np.concatenate([compute_cams(net, x[i:i + 1]) for i in range(5)])
    np.testing.assert_allclose(cams, one_by_one, atol=1e-4)  # batching does not mix images
    assert all(p.grad is None for p in net.parameters())
    assert torch.is_grad_enabled()
    assert not net.training and _no_hooks(net)


def test_valid_mask_zeroes_padding(random_model) -> None:
    net = random_model.net.eval()
    valid = np.zeros((1, 64, 64), dtype=bool)
    valid[:, 10:54, :] = True
    cams = compute_cams(net, torch.randn(1, 1, 64, 64), valid)
    assert cams[0, :10].max() == 0.0 and cams[0, 54:].max() == 0.0
    assert content_box(valid[0]) == (10, 54, 0, 64)


def test_matches_monai_gradcam_without_its_flipping_normalizer(random_model) -> None:
    """Same maps as MONAI's GradCAM (identity post-processing); MONAI's default normaliser would flip them."""
    net = random_model.net.eval()
    x = torch.randn(3, 1, 64, 64)
    ours = compute_cams(net, x)
    reference_net = copy.deepcopy(net)  # MONAI leaves its hooks on the module it wraps
    monai_cam = MonaiGradCAM(nn_module=reference_net, target_layers="layer4", postprocessing=lambda m: m)
    ref = normalise(monai_cam(x).detach()[:, 0]).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    flipped = default_normalizer(np.array([[[0.0, 0.25, 1.0]]]))
    np.testing.assert_allclose(flipped, [[[1.0, 0.75, 0.0]]])  # why we do not use it
    assert _no_hooks(net)


# --------------------------------------------------------------------------- orientation
def blob_image(size: int, side: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A held-out phantom with a bright blob in the ``side`` lung, and the blob's mask."""
    rng = np.random.default_rng(seed)
    img = chest_phantom(size, size, seed=seed, blob=False)
    yy, xx = np.mgrid[0:size, 0:size]
    y, x = (yy - size / 2) / (size / 2), (xx - size / 2) / (size / 2)
    cx, cy = (-0.42 if side == "left" else 0.42), rng.uniform(-0.3, 0.3)
    disc = ((x - cx) / 0.12) ** 2 + ((y - cy) / 0.12) ** 2 < 1
    img[disc] = np.clip(0.9 + rng.normal(0, 0.02, int(disc.sum())), 0, 1)
    return img, disc


def to_model_space(mask: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    geo = Compose([EnsureChannelFirst(channel_dim="no_channel"), CenterScaleCrop(roi_scale=1 - 2 * spec.border_crop),
                   Resize(spatial_size=spec.input_size, size_mode="longest", mode="nearest")])
    return np.asarray(geo(mask.astype(np.float32)))[0] > 0.5


def check_blob_orientation(model_json) -> list[tuple[float, float, float]]:
    """Held-out blob images (3 left, 3 right): CAM on the blob, not on its mirror image; maximum near the blob.

    Returns ``(blob mass / mirror mass, argmax column, distance of the argmax to the blob centre in cells)``.
    """
    lm = load_model(model_json)
    net, spec = lm.net.eval(), lm.spec
    transform = build_transform(spec)
    sides = ["left"] * 3 + ["right"] * 3
    cases = [blob_image(160, side, seed) for side, seed in zip(sides, (101, 102, 103) * 2, strict=True)]
    x = torch.stack([torch.as_tensor(transform(img)) for img, _ in cases])
    with torch.inference_mode():
        probs = torch.sigmoid(net(x).reshape(-1)).numpy()
    assert (probs > 0.5).all(), f"the blob model should flag every held-out blob image: {probs}"
    cams = compute_cams(net, x)
    s = spec.input_size
    cell = 32.0  # layer4 stride in input pixels: one feature-map cell
    out = []
    for (_img, disc), cam, side in zip(cases, cams, sides, strict=True):
        blob = to_model_space(disc, spec)
        assert blob.shape == cam.shape == (s, s) and blob.any()
        ratio = float(cam[blob].sum() / max(cam[blob[:, ::-1]].sum(), 1e-6))
        row, col = np.unravel_index(int(np.argmax(cam)), cam.shape)
        cy, cx = (float(v.mean()) for v in np.nonzero(blob))
        dist = float(np.hypot(row - cy, col - cx) / cell)
        out.append((ratio, float(col), dist))
        assert ratio > 1.2, f"CAM mass on the {side} blob is only {ratio:.2f}× that on its mirror image"
        assert (col < s / 2) if side == "left" else (col >= s / 2), f"CAM maximum at column {col}, blob {side}"
        assert dist <= 1.5, f"CAM maximum {dist:.2f} feature-map cells from the blob centre"
    return out


def test_cam_maximum_falls_on_the_blob(blob_cam_model_dir) -> None:
    check_blob_orientation(blob_cam_model_dir / "model.json")
