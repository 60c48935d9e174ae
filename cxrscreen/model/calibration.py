"""int8 calibration files (``<model>.int8.json``): read, written and checked without torch.

A scan asked for ``--precision int8`` refuses a model without a usable calibration before it starts,
and a scan with nothing to score imports no torch: so this part of :mod:`cxrscreen.model.quantize`
(which builds the int8 network) lives here. ``quantize`` re-exports every name.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cxrscreen.state.atomic import atomic_write_text

ENGINE = "x86"
SUFFIX = ".int8.json"
FORMAT = "cxrscreen-int8/2"  # /2: the classifier (nn.Linear) stays float


class Int8Unavailable(RuntimeError):
    """int8 cannot run here (no calibration for this model, or no x86 quantized engine)."""


@dataclass(frozen=True)
class Int8Calibration:
    """Quantization parameters of every activation of one model, and where they came from."""

    model_sha256: str
    engine: str
    source: str  # what it was calibrated on, e.g. "manifest.csv:val (1397 images)"
    torch_version: str
    qparams: dict[str, tuple[float, int, int, int]]  # observer name → (scale, zero_point, quant_min, quant_max)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self), "qparams": {k: list(v) for k, v in self.qparams.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Int8Calibration:
        if data.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        q = {str(k): (float(v[0]), int(v[1]), int(v[2]), int(v[3])) for k, v in data["qparams"].items()}
        return cls(str(data["model_sha256"]), str(data["engine"]), str(data["source"]), str(data["torch_version"]), q)


def calibration_path(model_json: Path) -> Path:
    """Where the int8 calibration of the model described by ``model_json`` lives."""
    return model_json.with_name(model_json.stem + SUFFIX)


def save_calibration(calib: Int8Calibration, path: Path) -> None:
    atomic_write_text(path, json.dumps(calib.to_dict(), indent=1) + "\n")


def load_calibration(model_json: Path, model_sha256: str) -> Int8Calibration:
    """The calibration beside ``model_json``; :class:`Int8Unavailable` with the reason when there is none."""
    path = calibration_path(model_json)
    if not path.is_file():
        raise Int8Unavailable(f"--precision int8: the model has no int8 calibration ({path.name}); "
                              "make one with tools/int8_calibration.py")
    try:
        calib = Int8Calibration.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise Int8Unavailable(f"--precision int8: {path.name} is not a valid int8 calibration ({exc}); recalibrate "
                              "it (tools/int8_calibration.py)") from exc
    if calib.model_sha256 != model_sha256:
        raise Int8Unavailable(f"--precision int8: {path.name} was calibrated for other weights "
                              f"(sha256 {calib.model_sha256[:12]}, model {model_sha256[:12]}); recalibrate it "
                              "(tools/int8_calibration.py)")
    return calib
