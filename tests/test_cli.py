"""CLI behaviour with Typer's CliRunner: exit codes and one-line messages."""

import json
from pathlib import Path

from typer.testing import CliRunner

from cxrscreen import __version__
from cxrscreen.cli.app import app
from tests.factory import make_dicom

runner = CliRunner()


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


def test_bad_options_are_exit_2(tmp_path: Path, random_model_path: Path):
    for extra in (["--threshold", "2"], ["--device", "tpu"], ["--reports", "some"], ["--batch-size", "0"]):
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


def test_errors_exit_1_without_traceback(tmp_path: Path, random_model_path: Path):
    make_dicom(tmp_path / "in" / "a.dcm")
    (tmp_path / "in" / "broken.dcm").write_bytes(b"\x00" * 300)
    res = runner.invoke(app, scan_args(tmp_path / "in", tmp_path / "o", random_model_path))
    assert res.exit_code == 1
    assert "could not be read" in res.output and "Traceback" not in res.output


def test_quiet_prints_nothing(tmp_path: Path, random_model_path: Path):
    make_dicom(tmp_path / "in" / "a.dcm")
    res = runner.invoke(app, scan_args(tmp_path / "in", tmp_path / "o", random_model_path, "--quiet"))
    assert res.exit_code == 0 and res.output == ""


def test_internal_error_is_exit_3_without_traceback(tmp_path: Path, random_model_path: Path, monkeypatch):
    import cxrscreen.pipeline

    def boom(*_a, **_k):
        raise KeyError("bug")

    monkeypatch.setattr(cxrscreen.pipeline, "scan", boom)
    (tmp_path / "in").mkdir()
    res = runner.invoke(app, scan_args(tmp_path / "in", tmp_path / "o", random_model_path))
    assert res.exit_code == 3 and "internal error (KeyError)" in res.output and "Traceback" not in res.output


def test_int8_without_a_calibration_is_exit_2(tmp_path: Path, random_model_path: Path):
    make_dicom(tmp_path / "in" / "a.dcm")
    res = runner.invoke(app, scan_args(tmp_path / "in", tmp_path / "o", random_model_path, "--precision", "int8"))
    assert res.exit_code == 2, res.output
    assert "int8 calibration" in res.output and "Traceback" not in res.output
