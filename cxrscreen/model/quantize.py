"""int8 scoring on x86 CPUs: post-training static quantization, calibrated once on a validation split.

PyTorch FX graph mode (``torch.ao.quantization.quantize_fx``) with the ``x86`` backend: int8
per-channel weights, uint8 activations. The activations' ranges come from a calibration run
(histogram observers) over a validation split; only their quantization parameters (scale, zero
point per activation) are kept, in a small JSON file beside the model (``<model>.int8.json``), tied
to the model's weights by their sha256. Building the int8 network from the float one and that file
needs no data and gives the same network as the calibration run did. Speed and what it does to
decisions: ``benchmarks/int8.py``, docs/benchmarks.md.
"""

from __future__ import annotations

import copy
import importlib.util
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from cxrscreen.model.calibration import (  # noqa: F401 (re-exported: the calibration file, torch-free)
    ENGINE,
    FORMAT,
    SUFFIX,
    Int8Calibration,
    Int8Unavailable,
    calibration_path,
    load_calibration,
    save_calibration,
)


@contextmanager
def _quiet_fx(stack_traces: bool = False) -> Iterator[None]:
    """Build FX graphs without torch.ao.quantization's notices and without a stack trace per node.

    FX's tracer records the Python stack of every node it creates, for debugging messages. The first
    such record imports ``torch._inductor`` and ``torch.export`` (a large share of a scan's start-up
    with ``--precision int8``, docs/benchmarks.md) and each one costs a traceback. The int8 network does
    not use them. ``torch.fx.config.do_not_emit_stack_traces`` is put back as it was.
    ``stack_traces=True`` keeps FX's own setting (the comparison in tests and benchmarks).
    """
    config = torch.fx.config
    before = getattr(config, "do_not_emit_stack_traces", None)
    if before is not None and not stack_traces:
        config.do_not_emit_stack_traces = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation and observer notices
            yield
    finally:
        if before is not None:
            config.do_not_emit_stack_traces = before


@contextmanager
def quantized_engine() -> Iterator[None]:
    """Torch's quantized engine set to ``ENGINE`` for the ``with`` block (process-wide), then put back.

    The int8 network is prepared, calibrated and converted (its weights packed for the engine) inside it;
    the packed weights keep their kernels when the engine is put back."""
    if ENGINE not in torch.backends.quantized.supported_engines:
        raise Int8Unavailable(f"this torch build has no {ENGINE!r} quantized engine")
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = ENGINE
    try:
        yield
    finally:
        if torch.backends.quantized.engine != before:
            torch.backends.quantized.engine = before


def _prepared(net: torch.nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """``net`` traced with observers (call inside :func:`quantized_engine`)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx

    # The classifier stays float: a quantized logit lies on a 7-bit grid (about 0.26 apart), which
    # left 116 distinct probabilities on the 1,418 test films and ties all through the worklist's
    # priority order; a float Linear on the dequantized pooled features gives 1,309 (fp32: 1,312), at
    # the same speed (docs/benchmarks.md).
    qconfig = get_default_qconfig_mapping(ENGINE).set_object_type(torch.nn.Linear, None)
    with _quiet_fx():
        return prepare_fx(copy.deepcopy(net).float().eval(), qconfig, example_inputs=(example,))


def _observers(gm: torch.nn.Module) -> dict[str, Any]:
    from torch.ao.quantization.observer import ObserverBase

    return {n: m for n, m in gm.named_modules() if isinstance(m, ObserverBase)}


def calibrate_int8(net: torch.nn.Module, batches: Iterable[torch.Tensor], model_sha256: str,
                   source: str) -> Int8Calibration:
    """Run ``batches`` (model inputs, as scoring sees them) through an observed copy of ``net``."""
    prepared: torch.fx.GraphModule | None = None
    n = 0
    with torch.inference_mode(False), torch.no_grad(), quantized_engine():
        for x in batches:
            if prepared is None:
                prepared = _prepared(net, x[:1])
            prepared(x)
            n += len(x)
    if prepared is None or n == 0:
        raise ValueError("no calibration images")
    qparams = {}
    for name, obs in _observers(prepared).items():
        scale, zero_point = obs.calculate_qparams()
        qparams[name] = (float(scale), int(zero_point), int(obs.quant_min), int(obs.quant_max))
    return Int8Calibration(model_sha256, ENGINE, source, torch.__version__, qparams)


def int8_net(net: torch.nn.Module, calib: Int8Calibration) -> torch.fx.GraphModule:
    """The int8 network of ``net`` with the activation quantization parameters of ``calib``."""
    from torch.ao.quantization.observer import FixedQParamsObserver
    from torch.ao.quantization.quantize_fx import convert_fx

    with quantized_engine():
        gm = _prepared(net, torch.zeros(1, 1, 64, 64))  # traced symbolically: any input size scores
        observers = _observers(gm)
        if set(observers) != set(calib.qparams):
            raise Int8Unavailable("the int8 calibration does not fit this network (another architecture or torch "
                                  "version); recalibrate it (tools/int8_calibration.py)")
        for name, (scale, zero_point, qmin, qmax) in calib.qparams.items():
            old = observers[name]
            setattr(gm, name, FixedQParamsObserver(scale, zero_point, dtype=old.dtype, qscheme=old.qscheme,
                                                   quant_min=qmin, quant_max=qmax))
        with _quiet_fx():
            return convert_fx(gm).eval()


def _release(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def int8_unready(model_json: Path, model_sha256: str) -> str | None:
    """Why precision "auto" may not score this model in int8 on this machine; None when it may.

    It needs the ``x86`` quantized engine on a CPU with AVX2 (fbgemm's int8 kernels), torch's FX
    quantization, and a calibration of these weights made with this torch release (the activations
    are named by torch's tracer). ``--precision int8`` asks for int8 whatever this says.
    """
    if ENGINE not in torch.backends.quantized.supported_engines:
        return f"this torch build has no {ENGINE!r} quantized engine"
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return "the CPU has no AVX2, which fbgemm's int8 kernels need"
    if importlib.util.find_spec("torch.ao.quantization.quantize_fx") is None:
        return "this torch release has no torch.ao.quantization.quantize_fx"
    try:
        calib = load_calibration(model_json, model_sha256)
    except Int8Unavailable as exc:
        return str(exc).removeprefix("--precision int8: ")
    if _release(calib.torch_version) != _release(torch.__version__):
        return f"its int8 calibration was made with torch {calib.torch_version}, this is {torch.__version__}"
    return None
