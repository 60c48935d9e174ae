"""Model files: ``NAME.safetensors`` (weights) + ``NAME.json`` (metadata incl. sha256). No pickle.

The metadata alone (no torch) is :mod:`cxrscreen.model.meta`; its names are re-exported here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from cxrscreen.model.architecture import ARCHITECTURE, build_resnet50
from cxrscreen.model.meta import (
    DEFAULT_MODEL,
    ModelInfo,
    ModelIntegrityError,
    read_meta,
    resolve_model_path,
)
from cxrscreen.state.atomic import atomic_write_bytes, atomic_write_text, sha256_file

FORMAT = "cxrscreen-model/1"

__all__ = ["DEFAULT_MODEL", "FORMAT", "LoadedModel", "ModelInfo", "ModelIntegrityError", "load_model", "load_weights",
           "read_meta", "resolve_model_path", "save_model"]


@dataclass(repr=False)
class LoadedModel(ModelInfo):
    """A model ready for inference, with its metadata (:class:`~cxrscreen.model.meta.ModelInfo`)."""

    net: torch.nn.Module
    meta: dict[str, Any]
    path: Path


def save_model(
    net: torch.nn.Module,
    meta: dict[str, Any],
    json_path: Path | str,
    dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """Write weights + metadata atomically; returns the metadata as written (with sha256)."""
    json_path = Path(json_path)
    if json_path.suffix != ".json":
        json_path = json_path.with_suffix(".json")
    weights_path = json_path.with_suffix(".safetensors")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous().cpu()
        for k, v in net.state_dict().items()
    }
    tmp = weights_path.with_name(f".{weights_path.name}.tmp")
    save_file(state, str(tmp), metadata={"format": FORMAT})
    data = tmp.read_bytes()
    tmp.unlink()
    atomic_write_bytes(weights_path, data)
    out = dict(meta)
    out.setdefault("format", FORMAT)
    out.setdefault("architecture", {"name": ARCHITECTURE, "in_channels": 1, "num_classes": 1})
    out["weights_file"] = weights_path.name
    out["weights_dtype"] = str(dtype).removeprefix("torch.")
    out["sha256"] = hashlib.sha256(data).hexdigest()
    atomic_write_text(json_path, json.dumps(out, indent=2, sort_keys=False) + "\n")
    return out


_INIT_FUNCTIONS = ("uniform_", "normal_", "constant_", "ones_", "zeros_", "kaiming_uniform_", "kaiming_normal_",
                   "xavier_uniform_", "xavier_normal_", "trunc_normal_")


@contextlib.contextmanager
def _no_random_init() -> Iterator[None]:
    """Skip ``torch.nn.init`` while building a network whose every weight is loaded right after.

    Random initialisation of ResNet50 is start-up time spent on values the strict ``load_state_dict``
    overwrites (docs/benchmarks.md, start-up). (The same idea as transformers' ``no_init_weights``.)
    """
    saved = {name: getattr(torch.nn.init, name) for name in _INIT_FUNCTIONS}
    try:
        for name in _INIT_FUNCTIONS:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)


def load_model(path: Path | str | None = None, verify: bool = True) -> LoadedModel:
    """Load a model file; refuse weights whose sha256 differs from the metadata."""
    json_path, meta = read_meta(path)
    return load_weights(ModelInfo(meta, json_path), verify)


def load_weights(info: ModelInfo, verify: bool = True) -> LoadedModel:
    """The network of the model whose metadata is ``info`` (as read before: a run loads the weights it
    planned with); refuse weights whose sha256 differs from ``info``'s."""
    json_path, meta = info.path, info.meta
    weights_path = info.weights_path
    if not weights_path.is_file():
        raise FileNotFoundError(f"model weights not found: {weights_path}")
    if verify:
        actual = sha256_file(weights_path)
        if actual != meta["sha256"]:
            raise ModelIntegrityError(
                f"{weights_path.name}: sha256 {actual[:12]}… does not match the metadata "
                f"({str(meta['sha256'])[:12]}…); refusing to load a modified model"
            )
    arch = meta.get("architecture", {})
    if arch.get("name", ARCHITECTURE) != ARCHITECTURE:
        raise ValueError(f"unsupported architecture {arch.get('name')!r}")
    with _no_random_init():
        net = build_resnet50(int(arch.get("in_channels", 1)), int(arch.get("num_classes", 1)))
    # float16 weights are widened to the float32 parameters by load_state_dict's copy (exact): no
    # converted copy of the whole state dict first (start-up time, docs/benchmarks.md).
    net.load_state_dict(load_file(str(weights_path)), strict=True)
    net.eval()
    return LoadedModel(net=net, meta=meta, path=json_path)
