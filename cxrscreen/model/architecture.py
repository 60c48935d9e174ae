"""ResNet50 in the standard torchvision layout (MONAI implementation), 1 channel in, 1 logit out."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from monai.networks.nets import ResNet, resnet50

ARCHITECTURE = "resnet50"


def build_resnet50(in_channels: int = 1, num_classes: int = 1) -> ResNet:
    """Exact torchvision ResNet50 geometry: 7×7 stride-2 stem, bias-free downsample convs."""
    return resnet50(
        spatial_dims=2,
        n_input_channels=in_channels,
        num_classes=num_classes,
        conv1_t_size=7,
        conv1_t_stride=2,
        bias_downsample=False,
    )


def imgsim_weights_path() -> Path:
    """Locate the self-supervised ResNet50 shipped by the PyPI package ``imgsim`` (not imported)."""
    spec = importlib.util.find_spec("imgsim")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "--init imgsim needs the imgsim package: pip install --no-deps imgsim==0.1.2"
        )
    path = Path(spec.origin).parent / "model.pth"
    if not path.is_file():
        raise FileNotFoundError(f"imgsim is installed but {path} is missing")
    return path


def load_torchvision_backbone(model: ResNet, path: Path | str) -> None:
    """Load a torchvision-layout ResNet50 state dict into ``model`` (fc dropped, conv1 summed).

    Accepts plain state dicts and DataParallel/imgsim prefixes (``module.``, ``module.pre.``).
    Loaded with ``weights_only=True``: no arbitrary code runs.
    """
    raw = torch.load(Path(path), map_location="cpu", weights_only=True)
    if isinstance(raw, dict) and "state_dict" in raw and isinstance(raw["state_dict"], dict):
        raw = raw["state_dict"]
    state = {}
    for key, value in raw.items():
        for prefix in ("module.pre.", "module.", "model."):
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        if key.startswith("fc."):
            continue
        state[key] = value
    conv1 = state.get("conv1.weight")
    if conv1 is None:
        raise ValueError(f"{path}: not a torchvision-layout ResNet50 (no conv1.weight)")
    target_in = model.conv1.weight.shape[1]
    if conv1.shape[1] != target_in:
        if target_in != 1:
            raise ValueError(f"cannot adapt conv1 with {conv1.shape[1]} inputs to {target_in}")
        state["conv1.weight"] = conv1.sum(dim=1, keepdim=True)
    fc = model.fc
    full = {**state, "fc.weight": fc.weight.detach().clone(), "fc.bias": fc.bias.detach().clone()}
    model.load_state_dict(full, strict=True)
