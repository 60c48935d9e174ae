import json
from pathlib import Path

import pytest
import torch

from cxrscreen.model.architecture import build_resnet50, imgsim_weights_path, load_torchvision_backbone
from cxrscreen.model.files import DEFAULT_MODEL, ModelIntegrityError, load_model, save_model
from cxrscreen.model.inference import choose_runtime, predict_batch, prepare


@pytest.mark.slow
def test_architecture_is_torchvision_resnet50():
    net = build_resnet50()
    assert net.conv1.kernel_size == (7, 7) and net.conv1.stride == (2, 2) and net.conv1.in_channels == 1
    assert net.layer2[0].downsample[0].bias is None
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(23_500_000, rel=0.01)
    assert net(torch.zeros(2, 1, 64, 64)).shape == (2, 1)


@pytest.mark.slow
def test_roundtrip_identical_outputs(tmp_path: Path):
    torch.manual_seed(0)
    net = build_resnet50().eval()
    meta = {"name": "t", "preprocess": {"input_size": 64}, "threshold": 0.4}
    written = save_model(net, meta, tmp_path / "m.json", dtype=torch.float32)
    assert len(written["sha256"]) == 64 and written["weights_file"] == "m.safetensors"
    lm = load_model(tmp_path / "m.safetensors")  # either file names the model
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net(x), lm.net(x), atol=1e-6)
    assert lm.threshold == 0.4 and lm.spec.input_size == 64 and lm.tag.startswith("t@")


def test_tampered_weights_refused(tmp_path: Path, random_model_path: Path):
    folder = tmp_path / "m"
    folder.mkdir()
    for f in random_model_path.parent.glob("random.*"):
        (folder / f.name).write_bytes(f.read_bytes())
    weights = folder / "random.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="sha256"):
        load_model(folder / "random.json")


def test_metadata_missing_keys_refused(tmp_path: Path):
    (tmp_path / "bad.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(ValueError, match="lacks"):
        load_model(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "nothing.json")


def test_torchvision_layout_backbone_loads_strictly(tmp_path: Path):
    src = build_resnet50(in_channels=3, num_classes=768)  # like imgsim: RGB stem, 768-d fc
    state = {f"module.pre.{k}": v for k, v in src.state_dict().items()}
    torch.save(state, tmp_path / "tv.pth")
    net = build_resnet50()
    load_torchvision_backbone(net, tmp_path / "tv.pth")
    assert torch.allclose(net.conv1.weight, src.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(net.layer4[2].conv3.weight, src.layer4[2].conv3.weight)


def test_imgsim_weights_when_installed():
    try:
        path = imgsim_weights_path()
    except FileNotFoundError:
        pytest.skip("imgsim is not installed (pip install --no-deps imgsim==0.1.2)")
    net = build_resnet50()
    load_torchvision_backbone(net, path)
    assert net.conv1.weight.shape == (64, 1, 7, 7)


def test_runtime_choice_and_prediction(random_model):
    rt = choose_runtime("cpu", "fp32")
    assert rt.autocast_dtype is None and rt.device.type == "cpu"
    probs = predict_batch(prepare(random_model.net, rt), torch.zeros(3, 1, 64, 64), rt)
    assert probs.shape == (3,) and torch.all((probs >= 0) & (probs <= 1))
    with pytest.raises(ValueError):
        choose_runtime("tpu")


@pytest.mark.skipif(not DEFAULT_MODEL.exists(), reason="the embedded model is not in this checkout")
def test_embedded_default_model_loads_and_is_calibrated():
    lm = load_model()
    meta = lm.meta
    points = lm.points
    assert points.names == ("pediatric", "adult") and points.default == "adult"
    assert lm.threshold == points["adult"].threshold
    for p in points.points:  # each calibrated on validation films for a high sensitivity, and met it there
        cal = p.calibration
        assert 0 < p.threshold < 1 and cal["split"] == "val" and cal["target_sensitivity"] >= 0.9
        assert cal["sensitivity"]["value"] >= cal["target_sensitivity"]
    assert meta["weights_dtype"] == "float16"
    assert DEFAULT_MODEL.with_suffix(".safetensors").stat().st_size <= 50 * 1024 * 1024


@pytest.mark.slow
def test_loading_skips_random_init_but_restores_torch_init(tmp_path: Path):
    """Built without random initialisation, yet identical to the saved network; torch.nn.init is restored."""
    before = {name: getattr(torch.nn.init, name) for name in ("kaiming_normal_", "uniform_", "constant_")}
    torch.manual_seed(5)
    net = build_resnet50().eval()
    save_model(net, {"name": "t", "preprocess": {"input_size": 64}, "threshold": 0.5}, tmp_path / "m.json",
               dtype=torch.float32)
    loaded = load_model(tmp_path / "m.json").net.eval()
    assert {name: getattr(torch.nn.init, name) for name in before} == before
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x))
    for (name, a), b in zip(net.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    fresh = torch.nn.Linear(4, 4)  # later modules are initialised normally again
    assert fresh.weight.abs().sum() > 0
