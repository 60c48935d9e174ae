"""Device and precision choice, batched scoring."""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Iterable, Iterator
from copy import deepcopy
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from cxrscreen import settings
from cxrscreen.options import Device, Precision, parse

if TYPE_CHECKING:
    from cxrscreen.model.files import LoadedModel
    from cxrscreen.model.quantize import Int8Calibration

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    """Where and how the network runs."""

    device: torch.device
    autocast_dtype: torch.dtype | None  # None → plain fp32 (or int8)
    channels_last: bool
    int8: bool = False  # CPU only: the statically quantized network (cxrscreen.model.quantize)

    def describe(self) -> str:
        if self.int8:
            return f"{self.device.type} int8"
        dt = str(self.autocast_dtype).removeprefix("torch.") if self.autocast_dtype else "float32"
        return f"{self.device.type} {dt}{' channels_last' if self.channels_last else ''}"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


def cpu_supports_bf16() -> bool:
    """True when oneDNN reports native bf16 (AVX-512 BF16 / AMX) on this CPU.

    ``CXRSCREEN_DISABLE_BF16=1`` answers False, so precision "auto" takes the path that AVX2-only
    CPUs take (:func:`runtime_for`; ``make test-avx2`` runs the suite that way).
    """
    if settings.current().disable_bf16:
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def choose_runtime(device: Device | str = Device.auto, precision: Precision | str = Precision.auto) -> Runtime:
    """The runtime for a :class:`Device` and a :class:`Precision` (members or their values; int8: CPU only).

    ``ValueError`` naming the option for a value that is not one of the choices.
    """
    device = parse(Device, device, "--device")
    precision = parse(Precision, precision, "--precision")
    if precision is Precision.int8:
        if device is Device.cuda:
            raise ValueError("--precision int8 runs on the CPU only")
        return Runtime(device=torch.device("cpu"), autocast_dtype=None, channels_last=False, int8=True)
    if device is Device.cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but no CUDA device is available")
    use_cuda = device is Device.cuda or (device is Device.auto and torch.cuda.is_available())
    dev = torch.device("cuda" if use_cuda else "cpu")
    if precision is Precision.auto:
        if use_cuda:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.bfloat16 if cpu_supports_bf16() else None
    else:
        dtype = {Precision.fp32: None, Precision.bf16: torch.bfloat16, Precision.fp16: torch.float16}[precision]
    # channels_last everywhere: on a CPU it is what oneDNN's convolutions run natively, fp32 included
    # (see inference_net).
    return Runtime(device=dev, autocast_dtype=dtype, channels_last=True)


def runtime_for(lm: LoadedModel, device: Device | str = Device.auto,
                precision: Precision | str = Precision.auto) -> Runtime:
    """:func:`choose_runtime` for scoring ``lm``: on a CPU without native bf16, precision "auto" is int8
    when the model has an int8 calibration usable here (:func:`~cxrscreen.model.quantize.int8_unready`),
    else fp32.

    int8 there: several times the fp32 forward, with a fraction of a percent of decisions changed
    (docs/benchmarks.md). Where bf16 is native, "auto" stays bf16.
    """
    rt = choose_runtime(device, precision)
    if parse(Precision, precision, "--precision") is not Precision.auto or rt.device.type != "cpu" \
            or rt.autocast_dtype is not None:
        return rt
    from cxrscreen.model.quantize import int8_unready

    why = int8_unready(lm.path, lm.sha256)
    if why is None:
        log.info("precision auto: int8 (no native bf16 on this CPU; the model has an int8 calibration)")
        return choose_runtime(Device.cpu, Precision.int8)
    log.info("precision auto: fp32 (no native bf16 on this CPU; not int8: %s)", why)
    return rt


def prepare(net: torch.nn.Module, rt: Runtime, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """``net`` on ``rt``'s device, in its layout (and in ``dtype``, floating-point weights only): one pass
    over the weights, not one per change (start-up time, docs/benchmarks.md)."""
    fmt = torch.channels_last if rt.channels_last else None
    return net.to(device=rt.device, dtype=dtype, memory_format=fmt).eval()


def fold_batchnorm(net: torch.nn.Module) -> torch.nn.Module:
    """Fold every eval-mode BatchNorm2d into the Conv2d registered just before it (in place).

    In the ResNet50 here each BN directly follows its convolution (stem, bottleneck convs 1–3,
    downsample), in registration order as in execution order; the test checks the folded network
    against the original. The convolution's weights are replaced by
    ``torch.nn.utils.fusion.fuse_conv_bn_weights`` (what ``fuse_conv_bn_eval`` computes, without the
    copy of each convolution it makes first: ``net`` is the caller's own copy).
    """
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    for module in net.modules():
        names = list(module._modules)
        for a, b in zip(names, names[1:], strict=False):
            conv, bn = module._modules[a], module._modules[b]
            if isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d):
                if conv.training or bn.training:
                    raise AssertionError("Fusion only for eval!")
                conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean,
                                                              bn.running_var, bn.eps, bn.weight, bn.bias)
                module._modules[b] = torch.nn.Identity()
    return net


def copy_sharing_weights(net: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``net``'s modules whose parameters and buffers share ``net``'s tensors.

    The copy's parameters are new ``Parameter`` objects: replacing their data or the copy's tensors
    (folding, a dtype, a layout, a device) leaves ``net`` as it was; :func:`unshare` then copies what
    is still shared. A ``deepcopy`` first would copy all of ResNet50's float32 weights (start-up time,
    docs/benchmarks.md) for tensors replaced right after.
    """
    memo: dict[int, torch.Tensor] = {}
    for t in itertools.chain(net.parameters(), net.buffers()):
        memo[id(t)] = torch.nn.Parameter(t.data, t.requires_grad) if isinstance(t, torch.nn.Parameter) else t
    return deepcopy(net, memo)


def unshare(copy: torch.nn.Module, net: torch.nn.Module) -> torch.nn.Module:
    """``copy`` (of :func:`copy_sharing_weights`) with its own copy of every tensor still shared with ``net``
    (a float32 CPU network: the classifier's), so that training ``net`` later leaves it as it is."""
    shared = {t.data_ptr() for t in itertools.chain(net.parameters(), net.buffers()) if t.numel()}
    for module in copy.modules():
        for p in module._parameters.values():
            if p is not None and p.numel() and p.data_ptr() in shared:
                p.data = p.data.clone()
        for name, b in module._buffers.items():
            if b is not None and b.numel() and b.data_ptr() in shared:
                module._buffers[name] = b.clone()
    return copy


def inference_net(net: torch.nn.Module, rt: Runtime, int8: Int8Calibration | None = None) -> torch.nn.Module:
    """A copy of ``net`` for scoring only (no gradients, no Grad-CAM hooks); ``net`` is left as it was.

    int8 (``rt.int8``): the quantized network built with the model's calibration ``int8``
    (:func:`scoring_net` finds it); its convolutions take NCHW input.

    On a CPU, batch-norm is folded into the convolutions (one oneDNN convolution per layer instead
    of a convolution and a separate batch-norm pass) and, with ``channels_last``, run in the layout
    oneDNN computes in. fp32: the same function to float rounding (``tests/test_inference.py``), and
    faster than the unfolded NCHW network (``benchmarks/int8.py``, docs/benchmarks.md). bf16: the
    weights are also stored in bf16, so autocast no longer re-casts them on every batch; scores within
    bf16 rounding of the unfolded model (docs/benchmarks.md). On CUDA :func:`prepare` only.
    """
    if rt.int8:
        from cxrscreen.model.quantize import Int8Unavailable, int8_net

        if int8 is None:
            raise Int8Unavailable("int8 scoring needs the model's int8 calibration (use scoring_net)")
        return int8_net(net, int8)
    copy = copy_sharing_weights(net).eval()
    if rt.device.type == "cpu":
        copy = fold_batchnorm(copy)
        return unshare(prepare(copy, rt, torch.bfloat16 if rt.autocast_dtype == torch.bfloat16 else None), net)
    return unshare(prepare(copy, rt), net)


def scoring_net(lm: LoadedModel, rt: Runtime) -> torch.nn.Module:
    """:func:`inference_net` of a loaded model, with its int8 calibration when ``rt`` is int8."""
    int8 = None
    if rt.int8:
        from cxrscreen.model.quantize import load_calibration

        int8 = load_calibration(lm.path, lm.sha256)
    return inference_net(lm.net, rt, int8)


def to_device(x: torch.Tensor, rt: Runtime) -> torch.Tensor:
    x = x.to(rt.device, non_blocking=True)
    if rt.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@torch.inference_mode()
def predict_batch(net: torch.nn.Module, x: torch.Tensor, rt: Runtime) -> torch.Tensor:
    """Probabilities P(abnormal) for a ``(B,1,S,S)`` batch, as float32 on the CPU."""
    with rt.autocast():
        logits = net(to_device(x, rt))
    return torch.sigmoid(logits.float().reshape(-1)).cpu()


def predict_batches(
    net: torch.nn.Module, batches: Iterable[torch.Tensor], rt: Runtime
) -> Iterator[torch.Tensor]:
    for x in batches:
        yield predict_batch(net, x, rt)
