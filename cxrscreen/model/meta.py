"""A model's metadata (``NAME.json``) without its weights: what a run needs before, or without, scoring.

Planning a scan (which files this model already scored), the worklists, the summary and the DICOM
results read only the metadata (name, weights sha256, operating points). This module imports no
torch, so a scan with nothing to score never does; :mod:`cxrscreen.model.files` loads the weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrscreen.populations import OperatingPoints

if TYPE_CHECKING:
    from cxrscreen.preprocess import PreprocessSpec

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "default.json"


class ModelIntegrityError(RuntimeError):
    """The weights do not match the sha256 recorded in the metadata."""


class ModelInfo:
    """A model's metadata ``meta`` (read from ``path``, its JSON file) and what follows from it.

    :class:`~cxrscreen.model.files.LoadedModel` is one with its network loaded.
    """

    meta: dict[str, Any]
    path: Path

    def __init__(self, meta: dict[str, Any], path: Path) -> None:
        self.meta, self.path = meta, path

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.tag}, {self.path})"

    @property
    def spec(self) -> PreprocessSpec:
        from cxrscreen.preprocess import PreprocessSpec  # torch and MONAI: only a run that prepares films needs it

        return PreprocessSpec.from_dict(self.meta["preprocess"])

    @property
    def threshold(self) -> float:
        """The default population's threshold (the only one of a single-threshold model)."""
        return float(self.meta["threshold"])

    @property
    def points(self) -> OperatingPoints:
        """The model's operating points (one point ``all`` for a single-threshold model)."""
        return OperatingPoints.from_meta(self.meta)

    @property
    def sha256(self) -> str:
        return str(self.meta["sha256"])

    @property
    def name(self) -> str:
        return str(self.meta.get("name", self.path.stem))

    @property
    def tag(self) -> str:
        """Short identifier for worklists: name@sha256-prefix."""
        return f"{self.name}@{self.sha256[:12]}"

    @property
    def weights_path(self) -> Path:
        return self.path.parent / self.meta["weights_file"]


def resolve_model_path(path: Path | str | None) -> Path:
    """Accept the JSON metadata, the .safetensors file, or None (embedded default)."""
    if path is None:
        return DEFAULT_MODEL
    p = Path(path)
    if p.suffix == ".safetensors":
        p = p.with_suffix(".json")
    if not p.is_file():
        raise FileNotFoundError(f"model metadata not found: {p}")
    return p


def read_meta(path: Path | str | None) -> tuple[Path, dict[str, Any]]:
    json_path = resolve_model_path(path)
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{json_path}: invalid model metadata ({exc})") from exc
    for key in ("sha256", "weights_file", "preprocess", "threshold"):
        if key not in meta:
            raise ValueError(f"{json_path}: model metadata lacks '{key}'")
    try:
        OperatingPoints.from_meta(meta)
    except ValueError as exc:
        raise ValueError(f"{json_path}: {exc}") from exc
    return json_path, meta


def read_model_info(path: Path | str | None = None) -> ModelInfo:
    """The metadata of a model file (as :func:`read_meta`), its weights file present; nothing is loaded
    or hashed (:func:`~cxrscreen.model.files.load_model` checks the weights' sha256 when it loads them)."""
    json_path, meta = read_meta(path)
    info = ModelInfo(meta, json_path)
    if not info.weights_path.is_file():
        raise FileNotFoundError(f"model weights not found: {info.weights_path}")
    return info
