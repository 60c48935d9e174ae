"""Where preparing one film costs CPU: read → hash → parse → decode → QC → preprocess, stage by stage (issue #14).

    .venv/bin/python benchmarks/prepare.py [--folder DIR] [--repeats 3]

Runs the steps ``prepare.prepare_file`` runs for an uncompressed file, one after the other on one
thread, and reports each step's *thread CPU time* per image (robust to other processes on a
shared machine), then the preprocessing chain transform by transform. Default input: the 1024²
uncompressed files ``benchmarks/throughput.py --quick`` generates (run ``benchmarks/throughput.py
--prepare --sizes 1024 --syntaxes raw --n 96 --flat-factor 0`` first). To see an AVX2-only CPU's
numbers on a newer one, run it with ``NPY_DISABLE_CPU_FEATURES="X86_V4 AVX512_ICL"
ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import time
from pathlib import Path

import harness
from harness import REPO

DEFAULT = harness.input_folder(1024, 1024, 12, 96, "raw")  # what the throughput.py --prepare command above makes


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", type=Path, default=DEFAULT)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    import torch
    from monai.data import set_track_meta

    from cxrscreen.ingest.decode import _block_mean, _stored_values, extract_tags, read_dataset, to_display
    from cxrscreen.preprocess import PreprocessSpec, base_transforms, normalize_transforms
    from cxrscreen.qc import check_header, check_pixels, polarity_suspect

    files = sorted(args.folder.glob("*.dcm"))
    if not files:
        sys.exit(f"no .dcm files in {args.folder}")
    torch.set_num_threads(1)
    set_track_meta(False)  # as the scan prepares files
    spec = PreprocessSpec(224)
    chain = base_transforms(spec) + normalize_transforms(spec)
    steps: dict[str, float] = {}
    parts = [0.0] * len(chain)

    def tick(name: str, t: float) -> float:
        now = time.thread_time()
        steps[name] = steps.get(name, 0.0) + now - t
        return now

    for _ in range(args.repeats):
        for f in files:
            t = time.thread_time()
            data = f.read_bytes()
            t = tick("read the file", t)
            hashlib.sha256(data).hexdigest()
            t = tick("sha256 (ledger)", t)
            ds = read_dataset(io.BytesIO(data))
            t = tick("parse (pydicom)", t)
            check_header(extract_tags(ds))
            t = tick("tags + header QC", t)
            raw, factor = _stored_values(ds, spec.decode_target)
            t = tick("pixel_array (pydicom)", t)
            raw = _block_mean(raw, factor)
            t = tick("block mean (×2)", t)
            px = to_display(raw, ds)
            t = tick("VOI window → [0, 1]", t)
            check_pixels(px)
            polarity_suspect(px)
            t = tick("pixel QC + polarity", t)
            x = px
            for i, step in enumerate(chain):
                c = time.thread_time()
                x = step(x)
                parts[i] += time.thread_time() - c
            tick("preprocessing chain (MONAI)", t)
    n = args.repeats * len(files)
    total = sum(steps.values())
    print(f"{len(files)} files from {args.folder}, ×{args.repeats}; thread CPU time per image, 1 thread.\n")
    print("| step | ms/img | share |\n|---|---|---|")
    for name, v in steps.items():
        print(f"| {name} | {1e3 * v / n:.2f} | {v / total:.0%} |")
    print(f"| **total** | **{1e3 * total / n:.2f}** | |\n")
    print("| chain step | ms/img |\n|---|---|")
    for step, v in zip(chain, parts, strict=True):
        print(f"| {type(step).__name__} | {1e3 * v / n:.2f} |")


if __name__ == "__main__":
    main()
