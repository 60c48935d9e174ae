"""The choices the API and the CLI accept, one Enum each: the one place their values are listed.

Each is a :class:`~enum.StrEnum`, so ``Precision.fp32 == "fp32"``, ``str(Precision.fp32) == "fp32"`` and the
API accepts either the member or its value; Typer shows the values as the option's choices.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import TypeVar


class OptionError(ValueError):
    """An option value the API cannot use; the message names the option (the CLI's exit code 2)."""


class Device(StrEnum):
    """Where the network runs: ``auto`` = CUDA when available, else the CPU."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Precision(StrEnum):
    """Arithmetic of the forward pass: ``auto`` = AMP on CUDA, bf16 on CPUs with native bf16, else int8
    when scoring a model with a usable ``.int8.json`` calibration (training: fp32), else fp32;
    ``int8`` = CPU only, needs that calibration."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"
    int8 = "int8"


# Training runs the float network: every precision but the quantized one (derived, not listed again).
TrainPrecision = StrEnum("TrainPrecision", {m.name: m.value for m in Precision if m is not Precision.int8},
                         module=__name__)
TrainPrecision.__doc__ = "Arithmetic of training and adaptation: a :class:`Precision` other than ``int8``."


class Engine(StrEnum):
    """What runs a scan's preparation and scoring: ``local`` (this process, threads or worker processes) or
    ``ray`` (Ray Data tasks and actor pools on a Ray cluster; the driver keeps the ledger)."""

    local = "local"
    ray = "ray"


class ReportPolicy(StrEnum):
    """Which studies get a PDF report: ``flagged`` = abnormal + review."""

    flagged = "flagged"
    all = "all"
    none = "none"


class TrainLayers(StrEnum):
    """What site adaptation may change: a new head on the frozen backbone, or gradient fine-tuning."""

    head = "head"
    layer4 = "layer4"
    all = "all"


class Optimizer(StrEnum):
    """Optimizer of ``cxrscreen train``."""

    adamax = "adamax"
    adamw = "adamw"


class ExportLevel(StrEnum):
    """Rows of ``cxrscreen export``: one per image or one per study."""

    images = "images"
    studies = "studies"


class ExportFormat(StrEnum):
    """File format of ``cxrscreen export``."""

    csv = "csv"
    json = "json"


class Modality(StrEnum):
    """Modalities ``pull`` fetches: the projection radiographs the model reads."""

    CR = "CR"
    DX = "DX"


E = TypeVar("E", bound=Enum)


def parse(enum: type[E], value: str | Enum, option: str) -> E:
    """``value`` as a member of ``enum``; :class:`OptionError` naming the option and its choices otherwise."""
    raw = value.value if isinstance(value, Enum) else value  # another Enum's member (TrainPrecision) by value
    try:
        return enum(raw)
    except ValueError:
        choices = ", ".join(m.value for m in enum)
        raise OptionError(f"{option}: {raw!r} is not one of {choices}") from None


@dataclass(frozen=True)
class ScanOptions:
    """How :func:`cxrscreen.scan` scores and what it writes; checked when made (:class:`OptionError`).

    ``threshold``: one threshold for every film instead of the model's operating points; ``workers``:
    decode worker processes (0: in the main process; None: chosen after timing the first batch);
    ``rescan``: score every file again; ``dicom_results``: also write each scored study's results as
    DICOM objects in its own study (``OUT/dicom/``) for ``cxrscreen send``; ``engine``: what prepares and
    scores the films (``ray_address``: the Ray cluster). Enum fields take their values as text too
    (``reports="all"``).
    """

    threshold: float | None = None
    device: Device = Device.auto
    precision: Precision = Precision.auto
    batch_size: int = 16
    workers: int | None = None
    reports: ReportPolicy = ReportPolicy.flagged
    rescan: bool = False
    dicom_results: bool = False
    engine: Engine = Engine.local
    ray_address: str | None = None  # --engine ray: the cluster to join (None: a local one)

    def __post_init__(self) -> None:
        for name, enum in (("device", Device), ("precision", Precision), ("reports", ReportPolicy),
                           ("engine", Engine)):
            object.__setattr__(self, name, parse(enum, getattr(self, name), f"--{name}"))
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise OptionError("--threshold must be strictly between 0 and 1")
        if self.batch_size < 1:
            raise OptionError("--batch-size must be at least 1")
        if self.workers is not None and self.workers < 0:
            raise OptionError("--workers must be 0 or more")
        if self.precision is Precision.int8 and self.device is Device.cuda:
            raise OptionError("--precision int8 runs on the CPU only")
        if self.ray_address is not None and self.engine is not Engine.ray:
            raise OptionError("--ray-address needs --engine ray")
