"""``adapt`` end to end on a tiny synthetic site: gate pass and refusal, resume, the CLI's exit codes.

The network is the tests' random 64 px ResNet50 with only its head trained, in fp32, for one epoch:
what is asserted is the plumbing (splits, reports, gate, files), never how well it learned. The gate
outcome is forced through its thresholds, so no assertion depends on floating-point details.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from cxrscreen import scan
from cxrscreen.cli.app import app
from cxrscreen.model.files import load_model
from cxrscreen.options import ScanOptions
from cxrscreen.training.adapt import AdaptConfig, adapt, gate, set_trainable
from tests.test_site import make_site

runner = CliRunner()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("adapt_site")
    return folder / "films", make_site(folder)


def config(site, out: Path, model: Path, **kw) -> AdaptConfig:
    films, labels = site
    base = dict(dicom_dir=str(films), labels=str(labels), out=str(out), init=str(model), epochs=1, batch_size=8,
                train_layers="head", precision="fp32", device="cpu")
    return AdaptConfig(**{**base, **kw})


def _m(auc: float, sens: float) -> dict:
    return {"auroc": {"value": auc}, "sensitivity": {"value": sens}}


def test_gate_rules() -> None:
    cfg = AdaptConfig(dicom_dir="", labels="", out="", target_sensitivity=0.95)
    assert gate(_m(0.80, 0.9), _m(0.85, 0.90), cfg) == (True, [])
    ok, why = gate(_m(0.80, 0.9), _m(0.79, 0.99), cfg)
    assert not ok and "AUROC" in why[0]
    ok, why = gate(_m(0.80, 0.9), _m(0.90, 0.89), cfg)
    assert not ok and "sensitivity 0.890 is below 0.900" in why[0]
    strict = AdaptConfig(dicom_dir="", labels="", out="", min_auroc_gain=0.02)
    assert not gate(_m(0.80, 0.9), _m(0.81, 0.99), strict)[0]


def test_set_trainable(random_model) -> None:
    net = load_model(random_model.path).net
    head = set_trainable(net, "head")
    assert len(head) == 2 and all(p.requires_grad for p in net.fc.parameters())
    assert not any(p.requires_grad for p in net.layer4.parameters())
    assert len(set_trainable(net, "layer4")) > len(head)
    with pytest.raises(ValueError):
        set_trainable(net, "everything")


@pytest.mark.slow
def test_adapt_passes_writes_a_model_scan_can_use(site, tmp_path: Path, random_model_path: Path) -> None:
    out = tmp_path / "model_dir"
    res = adapt(config(site, out, random_model_path, min_auroc_gain=-1.0, sensitivity_margin=1.0))
    assert res.passed and res.model_path == out / "model.json"
    for name in ("splits.csv", "unmatched_labels.csv", "site_validation.md", "site_validation.pdf",
                 "validation_roc.png", "validation_scores.png", "adapt.json", "checkpoints/epoch_000.pt"):
        assert (out / name).is_file(), name
    assert (out / "site_validation.pdf").read_bytes().startswith(b"%PDF")
    assert "PASSED" in (out / "site_validation.md").read_text()
    splits = pd.read_csv(out / "splits.csv", dtype=str, keep_default_na=False)
    used = splits[splits["split"] != "excluded"]
    assert used.groupby("patient")["split"].nunique().max() == 1  # no patient in two splits
    summary = json.loads((out / "adapt.json").read_text())
    assert {"start", "adapted"} <= set(summary["test"])
    lm = load_model(res.model_path)
    assert lm.threshold == pytest.approx(summary["threshold"])
    assert lm.meta["adaptation"]["splits"]["test"]["films"] == summary["splits"]["test"]["films"]
    result = scan(site[0], out=tmp_path / "scan", model=res.model_path, options=ScanOptions(reports="none", workers=0))
    assert result.exit_code == 0 and result.summary.images_scored > 0

    # --resume continues from the last epoch checkpoint instead of starting again
    more = adapt(config(site, out, random_model_path, epochs=2, min_auroc_gain=-1.0, sensitivity_margin=1.0),
                 resume=True)
    assert [h["epoch"] for h in more.summary["history"]] == [0, 1]
    with pytest.raises(FileExistsError, match="--resume"):
        adapt(config(site, out, random_model_path))


@pytest.mark.slow
def test_adapt_refused_by_the_gate_through_the_cli(site, tmp_path: Path, random_model_path: Path) -> None:
    films, labels = site
    out = tmp_path / "refused"
    args = ["adapt", str(films), "--labels", str(labels), "--out", str(out), "--init", str(random_model_path),
            "--epochs", "1", "--batch-size", "8", "--train-layers", "head", "--precision", "fp32", "--device", "cpu",
            "--min-auroc-gain", "1.5", "--quiet"]
    res = runner.invoke(app, args)
    assert res.exit_code == 4, res.output
    assert "refused by the gate" in res.output and "AUROC" in res.output
    assert not (out / "model.json").exists()
    assert "REFUSED" in (out / "site_validation.md").read_text() and (out / "site_validation.pdf").is_file()


def test_adapt_cli_usage_errors(tmp_path: Path, random_model_path: Path) -> None:
    few = tmp_path / "few"
    make_site(few, n_patients=6)
    res = runner.invoke(app, ["adapt", str(few / "films"), "--labels", str(few / "labels.csv"), "--out",
                              str(tmp_path / "o"), "--init", str(random_model_path), "--quiet"])
    assert res.exit_code == 2 and "too few" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["adapt", str(tmp_path / "nope"), "--labels", str(few / "labels.csv"), "--out",
                              str(tmp_path / "o")])
    assert res.exit_code == 2


@pytest.mark.slow
def test_adapt_layer4_fine_tuning(site, tmp_path: Path, random_model_path: Path) -> None:
    """The gradient path (for GPUs): one epoch, the checkpoint and the best weights end up in the model."""
    out = tmp_path / "layer4"
    res = adapt(config(site, out, random_model_path, train_layers="layer4", min_auroc_gain=-1.0,
                       sensitivity_margin=1.0))
    assert res.passed and (out / "checkpoints" / "best.pt").is_file()
    start, adapted = load_model(random_model_path).net, load_model(res.model_path).net
    assert not torch.equal(start.layer4[0].conv1.weight, adapted.layer4[0].conv1.weight)
    assert torch.equal(start.layer3[0].conv1.weight, adapted.layer3[0].conv1.weight)


def test_adapt_refuses_bad_choices_before_writing(tmp_path: Path) -> None:
    for kw, message in (({"train_layers": "layer3"}, "--train-layers: 'layer3' is not one of head, layer4, all"),
                        ({"precision": "int8"}, "--precision: 'int8' is not one of auto, fp32, bf16, fp16")):
        with pytest.raises(ValueError, match=message):
            adapt(AdaptConfig(dicom_dir=str(tmp_path), labels=str(tmp_path / "l.csv"), out=str(tmp_path / "o"), **kw))
    assert not (tmp_path / "o").exists()
