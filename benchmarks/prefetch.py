"""In-process preparation one batch ahead of the forward pass, against one batch at a time (issue #14).

    .venv/bin/python benchmarks/throughput.py --quick --prepare    # makes the 200 inputs once
    .venv/bin/python benchmarks/prefetch.py [--precisions auto,fp32,int8] [--rounds 3]

``scan`` (reports off, rescan) of the 200 uncompressed 1024² files of ``throughput.py --quick``, each
in a fresh process: the shipped ``Batches.in_process`` (the next batch's files are handed to the
preparing threads before the current batch is scored) and the baseline, the same generator preparing
a batch only when the scorer asks for it (as before this change). The two alternate, round by round.
Prints Markdown: median scan img/s and the median of run.json's "wait for decode" per form.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from functools import partial

import harness

INPUTS = harness.input_folder(1024, 1024, 12, 200, "raw")  # throughput.py --quick's inputs

CHILD = r"""
import json, sys, tempfile, time
from concurrent.futures import ThreadPoolExecutor
from cxrscreen import scan
from cxrscreen.options import ScanOptions
from cxrscreen.pipeline import scoring
from cxrscreen.prepare import prepare_file
from cxrscreen.preprocess import build_transform

form, folder, precision = sys.argv[1:4]
if form == "baseline":
    def in_process(self, threads, start=0, end=None, isolate=None):
        transform = build_transform(self.spec, augment=False)
        end = len(self.paths) if end is None else end
        def one(i):
            return prepare_file(self.paths[i], self.spec, transform, i, isolate, self.keep_film)
        with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="prepare") as pool:
            for first in range(start, end, self.batch_size):
                yield list(pool.map(one, range(first, min(first + self.batch_size, end))))
    scoring.Batches.in_process = in_process
with tempfile.TemporaryDirectory() as out:
    t = time.perf_counter()
    res = scan(folder, out=out, options=ScanOptions(precision=precision, reports="none", rescan=True))
    wall = time.perf_counter() - t
s = res.summary.to_json()
print(json.dumps({"img_s": s["files_processed"] / wall, "wait": s["durations_s"].get("wait_for_decode"),
                  "schedule": (s.get("schedule") or {}).get("workers")}))
"""


def one(form: str, precision: str) -> dict:
    return harness.run_code(CHILD, form, str(INPUTS), precision)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precisions", default="auto,fp32,int8")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not INPUTS.is_dir():
        sys.exit(f"{INPUTS} is missing: run benchmarks/throughput.py --quick --prepare first")
    print("| precision | one batch at a time (before): img/s | wait for decode | one batch ahead (shipped): img/s "
          "| wait for decode | × |")
    print("|---|---|---|---|---|---|")
    runs = {}
    for precision in args.precisions.split(","):
        got = harness.alternate(args.rounds, partial(one, precision=precision))
        rate = {f: statistics.median(x["img_s"] for x in v) for f, v in got.items()}
        wait = {f: statistics.median(x["wait"] or 0.0 for x in v) for f, v in got.items()}
        print(f"| {precision} | {rate['baseline']:.1f} | {wait['baseline']:.2f} s | {rate['shipped']:.1f} | "
              f"{wait['shipped']:.2f} s | {rate['shipped'] / rate['baseline']:.2f}× |", flush=True)
        runs[precision] = got
    print(f"\n{args.rounds} rounds, 200 files each; every run: " + json.dumps(runs))


if __name__ == "__main__":
    main()
