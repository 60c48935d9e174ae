"""Scoring runtime: the folded bf16 copy used for scoring matches the model it came from."""

import copy

import torch

from cxrscreen.model.inference import Runtime, fold_batchnorm, inference_net, predict_batch, prepare


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


def test_inference_net_fp32_is_unfolded(random_model):
    rt = Runtime(torch.device("cpu"), None, False)
    scorer = inference_net(random_model.net, rt)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in scorer.modules())
    assert scorer is not random_model.net
