"""Manifests (``path,label,split`` + optional ``dataset,group``) → MONAI datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from monai.data import CacheDataset, Dataset
from monai.transforms import Compose

from cxrscreen.ingest.images import load_image
from cxrscreen.preprocess import PreprocessSpec, build_transform

REQUIRED = ("path", "label", "split")


class ManifestError(ValueError):
    """A manifest that cannot be used, with the reason."""


def read_manifest(path: Path | str, split: str | None = None) -> pd.DataFrame:
    """Read and validate a manifest; ``abspath`` is added (paths are relative to the manifest)."""
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype={"path": str, "split": str})
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read manifest ({exc})") from exc
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ManifestError(f"{path}: manifest lacks column(s) {', '.join(missing)}")
    bad = ~df["label"].isin([0, 1])
    if bad.any():
        raise ManifestError(f"{path}: label must be 0 or 1 (row {int(np.argmax(bad.to_numpy())) + 2})")
    df["label"] = df["label"].astype(int)
    if "dataset" not in df.columns:
        df["dataset"] = "all"
    df["dataset"] = df["dataset"].fillna("all").astype(str)
    df["abspath"] = [str((path.parent / p).resolve()) for p in df["path"]]
    if split is not None:
        df = df[df["split"] == split].reset_index(drop=True)
        if df.empty:
            raise ManifestError(f"{path}: no rows with split == {split!r}")
    return df


class LoadImaged:
    """Dictionary transform: ``{"path": ...}`` → ``{"image": float32 [0,1] HxW, ...}``."""

    def __init__(self, min_side: int) -> None:
        self.min_side = min_side

    def __call__(self, item: dict) -> dict:
        out = dict(item)
        out["image"] = load_image(item["path"], min_side=self.min_side)
        return out


class ApplyToImage:
    """Run an array transform chain on ``item['image']`` (keeps one chain for all commands)."""

    def __init__(self, chain: Compose) -> None:
        self.chain = chain

    def __call__(self, item: dict) -> dict:
        out = dict(item)
        out["image"] = self.chain(item["image"])
        return out


def make_dataset(
    df: pd.DataFrame,
    spec: PreprocessSpec,
    augment: bool = False,
    cache: bool = True,
    num_workers: int = 0,
) -> Dataset:
    """Dataset of ``{"image": (1,S,S) tensor, "label": float}``.

    With ``cache``, the deterministic part (load + base chain) is computed once; random
    augmentation and normalization run on every access.
    """
    from cxrscreen.preprocess import augment_transforms, base_transforms, normalize_transforms

    items = [
        {"path": p, "label": np.float32(y), "index": i}
        for i, (p, y) in enumerate(zip(df["abspath"], df["label"], strict=True))
    ]
    det = Compose([LoadImaged(min_side=spec.decode_target), ApplyToImage(Compose(base_transforms(spec)))])
    rest = (augment_transforms() if augment else []) + normalize_transforms(spec)
    rand = ApplyToImage(Compose(rest))
    if cache:
        cached = CacheDataset(items, transform=det, num_workers=num_workers or None, progress=False)
        return Dataset(cached, transform=rand)
    chain = Compose([LoadImaged(spec.decode_target), ApplyToImage(build_transform(spec, augment))])
    return Dataset(items, transform=chain)
