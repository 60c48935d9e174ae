"""Grad-CAM: hooks released, batched maps in [0, 1], agreement with MONAI, exact maps on a hand-built network.

The localisation maths is tested where the answer is known exactly (``PoolNet``). A briefly trained
model's map depends on last-bit numerics (bf16 vs fp32, AVX2 vs AVX-512), so the end-to-end check on
one (trained in fp32) only asserts averages over 24 held-out images, with margins.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.visualize import GradCAM as MonaiGradCAM
from monai.visualize.class_activation_maps import default_normalizer
from torch import nn

from cxrscreen.explain import GradCAM, compute_cams, content_box, normalise
from cxrscreen.model.files import load_model
from cxrscreen.preprocess import PreprocessSpec, build_transform, placement
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


@pytest.mark.slow
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


@pytest.mark.slow
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


# --------------------------------------------------------------------------- exact maths
class PoolNet(nn.Module):
    """A network whose Grad-CAM is known in closed form.

    ``layer4``: block means ``P`` of the input over ``cell``×``cell`` cells, then a fixed 1×1 conv
    giving two channels ``A = (P, 1 − P)``; head: global average pool and ``fc`` with weights
    ``w = (1, −0.5)``, bias 0.3. So ``dlogit/dA_c = w_c / (h·w)`` everywhere, and the Grad-CAM map is
    ``relu(Σ_c w_c A_c) / (h·w) = relu(1.5 P − 0.5) / (h·w)``: bright cells (P > 1/3) light up, in
    proportion to their brightness, and nothing else does.
    """

    def __init__(self, cell: int = 8) -> None:
        super().__init__()
        mix = nn.Conv2d(1, 2, kernel_size=1)
        self.fc = nn.Linear(2, 1)
        with torch.no_grad():
            mix.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            mix.bias.copy_(torch.tensor([0.0, 1.0]))
            self.fc.weight.copy_(torch.tensor([[1.0, -0.5]]))
            self.fc.bias.fill_(0.3)
        self.layer4 = nn.Sequential(nn.AvgPool2d(cell), mix)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layer4(x).mean(dim=(2, 3)))


def expected_raw_map(x: torch.Tensor, cell: int = 8) -> torch.Tensor:
    p = F.avg_pool2d(x, cell)[:, 0]
    return F.relu(1.5 * p - 0.5) / (p.shape[-2] * p.shape[-1])


def bright_cells(cells: list[tuple[int, int]], size: int = 64, cell: int = 8, seed: int = 0) -> torch.Tensor:
    """A dim noisy image (values < 1/3: no evidence) with the given cells set to 0.9 (evidence)."""
    rng = np.random.default_rng(seed)
    img = rng.uniform(0.0, 0.3, (size, size)).astype(np.float32)
    for r, c in cells:
        img[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] = 0.9
    return torch.from_numpy(img)[None, None]


def test_raw_map_and_logit_match_the_closed_form() -> None:
    net = PoolNet().eval()
    x = torch.rand(4, 1, 64, 64)
    with GradCAM(net) as cam:
        maps, logits = cam(x)
    torch.testing.assert_close(maps, expected_raw_map(x), rtol=1e-5, atol=1e-7)
    p = F.avg_pool2d(x, 8)
    torch.testing.assert_close(logits, (1.5 * p - 0.5).mean(dim=(1, 2, 3)) + 0.3, rtol=1e-5, atol=1e-6)


def test_normalised_map_peaks_exactly_on_the_evidence() -> None:
    net = PoolNet().eval()
    left, right = bright_cells([(3, 1)], seed=1), bright_cells([(5, 6)], seed=2)
    x = torch.cat([left, right])
    cams = compute_cams(net, x)
    up = F.interpolate(expected_raw_map(x).unsqueeze(1), size=(64, 64), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(cams, normalise(up[:, 0]).numpy(), atol=1e-6)
    for cam, (r, c) in zip(cams, [(3, 1), (5, 6)], strict=True):
        box = (slice(r * 8, (r + 1) * 8), slice(c * 8, (c + 1) * 8))
        assert cam[box].max() == pytest.approx(1.0)  # the peak lies in the bright cell
        near = np.zeros_like(cam, dtype=bool)  # bilinear upsampling spreads it half a cell at most
        near[max(r * 8 - 4, 0):(r + 1) * 8 + 4, max(c * 8 - 4, 0):(c + 1) * 8 + 4] = True
        assert cam[~near].max() == 0.0
    assert np.unravel_index(np.argmax(cams[0]), (64, 64))[1] < 32 <= np.unravel_index(np.argmax(cams[1]), (64, 64))[1]


def test_map_is_proportional_to_the_evidence() -> None:
    net = PoolNet().eval()
    x = bright_cells([(2, 2)])
    x[..., 48:56, 40:48] = 0.6  # cell (6, 5), dimmer: relu(1.5·0.6 − 0.5) / relu(1.5·0.9 − 0.5) = 0.4 / 0.85
    with GradCAM(net) as cam:
        maps, _ = cam(x)
    assert float(maps[0, 6, 5] / maps[0, 2, 2]) == pytest.approx(0.4 / 0.85, rel=1e-5)
    assert int((maps[0] > 0).sum()) == 2


def test_no_evidence_gives_an_empty_map_not_noise() -> None:
    net = PoolNet().eval()
    cams = compute_cams(net, bright_cells([]))
    assert cams.max() == 0.0  # normalise never divides noise up to 1


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")  # MONAI's hook; no input needs a gradient
def test_hand_built_net_matches_monai_gradcam() -> None:
    net = PoolNet().eval()
    x = torch.cat([bright_cells([(1, 1)], seed=3), bright_cells([(4, 6), (6, 2)], seed=4)])
    ours = compute_cams(net, x)
    reference_net = copy.deepcopy(net)  # MONAI leaves its hooks on the module it wraps
    monai_cam = MonaiGradCAM(nn_module=reference_net, target_layers="layer4", postprocessing=lambda m: m)
    ref = normalise(monai_cam(x).detach()[:, 0]).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    assert _no_hooks(net)


# --------------------------------------------------------------------------- end to end (trained model)
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
    return placement(mask.shape, spec).to_model(mask.astype(np.float32)) > 0.5


@pytest.mark.slow
def test_trained_model_cam_points_at_the_blob_on_average(blob_cam_model_dir) -> None:
    """24 held-out blob images (12 per side) through the real preprocessing, ResNet50 and Grad-CAM.

    Averages with margins, never one image: a briefly trained classifier's map is only loosely
    localised (on this machine, fp32 and bf16 training: the maximum on the blob's side in 24/24,
    0.58–0.61 feature cells from the blob centre on average, 64–66 % of the map's mass on the blob's half).
    """
    lm = load_model(blob_cam_model_dir / "model.json")
    net, spec = lm.net.eval(), lm.spec
    transform = build_transform(spec)
    sides = ["left"] * 12 + ["right"] * 12
    cases = [blob_image(160, side, 1000 + i) for i, side in enumerate(sides)]
    x = torch.stack([torch.as_tensor(transform(img)) for img, _ in cases])
    with torch.inference_mode():
        probs = torch.sigmoid(net(x).reshape(-1)).numpy()
    assert np.mean(probs > 0.5) >= 0.9, f"the blob model should flag the held-out blob images: {probs}"
    cams = compute_cams(net, x)
    s, cell = spec.input_size, 32.0  # layer4 stride in input pixels: one feature-map cell
    right_side, dists, half_mass = [], [], []
    for (_img, disc), cam, side in zip(cases, cams, sides, strict=True):
        blob = to_model_space(disc, spec)
        assert blob.shape == cam.shape == (s, s) and blob.any()
        row, col = np.unravel_index(int(np.argmax(cam)), cam.shape)
        right_side.append((col < s / 2) if side == "left" else (col >= s / 2))
        cy, cx = (float(v.mean()) for v in np.nonzero(blob))
        dists.append(float(np.hypot(row - cy, col - cx)) / cell)
        half = cam[:, : s // 2] if side == "left" else cam[:, s // 2:]
        half_mass.append(float(half.sum() / max(cam.sum(), 1e-6)))
    assert sum(right_side) >= 22, f"CAM maximum on the blob's side in only {sum(right_side)}/24 images"
    assert np.mean(dists) <= 1.0, f"CAM maximum {np.mean(dists):.2f} feature-map cells from the blob on average"
    assert np.mean(half_mass) >= 0.55, f"only {np.mean(half_mass):.0%} of the CAM mass on the blob's half"
