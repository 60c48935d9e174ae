"""CLI behaviour with Typer's CliRunner: exit codes and one-line messages."""

import json
import re
from enum import Enum
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cxrscreen import __version__
from cxrscreen.cli.app import app
from cxrscreen.options import (
    Device,
    ExportFormat,
    ExportLevel,
    Optimizer,
    Precision,
    ReportPolicy,
    TrainLayers,
    TrainPrecision,
)
from tests.factory import make_dicom

runner = CliRunner()
WIDE = {"COLUMNS": "250"}  # Typer's rich boxes wrap at the terminal width

# every command's choice options and the Enum that lists their values
CHOICES = [
    ("scan", "--device", Device), ("scan", "--precision", Precision), ("scan", "--reports", ReportPolicy),
    ("train", "--device", Device), ("train", "--precision", TrainPrecision), ("train", "--optimizer", Optimizer),
    ("evaluate", "--device", Device), ("evaluate", "--precision", Precision),
    ("calibrate", "--device", Device), ("calibrate", "--precision", Precision),
    ("adapt", "--device", Device), ("adapt", "--precision", TrainPrecision), ("adapt", "--train-layers", TrainLayers),
    ("export", "--level", ExportLevel), ("export", "--format", ExportFormat),
]


def scan_args(folder: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return ["scan", str(folder), "--out", str(out), "--model", str(model), "--workers", "0", "--reports", "none",
            *extra]


def test_version_and_help():
    assert runner.invoke(app, ["--version"]).output.strip() == f"cxrscreen {__version__}"
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in ("scan", "train", "evaluate", "calibrate"):
        assert cmd in res.output


def test_missing_folder_is_exit_2(tmp_path: Path, random_model_path: Path):
    res = runner.invoke(app, scan_args(tmp_path / "nope", tmp_path / "o", random_model_path))
    assert res.exit_code == 2
    assert "no such folder" in res.output and "Traceback" not in res.output


def flat(text: str) -> str:
    """Typer's message without colours, box drawing and line wrapping."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def command_args(cmd: str, tmp: Path) -> list[str]:
    """``cmd`` with valid required arguments (existing files where Typer checks them)."""
    csv = tmp / "m.csv"
    csv.write_text("path,label,split\n")
    out = str(tmp / "o")
    return {
        "scan": ["scan", str(tmp), "--out", out],
        "train": ["train", str(csv), "--out", out],
        "evaluate": ["evaluate", "default", str(csv), "--out", out],
        "calibrate": ["calibrate", "default", str(csv), "--out", str(tmp / "o.json")],
        "adapt": ["adapt", str(tmp), "--labels", str(csv), "--out", out],
        "export": ["export", str(tmp), "--to", str(tmp / "o.csv")],
    }[cmd]


@pytest.mark.parametrize(("cmd", "option", "enum"), CHOICES, ids=[f"{c}{o}" for c, o, _ in CHOICES])
def test_a_bad_choice_is_exit_2_naming_the_choices(tmp_path: Path, cmd: str, option: str, enum: type[Enum]):
    res = runner.invoke(app, [*command_args(cmd, tmp_path), option, "bogus"], env=WIDE)
    assert res.exit_code == 2, res.output
    choices = ", ".join(f"'{m.value}'" for m in enum)
    message = flat(res.output)
    assert f"Invalid value for '{option}'" in message and f"'bogus' is not one of {choices}" in message
    assert "Traceback" not in res.output
    assert [p.name for p in tmp_path.iterdir()] == ["m.csv"]  # refused before anything ran: nothing written


@pytest.mark.parametrize(("cmd", "option", "enum"), CHOICES, ids=[f"{c}{o}" for c, o, _ in CHOICES])
def test_help_lists_the_choices(cmd: str, option: str, enum: type[Enum]):
    res = runner.invoke(app, [cmd, "--help"], env=WIDE)
    assert res.exit_code == 0
    line = next(ln for ln in res.output.splitlines() if f" {option} " in ln)
    assert "|".join(m.value for m in enum) in line


@pytest.mark.parametrize("cmd", ["train", "adapt"])
def test_training_refuses_int8(tmp_path: Path, cmd: str):
    res = runner.invoke(app, [*command_args(cmd, tmp_path), "--precision", "int8"], env=WIDE)
    assert res.exit_code == 2 and "'int8' is not one of 'auto', 'fp32', 'bf16', 'fp16'." in flat(res.output)


def test_a_bad_scan_choice_is_refused_before_the_command_runs(tmp_path: Path):
    """The command itself would say "no such folder" (then "model metadata not found"): Typer answers first."""
    res = runner.invoke(app, ["scan", str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
                              "--model", str(tmp_path / "m.json"), "--precision", "int4"], env=WIDE)
    assert res.exit_code == 2 and "'int4' is not one of" in flat(res.output)
    assert "no such folder" not in res.output and "model metadata" not in res.output
    assert not (tmp_path / "o").exists()


def test_bad_options_are_exit_2(tmp_path: Path, random_model_path: Path):
    for extra in (["--threshold", "2"], ["--batch-size", "0"]):
        res = runner.invoke(app, scan_args(tmp_path, tmp_path / "o", random_model_path, *extra))
        assert res.exit_code == 2, (extra, res.output)


def test_missing_model_is_exit_2(tmp_path: Path):
    res = runner.invoke(app, ["scan", str(tmp_path), "--model", str(tmp_path / "none.json")])
    assert res.exit_code == 2 and "model metadata not found" in res.output


def test_clean_run_exit_0_and_json(tmp_path: Path, random_model_path: Path):
    make_dicom(tmp_path / "in" / "a.dcm")
    res = runner.invoke(app, scan_args(tmp_path / "in", tmp_path / "o", random_model_path, "--json"))
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["files_processed"] == 1 and summary["exit_code"] == 0
    assert set(summary["durations_s"]) >= {"discover", "decode", "preprocess", "infer"}


@pytest.mark.slow
def test_errors_exit_1_without_traceback(tmp_path: Path, random_model_path: Path):
    make_dicom(tmp_path / "in" / "a.dcm")
    (tmp_path / "in" / "broken.dcm").write_bytes(b"\x00" * 300)
    res = runner.invoke(app, scan_args(tmp_path / "in", tmp_path / "o", random_model_path))
    assert res.exit_code == 1
    assert "could not be read" in res.output and "Traceback" not in res.output


@pytest.mark.slow
def test_quiet_prints_nothing(tmp_path: Path, random_model_path: Path):
    make_dicom(tmp_path / "in" / "a.dcm")
    res = runner.invoke(app, scan_args(tmp_path / "in", tmp_path / "o", random_model_path, "--quiet"))
    assert res.exit_code == 0 and res.output == ""


def test_internal_error_is_exit_3_without_traceback(tmp_path: Path, random_model_path: Path, monkeypatch):
    import cxrscreen.run

    def boom(*_a, **_k):
        raise KeyError("bug")

    monkeypatch.setattr(cxrscreen.run, "scan", boom)
    (tmp_path / "in").mkdir()
    res = runner.invoke(app, scan_args(tmp_path / "in", tmp_path / "o", random_model_path))
    assert res.exit_code == 3 and "internal error (KeyError)" in res.output and "Traceback" not in res.output


def test_int8_without_a_calibration_is_exit_2(tmp_path: Path, random_model_path: Path):
    make_dicom(tmp_path / "in" / "a.dcm")
    res = runner.invoke(app, scan_args(tmp_path / "in", tmp_path / "o", random_model_path, "--precision", "int8"))
    assert res.exit_code == 2, res.output
    assert "int8 calibration" in res.output and "Traceback" not in res.output
