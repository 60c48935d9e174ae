"""Fuzz harness for read → decode → QC → preprocess (``cxrscreen.prepare.prepare_file``).

Seeds are real files (``../shared/data/dicom``, ``sample_dicoms/``) and re-encodings of a real film
(RLE, JPEG-LS, JPEG 2000; 8 and 16 bit, MONOCHROME1); :func:`mutate` applies DICOM-aware mutations:
flipped header bytes, truncation, smashed length fields, lying Rows/Columns/BitsAllocated (and
friends), huge or deeply nested sequences, corrupted pixel bytes, and splices of two files.

:func:`check` runs one input and returns its status; a *finding* is any input that does not end as
``ok``, ``not_assessable:<reason>`` or ``error:<reason>`` with a known reason (an
``error:unexpected_<Exception>`` is a finding: an exception nobody classified), or whose Python
allocations peak above ``PEAK_FIXED + PEAK_PER_BYTE × size`` (a header sizing memory).

    python -m tests.fuzz.harness --n 300 --seed 1          # the seeded loop `make test` runs (fewer)
    python -m tests.fuzz.atheris_prepare CORPUS -max_total_time=3600   # coverage-guided (README)
"""

from __future__ import annotations

import argparse
import faulthandler
import io
import json
import os
import random
import re
import struct
import sys
import tempfile
import tracemalloc
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from cxrscreen.testing import dicom

REPO = Path(__file__).resolve().parents[2]
SHARED_DICOM = REPO.parent / "shared" / "data" / "dicom"
SAMPLES = REPO / "sample_dicoms"
STATUS = re.compile(r"^(ok|not_assessable:[a-z0-9_]+|error:[a-z0-9_]+)$")
PEAK_FIXED = 96 << 20  # bytes: the parse, a decoded frame, its float32 copies, the model tensor
PEAK_PER_BYTE = 24  # per input byte (an uncompressed 8-bit film becomes float32 twice over)
INPUT_TIMEOUT_S = 120  # one input taking longer is a hang: dump the stacks and exit


# --------------------------------------------------------------------------- seeds
def seed_files(max_bytes: int = 2_000_000) -> list[Path]:
    """Real DICOM files up to ``max_bytes`` (the shared ones, when present, and sample_dicoms)."""
    found = sorted(SHARED_DICOM.glob("*.dcm")) + sorted(SAMPLES.rglob("*.dcm"))
    return [p for p in found if p.stat().st_size <= max_bytes]


def derived_seeds(size: int = 256) -> dict[str, bytes]:
    """A real film (the NIH DX file, else a sample) shrunk to ``size``², re-encoded in the risky syntaxes."""
    src = SHARED_DICOM / "NIH_DX_no_finding_implicit_vr.dcm"
    if not src.exists():
        src = SAMPLES / "2026-11-23" / "ACC0001" / "DX_PA_uncompressed.dcm"
    base = pydicom.dcmread(src)
    arr = base.pixel_array.astype(np.float32)
    step = max(1, min(arr.shape) // size)
    small = arr[: step * size : step, : step * size : step]
    small = (small - small.min()) / max(float(np.ptp(small)), 1.0)
    out: dict[str, bytes] = {}
    for bits in (8, 16):
        for syntax, name in ((RLELossless, "rle"), (JPEGLSLossless, "jls"), (JPEG2000Lossless, "j2k")):
            for mono in ("MONOCHROME2", "MONOCHROME1") if bits == 16 else ("MONOCHROME2",):
                ds = dicom.encode(_film(small, bits, mono), syntax)
                out[f"{name}_{bits}_{mono.lower()}"] = dicom.to_bytes(ds)
        out[f"raw_{bits}"] = dicom.to_bytes(_film(small, bits, "MONOCHROME2"))
    return out


def _film(img: np.ndarray, bits: int, photometric: str) -> Dataset:
    """``img`` in [0, 1] as a DX film: 16 bits allocated / 12 stored, or 8 / 8."""
    stored_bits = 12 if bits == 16 else 8
    stored = np.rint((1.0 - img if photometric == "MONOCHROME1" else img) * (2**stored_bits - 1))
    arr = stored.astype(np.uint16 if bits == 16 else np.uint8)
    return dicom.set_pixels(dicom.dataset(), arr, bits=stored_bits, photometric=photometric)


def all_seeds(max_bytes: int = 2_000_000) -> dict[str, bytes]:
    seeds = {p.name: p.read_bytes() for p in seed_files(max_bytes)}
    seeds.update(derived_seeds())
    return seeds


# --------------------------------------------------------------------------- mutators
LIES = {
    "Rows": [0, 1, 255, 256, 4096, 32768, 65535],
    "Columns": [0, 1, 255, 257, 4096, 65535],
    "BitsAllocated": [0, 1, 7, 8, 12, 16, 24, 32, 64, 255],
    "BitsStored": [0, 1, 8, 12, 16, 17, 32, 255],
    "HighBit": [0, 7, 15, 31, 255],
    "SamplesPerPixel": [0, 1, 2, 3, 4, 255],
    "NumberOfFrames": [0, 1, 2, 1000, 2147483647],
    "PixelRepresentation": [0, 1, 2],
    "PhotometricInterpretation": ["MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL_422", ""],
    "PlanarConfiguration": [0, 1, 2],
    "WindowWidth": [0, -1, 1e30, "nan"],
    "RescaleSlope": [0, -1, 1e30, "inf"],
}


def flip_header_bytes(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    end = min(len(b), 4096)
    for _ in range(rng.randint(1, 8)):
        if end:
            b[rng.randrange(end)] ^= 1 << rng.randrange(8)
    return bytes(b)


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(0, max(1, len(data)))]


def smash_length(data: bytes, rng: random.Random) -> bytes:
    """Overwrite the length field after a known tag (explicit short/long or implicit) with a bad value."""
    tags = [(0x0002, 0x0010), (0x0008, 0x0018), (0x0010, 0x0010), (0x0028, 0x0010), (0x0028, 0x0011),
            (0x0028, 0x0100), (0x0028, 0x3010), (0x7FE0, 0x0010), (0xFFFE, 0xE000), (0x0040, 0x0275)]
    hits = [m.start() for g, e in tags for m in re.finditer(re.escape(struct.pack("<HH", g, e)), data)]
    if not hits:
        return flip_header_bytes(data, rng)
    pos = rng.choice(hits)
    b = bytearray(data)
    value = rng.choice([0, 1, 3, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFF0, 0xFFFFFFFF, rng.randrange(1 << 32)])
    where = rng.choice([(pos + 6, "<H"), (pos + 8, "<I"), (pos + 4, "<I")])
    if where[0] + struct.calcsize(where[1]) <= len(b):
        struct.pack_into(where[1], b, where[0], value & (0xFFFF if where[1] == "<H" else 0xFFFFFFFF))
    return bytes(b)


def lie(data: bytes, rng: random.Random) -> bytes:
    """Rows/Columns/BitsAllocated… set to values the pixel data does not match."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        for kw in rng.sample(sorted(LIES), rng.randint(1, 3)):
            setattr(ds, kw, rng.choice(LIES[kw]))
        return _bytes_lenient(ds)
    except Exception:
        return flip_header_bytes(data, rng)


def huge_sequence(data: bytes, rng: random.Random) -> bytes:
    """A deeply nested, very long, or lying-length sequence, written as bytes after the file meta.

    (Not through pydicom's writer: nesting past the recursion limit makes it wrap each level's
    traceback into the next level's message, gigabytes at a few hundred levels.)
    """
    pos, implicit = _meta_end(data)
    sq = struct.pack("<HH", 0x0008, 0x1140) + (b"" if implicit else b"SQ\0\0")
    item = struct.pack("<HH", 0xFFFE, 0xE000)
    undefined = struct.pack("<I", 0xFFFFFFFF)
    kind = rng.randrange(3)
    if kind == 0:  # nesting: each item holds the next sequence
        depth = rng.choice([50, 300, 3000])
        ends = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
        blob = (sq + undefined + item + undefined) * depth + ends * depth
    elif kind == 1:  # many empty items
        blob = sq + undefined + (item + struct.pack("<I", 0)) * rng.choice([1000, 20_000])
        blob += struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    else:  # a declared length far beyond the file
        blob = sq + struct.pack("<I", 0xFFFFFFF0) + item + undefined
    return data[:pos] + blob + data[pos:]


def _meta_end(data: bytes) -> tuple[int, bool]:
    """Offset just after the file meta group (0 if there is none) and whether the dataset is implicit VR."""
    if data[128:132] != b"DICM" or data[132:136] != b"\x02\x00\x00\x00" or len(data) < 144:
        return 0, False
    end = min(len(data), 144 + struct.unpack_from("<I", data, 140)[0])
    return end, b"1.2.840.10008.1.2\x00" in data[132:end]


def pixel_bytes(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    start = len(b) // 5
    for _ in range(rng.randint(1, 32)):
        if len(b) > start:
            b[rng.randrange(start, len(b))] = rng.randrange(256)
    return bytes(b)


def splice(data: bytes, rng: random.Random, other: bytes = b"") -> bytes:
    other = other or data
    return data[: rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1):]


def _bytes_lenient(ds: Dataset) -> bytes:
    bio = io.BytesIO()
    ds.save_as(bio, enforce_file_format=False)
    return bio.getvalue()


MUTATORS: tuple[Callable[[bytes, random.Random], bytes], ...] = (
    flip_header_bytes, truncate, smash_length, lie, huge_sequence, pixel_bytes)


def mutate(data: bytes, rng: random.Random, pool: list[bytes] | None = None) -> bytes:
    """One to three DICOM-aware mutations (or a splice with another seed from ``pool``)."""
    if pool and rng.random() < 0.1:
        return splice(data, rng, rng.choice(pool))
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        data = rng.choice(MUTATORS)(data, rng)
    return data


# --------------------------------------------------------------------------- running one input
class Runner:
    """Feeds inputs to ``prepare_file`` through a scratch file (it reads paths, as a scan does)."""

    def __init__(self, input_size: int = 64) -> None:
        from cxrscreen.preprocess import PreprocessSpec, build_transform

        self.spec = PreprocessSpec(input_size=input_size)
        self.transform = build_transform(self.spec, augment=False)
        self.dir = tempfile.TemporaryDirectory(prefix="cxrscreen-fuzz-", dir="/dev/shm" if Path("/dev/shm").is_dir()
                                               else None)
        self.path = Path(self.dir.name) / "input.dcm"

    def status(self, data: bytes) -> str:
        from cxrscreen.prepare import prepare_file

        self.path.write_bytes(data)
        return prepare_file(self.path, self.spec, self.transform).status

    def check(self, data: bytes) -> tuple[str, int, str | None]:
        """(status, peak bytes allocated, finding or None) for one input."""
        tracemalloc.start()
        try:
            status = self.status(data)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        finding = None
        if not STATUS.match(status) or status.startswith("error:unexpected_"):
            finding = f"status {status!r}"
        elif peak > PEAK_FIXED + PEAK_PER_BYTE * len(data):
            finding = f"{status}: peak allocation {peak >> 20} MiB for a {len(data)}-byte input"
        return status, peak, finding


def run(n: int, seed: int, max_bytes: int = 400_000, save: Path | None = None, verbose: bool = False) -> dict:
    """``n`` mutants of the seeds (those up to ``max_bytes``), deterministic for a given ``seed``."""
    seeds = {k: v for k, v in all_seeds().items() if len(v) <= max_bytes}
    names = sorted(seeds)
    pool = [seeds[k] for k in names]
    rng = random.Random(seed)
    runner = Runner()
    statuses: Counter[str] = Counter()
    findings = []
    for name in names:  # the seeds themselves first
        statuses[runner.check(seeds[name])[0]] += 1
    for i in range(n):
        name = rng.choice(names)
        data = mutate(seeds[name], random.Random(rng.getrandbits(64)), pool)
        faulthandler.dump_traceback_later(INPUT_TIMEOUT_S, exit=True)
        if verbose:
            print(f"input {i} from {name}: {len(data)} bytes", file=sys.stderr, flush=True)
        status, _peak, finding = runner.check(data)
        faulthandler.cancel_dump_traceback_later()
        statuses[status] += 1
        if finding:
            findings.append({"input": i, "seed_file": name, "finding": finding})
            if save is not None:
                save.mkdir(parents=True, exist_ok=True)
                (save / f"finding_{seed}_{i}.dcm").write_bytes(data)
    return {"seed": seed, "inputs": n + len(names), "seeds": names, "statuses": dict(statuses), "findings": findings}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=300, help="mutants to run")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-bytes", type=int, default=400_000, help="largest seed file used")
    ap.add_argument("--save", type=Path, help="write each finding's input here")
    ap.add_argument("--verbose", action="store_true", help="name each input on stderr before running it")
    args = ap.parse_args(argv)
    os.environ.setdefault("CXRSCREEN_DECODE_TIMEOUT_S", "20")
    warnings.simplefilter("ignore")  # pydicom warns about every malformed value; statuses are the output
    result = run(args.n, args.seed, args.max_bytes, args.save, args.verbose)
    json.dump(result, sys.stdout, indent=1)
    print()
    return 1 if result["findings"] else 0


if __name__ == "__main__":
    sys.exit(main())
