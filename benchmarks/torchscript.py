"""The compiled scoring path: TorchScript trace + freeze (+ oneDNN fusion), cached on disk (issue #14).

    .venv/bin/python benchmarks/torchscript.py [--precisions auto,fp32] [--rounds 4] [--json out.json]

For each precision, in one process: the shipped eager scorer (``inference_net``: batch-norm folded,
channels_last), and the same network ``torch.jit.trace``d and ``torch.jit.freeze``d with
``torch.jit.enable_onednn_fusion(True)``, saved with ``torch.jit.save`` to a cache file named by what
it depends on (model sha256, torch version, precision, CPU flags) and loaded back with
``torch.jit.load``, as a nightly run would find it. Reported: build (trace + freeze), save and load
times, the first three batches after the load (CPU time: the profiling executor compiles its fused
kernels then), max |Δp| against eager on random input, and interleaved rates (batch 16; everything
on 1 thread, images per second of process CPU time, robust to a shared machine). Also every warning torch emits
on the way (TorchScript is deprecated in recent torch). Prints Markdown on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import harness
from harness import REPO

BATCH = 16


def cache_key(sha256: str, precision: str) -> str:
    """Model, torch build, precision and CPU: what a frozen, fused TorchScript module depends on."""
    import torch

    flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    cpu = hashlib.sha256(flags.encode()).hexdigest()[:8]
    return f"{sha256[:16]}-torch{torch.__version__}-{precision}-cpu{cpu}"


def measure(lm: Any, precision: str, rounds: int, cache: Path) -> dict[str, Any]:
    import torch

    from cxrscreen.model.inference import choose_runtime, inference_net, predict_batch, to_device

    torch.set_num_threads(1)  # built, loaded and timed on the thread count it runs with
    rt = choose_runtime("cpu", precision)
    eager = inference_net(lm.net, rt)
    x = torch.randn(BATCH, 1, lm.spec.input_size, lm.spec.input_size, generator=torch.Generator().manual_seed(0))
    out: dict[str, Any] = {"runtime": rt.describe()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.jit.enable_onednn_fusion(True)
        t = time.perf_counter()
        with torch.no_grad(), rt.autocast():
            frozen = torch.jit.freeze(torch.jit.trace(eager, to_device(x, rt), check_trace=False))
        out["build_s"] = time.perf_counter() - t
        path = cache / f"{cache_key(lm.sha256, precision)}.pt"
        t = time.perf_counter()
        torch.jit.save(frozen, path)
        out["save_s"] = time.perf_counter() - t
        t = time.perf_counter()
        loaded = torch.jit.load(path)
        out["load_s"] = time.perf_counter() - t
        out["file_mb"] = path.stat().st_size / 1e6
        out["first_batches_cpu_s"] = []
        for _ in range(3):
            c = time.process_time()
            predict_batch(loaded, x, rt)
            out["first_batches_cpu_s"].append(time.process_time() - c)
    out["warnings"] = sorted({f"{w.category.__name__}: {str(w.message).splitlines()[0]}" for w in caught})
    out["max_dp"] = float((predict_batch(loaded, x, rt) - predict_batch(eager, x, rt)).abs().max())
    rates: dict[str, list[float]] = {"eager": [], "torchscript": []}
    for _ in range(rounds):
        for name, net in (("eager", eager), ("torchscript", loaded)):
            predict_batch(net, x, rt)
            c = time.process_time()
            for _ in range(2):
                predict_batch(net, x, rt)
            rates[name].append(2 * BATCH / (time.process_time() - c))
    torch.set_num_threads(os.cpu_count() or 1)
    out["rates_cpu1"] = rates
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="model .json (default: the embedded default model)")
    ap.add_argument("--precisions", default="auto,fp32")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    import torch

    from cxrscreen.model.files import load_model

    lm = load_model(args.model)
    res: dict[str, Any] = {"date": harness.utc_now(), "torch": torch.__version__, "results": {}}
    with tempfile.TemporaryDirectory(prefix="cxrscreen-ts-") as tmp:
        for p in dict.fromkeys(p.strip() for p in args.precisions.split(",")):
            print(f"precision {p}", file=sys.stderr, flush=True)
            res["results"][p] = measure(lm, p, args.rounds, Path(tmp))
    lines = [f"Date: {res['date']}; torch {res['torch']}; model {lm.name} (sha256 {lm.sha256[:12]}).", "",
             "| precision | runtime | build (trace + freeze) | save | load | first 3 batches after load (CPU s) "
             "| max \\|Δp\\| vs eager | eager img/s (1 thread, CPU time) | TorchScript img/s | × |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for p, r in res["results"].items():
        e, s = statistics.median(r["rates_cpu1"]["eager"]), statistics.median(r["rates_cpu1"]["torchscript"])
        lines.append(f"| {p} | {r['runtime']} | {r['build_s']:.1f} s | {r['save_s']:.2f} s | {r['load_s']:.2f} s "
                     f"({r['file_mb']:.0f} MB) | {' / '.join(f'{v:.2f}' for v in r['first_batches_cpu_s'])} | "
                     f"{r['max_dp']:.1e} | {e:.1f} | {s:.1f} | {s / e:.2f}× |")
    warns = sorted({w for r in res["results"].values() for w in r["warnings"]})
    lines += ["", "Warnings: " + ("; ".join(warns) if warns else "none") + "."]
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
