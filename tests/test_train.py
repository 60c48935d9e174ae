"""Training on a synthetic set (bright blob = abnormal), evaluate and calibrate commands.

The model is trained (tests/conftest.py) and scored in fp32 on every CPU; assertions are margins
(AUROC > 0.9 on held-out images, sensitivity at a threshold set on the same scores), not exact values.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cxrscreen.cli.app import app
from cxrscreen.model.files import load_model
from cxrscreen.model.inference import choose_runtime
from cxrscreen.training.data import read_manifest
from cxrscreen.training.evaluate import score_frame
from cxrscreen.training.metrics import auroc
from cxrscreen.training.train import TrainConfig, train

runner = CliRunner()
FP32 = choose_runtime("cpu", "fp32")  # every CPU scores alike (precision "auto" is bf16 on some, fp32 on others)
PINNED = ["--device", "cpu", "--precision", "fp32"]


@pytest.mark.slow
def test_training_learns_the_blob(blob_model_dir: Path, blob_manifest: Path):
    meta = json.loads((blob_model_dir / "model.json").read_text())
    assert meta["training"]["best"]["auroc"] > 0.9
    history = json.loads((blob_model_dir / "history.json").read_text())
    assert len(history) == meta["training"]["config"]["epochs"]
    lm = load_model(blob_model_dir / "model.json")
    test = read_manifest(blob_manifest, "test")  # held out: never seen in training or selection
    scores = score_frame(lm, test, FP32)
    assert auroc(test["label"].to_numpy(), scores) > 0.9


@pytest.mark.slow
def test_resume_continues_from_checkpoint(blob_model_dir: Path, blob_manifest: Path, tmp_path: Path):
    res = runner.invoke(app, ["train", str(blob_manifest), "--out", str(blob_model_dir)])
    assert res.exit_code == 2 and "--resume" in res.output
    res = runner.invoke(app, ["train", str(blob_manifest), "--out", str(blob_model_dir), "--resume",
                              "--epochs", "4", "--init", "none", "-q"])
    assert res.exit_code == 0, res.output  # all epochs done: nothing to redo, model kept


@pytest.mark.slow
def test_evaluate_writes_reports(blob_model_dir: Path, blob_manifest: Path, tmp_path: Path):
    out = tmp_path / "ev"
    res = runner.invoke(app, ["evaluate", str(blob_model_dir / "model.json"), str(blob_manifest), "--split", "test",
                              "--out", str(out), "--bootstrap", "200", "-q", *PINNED])
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert metrics["synthetic"]["auroc"]["value"] > 0.9
    assert {"sensitivity", "specificity", "ppv", "npv", "accuracy", "confusion"} <= set(metrics["synthetic"])
    for name in ("report.md", "scores.csv", "roc.png", "scores.png"):
        assert (out / name).stat().st_size > 0


@pytest.mark.slow
def test_calibrate_sets_threshold_and_new_model(blob_model_dir: Path, blob_manifest: Path, tmp_path: Path):
    out = tmp_path / "cal" / "calibrated.json"
    res = runner.invoke(app, ["calibrate", str(blob_model_dir / "model.json"), str(blob_manifest), "--split", "val",
                              "--target-sensitivity", "0.95", "--out", str(out), *PINNED])
    assert res.exit_code == 0, res.output
    lm = load_model(out)
    cal = lm.meta["calibration"]
    assert cal["sensitivity"]["value"] >= 0.95 and lm.threshold == cal["threshold"]
    val = read_manifest(blob_manifest, "val")
    scores = score_frame(lm, val, FP32)
    sens = np.mean(scores[val["label"].to_numpy() == 1] >= lm.threshold)
    assert sens >= 0.95


@pytest.mark.slow
def test_calibrate_refuses_test_split(blob_model_dir: Path, blob_manifest: Path, tmp_path: Path):
    res = runner.invoke(app, ["calibrate", str(blob_model_dir / "model.json"), str(blob_manifest), "--split", "test",
                              "--out", str(tmp_path / "x.json")])
    assert res.exit_code == 2 and "test split" in res.output


def test_bad_manifest_is_a_usage_error(tmp_path: Path):
    bad = tmp_path / "m.csv"
    bad.write_text("file,label\nx.png,0\n")
    res = runner.invoke(app, ["train", str(bad), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "lacks column" in res.output


@pytest.mark.slow
def test_init_from_a_cxrscreen_model_fine_tunes_all_weights(blob_model_dir: Path):
    import torch

    from cxrscreen.training.train import build_model

    net = build_model(str(blob_model_dir / "model.json"))
    ref = load_model(blob_model_dir / "model.json").net
    assert net.training
    assert torch.equal(net.fc.weight, ref.fc.weight) and torch.equal(net.conv1.weight, ref.conv1.weight)


@pytest.mark.slow
def test_evaluate_record_keeps_weights_valid(blob_model_dir: Path, blob_manifest: Path, tmp_path: Path):
    import shutil

    for f in ("model.json", "model.safetensors"):
        shutil.copy(blob_model_dir / f, tmp_path / f)
    res = runner.invoke(app, ["evaluate", str(tmp_path / "model.json"), str(blob_manifest), "--split", "test",
                              "--out", str(tmp_path / "ev"), "--bootstrap", "100", "--record", "-q", *PINNED])
    assert res.exit_code == 0, res.output
    lm = load_model(tmp_path / "model.json")  # sha256 still verifies: only metadata changed
    groups = lm.meta["metrics"]["manifest.csv:test"]["groups"]
    assert groups["synthetic"]["auroc"]["value"] > 0.9


def test_train_refuses_bad_choices_before_writing(tmp_path: Path):
    for kw, message in (({"optimizer": "sgd"}, "--optimizer: 'sgd' is not one of adamax, adamw"),
                        ({"precision": "int8"}, "--precision: 'int8' is not one of auto, fp32, bf16, fp16")):
        with pytest.raises(ValueError, match=message):
            train(TrainConfig(manifest=str(tmp_path / "m.csv"), out=str(tmp_path / "o"), **kw))
    assert not (tmp_path / "o").exists()
