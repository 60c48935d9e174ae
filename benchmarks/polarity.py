"""Polarity check (``qc.polarity_suspect``): false alarms on correct films, hits on inverted ones (issue #10).

    .venv/bin/python benchmarks/polarity.py [--n-bench 200] [--n-large 50] [--list]   # docs/polarity.md
    .venv/bin/python benchmarks/polarity.py --fit                         # refit the weights (train/val only)

Every film is turned into the display array the scan hands to the check ([0, 1], display polarity):

- ``cxr224`` (../shared/data/cxr224): 224 px JPEGs read with ``ingest.images.load_raster``; the
  ``test`` split is reported per data set and as two kinds of crops, ``train`` and ``val`` are used
  only by ``--fit``;
- ``site_nih``, ``sample_dicoms``, ``dicom`` (the 8 shared files): DICOM read, header QC, decoded by
  ``ingest.decode.decode_dataset`` at the scan's decode target, pixel QC, exactly as
  ``pipeline.prepare_file`` does; files the scan would not score (lateral view, leg, CT scout, the
  truncated file) are left out;
- ``benchmark films``: the synthetic-patient DICOM films of ``benchmarks/throughput.py`` (1024² and
  2500×3000: random crops and flips of the full-resolution pediatric originals), built in memory and
  decoded the same way.

A correctly encoded film that is flagged is a *false alarm*. Films whose header lies are the shared
``SIIM_header_says_MONOCHROME1_pixels_not_inverted.dcm`` (as decoded) and the inverted copy ``1 − x``
of every correct film of every source; flagging one is a *hit*.

``--fit``: features of the cxr224 ``train`` films, of a random crop and a narrow crop of each, and of
their inverted copies → logistic regression without intercept (scikit-learn; the features are
antisymmetric under inversion, so no intercept is needed); then false alarms and hits on ``val``
(films, crops, narrow crops) for a range of thresholds. The cxr224 copies of the 24 full-resolution
originals the benchmark films are cut from are left out of both. Paste the printed weights into
``cxrscreen/qc.py``; test films are never used.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import harness  # noqa: E402

from cxrscreen import qc  # noqa: E402
from cxrscreen.ingest.decode import DecodeError, decode_dataset, extract_tags, read_dataset  # noqa: E402
from cxrscreen.ingest.discover import looks_like_dicom  # noqa: E402
from cxrscreen.ingest.images import load_raster  # noqa: E402
from cxrscreen.preprocess import PreprocessSpec  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
LYING = "SIIM_header_says_MONOCHROME1_pixels_not_inverted.dcm"
TARGET = PreprocessSpec().decode_target  # what the embedded model's scan decodes to (long side ≥ 448 px)


@dataclass
class Tally:
    """Counts for one source."""

    n_correct: int = 0
    false_alarms: list[str] = field(default_factory=list)
    n_lying: int = 0
    hits: int = 0
    missed: list[str] = field(default_factory=list)

    def add(self, name: str, pixels: np.ndarray, lying: bool) -> None:
        flagged = qc.polarity_suspect(pixels)
        if lying:
            self.n_lying += 1
            self.hits += flagged
            if not flagged:
                self.missed.append(name)
        else:
            self.n_correct += 1
            if flagged:
                self.false_alarms.append(name)


# --------------------------------------------------------------------------- sources
def cxr224(split: str, dataset: str | None = None, crops: str = "",
           exclude: frozenset[str] = frozenset()) -> Iterator[tuple[str, np.ndarray]]:
    """The films of a split, or (``crops`` "crop" / "narrow") a seeded crop of each; ``exclude``: file names."""
    manifest = pd.read_csv(SHARED / "cxr224" / "manifest.csv")
    rows = manifest[manifest["split"] == split]
    if dataset is not None:
        rows = rows[rows["dataset"] == dataset]
    rows = rows[~rows["path"].map(lambda rel: Path(rel).name in exclude)]
    rng = np.random.default_rng([10, len(rows)] if crops != "narrow" else [11, len(rows)])
    cut = {"": None, "crop": random_crop, "narrow": narrow_crop}[crops]
    for rel in rows["path"]:
        img = load_raster(SHARED / "cxr224" / rel)
        yield (f"{rel} {crops}", cut(img, rng)) if cut else (rel, img)


def fullres_names() -> frozenset[str]:
    """File names of the full-resolution originals the benchmark films are cut from (also in cxr224)."""
    path = SHARED / "fullres" / "manifest.csv"
    return frozenset(Path(p).name for p in pd.read_csv(path)["path"]) if path.is_file() else frozenset()


def random_crop(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Like the throughput benchmark's films: an off-centre 85–100 % crop, mirrored half of the time."""
    h, w = img.shape
    frac = rng.uniform(0.85, 1.0)
    ch, cw = int(h * frac), int(w * frac)
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    out = img[y0:y0 + ch, x0:x0 + cw]
    return out[:, ::-1] if rng.random() < 0.5 else out


def narrow_crop(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """45–85 % of the width, 85–100 % of the height, mirrored half of the time: what a square or portrait
    detector (the 1024² and 2500×3000 benchmark films) keeps of a landscape film — often one lung and
    the spine near an edge."""
    h, w = img.shape
    ch, cw = int(h * rng.uniform(0.85, 1.0)), int(w * rng.uniform(0.45, 0.85))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    out = img[y0:y0 + ch, x0:x0 + cw]
    return out[:, ::-1] if rng.random() < 0.5 else out


def scan_pixels(path: Path) -> np.ndarray | None:
    """The display array ``pipeline.prepare_file`` would check, or None when the scan would not score the file."""
    with open(path, "rb") as fh:
        if not looks_like_dicom(fh.read(132)):
            return None
    try:
        ds = read_dataset(path)
        if qc.check_header(extract_tags(ds)) != qc.OK:
            return None
        pixels = decode_dataset(ds, target=TARGET).pixels
    except DecodeError:
        return None
    return pixels if qc.check_pixels(pixels) == qc.OK else None


def dicom_folder(folder: Path) -> Iterator[tuple[str, np.ndarray]]:
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        pixels = scan_pixels(path)
        if pixels is not None:
            yield str(path.relative_to(folder)), pixels


def benchmark_films(n: int, cols: int, rows: int) -> Iterator[tuple[str, np.ndarray]]:
    """Image ``i`` of ``benchmarks/throughput.py`` at ``cols``×``rows`` (12 bits), decoded as the scan decodes it."""
    import throughput

    for i in range(n):
        ds = throughput.make_dataset(throughput.make_pixels(i, cols, rows, 12), 12, i)
        yield f"bench{cols}x{rows}-{i:04d}", decode_dataset(ds, target=TARGET).pixels


def report_sources(n_bench: int, n_large: int) -> Iterator[tuple[str, Iterator[tuple[str, np.ndarray]]]]:
    yield "cxr224 test: kermany (224 px JPEG)", cxr224("test", "kermany")
    yield "cxr224 test: covid_db (224 px JPEG)", cxr224("test", "covid_db")
    yield "cxr224 test, random 85–100 % crops (both sets)", cxr224("test", crops="crop")
    yield "cxr224 test, narrow crops: 45–85 % of the width (both sets)", cxr224("test", crops="narrow")
    yield "site_nih (DICOM, 512 px)", dicom_folder(SHARED / "site_nih" / "dicom")
    yield "sample_dicoms (DICOM)", dicom_folder(REPO / "sample_dicoms")
    yield "shared dicom/ (DICOM)", dicom_folder(SHARED / "dicom")
    yield f"benchmark films (DICOM 1024², {n_bench} crops)", benchmark_films(n_bench, 1024, 1024)
    yield f"benchmark films (DICOM 2500×3000, {n_large} crops)", benchmark_films(n_large, 2500, 3000)


# --------------------------------------------------------------------------- report
def machine() -> str:
    return f"{harness.cpu_model()}, {platform.system()} {platform.release()}"


def time_check(shape: tuple[int, int], n: int = 2000) -> float:
    """Median µs of one ``polarity_suspect`` call on a film of ``shape``."""
    img = np.random.default_rng(0).random(shape, dtype=np.float32)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        qc.polarity_suspect(img)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e6)


def pct(k: int, n: int) -> str:
    return f"{k}/{n} ({100 * k / n:.2f} %)" if n else "–"


def evaluate(n_bench: int, n_large: int, list_names: bool) -> int:
    tallies: dict[str, Tally] = {}
    for source, films in report_sources(n_bench, n_large):
        tally = tallies.setdefault(source, Tally())
        for name, pixels in films:
            lying = name == LYING
            tally.add(name, pixels, lying)
            if not lying:
                tally.add(f"{name} inverted", 1.0 - pixels, True)
    total = Tally()
    for t in tallies.values():
        total.n_correct += t.n_correct
        total.false_alarms += t.false_alarms
        total.n_lying += t.n_lying
        total.hits += t.hits
        total.missed += t.missed
    print(f"Machine: {machine()}; date {dt.date.today().isoformat()}; weights {qc.POLARITY_WEIGHTS}, "
          f"threshold {qc.POLARITY_THRESHOLD}\n")
    print("| source | correct films | false alarms | films whose header lies | hits |")
    print("|---|---|---|---|---|")
    for source, t in [*tallies.items(), ("**all**", total)]:
        print(f"| {source} | {t.n_correct} | {pct(len(t.false_alarms), t.n_correct)} | {t.n_lying} | "
              f"{pct(t.hits, t.n_lying)} |")
    print()
    for shape in ((224, 224), (512, 448), (2048, 2048)):
        print(f"- one check on a {shape[0]}×{shape[1]} film: median {time_check(shape):.0f} µs")
    if list_names:
        print("\nfalse alarms:", *total.false_alarms, sep="\n  ")
        print("missed:", *total.missed, sep="\n  ")
    fa_ok = len(total.false_alarms) <= 0.01 * total.n_correct
    hits_ok = total.hits >= 0.95 * total.n_lying
    print(f"\ntargets: false alarms ≤ 1 % {'met' if fa_ok else 'MISSED'}; hits ≥ 95 % {'met' if hits_ok else 'MISSED'}")
    return 0 if fa_ok and hits_ok else 1


# --------------------------------------------------------------------------- fit
KINDS = ("", "crop", "narrow")  # whole films, 85–100 % crops, narrow crops


def features(split: str) -> dict[str, np.ndarray]:
    """Features of every film of a split and of each kind of crop, without the benchmark's originals."""
    skip = fullres_names()
    return {kind: np.array([qc.polarity_features(x) for _, x in cxr224(split, crops=kind, exclude=skip)])
            for kind in KINDS}


def fit() -> None:
    from sklearn.linear_model import LogisticRegression

    train, val = features("train"), features("val")
    xs = np.concatenate(list(train.values()))
    x = np.concatenate([xs, -xs])  # features of 1 − x are −features(x) (tests/test_qc.py checks it)
    y = np.r_[np.zeros(len(xs)), np.ones(len(xs))]
    model = LogisticRegression(fit_intercept=False, C=10.0, max_iter=1000).fit(x, y)
    w = np.round(model.coef_[0], 1)
    print(f"features {qc.POLARITY_FEATURES}\nweights {tuple(float(v) for v in w)} "
          f"(fitted on {len(xs)} train films, crops and narrow crops + their inverted copies)\n")
    names = {"": "films", "crop": "crops", "narrow": "narrow crops"}
    print("| threshold | " + " | ".join(f"val {names[k]} ({len(val[k])}): false alarms, misses" for k in KINDS)
          + " |\n" + "|---" * (len(KINDS) + 1) + "|")
    for t in np.round(np.arange(0.0, 3.01, 0.5), 2):
        cells = []
        for kind in KINDS:
            score = val[kind] @ w  # correct val films; their inverted copies score −score
            cells.append(f"{int(np.sum(score > t))}, {int(np.sum(-score <= t))}")
        print(f"| {t} | " + " | ".join(cells) + " |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fit", action="store_true", help="refit weights on cxr224 train, threshold on val")
    ap.add_argument("--n-bench", type=int, default=200, help="1024² benchmark films to build (0: none)")
    ap.add_argument("--n-large", type=int, default=50, help="2500×3000 benchmark films to build (0: none)")
    ap.add_argument("--list", action="store_true", help="name the films that were misjudged")
    args = ap.parse_args()
    if not (SHARED / "cxr224" / "manifest.csv").is_file():
        print(f"{SHARED} is absent: nothing to measure", file=sys.stderr)
        return 2
    if args.fit:
        fit()
        return 0
    return evaluate(args.n_bench, args.n_large, args.list)


if __name__ == "__main__":
    sys.exit(main())
