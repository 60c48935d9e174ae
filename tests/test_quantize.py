"""int8 scoring: calibration, its file beside the model, and the network rebuilt from it."""

import copy
import dataclasses
import json
import shutil
import subprocess
import sys
from functools import partial

import pytest
import torch

from cxrscreen import settings
from cxrscreen.model import inference, quantize
from cxrscreen.model.files import load_model
from cxrscreen.model.inference import choose_runtime, inference_net, predict_batch, runtime_for, scoring_net
from cxrscreen.model.quantize import (
    Int8Unavailable,
    calibrate_int8,
    calibration_path,
    int8_net,
    int8_unready,
    load_calibration,
    save_calibration,
)


def _inputs(n: int, seed: int) -> torch.Tensor:
    """Smooth, image-like inputs (a random network's scores spread on these, unlike on white noise)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool2d(torch.randn(n, 1, 72, 72, generator=g), 9, stride=1)
    return (x - x.mean()) / x.std()


@pytest.fixture(scope="module")
def calibrated(random_model):
    batches = [_inputs(8, seed) for seed in range(4)]
    return calibrate_int8(random_model.net, batches, random_model.sha256, "four synthetic batches")


def test_runtime_int8_is_cpu_only():
    rt = choose_runtime("cpu", "int8")
    assert rt.int8 and rt.device.type == "cpu" and rt.describe() == "cpu int8"
    with pytest.raises(ValueError, match="CPU only"):
        choose_runtime("cuda", "int8")


@pytest.mark.slow
def test_int8_net_is_quantized_and_tracks_the_float_network(random_model, calibrated):
    q = int8_net(random_model.net, calibrated)
    assert any("Quantized" in type(m).__name__ or type(m).__module__.startswith("torch.ao.nn.quantized")
               for m in q.modules())
    x = _inputs(16, seed=9)
    rt = choose_runtime("cpu", "fp32")
    with torch.inference_mode():
        ref = inference_net(random_model.net, rt)(x).reshape(-1)
        got = q(x).reshape(-1)
    assert ref.std() > 0.05  # distinct scores to track
    # int8 rounding moves logits a little, never the ordering as a whole
    assert torch.corrcoef(torch.stack([ref, got]))[0, 1] > 0.9


@pytest.mark.slow
def test_the_classifier_stays_float_so_scores_do_not_tie(random_model, calibrated):
    """A quantized logit lies on a 7-bit grid: many films would share one probability (worklist ties)."""
    q = int8_net(random_model.net, calibrated)
    assert type(q.fc) is torch.nn.Linear  # not torch.ao.nn.quantized.Linear
    x = _inputs(32, seed=14)
    with torch.inference_mode():
        logits = q(x).reshape(-1)
    assert logits.dtype == torch.float32
    assert len(torch.unique(logits)) == len(x)


@pytest.mark.slow
def test_calibration_round_trip_rebuilds_the_same_network(random_model, calibrated, tmp_path):
    assert calibration_path(tmp_path / "m.json") == tmp_path / "m.int8.json"
    save_calibration(calibrated, calibration_path(tmp_path / "m.json"))
    again = load_calibration(tmp_path / "m.json", random_model.sha256)
    assert again == calibrated
    x = _inputs(4, seed=11)
    with torch.inference_mode():
        assert torch.equal(int8_net(random_model.net, calibrated)(x), int8_net(random_model.net, again)(x))


@pytest.mark.slow
def test_scoring_net_finds_the_calibration_beside_the_model(random_model_path, calibrated, tmp_path):
    for f in random_model_path.parent.glob(random_model_path.stem + ".*"):
        shutil.copy(f, tmp_path / f.name)
    lm = load_model(tmp_path / random_model_path.name)
    rt = choose_runtime("cpu", "int8")
    with pytest.raises(Int8Unavailable, match="no int8 calibration"):
        scoring_net(lm, rt)
    save_calibration(calibrated, calibration_path(lm.path))
    p = predict_batch(scoring_net(lm, rt), _inputs(3, seed=12), rt)
    assert p.shape == (3,) and p.dtype == torch.float32 and bool(((p >= 0) & (p <= 1)).all())


@pytest.mark.slow
def test_calibration_of_other_weights_or_a_broken_file_is_refused(random_model, calibrated, tmp_path):
    model_json = tmp_path / "m.json"
    save_calibration(calibrated, calibration_path(model_json))
    with pytest.raises(Int8Unavailable, match="other weights"):
        load_calibration(model_json, "0" * 64)
    data = json.loads(calibration_path(model_json).read_text())
    del data["qparams"]
    calibration_path(model_json).write_text(json.dumps(data))
    with pytest.raises(Int8Unavailable, match="not a valid int8 calibration"):
        load_calibration(model_json, random_model.sha256)


def test_int8_runtime_without_calibration_is_refused(random_model):
    with pytest.raises(Int8Unavailable):
        inference_net(copy.deepcopy(random_model.net), choose_runtime("cpu", "int8"))


@pytest.mark.slow
def test_int8_build_records_no_stack_traces_and_puts_the_fx_setting_back(random_model, calibrated, monkeypatch):
    import torch.fx.config as fx_config

    before = fx_config.do_not_emit_stack_traces
    q = int8_net(random_model.net, calibrated)
    assert fx_config.do_not_emit_stack_traces == before
    assert not any(n.stack_trace for n in q.graph.nodes)
    # the same network as a build that records them (FX's default)
    monkeypatch.setattr(quantize, "_quiet_fx", partial(quantize._quiet_fx, stack_traces=True))
    traced = int8_net(random_model.net, calibrated)
    assert any(n.stack_trace for n in traced.graph.nodes)
    x = _inputs(4, seed=13)
    with torch.inference_mode():
        assert torch.equal(q(x), traced(x))


@pytest.mark.slow
def test_int8_build_does_not_import_the_compiler(random_model_path, calibrated, tmp_path):
    """FX's per-node stack traces imported torch._inductor: start-up time for nothing (docs/benchmarks.md)."""
    for f in random_model_path.parent.glob(random_model_path.stem + ".*"):
        shutil.copy(f, tmp_path / f.name)
    model = tmp_path / random_model_path.name
    save_calibration(calibrated, calibration_path(model))
    code = ("import sys; from cxrscreen.model.files import load_model; "
            "from cxrscreen.model.inference import choose_runtime, scoring_net; "
            f"scoring_net(load_model({str(model)!r}), choose_runtime('cpu', 'int8')); "
            "print('torch._inductor' in sys.modules, 'torch.export._trace' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.fixture
def model_copy(random_model_path, tmp_path):
    for f in random_model_path.parent.glob(random_model_path.stem + ".*"):
        shutil.copy(f, tmp_path / f.name)
    return load_model(tmp_path / random_model_path.name)


@pytest.fixture
def avx2_cpu(monkeypatch):
    """A CPU without native bf16 whose kernels run AVX2 code: an AVX2-only server, as auto sees it."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    with settings.override(disable_bf16=True):
        yield


@pytest.mark.slow
def test_auto_scores_in_int8_on_a_cpu_without_bf16_once_the_model_is_calibrated(model_copy, calibrated, avx2_cpu,
                                                                                  caplog):
    caplog.set_level("INFO", logger=inference.__name__)
    rt = runtime_for(model_copy, "cpu", "auto")
    assert not rt.int8 and rt.autocast_dtype is None  # fp32, and the log says why not int8
    assert "no int8 calibration" in caplog.text
    save_calibration(calibrated, calibration_path(model_copy.path))
    assert int8_unready(model_copy.path, model_copy.sha256) is None
    rt = runtime_for(model_copy, "auto", "auto")
    assert rt == choose_runtime("cpu", "int8")
    assert "precision auto: int8" in caplog.text
    # what is asked for explicitly still holds
    assert runtime_for(model_copy, "cpu", "fp32") == choose_runtime("cpu", "fp32")
    assert runtime_for(model_copy, "cpu", "bf16") == choose_runtime("cpu", "bf16")


@pytest.mark.slow
def test_auto_keeps_native_bf16_and_needs_avx2_and_this_torch_release(model_copy, calibrated, monkeypatch):
    save_calibration(calibrated, calibration_path(model_copy.path))
    monkeypatch.setattr(inference, "cpu_supports_bf16", lambda: True)
    assert runtime_for(model_copy, "cpu", "auto") == choose_runtime("cpu", "bf16")
    monkeypatch.setattr(inference, "cpu_supports_bf16", lambda: False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    assert "AVX2" in int8_unready(model_copy.path, model_copy.sha256)
    assert runtime_for(model_copy, "cpu", "auto") == choose_runtime("cpu", "fp32")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert runtime_for(model_copy, "cpu", "auto").int8
    # a calibration made with another torch release (torch names the activations) is not trusted by auto
    other = dataclasses.replace(calibrated, torch_version="2.99.0+cpu")
    save_calibration(other, calibration_path(model_copy.path))
    assert "torch 2.99.0+cpu" in int8_unready(model_copy.path, model_copy.sha256)
    assert runtime_for(model_copy, "cpu", "auto") == choose_runtime("cpu", "fp32")
