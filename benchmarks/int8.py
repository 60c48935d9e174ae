"""int8 scoring on the CPU: speed against the best fp32 form, and what it does to decisions (issue #14).

    .venv/bin/python benchmarks/int8.py [--model MODEL.json] [--calib-n 0] [--test-n 0] [--rounds 5]
        [--json results.json]

Accuracy (in this process): the validation and test splits of ``../shared/data/cxr224`` go through
cxrscreen's own preprocessing chain (``training.data.make_dataset``, as ``evaluate`` and
``calibrate`` use it) once; the tensors are cached in ``$TMPDIR/cxrscreen-int8/``. The int8 network
is :mod:`cxrscreen.model.quantize`'s (PyTorch FX graph mode, ``x86`` backend: per-channel int8
weights, uint8 activations with histogram-calibrated ranges) with the model's shipped calibration
(``<model>.int8.json``, made by ``tools/int8_calibration.py`` on the validation split) when it has
one, else one made here on ``--calib-n`` validation images (0 = all). It is scored on the test split
(``--test-n``, 0 = all) beside the shipped fp32 scorer (folded + channels_last), the unfolded NCHW
network and bf16 (when the CPU has it). Reported per dataset: AUROC of each, |Δp|, and decisions
changed at the model's threshold.

Speed (each in a fresh process, forms interleaved round by round, batch 16): the unfolded NCHW
fp32 network, folded fp32 (NCHW and channels_last), bf16 (when the CPU has it) and int8 on
1 thread (images per second of *process CPU time*: robust to other processes on a shared machine)
and on all cores (wall clock). Once natively and once on AVX2 code paths, a stand-in for an
AVX2-only server: ``FBGEMM_ENABLE_INSTRUCTIONS=AVX2`` (fbgemm, the ``x86`` engine's int8
convolutions), ``ONEDNN_MAX_CPU_ISA=AVX2`` (oneDNN: every fp32 convolution) and
``ATEN_CPU_CAPABILITY=avx2`` (ATen's own kernels). The accuracy table is also taken again on those
code paths (fbgemm's AVX2 kernels multiply-add in 16 bits, which is why the ``x86`` qconfig keeps
activations to 7 bits). Prints Markdown on stdout.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from statistics import median
from typing import Any

import harness
from harness import REPO

DATA = REPO.parent / "shared" / "data" / "cxr224"
CACHE = Path(tempfile.gettempdir()) / "cxrscreen-int8"
BATCH = 16
SPEED_CALIB_N = 32  # qparams do not change speed: the speed children calibrate on a few images
#: Every kernel library on its AVX2 code path: a stand-in for an AVX2-only server (not one).
AVX2_ENV = {"FBGEMM_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def load_split(lm: Any, split: str, n: int) -> tuple[Any, Any, Any]:
    """(frame, ``(N,1,S,S)`` float32 tensor, labels) of ``split``, through cxrscreen's chain; cached."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from cxrscreen.training.data import make_dataset, read_manifest

    df = read_manifest(DATA / "manifest.csv", split)
    if n:
        df = df.sample(n=min(n, len(df)), random_state=0).sort_index()
    spec = hashlib.sha256(json.dumps(lm.spec.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    path = CACHE / f"{lm.sha256[:12]}-{spec}-{split}-{len(df)}.pt"
    if path.is_file():
        x = torch.load(path)
    else:
        ds = make_dataset(df, lm.spec, augment=False, cache=False)
        x = torch.cat([b["image"] for b in DataLoader(ds, batch_size=64, num_workers=0)])
        CACHE.mkdir(parents=True, exist_ok=True)
        torch.save(x, path)
    return df.reset_index(drop=True), x, df["label"].to_numpy(np.int64)


def int8_form(lm: Any, calib: Any) -> tuple[str, Any, float]:
    """(name, int8 network, seconds to build it from the float network and the calibration)."""
    from cxrscreen.model.quantize import Int8Unavailable, calibrate_int8, int8_net, load_calibration

    try:
        c = load_calibration(lm.path, lm.sha256)
    except Int8Unavailable:
        c = calibrate_int8(lm.net, (calib[i:i + 64] for i in range(0, len(calib), 64)), lm.sha256,
                           f"{len(calib)} validation images (made by benchmarks/int8.py)")
    t = time.perf_counter()
    q = int8_net(lm.net, c)
    return f"int8 (x86; calibration: {c.source})", q, time.perf_counter() - t


def forms(lm: Any, calib: Any) -> dict[str, tuple[Any, Any]]:
    """name → (module, Runtime): the scoring forms compared."""
    import torch

    from cxrscreen.model.inference import Runtime, choose_runtime, cpu_supports_bf16, inference_net, prepare

    nchw = Runtime(torch.device("cpu"), None, False)
    fp32 = choose_runtime("cpu", "fp32")
    out = {
        "fp32 unfolded, NCHW": (prepare(copy.deepcopy(lm.net), nchw), nchw),
        "fp32 folded, NCHW": (inference_net(lm.net, nchw), nchw),
        "fp32 folded, channels_last (shipped)": (inference_net(lm.net, fp32), fp32),
    }
    if cpu_supports_bf16() and os.environ.get("ONEDNN_MAX_CPU_ISA") != "AVX2":  # not on the AVX2 stand-in
        bf16 = choose_runtime("cpu", "bf16")
        out["bf16 folded, channels_last (shipped)"] = (inference_net(lm.net, bf16), bf16)
    name, q, dt = int8_form(lm, calib)
    FORM_BUILD_S[name] = dt
    out[name] = (q, choose_runtime("cpu", "int8"))
    return out


FORM_BUILD_S: dict[str, float] = {}


def scores(net: Any, rt: Any, x: Any) -> Any:
    import numpy as np

    from cxrscreen.model.inference import predict_batch

    return np.concatenate([predict_batch(net, x[i:i + 64], rt).numpy() for i in range(0, len(x), 64)])


# --------------------------------------------------------------------------- speed (child)
def speed_child(cfg: dict[str, Any]) -> dict[str, Any]:
    """Interleaved rates of every form: 1 thread (CPU time) and all cores (wall)."""
    import torch

    from cxrscreen.model.files import load_model
    from cxrscreen.model.inference import predict_batch

    lm = load_model(cfg["model"])
    _, calib, _ = load_split(lm, "val", cfg["calib_n"])
    fs = forms(lm, calib[:SPEED_CALIB_N])
    x = calib[:BATCH].clone()
    res: dict[str, dict[str, list[float]]] = {k: {"cpu1": [], "wall": []} for k in fs}
    cores = os.cpu_count() or 1
    for net, rt in fs.values():  # warm-up
        predict_batch(net, x, rt)
    for _ in range(cfg["rounds"]):
        for name, (net, rt) in fs.items():
            for threads, key in ((1, "cpu1"), (cores, "wall")):
                torch.set_num_threads(threads)
                predict_batch(net, x, rt)
                t, c = time.perf_counter(), time.process_time()
                for _ in range(cfg["batches"]):
                    predict_batch(net, x, rt)
                dt = (time.process_time() - c) if key == "cpu1" else (time.perf_counter() - t)
                res[name][key].append(cfg["batches"] * BATCH / dt)
    return {"rates": res, "cores": cores, "isa": "AVX2" if cfg["avx2"] else "native", "build_s": FORM_BUILD_S}


def child_env(avx2: bool) -> dict[str, str]:
    """This process's environment, with every kernel library on AVX2 code paths or on its own choice."""
    env = {k: v for k, v in os.environ.items() if k not in AVX2_ENV}
    return env | AVX2_ENV if avx2 else env


def run_child(flag: str, cfg: dict[str, Any], avx2: bool) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, flag, json.dumps(cfg)], env=child_env(avx2), cwd=REPO,
                         capture_output=True, text=True, check=False)
    return harness.read_result(flag, out.returncode, out.stdout, out.stderr)


def run_speed(model: str, avx2: bool, rounds: int, batches: int) -> dict[str, Any]:
    cfg = {"model": model, "avx2": avx2, "rounds": rounds, "batches": batches, "calib_n": SPEED_CALIB_N}
    return run_child("--_speed", cfg, avx2)


# --------------------------------------------------------------------------- main
def accuracy(lm: Any, calib_n: int, test_n: int) -> dict[str, Any]:
    """Scores of every form on the test split; int8 calibrated on the validation split."""
    import numpy as np

    from cxrscreen.training.metrics import auroc

    _, calib, _ = load_split(lm, "val", calib_n)
    df, x, y = load_split(lm, "test", test_n)
    fs = forms(lm, calib)
    s = {name: scores(net, rt, x) for name, (net, rt) in fs.items() if name != "fp32 folded, NCHW"}
    ref_name = "fp32 folded, channels_last (shipped)"
    thr = float(lm.threshold)
    out: dict[str, Any] = {"n_calib": len(calib), "n_test": len(x), "threshold": thr, "forms": {}}
    groups = {str(k): v for k, v in df.groupby("dataset").indices.items()} | {"pooled": np.arange(len(df))}
    for name, sc in s.items():
        row: dict[str, Any] = {}
        for g, idx in groups.items():
            d = np.abs(sc[idx] - s[ref_name][idx])
            changed = int(np.sum((sc[idx] >= thr) != (s[ref_name][idx] >= thr)))
            row[g] = {"n": len(idx), "auroc": auroc(y[idx], sc[idx]), "max_dp": float(d.max()),
                      "mean_dp": float(d.mean()), "changed": changed,
                      "to_correct": int(np.sum(((sc[idx] >= thr) != (s[ref_name][idx] >= thr))
                                               & ((sc[idx] >= thr) == (y[idx] == 1))))}
        out["forms"][name] = row
    return out


def _paths(isa: str) -> str:
    return "AVX2 code paths (" + ", ".join(f"{k}={v}" for k, v in AVX2_ENV.items()) + ")" if isa == "AVX2" \
        else "native code paths"


def accuracy_lines(isa: str, acc: dict[str, Any]) -> list[str]:
    lines = ["", f"#### Decisions and AUROC, {_paths(isa)} (test split, {acc['n_test']} images; int8 calibrated on "
             f"{acc['n_calib']} validation images)", "",
             "Δ against the shipped fp32 scorer (folded + channels_last); *changed*: decisions at the threshold "
             "that differ from it (*to correct*: of those, how many now agree with the label).", "",
             "| form | dataset | AUROC | max \\|Δp\\| | mean \\|Δp\\| | changed | to correct |",
             "|---|---|---|---|---|---|---|"]
    for name, row in acc["forms"].items():
        for g, m in row.items():
            lines.append(f"| {name} | {g} (n={m['n']}) | {m['auroc']:.4f} | {m['max_dp']:.2g} | {m['mean_dp']:.2g} | "
                         f"{m['changed']} ({100 * m['changed'] / m['n']:.2f} %) | {m['to_correct']} |")
    return lines


def render(res: dict[str, Any]) -> str:
    lines = [f"Machine: {res['machine']}.  ", f"Date: {res['date']}. Command: `{res['command']}`.  ",
             f"Model: {res['model_note']}; threshold {res['accuracy']['native']['threshold']:.4f}.  ",
             f"torch.ao.quantization warnings on use: {res['warnings'] or 'none'}.", ""]
    for isa, acc in res["accuracy"].items():
        lines += accuracy_lines(isa, acc)
    for sp in res["speed"]:
        base = "fp32 folded, channels_last (shipped)"
        lines += ["", f"#### Speed, {_paths(sp['isa'])} "
                      f"(batch {BATCH}, median of {len(next(iter(sp['rates'].values()))['cpu1'])} interleaved rounds)",
                  "", "| form | 1 thread: img/s of CPU time | × shipped fp32 | "
                      f"{sp['cores']} threads: img/s wall | × shipped fp32 |", "|---|---|---|---|---|"]
        b1, bw = median(sp["rates"][base]["cpu1"]), median(sp["rates"][base]["wall"])
        for name, r in sp["rates"].items():
            c1, w = median(r["cpu1"]), median(r["wall"])
            lines.append(f"| {name} | {c1:.1f} | {c1 / b1:.2f}× | {w:.1f} | {w / bw:.2f}× |")
        lines += ["", "Building the int8 network (in this speed process; the native one from the calibration file: "
                      "``prepare_fx`` + ``convert_fx``, the scan's start-up cost): "
                      + "; ".join(f"{k}: {v:.1f} s" for k, v in sp.get("build_s", {}).items()) + "."]
    return "\n".join(lines) + "\n"


def machine() -> str:
    flags = harness.cpu_flags()
    feats = [f for f in ("avx2", "avx512_vnni", "avx512_bf16", "amx_bf16") if f in flags]
    return (f"{harness.cpu_model()}, {os.cpu_count()} cores ({', '.join(feats)}), Linux {platform.release()}; "
            f"{harness.software(with_pydicom=False)}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="model .json (default: the embedded default model)")
    ap.add_argument("--calib-n", type=int, default=0, help="validation images for calibration (0: all)")
    ap.add_argument("--test-n", type=int, default=0, help="test images scored (0: all)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved speed rounds")
    ap.add_argument("--batches", type=int, default=3, help="batches of 16 per form per round")
    ap.add_argument("--no-avx2", action="store_true", help="skip the runs on AVX2 code paths")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    ap.add_argument("--_speed", help=argparse.SUPPRESS)
    ap.add_argument("--_accuracy", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    if args._speed:
        harness.print_result(speed_child(json.loads(args._speed)))
        return
    if args._accuracy:
        cfg = json.loads(args._accuracy)
        from cxrscreen.model.files import load_model

        harness.print_result(accuracy(load_model(cfg["model"]), cfg["calib_n"], cfg["test_n"]))
        return
    from cxrscreen.model.files import DEFAULT_MODEL, load_model

    model = args.model or str(DEFAULT_MODEL)
    lm = load_model(model)
    with warnings.catch_warnings(record=True) as caught:  # what torch says about the int8 path
        warnings.simplefilter("always")
        import torch
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import prepare_fx

        prepare_fx(torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3)).eval(), get_default_qconfig_mapping("x86"),
                   example_inputs=(torch.zeros(1, 1, 8, 8),))
    res: dict[str, Any] = {
        "machine": machine(), "date": harness.utc_now(), "command": harness.command("int8.py", argv),
        "model_note": f"{lm.name} (sha256 {lm.sha256[:12]}, {lm.spec.input_size} px)",
        "warnings": "; ".join(sorted({f"{w.category.__name__}: {str(w.message).splitlines()[0]}" for w in caught})),
    }
    res["accuracy"], res["speed"] = {}, []
    for avx2 in (False, *(() if args.no_avx2 else (True,))):
        isa = "AVX2" if avx2 else "native"
        print(f"accuracy, {isa}", file=sys.stderr, flush=True)
        cfg = {"model": model, "calib_n": args.calib_n, "test_n": args.test_n}
        res["accuracy"][isa] = run_child("--_accuracy", cfg, avx2)
        print(f"speed, {isa}", file=sys.stderr, flush=True)
        res["speed"].append(run_speed(model, avx2, args.rounds, args.batches))
    print(render(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
