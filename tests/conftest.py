"""Shared fixtures: tiny models built here, synthetic data, the shared real data (skipped if absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cxrscreen.model.architecture import build_resnet50
from cxrscreen.model.files import LoadedModel, load_model, save_model
from cxrscreen.preprocess import PreprocessSpec
from tests.factory import SHARED_DATA, chest_phantom


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "dicom").is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it ships beside the repo as ../shared/data)")
    return SHARED_DATA


def _random_model(path: Path, input_size: int = 64, threshold: float = 0.5, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    net = build_resnet50()
    meta = {
        "name": "test-random",
        "version": "test",
        "preprocess": PreprocessSpec(input_size=input_size).to_dict(),
        "threshold": threshold,
        "labels": {"0": "normal", "1": "abnormal"},
        "training": {"note": "random weights built by the tests; not a screening model"},
    }
    save_model(net, meta, path, dtype=torch.float16)
    return path.with_suffix(".json")


@pytest.fixture(scope="session")
def random_model_path(tmp_path_factory) -> Path:
    """A random-weight ResNet50 at 64 px (fast); never presented as a screening result."""
    return _random_model(tmp_path_factory.mktemp("model") / "random.json")


@pytest.fixture(scope="session")
def random_model(random_model_path) -> LoadedModel:
    return load_model(random_model_path)


def write_blob_set(folder: Path, n: int, seed: int, size: int = 160) -> pd.DataFrame:
    """Synthetic set: a bright round blob in one lung means abnormal."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = int(i % 2)
        img = chest_phantom(size, size, seed=int(rng.integers(1 << 30)), blob=bool(label))
        name = f"img_{seed}_{i:04d}.png"
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / name)
        rows.append({"path": name, "label": label})
    return pd.DataFrame(rows)


@pytest.fixture(scope="session")
def blob_manifest(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("blobs")
    parts = []
    for split, n, seed in (("train", 240, 1), ("val", 60, 2), ("test", 80, 3)):
        df = write_blob_set(folder, n, seed)
        df["split"] = split
        df["dataset"] = "synthetic"
        parts.append(df)
    manifest = folder / "manifest.csv"
    pd.concat(parts).to_csv(manifest, index=False)
    return manifest


@pytest.fixture(scope="session")
def blob_model_dir(tmp_path_factory, blob_manifest) -> Path:
    """A ResNet50 trained here (from scratch, 96 px, a few epochs) to detect the bright blob.

    Precision is pinned to fp32 so every CPU trains the same way (precision "auto" would pick bf16 on
    AVX-512 BF16/AMX CPUs and fp32 on AVX2 ones); tests on it assert margins, never exact values.
    """
    from cxrscreen.training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("blob_model")
    cfg = TrainConfig(manifest=str(blob_manifest), out=str(out), init="none", epochs=4, batch_size=16,
                      lr=2e-3, input_size=96, augment=False, seed=0, name="blob-test", precision="fp32")
    train(cfg)
    return out


@pytest.fixture(scope="session")
def blob_cam_model_dir(tmp_path_factory, blob_manifest) -> Path:
    """Blob detector for the Grad-CAM orientation test: imgsim init, 128 px (4×4 layer4 map), 2 epochs.

    From scratch at 96 px (``blob_model_dir``) layer4 is 3×3 and its CAM leans to the centre column;
    a pretrained start at 128 px localises the blob and trains in a few minutes on 2 busy cores.
    fp32 on every CPU (see ``blob_model_dir``).
    """
    from cxrscreen.model.architecture import imgsim_weights_path
    from cxrscreen.training.train import TrainConfig, train

    try:
        imgsim_weights_path()
    except FileNotFoundError as exc:
        pytest.skip(f"Grad-CAM orientation test: {exc}")
    out = tmp_path_factory.mktemp("blob_cam_model")
    cfg = TrainConfig(manifest=str(blob_manifest), out=str(out), init="imgsim", epochs=2, batch_size=16,
                      lr=1e-3, input_size=128, augment=False, seed=0, limit=160, name="blob-cam-test",
                      precision="fp32")
    train(cfg)
    return out
