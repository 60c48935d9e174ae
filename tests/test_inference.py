"""Scoring runtime: the folded fp32 and bf16 copies used for scoring match the model they came from."""

import copy

import pytest
import torch

from cxrscreen import settings
from cxrscreen.model.inference import (
    Runtime,
    choose_runtime,
    cpu_supports_bf16,
    fold_batchnorm,
    inference_net,
    predict_batch,
    prepare,
    to_device,
)
from cxrscreen.options import Device, Precision, TrainPrecision


def _with_bn_statistics(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BN statistics and affine terms, so that folding them is actually tested."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return net.eval()


@pytest.mark.slow
def test_fold_batchnorm_keeps_the_function(random_model):
    net = _with_bn_statistics(copy.deepcopy(random_model.net))
    folded = fold_batchnorm(copy.deepcopy(net))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(3, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, got = net(x), folded(x)
    assert ref.abs().max() > 0.1  # a real signal, not all zeros
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_inference_net_is_a_copy_and_scores_like_the_model(random_model):
    net = _with_bn_statistics(copy.deepcopy(random_model.net), seed=2)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    bf16 = Runtime(torch.device("cpu"), torch.bfloat16, True)
    scorer = inference_net(net, bf16)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == n_bn  # original untouched
    assert next(net.parameters()).dtype == torch.float32
    assert next(scorer.parameters()).dtype == torch.bfloat16
    x = torch.randn(4, 1, 64, 64, generator=torch.Generator().manual_seed(3))
    fp32 = Runtime(torch.device("cpu"), None, False)
    ref = predict_batch(prepare(copy.deepcopy(net), fp32), x, fp32)
    got = predict_batch(scorer, x, bf16)
    assert got.dtype == torch.float32 and got.shape == (4,)
    assert float((got - ref).abs().max()) < 0.03  # bf16 rounding only


def test_fp32_runtime_is_channels_last_on_cpu():
    rt = choose_runtime("cpu", "fp32")
    assert rt.autocast_dtype is None and rt.channels_last
    assert rt.describe() == "cpu float32 channels_last"


def _centred_head(net: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """Rescale the last layer so the logits on ``x`` have mean 0 and sd 1 (random weights give ≈ +100)."""
    with torch.no_grad():
        logits = net.eval()(x).reshape(-1)
        net.fc.weight /= logits.std()
        net.fc.bias.sub_(logits.mean()).div_(logits.std())
    return net


def test_inference_net_fp32_is_folded_channels_last_and_scores_like_the_model(random_model):
    x = torch.randn(6, 1, 64, 64, generator=torch.Generator().manual_seed(5))
    net = _centred_head(_with_bn_statistics(copy.deepcopy(random_model.net), seed=4), x)
    rt = choose_runtime("cpu", "fp32")
    scorer = inference_net(net, rt)
    assert scorer is not net and any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in scorer.modules())
    conv = next(m for m in scorer.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.dtype == torch.float32
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        ref = net(x).reshape(-1)  # the unfolded NCHW network
        got = scorer(to_device(x, rt)).reshape(-1)
    probs = torch.sigmoid(ref)
    assert probs.min() < 0.4 and probs.max() > 0.6  # spread scores, not saturated ones
    # fp32 re-association only (folding, another kernel layout): about 1e-5 here, on any x86 ISA
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-3)
    torch.testing.assert_close(predict_batch(scorer, x, rt), probs, rtol=0, atol=1e-3)


def test_bf16_can_be_disabled_from_the_environment():
    """CXRSCREEN_DISABLE_BF16=1 (``make test-avx2``): precision "auto" takes the path of AVX2-only CPUs
    (fp32 floats; int8 for a calibrated model, ``tests/test_quantize.py``)."""
    assert settings.Settings.from_env({settings.DISABLE_BF16: "1"}).disable_bf16
    with settings.override(disable_bf16=True):
        assert not cpu_supports_bf16()
        assert choose_runtime("cpu", "auto").autocast_dtype is None
        assert choose_runtime("cpu", "bf16").autocast_dtype == torch.bfloat16  # an explicit choice still holds


def test_choose_runtime_refuses_unknown_choices_naming_the_option():
    with pytest.raises(ValueError, match=r"^--device: 'tpu' is not one of auto, cpu, cuda$"):
        choose_runtime("tpu", "fp32")
    with pytest.raises(ValueError, match=r"^--precision: 'int4' is not one of auto, fp32, bf16, fp16, int8$"):
        choose_runtime("cpu", "int4")
    with pytest.raises(ValueError, match="int8 runs on the CPU only"):
        choose_runtime(Device.cuda, Precision.int8)


def test_choose_runtime_takes_members_and_strings():
    for precision, dtype in (("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        by_value = choose_runtime("cpu", precision)
        assert by_value == choose_runtime(Device.cpu, Precision(precision))
        assert by_value == choose_runtime("cpu", TrainPrecision(precision))
        assert by_value.device.type == "cpu" and by_value.autocast_dtype == dtype and not by_value.int8
    assert choose_runtime(Device.cpu, Precision.int8) == choose_runtime("auto", "int8")
    assert choose_runtime("auto", "int8").int8
