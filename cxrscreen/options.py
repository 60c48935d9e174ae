"""The choices the API and the CLI accept, one Enum each: the one place their values are listed.

Each is a :class:`~enum.StrEnum`, so ``Precision.fp32 == "fp32"``, ``str(Precision.fp32) == "fp32"`` and the
API accepts either the member or its value; Typer shows the values as the option's choices.
"""

from __future__ import annotations

from enum import Enum, StrEnum
from typing import TypeVar


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
    """``value`` as a member of ``enum``; ``ValueError`` naming the option and its choices otherwise."""
    raw = value.value if isinstance(value, Enum) else value  # another Enum's member (TrainPrecision) by value
    try:
        return enum(raw)
    except ValueError:
        choices = ", ".join(m.value for m in enum)
        raise ValueError(f"{option}: {raw!r} is not one of {choices}") from None
