"""Throughput of ``cxrscreen scan`` against the model-only ceiling and a naive per-image loop (issue #6).

    .venv/bin/python benchmarks/throughput.py [--n 200] [--n-large 50] [--sizes 1024,2500x3000]
        [--syntaxes raw,j2k,jls] [--precisions auto,fp32] [--model MODEL.json] [--keep] [--json results.json]
    .venv/bin/python benchmarks/throughput.py --quick   # a few minutes: 1024² uncompressed, both precisions

Inputs: N synthetic-patient DICOM files per size (``1024`` = 1024×1024, ``2500x3000`` = 2500 columns ×
3000 rows; the large kind uses ``--n-large``), made from the 24 full-resolution pediatric JPEGs in
``../shared/data/fullres`` (random crop, flip, resize, 12 bits stored in 16 allocated, detector-like
noise, a VOI window in the header; synthetic anatomy when that folder is absent). Each image is made
once and written uncompressed (``raw``), then JPEG 2000 lossless (``j2k``) and JPEG-LS lossless (``jls``)
through ``cxrscreen.testing.dicom.encode`` (pydicom's encoders). Files are cached in ``$TMPDIR/cxrscreen-throughput/``
keyed by size, bits and N, so reruns skip generation.

Every configuration runs in a fresh subprocess (``--_child``) that reports its own peak RSS
(``RUSAGE_SELF``) and that of its DataLoader workers (``RUSAGE_CHILDREN``); the parent also samples
the whole process tree (sum of RSS and of PSS) every 0.1 s. Configurations, in one run:

1. model only: the scoring network (``inference_net``) at the model's input size, batch 16, for each
   of ``--precisions`` (default ``auto,fp32,int8``: ``auto`` as the scan resolves it (bf16 when the
   CPU has it, else int8 for a model with an int8 calibration, else fp32), fp32, and int8 when the
   model has an int8 calibration; each runtime once), at the start and at the end of the run; the
   best of each precision is that precision's ceiling;
2. ``cxrscreen.scan`` end to end (what ``cxrscreen scan`` runs; model load, discovery,
   hashing, decoding, scoring, ledger, worklists, summary PDF), ``reports="none"``, once per
   precision, then (first precision only) ``reports="flagged"`` with a threshold at the 90th
   percentile of the first run's scores;
3. naive: per file ``dcmread`` → ``pixel_array`` → ``skimage.transform.resize`` to 224² with
   anti-aliasing → fp32 forward at batch 1 (a notebook / torchxrayvision batch-script loop), run for
   ``--naive-seconds`` or ``--naive-n`` files, whichever comes first.

Also a ``--workers`` × ``--batch-size`` sweep (1024² raw, ``--sweep-n`` files) and a flat-memory
check (1024² raw at N and at 10×N files, hard links to the N files: every path is still read,
decoded and scored), both at the first precision. Targets per precision: 1024² uncompressed end to
end ≥ 3× the naive loop and ≥ 50 % of that precision's model-only ceiling. ``--quick`` runs only
those (200 files, no reports, sweep or flat check, shorter timings, no retries for a busy machine).
Without ``--model`` the embedded default model is used when it exists, else a random-weight
224 px ResNet50 is built (weights do not change speed). Prints Markdown on stdout.

A stand-in for an AVX2-only server (not one): run it with ``CXRSCREEN_DISABLE_BF16=1
ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 FBGEMM_ENABLE_INSTRUCTIONS=AVX2`` (as ``make
test-avx2``); every child inherits them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness
from harness import CACHE, GEN_VERSION, REPO

FULLRES = REPO.parent / "shared" / "data" / "fullres"
SYNTAXES = {"raw": "ExplicitVRLittleEndian", "j2k": "JPEG2000Lossless", "jls": "JPEGLSLossless"}
SYNTAX_NAMES = {"raw": "uncompressed", "j2k": "JPEG 2000 lossless", "jls": "JPEG-LS lossless"}
MODEL_BATCH = 16
TARGET_VS_NAIVE = 3.0
TARGET_VS_MODEL = 0.5
TARGET_J2K_VS_RAW = 0.5
TARGET_RSS_GB = 2.5
FLAT_TOLERANCE = 1.15  # 10×N may use at most 15 % more memory than N to count as flat


# --------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class Kind:
    """One input geometry: ``cols`` × ``rows`` pixels, ``n`` files."""

    cols: int
    rows: int
    n: int

    @property
    def label(self) -> str:
        return f"{self.cols}²" if self.cols == self.rows else f"{self.cols}×{self.rows}"

    def folder(self, bits: int, syntax: str) -> Path:
        return harness.input_folder(self.cols, self.rows, bits, self.n, syntax)


def parse_size(text: str) -> tuple[int, int]:
    """``1024`` → (1024, 1024); ``2500x3000`` → (2500 columns, 3000 rows)."""
    parts = text.lower().replace("×", "x").split("x")
    if len(parts) == 1:
        return int(parts[0]), int(parts[0])
    return int(parts[0]), int(parts[1])


_SOURCES: list[Any] = []


def _sources() -> list[Any]:
    """The full-resolution JPEGs as float32 [0, 1] arrays (empty when the folder is absent)."""
    if not _SOURCES and (FULLRES / "manifest.csv").is_file():
        import csv

        import numpy as np
        from PIL import Image

        with open(FULLRES / "manifest.csv", newline="") as fh:
            for row in csv.DictReader(fh):
                with Image.open(FULLRES / row["path"]) as im:
                    _SOURCES.append(np.asarray(im.convert("L"), dtype=np.float32) / 255.0)
    return _SOURCES


def _phantom(rows: int, cols: int, rng: Any) -> Any:
    """Synthetic chest-like anatomy in [0, 1] when no real source images are available."""
    import numpy as np

    yy, xx = np.mgrid[0:rows, 0:cols]
    y, x = (yy - rows / 2) / (rows / 2), (xx - cols / 2) / (cols / 2)
    img = np.full((rows, cols), 0.05, dtype=np.float32)
    img[(x / 0.9) ** 2 + (y / 0.95) ** 2 < 1] = 0.55
    for cx in (-0.42, 0.42):
        img[((x - cx) / 0.3) ** 2 + ((y + 0.05) / 0.6) ** 2 < 1] = 0.2 + rng.uniform(-0.05, 0.05)
    img[np.abs(x) < 0.12] = np.maximum(img[np.abs(x) < 0.12], 0.8)
    return img


def make_pixels(index: int, cols: int, rows: int, bits: int) -> Any:
    """Stored values (uint16) for image ``index``: a random crop of a source film at ``cols``×``rows``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng([GEN_VERSION, index, cols, rows])
    sources = _sources()
    if sources:
        src = sources[index % len(sources)]
        h, w = src.shape
        frac = rng.uniform(0.85, 1.0)
        ch = min(h, int(w * rows / cols))
        cw = int(ch * cols / rows)
        ch, cw = max(16, int(ch * frac)), max(16, int(cw * frac))
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = Image.fromarray(np.ascontiguousarray(src[y0:y0 + ch, x0:x0 + cw]), mode="F")
        img = np.asarray(crop.resize((cols, rows), Image.Resampling.BICUBIC), dtype=np.float32)
        if (index // len(sources)) % 2:
            img = img[:, ::-1]
    else:
        img = _phantom(rows, cols, rng)
    hi = 2**bits - 1
    stored = (0.08 + 0.84 * np.clip(img, 0, 1)) * hi + rng.normal(0.0, hi / 700.0, img.shape)
    return np.clip(np.rint(stored), 0, hi).astype(np.uint16)


def make_dataset(pixels: Any, bits: int, index: int) -> Any:
    """A DX chest PA dataset (one study per file) holding ``pixels`` uncompressed."""
    from cxrscreen.testing import dicom

    ds = dicom.dataset(PatientName=f"BENCH^{index}", PatientID=f"B{index:06d}", AccessionNumber=f"A{index:06d}",
                       StudyDate="20260101")
    window = tuple(map(str, dicom.auto_window(pixels[::4, ::4])))
    return dicom.set_pixels(ds, pixels, bits=bits, window=window)


def _generate_one(job: tuple[int, int, int, int, list[tuple[str, str]]]) -> None:
    """Make image ``index`` once and write it in every requested transfer syntax."""
    import pydicom.uid

    from cxrscreen.testing import dicom

    index, cols, rows, bits, targets = job
    pixels = make_pixels(index, cols, rows, bits)
    for syntax, path in targets:
        ds = dicom.encode(make_dataset(pixels, bits, index), getattr(pydicom.uid, SYNTAXES[syntax]))
        tmp = dicom.write(ds, Path(path).with_suffix(".tmp"))
        tmp.replace(path)


def ensure_inputs(kind: Kind, bits: int, syntaxes: list[str], procs: int) -> float:
    """Generate (or reuse) the cached files of ``kind``; seconds spent generating."""
    from multiprocessing import get_context

    todo = [s for s in syntaxes if not (kind.folder(bits, s) / ".complete").is_file()]
    if not todo:
        return 0.0
    t0 = time.perf_counter()
    jobs = []
    for s in todo:
        kind.folder(bits, s).mkdir(parents=True, exist_ok=True)
    for i in range(kind.n):
        targets = [(s, str(kind.folder(bits, s) / f"img{i:05d}.dcm")) for s in todo]
        targets = [(s, p) for s, p in targets if not Path(p).is_file()]
        if targets:
            jobs.append((i, kind.cols, kind.rows, bits, targets))
    with get_context("fork").Pool(procs) as pool:
        for _ in pool.imap_unordered(_generate_one, jobs, chunksize=1):
            pass
    for s in todo:
        (kind.folder(bits, s) / ".complete").write_text("ok\n")
    return time.perf_counter() - t0


def linked_copies(src: Path, dst: Path, copies: int) -> Path:
    """``copies`` hard-linked replicas of ``src``'s files under ``dst/rNN/`` (distinct paths)."""
    if (dst / ".complete").is_file():
        return dst
    shutil.rmtree(dst, ignore_errors=True)
    files = sorted(src.glob("*.dcm"))
    for r in range(copies):
        sub = dst / f"r{r:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        for f in files:
            try:
                os.link(f, sub / f.name)
            except OSError:
                shutil.copy2(f, sub / f.name)
    (dst / ".complete").write_text("ok\n")
    return dst


def subset(src: Path, dst: Path, n: int) -> Path:
    """The first ``n`` files of ``src`` as hard links in ``dst``."""
    if (dst / ".complete").is_file():
        return dst
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    for f in sorted(src.glob("*.dcm"))[:n]:
        os.link(f, dst / f.name)
    (dst / ".complete").write_text("ok\n")
    return dst


# --------------------------------------------------------------------------- model
def calibrate_head(net: Any, folder: Path, n: int = 16) -> None:
    """Rescale a random network's last layer so its logits on ``folder``'s images are ~N(0, 1).

    Random ResNet50 weights give logits of about +13 (every probability ≈ 1.0), so no threshold could
    flag a fraction; after this the scores spread around 0.5. Speed is unaffected.
    """
    import torch

    from cxrscreen.prepare import prepare_file
    from cxrscreen.preprocess import PreprocessSpec, build_transform

    spec = PreprocessSpec(input_size=224)
    transform = build_transform(spec)
    items = [prepare_file(p, spec, transform) for p in sorted(folder.glob("*.dcm"))[:n]]
    x = torch.stack([it.image for it in items if it.image is not None])
    with torch.no_grad():
        logits = net.eval()(x).reshape(-1)
        m, sd = float(logits.mean()), max(float(logits.std()), 1e-3)
        net.fc.weight /= sd
        net.fc.bias.sub_(m).div_(sd)


def resolve_model(arg: Path | None, calib: Path) -> tuple[Path, str]:
    """The model to benchmark and a sentence saying which one it is."""
    if arg is not None:
        return arg, f"model `{arg}` (given with `--model`)"
    from cxrscreen.model.files import DEFAULT_MODEL

    if DEFAULT_MODEL.is_file():
        meta = json.loads(DEFAULT_MODEL.read_text())
        return DEFAULT_MODEL, (f"the embedded default model ({meta.get('name', '?')}, "
                               f"{meta['preprocess'].get('input_size')} px)")
    path = CACHE / "random224-calibrated.json"
    if not path.is_file():
        harness.random_model(path, 224, note="random weights built by benchmarks/throughput.py; speed only",
                             adjust=lambda net: calibrate_head(net, calib))
    return path, ("a random-weight ResNet50 at 224 px built the way tests/conftest.py `_random_model` does "
                  "(`cxrscreen/models/default.json` does not exist yet; weights do not change speed), its last "
                  "layer rescaled so that scores spread around 0.5 instead of all ≈ 1.0")


# --------------------------------------------------------------------------- children
def child_model(cfg: dict[str, Any]) -> dict[str, Any]:
    """Model-only rate: random batches at the model's input size."""
    import torch

    from cxrscreen.model.files import load_model
    from cxrscreen.model.inference import predict_batch, runtime_for, scoring_net

    lm = load_model(cfg["model"])
    rt = runtime_for(lm, "cpu", cfg["precision"])
    net = scoring_net(lm, rt)
    size = lm.spec.input_size
    x = torch.randn(cfg["batch"], 1, size, size)
    for _ in range(3):
        predict_batch(net, x, rt)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < cfg["seconds"] or n < 4 * cfg["batch"]:
        predict_batch(net, x, rt)
        n += cfg["batch"]
    dt = time.perf_counter() - t0
    return {"img_s": n / dt, "images": n, "runtime": rt.describe(), "input_size": size,
            "threads": torch.get_num_threads()}


def child_scan(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cxrscreen.scan`` on a folder, with batch timestamps for the steady-state rate."""
    import csv

    from cxrscreen import scan
    from cxrscreen.events import BatchScored, Event, ScanStarted
    from cxrscreen.options import ScanOptions

    marks: list[tuple[float, int]] = []

    started: list[float] = []

    def progress(e: Event) -> None:
        if isinstance(e, ScanStarted):
            started.append(time.perf_counter())
        if isinstance(e, BatchScored):
            marks.append((time.perf_counter(), e.done))

    t0 = time.perf_counter()
    options = ScanOptions(threshold=cfg.get("threshold"), precision=cfg.get("precision", "auto"),
                          batch_size=cfg["batch"], workers=cfg["workers"], reports=cfg["reports"], rescan=True)
    res = scan(cfg["folder"], out=cfg["out"], model=cfg["model"], options=options, progress=progress)
    wall = time.perf_counter() - t0
    s = res.summary.to_json()
    steady = None
    if len(marks) >= 3:
        (ta, na), (tb, nb) = marks[0], marks[-1]
        steady = (nb - na) / (tb - ta) if tb > ta else None
    with open(res.images_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    probs = [float(r["probability"]) for r in rows if r.get("probability")]
    notes: dict[str, int] = {}
    for r in rows:
        for note in filter(None, (r.get("qc_notes") or "").replace(";", " ").replace(",", " ").split()):
            notes[note] = notes.get(note, 0) + 1
    reports = len(list((Path(cfg["out"]) / "reports").glob("*.pdf")))
    return {"wall_s": wall, "summary_wall_s": s["wall_s"], "files": s["files_processed"],
            "scored": s["images_scored"], "statuses": s["statuses"], "decisions": s["decisions"],
            "durations_s": s["durations_s"], "score_img_s": s["images_per_s"], "steady_img_s": steady,
            "first_batch_s": (marks[0][0] - t0) if marks else None, "runtime": s["runtime"],
            "start_s": (started[0] - t0) if started else None, "schedule": s.get("schedule"),
            "probs": probs, "notes": notes, "reports": reports}


CHILDREN = {"model": child_model, "scan": child_scan, "naive": harness.naive_loop}


# --------------------------------------------------------------------------- parent side
def run_child(cfg: dict[str, Any], log_dir: Path, name: str) -> dict[str, Any]:
    """One configuration in a fresh interpreter (``--_child``), rerun while other processes disturbed it."""
    return harness.run_child(Path(__file__).resolve(), cfg, log_dir, name, _brief)


def _brief(r: dict[str, Any]) -> str:
    rate = r.get("img_s") or (r["files"] / r["wall_s"] if r.get("files") else 0.0)
    return (f"{rate:.1f} img/s, main {r['rss_main_mb']:.0f} MB, worker {r['rss_worker_mb']:.0f} MB, "
            f"tree PSS {r['tree_pss_mb']:.0f} MB, {r['process_wall_s']:.1f} s, "
            f"CPU {r['cpu_cores_used']:.2f} cores, others {r['others_cores']:.2f} cores")


def e2e_rate(r: dict[str, Any]) -> float:
    """End-to-end rate: files / wall time of the whole ``scan()`` call (model load, discovery, hashing,
    decoding, scoring, ledger, worklists, run.json and the summary PDF; not the interpreter start)."""
    return r["files"] / r["wall_s"]


def threshold_for(probs: list[float], q: float = 0.9) -> float:
    """A threshold that flags roughly the top ``1 - q`` of the scores (kept inside (0, 1))."""
    import numpy as np

    if not probs:
        return 0.5
    t = float(np.quantile(np.asarray(probs), q))
    return float(min(max(t, 1e-6), 1 - 1e-6))


# --------------------------------------------------------------------------- report
def _mb(x: float) -> str:
    return f"{x / 1024:.2f} GB" if x >= 1024 else f"{x:.0f} MB"


def _rss(r: dict[str, Any], workers: int) -> str:
    return (f"{_mb(r['rss_main_mb'])} + {workers}×{_mb(r['rss_worker_mb'])} "
            f"(tree PSS {_mb(r['tree_pss_mb'])})" if workers else
            f"{_mb(r['rss_main_mb'])} (PSS {_mb(r['tree_pss_mb'])})")


def used_workers(r: dict[str, Any]) -> int:
    """Decode worker processes the scan ran with (its run.json ``schedule``)."""
    return int((r.get("schedule") or {}).get("workers", 0))


def _sched(r: dict[str, Any]) -> str:
    s = r.get("schedule") or {}
    w, t = s.get('workers', '?'), s.get('torch_threads', '?')
    return f"{w} worker{'' if w == 1 else 's'}, {t} thread{'' if t == 1 else 's'}" if s else "—"


def _ok(flag: bool) -> str:
    return "**met**" if flag else "**not met**"


def cpu_bound(r: dict[str, Any], model_img_s: float) -> float:
    """img/s if all cores did nothing but this run's file preparation and the model-only forward.

    Preparation: the decode + preprocess wall time of each file in its thread or worker (in process,
    ``prepare_cpu_in_process`` counts only the waits since the next batch is prepared while one is scored).
    """
    cores = os.cpu_count() or 1
    d, n = r["durations_s"], max(1, r["files"])
    prep = d.get("decode", 0) + d.get("preprocess", 0)
    per_img = 1e3 * prep / n + cores * 1e3 / model_img_s
    return cores * 1e3 / per_img


def _n(r: dict[str, Any] | None) -> str:
    """A dagger for results that other processes disturbed (see the load line)."""
    return " †" if r and r.get("noisy") else ""


def render(res: dict[str, Any]) -> str:
    """All results as Markdown."""
    m, a = res["machine"], res["args"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores ({m['isa']}), {m['ram']} RAM, {m['os']}; {m['sw']}.  ",
             f"GPU: {m['gpu']}" + (" — no GPU was available for this measurement." if m["gpu"] == "none" else "."),
             f"Date: {res['date']}. Command: `{res['command']}` (total {res['total_s'] / 60:.1f} min, input "
             f"generation {res['gen_s']:.0f} s of it).  ",
             harness.load_line(res.get("load", [])),
             f"Model: {res['model_note']}. Inputs: {a['bits']} bits stored in 16 allocated, VOI window in the "
             f"header, one study per file, made from {res['source_note']}.", ""]
    bests = res["model_best"]
    lines += ["### Model only (ceiling)", "", "| precision | runtime | batch | when | img/s | peak RSS |",
              "|---|---|---|---|---|---|"]
    for r in res["model"]:
        lines.append(f"| {r['precision']} | {r['runtime']} | {MODEL_BATCH} | {r.get('when', '')} of the run | "
                     f"{r['img_s']:.1f}{_n(r)} | {_mb(r['rss_main_mb'])} |")
    lines += ["", "Ceilings used for the ratios (best of the precision's model-only runs): " + "; ".join(
        f"{p}: {b['img_s']:.1f} img/s ({b['runtime']}, {b['threads']} threads)" for p, b in bests.items()) + ".", ""]
    for kind_label, rows in res["kinds"].items():
        lines += [f"### {kind_label} ({rows[0]['n']} files)", "",
                  "| input | precision | naive img/s | scan img/s, reports off | scoring stage img/s | schedule "
                  "| scan img/s, reports on | peak RSS, reports off: main + workers (tree PSS) | scan / model "
                  "| scan / naive |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for row in rows:
            off, on, nv = row["off"], row["on"], row["naive"]
            best = bests[row["precision"]]
            e2e = e2e_rate(off)
            on_txt = (f"{e2e_rate(on):.1f}{_n(on)} ({on['reports']} PDFs for {on['decisions'].get('abnormal', 0)} "
                      f"abnormal + {on['decisions'].get('review', 0)} review)") if on else row.get("on_note", "—")
            lines.append(f"| {row['syntax_name']} | {row['precision']} | {nv['img_s']:.1f}{_n(nv)} | "
                         f"{e2e:.1f}{_n(off)} | "
                         f"{off['score_img_s'] or 0:.1f} | {_sched(off)} | {on_txt} | {_rss(off, row['workers'])} | "
                         f"{e2e / best['img_s']:.2f} | {e2e / nv['img_s']:.1f}× |")
        lines += ["", "Per-stage timings (run.json `durations_s`, reports off; decode and preprocess are wall times "
                      "summed over files in the preparing threads or workers, shown per image, so they overlap; "
                      "*start* = model load + discovery + plan; *first batch scored* = start + first batch prepared "
                      "+ first (warm-up) forward; *CPU bound* = "
                      "cores × 1000 / (decode + preprocess ms/img + cores × 1000 / model-only img/s), the rate if "
                      "every core were busy) and the naive loop's split:", "",
                  "| input | precision | start | first batch scored | decode ms/img | preprocess ms/img "
                  "| infer (main) | wait for decode "
                  "| ledger | score wall | worklists + summary PDF | scan() wall | process wall | CPU used | CPU bound "
                  "| naive ms/img: read+decode / resize / forward |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in rows:
            off, nv = row["off"], row["naive"]
            best = bests[row["precision"]]
            d, n = off["durations_s"], max(1, off["files"])
            tail = off["wall_s"] - (off["start_s"] or 0) - d.get("score_wall", 0) - d.get("reports", 0)
            lines.append(
                f"| {row['syntax_name']} | {row['precision']} | {off['start_s'] or 0:.1f} s | "
                f"{off['first_batch_s'] or 0:.1f} s | "
                f"{1e3 * d.get('decode', 0) / n:.1f} | {1e3 * d.get('preprocess', 0) / n:.1f} | "
                f"{d.get('infer', 0):.1f} s ({1e3 * d.get('infer', 0) / n:.1f} ms/img) | "
                f"{d.get('wait_for_decode', 0):.1f} s | {d.get('ledger', 0):.2f} s | {d.get('score_wall', 0):.1f} s | "
                f"{tail:.1f} s | {off['wall_s']:.1f} s | {off['process_wall_s']:.1f} s | "
                f"{off['cpu_cores_used']:.2f} cores | {cpu_bound(off, best['img_s']):.0f} img/s | "
                f"{nv['ms_read_decode']:.0f} / {nv['ms_resize']:.0f} / {nv['ms_forward']:.0f} |")
        notes = [f"{row['syntax_name']}: {', '.join(f'{k} ×{v}' for k, v in sorted(row['off']['notes'].items()))}"
                 for row in rows if row["off"]["notes"] and row["first_precision"]]
        if notes:
            lines += ["", "QC notes (decode path): " + "; ".join(notes) + "."]
        parts = []
        for r in (r for r in rows if r["on"]):
            t_rep = r["on"]["durations_s"].get("reports", 0.0)
            parts.append(f"{r['syntax_name']}: threshold {r['threshold']:.6f}, reports stage {t_rep:.1f} s "
                         f"({t_rep / max(1, r['on']['reports']):.2f} s per PDF)")
        if parts:
            lines += ["", "Reports on: " + "; ".join(parts) + "."]
        lines.append("")
    if res.get("sweep"):
        lines += [f"### Workers × batch size (1024² uncompressed, {res['sweep_n']} files, reports off)", "",
                  "| --workers | schedule used | batch | scan img/s | scoring stage img/s | wait for decode "
                  "| peak tree PSS |",
                  "|---|---|---|---|---|---|---|"]
        for r in res["sweep"]:
            lines.append(f"| {r['asked']} | {_sched(r)} | {r['batch']} | {e2e_rate(r):.1f}{_n(r)} | "
                         f"{r['score_img_s'] or 0:.1f} | "
                         f"{r['durations_s'].get('wait_for_decode', 0):.1f} s | {_mb(r['tree_pss_mb'])} |")
        bw = max(res["sweep"], key=e2e_rate)
        lines += ["", f"Best: --workers {bw['asked']}, batch {bw['batch']} ({e2e_rate(bw):.1f} img/s).", ""]
    if res.get("flat"):
        lines += ["### Flat memory (1024² uncompressed, reports off, default workers and batch)", "",
                  "| files | scan img/s | main peak RSS | worker peak RSS | peak tree RSS | peak tree PSS |",
                  "|---|---|---|---|---|---|"]
        for r in res["flat"]:
            lines.append(f"| {r['files']} | {e2e_rate(r):.1f}{_n(r)} | {_mb(r['rss_main_mb'])} | "
                         f"{_mb(r['rss_worker_mb'])} | {_mb(r['tree_rss_mb'])} | {_mb(r['tree_pss_mb'])} |")
        lines.append("")
    lines += ["### Targets", "", "| target | measured | |", "|---|---|---|"]
    for t in res["targets"]:
        lines.append(f"| {t['what']} | {t['value']} | {_ok(t['met'])} |")
    return "\n".join(lines) + "\n"


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, evaluated."""
    out: list[dict[str, Any]] = []
    for kind_label, rows in res["kinds"].items():
        for r in rows:
            if r["syntax"] != "raw" or not kind_label.startswith("1024"):
                continue
            p, best = r["precision"], res["model_best"][r["precision"]]["img_s"]
            e2e, naive = e2e_rate(r["off"]), r["naive"]["img_s"]
            out.append({"what": f"{kind_label} uncompressed, {p}, reports off: ≥ {TARGET_VS_NAIVE:.0f}× naive",
                        "value": f"{e2e / naive:.1f}× ({e2e:.1f} / {naive:.1f} img/s)",
                        "met": e2e >= TARGET_VS_NAIVE * naive})
            out.append({"what": f"{kind_label} uncompressed, {p}, reports off: ≥ {TARGET_VS_MODEL:.0%} of {p} "
                                "model-only", "value": f"{e2e / best:.0%} ({e2e:.1f} / {best:.1f} img/s)",
                        "met": e2e >= TARGET_VS_MODEL * best})
        by = {r["syntax"]: r for r in rows if r["first_precision"]}
        if "raw" in by and "j2k" in by:
            a, b = e2e_rate(by["j2k"]["off"]), e2e_rate(by["raw"]["off"])
            out.append({"what": f"{kind_label} JPEG 2000 ≥ {TARGET_J2K_VS_RAW:.0%} of uncompressed",
                        "value": f"{a / b:.0%} ({a:.1f} / {b:.1f} img/s)", "met": a >= TARGET_J2K_VS_RAW * b})
    for rows in res["kinds"].values():
        for r in rows:
            peak = max(r["off"]["tree_pss_mb"], r["off"]["rss_main_mb"] + r["workers"] * r["off"]["rss_worker_mb"])
            r["peak_mb"] = peak
    worst = max((r for rows in res["kinds"].values() for r in rows), key=lambda r: r["peak_mb"], default=None)
    if worst:
        out.append({"what": f"peak RSS (main + workers) ≤ {TARGET_RSS_GB} GB, every kind, reports off",
                    "value": f"max {_mb(worst['peak_mb'])} ({worst['kind']} {worst['syntax_name']})",
                    "met": worst["peak_mb"] <= TARGET_RSS_GB * 1024})
    if len(res.get("flat", [])) == 2:
        a, b = res["flat"]
        ra = a["rss_main_mb"] + a["workers"] * a["rss_worker_mb"]
        rb = b["rss_main_mb"] + b["workers"] * b["rss_worker_mb"]
        out.append({"what": f"flat memory: peak at {b['files']} files ≤ {FLAT_TOLERANCE:.2f}× peak at {a['files']}",
                    "value": f"{_mb(rb)} vs {_mb(ra)} (main + workers; tree PSS {_mb(b['tree_pss_mb'])} vs "
                             f"{_mb(a['tree_pss_mb'])})",
                    "met": rb <= FLAT_TOLERANCE * ra and rb <= TARGET_RSS_GB * 1024})
    return out


# --------------------------------------------------------------------------- main
def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def resolve_precisions(names: list[str], model: Path | None) -> list[str]:
    """``names`` less those that run the same as an earlier one on this CPU (``auto`` is what the scan
    picks: bf16, int8 or fp32), and less int8 when the model has no int8 calibration."""
    from cxrscreen.model.files import load_model
    from cxrscreen.model.inference import runtime_for
    from cxrscreen.model.quantize import Int8Unavailable, load_calibration

    lm = load_model(model)
    seen: dict[str, str] = {}
    for name in names:
        if name == "int8":
            try:
                load_calibration(lm.path, lm.sha256)
            except (Int8Unavailable, FileNotFoundError, ValueError) as exc:
                print(f"int8 skipped: {exc}", file=sys.stderr)
                continue
        seen.setdefault(runtime_for(lm, "cpu", name).describe(), name)
    return list(seen.values())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="files per kind (1024² and other sizes ≤ 2 Mpx)")
    ap.add_argument("--n-large", type=int, default=50, help="files per kind above 2 Mpx (e.g. 2500x3000)")
    ap.add_argument("--sizes", default="1024,2500x3000", help="comma-separated: S (square) or COLSxROWS")
    ap.add_argument("--syntaxes", default="raw,j2k,jls", help=f"comma-separated of {', '.join(SYNTAXES)}")
    ap.add_argument("--bits", type=int, default=12, help="BitsStored (16 allocated)")
    ap.add_argument("--model", type=Path, help="model .json (default: embedded model, else random 224 px)")
    ap.add_argument("--workers", type=int, default=None, help="scan workers (default: auto, as cxrscreen scan)")
    ap.add_argument("--batch", type=int, default=16, help="scan batch size")
    ap.add_argument("--naive-n", type=int, default=200, help="at most this many files in the naive loop")
    ap.add_argument("--naive-seconds", type=float, default=15.0, help="naive loop time budget per input kind")
    ap.add_argument("--model-seconds", type=float, default=10.0, help="model-only timing per precision")
    ap.add_argument("--sweep-n", type=int, default=96, help="files for the workers × batch sweep (0: skip)")
    ap.add_argument("--flat-factor", type=int, default=10, help="flat-memory check at N and factor×N (0: skip)")
    ap.add_argument("--no-reports", action="store_true", help="skip the reports-on scans")
    ap.add_argument("--precisions", default="auto,fp32,int8",
                    help="comma-separated scoring precisions (cxrscreen scan --precision); the first is the default; "
                         "int8 only for a model with an int8 calibration")
    ap.add_argument("--retries", type=int, default=2, help="reruns of a configuration other processes disturbed")
    ap.add_argument("--quick", action="store_true",
                    help="a reduced run of a few minutes: --n 200 --sizes 1024 --syntaxes raw --no-reports "
                         "--sweep-n 0 --flat-factor 0 --naive-seconds 10 --model-seconds 5 --retries 0")
    ap.add_argument("--prepare", action="store_true", help="only generate (cache) the inputs, then exit")
    ap.add_argument("--keep", action="store_true", help="keep scan outputs and child logs (inputs are always cached)")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        harness.child_main(args._child, CHILDREN)
        return
    sys.path.insert(0, str(REPO))
    if args.quick:
        args.n, args.sizes, args.syntaxes, args.no_reports = 200, "1024", "raw", True
        args.sweep_n, args.flat_factor, args.naive_seconds, args.model_seconds, args.retries = 0, 0, 10.0, 5.0, 0
    harness.SETTINGS["retries"] = max(0, args.retries)

    t_start = time.perf_counter()
    syntaxes = _csv(args.syntaxes)
    precisions = resolve_precisions(_csv(args.precisions), args.model)
    if bad := [s for s in syntaxes if s not in SYNTAXES]:
        sys.exit(f"unknown syntax {bad}; choose from {list(SYNTAXES)}")
    kinds = []
    for text in _csv(args.sizes):
        cols, rows = parse_size(text)
        kinds.append(Kind(cols, rows, args.n if cols * rows <= 2_100_000 else args.n_large))
    workers = args.workers  # None: the scan's own choice (recorded per run in run.json "schedule")
    procs = os.cpu_count() or 1
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cxrscreen-throughput-run-"))
    logs = work / "logs"
    res: dict[str, Any] = {"machine": harness.machine(), "date": harness.utc_now(),
                           "command": harness.command("throughput.py", argv),
                           "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                           "kinds": {}, "gen_s": 0.0}
    res["source_note"] = (f"the {len(_sources())} pediatric JPEGs in ../shared/data/fullres (random crops and "
                          "flips, bicubic resize, Gaussian detector noise)" if _sources() else "synthetic anatomy")
    _SOURCES.clear()  # the pool re-reads them lazily; keep the parent small
    try:
        for kind in kinds:
            dt = ensure_inputs(kind, args.bits, syntaxes, procs)
            res["gen_s"] += dt
            print(f"inputs {kind.label} ×{kind.n}: {'cached' if dt == 0 else f'generated in {dt:.0f} s'}",
                  file=sys.stderr, flush=True)
        small = next((k for k in kinds if k.cols == k.rows == 1024), None)
        if args.prepare:
            if small and "raw" in syntaxes and args.flat_factor > 1:
                linked_copies(small.folder(args.bits, "raw"), CACHE / f"flat-{small.n}x{args.flat_factor}-"
                              f"b{args.bits}", args.flat_factor)
            print(f"inputs cached under {CACHE}", file=sys.stderr)
            return
        model, res["model_note"] = resolve_model(args.model, kinds[0].folder(args.bits, syntaxes[0]))
        print(f"model: {res['model_note']}", file=sys.stderr)

        res["precisions"] = precisions
        first = precisions[0]

        def model_only(when: str) -> list[dict[str, Any]]:
            return [run_child({"what": "model", "model": str(model), "precision": p, "batch": MODEL_BATCH,
                               "seconds": args.model_seconds}, logs, f"model-{p}-{when}")
                    | {"when": when, "precision": p} for p in precisions]

        print("model only", file=sys.stderr)
        res["model"] = model_only("start")

        for kind in kinds:
            label = f"{kind.label}"
            res["kinds"][label] = rows = []
            for syntax in syntaxes:
                folder = kind.folder(args.bits, syntax)
                name = f"{kind.cols}x{kind.rows}-{syntax}"
                print(f"{label} {SYNTAX_NAMES[syntax]}", file=sys.stderr, flush=True)
                naive = None
                for p in precisions:
                    base = {"what": "scan", "folder": str(folder), "model": str(model), "batch": args.batch,
                            "workers": workers, "precision": p}
                    off = run_child({**base, "out": str(work / f"{name}-{p}-off"), "reports": "none"}, logs,
                                    f"{name}-{p}-off")
                    row: dict[str, Any] = {"kind": label, "n": kind.n, "syntax": syntax, "precision": p,
                                           "first_precision": p == first, "syntax_name": SYNTAX_NAMES[syntax],
                                           "workers": used_workers(off), "off": off, "on": None}
                    if not args.no_reports and p == first:
                        try:
                            import cxrscreen.outputs.report  # noqa: F401

                            row["threshold"] = threshold_for(off["probs"])
                            row["on"] = run_child({**base, "out": str(work / f"{name}-on"), "reports": "flagged",
                                                   "threshold": row["threshold"]}, logs, f"{name}-on")
                        except ImportError:
                            row["on_note"] = "cxrscreen.outputs.report is absent: no reports"
                    if naive is None:  # one naive loop per input (fp32, batch 1: no precision to choose)
                        naive = run_child({"what": "naive", "folder": str(folder), "model": str(model),
                                           "max_n": args.naive_n, "seconds": args.naive_seconds}, logs,
                                          f"{name}-naive")
                    row["naive"] = naive
                    for r in (row["off"], row["on"]):
                        if r:
                            r.pop("probs", None)
                    rows.append(row)

        if small and "raw" in syntaxes and args.sweep_n > 0:
            print("workers × batch sweep", file=sys.stderr, flush=True)
            n = min(args.sweep_n, small.n)
            folder = subset(small.folder(args.bits, "raw"), CACHE / f"sweep-{small.n}-{n}-b{args.bits}", n)
            res["sweep_n"], res["sweep"] = n, []
            for w in (None, 0, 1, 2):
                for b in (8, 16, 32):
                    tag = "auto" if w is None else w
                    r = run_child({"what": "scan", "folder": str(folder), "model": str(model), "batch": b,
                                   "workers": w, "out": str(work / f"sweep-w{tag}-b{b}"), "reports": "none",
                                   "precision": first},
                                  logs, f"sweep-w{tag}-b{b}")
                    r.pop("probs", None)
                    r.update({"asked": tag, "workers": used_workers(r), "batch": b})
                    res["sweep"].append(r)
        if small and "raw" in syntaxes and args.flat_factor > 1:
            print("flat memory", file=sys.stderr, flush=True)
            ref = next(r["off"] for r in res["kinds"][small.label] if r["syntax"] == "raw" and r["first_precision"])
            ref = {**ref, "workers": used_workers(ref)}
            big_n = small.n * args.flat_factor
            folder = linked_copies(small.folder(args.bits, "raw"), CACHE / f"flat-{small.n}x{args.flat_factor}-"
                                   f"b{args.bits}", args.flat_factor)
            big = run_child({"what": "scan", "folder": str(folder), "model": str(model), "batch": args.batch,
                             "workers": workers, "out": str(work / "flat"), "reports": "none", "precision": first},
                            logs, "flat")
            big.pop("probs", None)
            big["workers"] = used_workers(big)
            if big["scored"] != big_n:
                print(f"warning: flat run scored {big['scored']} of {big_n}", file=sys.stderr)
            res["flat"] = [ref, big]
        print("model only, again (the machine's speed drifts)", file=sys.stderr, flush=True)
        res["model"] += model_only("end")
        res["model_best"] = {p: max((r for r in res["model"] if r["precision"] == p), key=lambda r: r["img_s"])
                             for p in precisions}
        res["targets"] = targets(res)
        res["load"] = harness.LOAD_LOG
        res["total_s"] = time.perf_counter() - t_start
        text = render(res)
        print(text)
        if args.json:
            args.json.write_text(json.dumps(res, indent=1, default=str) + "\n")
    finally:
        if args.keep:
            print(f"kept scan outputs and logs in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
