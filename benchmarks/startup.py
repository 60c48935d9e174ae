"""Benchmark: start-up, and a scan with nothing to score, against a baseline commit in the same run.

    .venv/bin/python benchmarks/startup.py [--ref COMMIT] [--copies 4] [--repeat 5]

For this tree and, with ``--ref``, the package at COMMIT (a ``git worktree`` put first on the
``PYTHONPATH``; same virtual environment), in alternating rounds, each a fresh ``cxrscreen scan``
process as cron runs it:

- a scan of an empty folder;
- a first run over ``sample_dicoms`` × ``copies`` (new UIDs per copy), reports for flagged studies;
- a rescan of those unchanged films (nothing to score: no torch, no model);
- ``python -c "import torch"`` as the machine's reference for an import-heavy start.

Prints a Markdown table (medians, ranges) and the stage times of the last first run (run.json), which
say what the first scored batch waited on. The figures go to docs/benchmarks.md by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness
import pydicom
from harness import REPO
from pydicom.uid import generate_uid

SAMPLES = REPO / "sample_dicoms"


def films(folder: Path, copies: int) -> int:
    """``sample_dicoms`` × ``copies``, each copy with its own UIDs (unreadable samples copied as they are)."""
    n = 0
    for k in range(copies):
        uids: dict[str, str] = {}
        for src in sorted(p for p in SAMPLES.rglob("*") if p.is_file() and p.name != "README.md"):
            dst = folder / f"copy{k}" / src.relative_to(SAMPLES)
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                ds = pydicom.dcmread(src)
            except Exception:  # the deliberately corrupt sample: bytes as they are
                shutil.copy(src, dst)
            else:
                for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
                    if kw in ds:
                        old = str(ds[kw].value)
                        setattr(ds, kw, uids.setdefault(old, generate_uid()))
                if "SOPInstanceUID" in ds and hasattr(ds, "file_meta"):
                    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                ds.save_as(dst)
            n += 1
    return n


def cxrscreen(args: list[str], tree: Path | None) -> tuple[float, dict | None]:
    """Wall seconds of one ``cxrscreen`` process (the package of ``tree`` when given) and its ``--json``."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "cxrscreen", *args, "--json"], capture_output=True, text=True,
                         cwd=tree or REPO, env=env)
    wall = time.perf_counter() - t0
    if res.returncode not in (0, 1):
        sys.exit(f"cxrscreen {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()[-2000:]}")
    return wall, json.loads(res.stdout) if res.stdout.strip() else None


def python_import_torch() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    return time.perf_counter() - t0


def span(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} s ({min(xs):.2f}–{max(xs):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ref", help="baseline commit (default: none, this tree only)")
    ap.add_argument("--copies", type=int, default=4, help="copies of sample_dicoms in the first run")
    ap.add_argument("--repeat", type=int, default=5, help="rounds (medians reported)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cxrscreen-startup-") as tmp:
        base = Path(tmp)
        trees: dict[str, Path | None] = {"this tree": None}
        if args.ref:
            ref = base / "ref"
            subprocess.run(["git", "worktree", "add", "--detach", str(ref), args.ref], cwd=REPO, check=True,
                           capture_output=True)
            trees = {f"{args.ref[:9]} (baseline)": ref, **trees}
        (base / "empty").mkdir()
        n = films(base / "films", args.copies)
        times: dict[str, dict[str, list[float]]] = {t: {"empty": [], "first": [], "rescan": []} for t in trees}
        torch_import: list[float] = []
        last: dict[str, dict] = {}
        try:
            for r in range(args.repeat):
                torch_import.append(python_import_torch())
                for name, tree in trees.items():
                    out = base / f"out-{r}-{len(last)}-{name[:4]}"
                    times[name]["empty"].append(cxrscreen(["scan", str(base / "empty"), "--out", str(out / "e")],
                                                          tree)[0])
                    wall, first = cxrscreen(["scan", str(base / "films"), "--out", str(out / "f")], tree)
                    times[name]["first"].append(wall)
                    last[name] = first or {}
                    times[name]["rescan"].append(cxrscreen(["scan", str(base / "films"), "--out", str(out / "f")],
                                                           tree)[0])
                print(f"round {r + 1}/{args.repeat} done", file=sys.stderr)
        finally:
            if args.ref:
                subprocess.run(["git", "worktree", "remove", "--force", str(base / "ref")], cwd=REPO,
                               capture_output=True)
    print(f"`{harness.command('startup.py', None)}`, {harness.utc_now()}, {harness.cpu_model()}, "
          f"{os.cpu_count()} cores, load average before: {os.getloadavg()[0]:.2f}; {n} files in the first run\n")
    print("| | " + " | ".join(trees) + " |")
    print("|---|" + "---|" * len(trees))
    print("| `python -c \"import torch\"` (reference) | " + " | ".join(span(torch_import) for _ in trees) + " |")
    for key, label in (("empty", "scan of an empty folder"), ("first", f"first run, {n} files"),
                       ("rescan", "rescan, nothing to score")):
        print(f"| {label} | " + " | ".join(span(times[t][key]) for t in trees) + " |")
    print("| first run ÷ rescan | " + " | ".join(
        f"{statistics.median(times[t]['first']) / statistics.median(times[t]['rescan']):.1f}×" for t in trees) + " |")
    for name, s in last.items():
        d = s.get("durations_s", {})
        print(f"\n{name}, last first run, run.json durations_s: "
              + ", ".join(f"{k} {v:.2f}" for k, v in d.items()))


if __name__ == "__main__":
    main()
