"""The option Enums and ``parse``: one list of values for the CLI and the API."""

from enum import Enum

import pytest

from cxrscreen.options import (
    Device,
    ExportFormat,
    ExportLevel,
    Optimizer,
    Precision,
    ReportPolicy,
    TrainLayers,
    TrainPrecision,
    parse,
)

ALL = (Device, Precision, TrainPrecision, ReportPolicy, TrainLayers, Optimizer, ExportLevel, ExportFormat)


@pytest.mark.parametrize("enum", ALL)
def test_members_are_their_values(enum: type[Enum]) -> None:
    for m in enum:
        assert isinstance(m, str) and m == m.value == m.name  # the CLI shows m.value, the API compares strings


@pytest.mark.parametrize("enum", ALL)
def test_parse_accepts_values_and_members(enum: type[Enum]) -> None:
    for m in enum:
        assert parse(enum, m.value, "--x") is m
        assert parse(enum, m, "--x") is m


def test_parse_refuses_an_unknown_value_naming_option_and_choices() -> None:
    with pytest.raises(ValueError, match=r"^--precision: 'int4' is not one of auto, fp32, bf16, fp16, int8$"):
        parse(Precision, "int4", "--precision")
    with pytest.raises(ValueError, match=r"^--device: 'CPU' is not one of auto, cpu, cuda$"):  # case matters
        parse(Device, "CPU", "--device")
    with pytest.raises(ValueError, match=r"^--reports: None is not one of flagged, all, none$"):
        parse(ReportPolicy, None, "--reports")


def test_train_precision_is_precision_without_int8() -> None:
    assert [m.value for m in TrainPrecision] == [m.value for m in Precision if m is not Precision.int8]
    with pytest.raises(ValueError, match="--precision: 'int8' is not one of auto, fp32, bf16, fp16$"):
        parse(TrainPrecision, "int8", "--precision")
    # a member of one Enum is parsed into another by its value
    assert parse(Precision, TrainPrecision.bf16, "--precision") is Precision.bf16
    assert parse(TrainPrecision, Precision.fp16, "--precision") is TrainPrecision.fp16
    with pytest.raises(ValueError, match="^--precision: 'int8' is not one of"):
        parse(TrainPrecision, Precision.int8, "--precision")
