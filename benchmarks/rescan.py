"""Benchmark: the nightly rescan of an unchanged folder of 10,000 DICOM files (target ≤ 10 s).

    .venv/bin/python benchmarks/rescan.py [--n 10000] [--model MODEL.json] [--repeat 3]

Builds N tiny (8×8 px) DICOM files in a temporary folder (100 per sub-folder, one study each), runs
one real ``cxrscreen scan`` to fill the ledger (tiny films are ``not_assessable:too_small``, so that
first scan reads every header and hashes every file but runs no inference: a real fill, not a
shortcut), then times ``cxrscreen scan`` again on the unchanged folder, end to end as cron runs it
(new Python process, the model's metadata read — with nothing to score, neither torch nor the
weights are loaded —, discovery, ledger check, worklists and run.json rewritten for N rows).
``--reports none``: report generation belongs to another benchmark. Without ``--model`` a
random-weight 64 px ResNet50 is built (what a run that loads it spends is that of the real model:
same weights size).

Prints one Markdown table row: what, median seconds (stage breakdown from run.json), machine, date.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness
import numpy as np
from harness import REPO

from cxrscreen.testing import dicom


def tiny_dicoms(folder: Path, n: int, side: int = 8) -> None:
    """``n`` small DX files, distinct UIDs, 100 per sub-folder."""
    rng = np.random.default_rng(0)
    for i in range(n):
        ds = dicom.dataset(PatientName=f"BENCH^{i}", PatientID=f"B{i:06d}", AccessionNumber=f"A{i:06d}",
                           StudyDate="20260101")
        dicom.set_pixels(ds, rng.integers(0, 4096, (side, side), dtype=np.uint16), bits=12)
        dicom.write(ds, folder / f"d{i // 100:03d}" / f"img{i:06d}.dcm")


def scan(folder: Path, out: Path, model: Path) -> tuple[float, dict]:
    """One ``cxrscreen scan`` subprocess; wall seconds and its run summary."""
    cmd = [sys.executable, "-m", "cxrscreen", "scan", str(folder), "--out", str(out), "--model", str(model),
           "--reports", "none", "--json"]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    if res.returncode not in (0, 1):
        sys.exit(f"scan failed ({res.returncode}): {res.stderr.strip()}")
    return wall, json.loads(res.stdout)


def machine() -> str:
    return (f"{harness.cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release().split('-')[0]}, "
            f"{harness.software()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10_000, help="number of DICOM files")
    ap.add_argument("--model", type=Path, help="model .json (default: a random 64 px ResNet50)")
    ap.add_argument("--repeat", type=int, default=3, help="timed rescans (the median is reported)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cxrscreen-rescan-") as tmp:
        base = Path(tmp)
        folder, out = base / "in", base / "out"
        t0 = time.perf_counter()
        tiny_dicoms(folder, args.n)
        print(f"built {args.n} files in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        model = args.model or harness.random_model(base / "model" / "bench.json", 64)  # only its load time matters
        wall, s = scan(folder, out, model)
        print(f"first scan (fills the ledger): {wall:.1f} s, {s['files_processed']} files", file=sys.stderr)
        runs = []
        for _ in range(args.repeat):
            wall, s = scan(folder, out, model)
            assert s["files_processed"] == 0 and s["files_skipped_already_scored"] == args.n, s
            runs.append((wall, s))
            print(f"rescan: {wall:.2f} s (in-process {s['wall_s']:.2f} s; runtime: {s['runtime']})", file=sys.stderr)
    wall, s = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
    d = s["durations_s"]
    stages = ", ".join(f"{k} {d[k]:.2f} s" for k in ("discover", "plan", "worklists") if k in d)
    print(f"| rescan, {args.n:,} unchanged files (`cxrscreen scan`, end to end) | "
          f"{statistics.median(r[0] for r in runs):.1f} s (median of {len(runs)}; in-process {s['wall_s']:.1f} s: "
          f"{stages}) | {machine()} | {time.strftime('%Y-%m-%d')} |")


if __name__ == "__main__":
    main()
