"""Seconds per flagged image for Grad-CAM + PDF reports, against scoring alone in the same run.

    .venv/bin/python benchmarks/reports.py                      # synthetic studies, embedded (or random) model
    .venv/bin/python benchmarks/reports.py --folder sample_dicoms --model /path/model.json

Every assessable image is flagged (threshold 1e-6) so that every image gets a report page. The
scan runs first with ``--reports none`` (scoring only); then ``write_reports`` runs on the same
ledger, timed per stage (re-read + decode, Grad-CAM, PDF drawing + write). Each is repeated
(``--repeat``) and the fastest run is reported: on a shared machine the minimum is the stable figure.
Prints Markdown.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from cxrscreen.model.files import load_model  # noqa: E402
from cxrscreen.model.inference import choose_runtime  # noqa: E402
from cxrscreen.outputs import report as R  # noqa: E402
from cxrscreen.pipeline import scan  # noqa: E402
from cxrscreen.state.ledger import Ledger  # noqa: E402

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "cxrscreen" / "models" / "default.json"
TARGET_S = 0.5


def synthetic_folder(folder: Path, n: int, per_study: int, size: tuple[int, int]) -> Path:
    from pydicom.uid import generate_uid

    from tests.factory import chest_phantom, make_dicom

    uid = generate_uid()
    for i in range(n):
        if i % per_study == 0:
            uid = generate_uid()
        make_dicom(folder / f"s{i // per_study:03d}" / f"img{i:03d}.dcm", chest_phantom(*size, seed=i),
                   study_uid=uid, accession=f"BENCH{i // per_study:03d}", patient_id=f"B{i // per_study:03d}")
    return folder


def random_model(folder: Path, size: int) -> Path:
    from tests.conftest import _random_model

    return _random_model(folder / "random.json", input_size=size)


def timed(name: str, fn, totals: Counter):
    def wrapper(*a, **kw):
        t = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            totals[name] += time.perf_counter() - t
    return wrapper


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, help="DICOM folder (default: synthetic studies)")
    ap.add_argument("--images", type=int, default=16, help="synthetic images (default 16)")
    ap.add_argument("--per-study", type=int, default=2, help="synthetic images per study (default 2)")
    ap.add_argument("--size", type=int, nargs=2, default=(1536, 1280), metavar=("ROWS", "COLS"))
    ap.add_argument("--model", type=Path, help="model .json (default: the embedded model, else a random 224 px one)")
    ap.add_argument("--precision", default="auto", help="scoring precision (Grad-CAM is always fp32)")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each stage; the fastest is reported (default 3)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as tmp:
        tmp = Path(tmp)
        model_path = args.model or (DEFAULT_MODEL if DEFAULT_MODEL.is_file() else random_model(tmp, 224))
        lm = load_model(model_path)
        folder = args.folder or synthetic_folder(tmp / "in", args.images, args.per_study, tuple(args.size))
        scans = []
        for i in range(args.repeat):  # scoring only, each run into a fresh output folder
            out = tmp / f"out{i}"
            t = time.perf_counter()
            res = scan(folder, out=out, model=lm, threshold=1e-6, precision=args.precision, workers=args.workers,
                       reports="none", progress=None)
            scans.append((time.perf_counter() - t, res.summary["durations_s"].get("score_wall", 0.0)))
        scan_wall, score_wall = min(scans)
        n_scored = res.summary["images_scored"]
        rt = choose_runtime("auto", args.precision)
        runs = []
        for _ in range(args.repeat):  # the report stage from scratch, timed per stage
            shutil.rmtree(out / "reports", ignore_errors=True)
            totals: Counter[str] = Counter()
            originals = {k: getattr(R, k) for k in ("load_study", "attach_cams", "render_study")}
            R.load_study = timed("re-read + decode", R.load_study, totals)
            R.attach_cams = timed("Grad-CAM (fp32)", R.attach_cams, totals)
            R.render_study = timed("PDF drawing + JPEG", R.render_study, totals)
            try:
                with Ledger(out / ".cxrscreen" / "ledger.sqlite") as ledger:
                    t = time.perf_counter()
                    R.write_reports(out, folder, lm, rt, ledger, "flagged", lambda e: None)
                    runs.append((time.perf_counter() - t, totals))
                    pages = sum(len(s.records) for s in R.group_studies(ledger.records()) if R.wanted(s, "flagged"))
                    n_reports = len(list((out / "reports").glob("*.pdf")))
            finally:
                for k, v in originals.items():
                    setattr(R, k, v)
        rep_wall, totals = min(runs, key=lambda r: r[0])

    per = rep_wall / max(pages, 1)
    load = os.getloadavg()
    print(f"model `{lm.name}` ({lm.spec.input_size} px), scoring runtime `{rt.describe()}`, torch threads "
          f"{torch.get_num_threads()}, {os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f}\n")
    print(f"{n_scored} images scored; {n_reports} reports, {pages} pages (one per flagged image); "
          f"fastest of {args.repeat} runs (report stage: {', '.join(f'{r[0]:.2f}' for r in runs)} s)\n")
    print("| stage | total s | s per flagged image |")
    print("|---|---:|---:|")
    print(f"| scoring only: whole scan, `--reports none` | {scan_wall:.2f} | {scan_wall / max(n_scored, 1):.3f} |")
    print(f"| scoring only: decode + model loop (`score_wall`) | {score_wall:.2f} | "
          f"{score_wall / max(n_scored, 1):.3f} |")
    for name, v in totals.items():
        print(f"| reports: {name} | {v:.2f} | {v / max(pages, 1):.3f} |")
    print(f"| **reports: CAM + PDF, all stages** | **{rep_wall:.2f}** | **{per:.3f}** |")
    verdict = "meets" if per <= TARGET_S else "misses"
    print(f"\nCAM + PDF: {per:.3f} s per flagged image — {verdict} the {TARGET_S} s target on this machine.")


if __name__ == "__main__":
    main()
