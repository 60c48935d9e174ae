"""Benchmark: `cxrscreen listen`, from a study's last image to its SR at the forward target (≤ study-timeout + 5 s).

    .venv/bin/python benchmarks/listen_latency.py [--bursts 3] [--images 4] [--side 2048] [--study-timeout 10]
                                                  [--model MODEL.json] [--reports flagged]

Starts dcmtk's ``storescp`` (the forward target, a real peer) and ``cxrscreen listen --forward`` in a
process of its own, as a site runs it (embedded model unless ``--model``; reports for flagged studies:
SR + encapsulated PDF). Each burst is one new study of ``--images`` 12-bit ``--side``² films sent on
one association (pynetdicom), then quiet. Latency: from the last C-STORE response of the burst to the
moment an SR of that study is readable in storescp's folder (polled every 20 ms). The scan pass that
scored the burst (``OUT/runs/*/run.json``) gives the share the scan took; the rest is the wait for
the study to go quiet (the study time-out), the hand-over and the send.

Prints Markdown: one row per burst, then the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness
import numpy as np
import pydicom
from harness import REPO
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from cxrscreen.testing import dicom

NODE_AET, TARGET_AET = "CXRSCREEN", "FWD"
POLL_S = 0.02


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def films(folder: Path, study: str, n: int, side: int, seed: int) -> list[Path]:
    """``n`` 12-bit chest-like films of one study (uncompressed)."""
    sys.path.insert(0, str(REPO))
    from tests.factory import chest_phantom

    out = []
    for i in range(n):
        ds = dicom.dataset(StudyInstanceUID=study, PatientID=f"BENCH{seed}", AccessionNumber=f"A{seed}")
        dicom.set_pixels(ds, np.rint(chest_phantom(side, side, seed=seed * 100 + i) * 4095).astype(np.uint16), bits=12)
        out.append(dicom.write(ds, folder / f"{ds.SOPInstanceUID}.dcm"))
    return out


def answers(port: int) -> bool:
    ae = AE("BENCH")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
    if not assoc.is_established:
        return False
    assoc.release()
    return True


def send_burst(port: int, files: list[Path]) -> float:
    """C-STORE ``files`` on one association; the monotonic time of the last response."""
    ae = AE("BENCH")
    ae.add_requested_context(dicom.DX_STORAGE, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
    if not assoc.is_established:
        sys.exit("the node refused the association")
    last = 0.0
    for f in files:
        status = assoc.send_c_store(f)
        last = time.monotonic()
        if not status or int(status.Status) != 0:
            sys.exit(f"C-STORE failed: {status}")
    assoc.release()
    return last


def sr_seen(folder: Path, study: str, seen: set[Path]) -> bool:
    """Whether a new file of ``folder`` is a readable SR of ``study`` (files read once)."""
    for f in folder.iterdir():
        if f in seen:
            continue
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception:  # still being written: read again next time
            continue
        seen.add(f)
        if ds.get("Modality") == "SR" and ds.get("StudyInstanceUID") == study:
            return True
    return False


def scan_of(out: Path, n: int, since: float) -> dict:
    """The run.json of the pass that scored the burst (``n`` files processed, started after ``since``)."""
    for path in sorted((out / "runs").glob("*/run.json"), reverse=True):
        s = json.loads(path.read_text())
        if s.get("files_processed") == n and path.stat().st_mtime >= since:
            return s
    return {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bursts", type=int, default=3)
    ap.add_argument("--images", type=int, default=4, help="films per burst (one study)")
    ap.add_argument("--side", type=int, default=2048, help="film width and height, px")
    ap.add_argument("--study-timeout", type=float, default=10.0)
    ap.add_argument("--model", type=Path, help="model .json (default: the embedded model)")
    ap.add_argument("--reports", default="flagged")
    args = ap.parse_args()
    storescp = shutil.which("storescp")
    if storescp is None:
        sys.exit("dcmtk's storescp is not installed (Debian: apt-get install dcmtk)")
    with tempfile.TemporaryDirectory(prefix="cxrscreen-listen-") as tmp, contextlib.ExitStack() as stack:
        base = Path(tmp)
        received, out = base / "received", base / "out"
        received.mkdir()
        bursts = [films(base / "src" / str(b), f"1.2.826.0.1.3680043.8.498.88.{b}", args.images, args.side, b)
                  for b in range(args.bursts)]
        target_port, node_port = free_port(), free_port()
        target = subprocess.Popen([storescp, "-aet", TARGET_AET, "-od", str(received), "+xa", str(target_port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stack.callback(target.wait, 10)
        stack.callback(target.terminate)
        cmd = [sys.executable, "-m", "cxrscreen", "listen", "--out", str(out), "--port", str(node_port), "--host",
               "127.0.0.1", "--study-timeout", f"{args.study_timeout:g}", "--forward",
               f"{TARGET_AET}@127.0.0.1:{target_port}", "--reports", args.reports, "--quiet",
               "--log-file", str(base / "listen.log")]
        if args.model is not None:
            cmd += ["--model", str(args.model)]
        t0 = time.monotonic()
        node = subprocess.Popen(cmd, cwd=REPO)
        stack.callback(node.wait, 120)
        stack.callback(node.terminate)
        while not answers(node_port):
            if node.poll() is not None:
                sys.exit(f"the node exited with {node.returncode}")
            time.sleep(0.2)
        print(f"node answering after {time.monotonic() - t0:.1f} s", file=sys.stderr)
        rows, seen = [], set()
        for b, files in enumerate(bursts):
            since = time.time()
            last = send_burst(node_port, files)
            study = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
            while not sr_seen(received, study, seen):
                if time.monotonic() - last > args.study_timeout + 120:
                    sys.exit(f"burst {b}: no SR after {args.study_timeout + 120:g} s; see {base / 'listen.log'}")
                time.sleep(POLL_S)
            latency = time.monotonic() - last
            s = scan_of(out, len(files), since)
            rows.append((b, latency, s.get("wall_s"), s.get("runtime", "?")))
            print(f"burst {b}: SR after {latency:.2f} s (scan pass {s.get('wall_s')} s: {s.get('durations_s')})",
                  file=sys.stderr)
            time.sleep(1.0)
    target_s = args.study_timeout + 5
    print(f"| burst | films | study timeout s | last C-STORE response → SR at storescp, s | of which the scan pass, s "
          f"| target ≤ {target_s:g} s |")
    print("|---:|---:|---:|---:|---:|---|")
    for b, latency, scan_s, _ in rows:
        print(f"| {b + 1} | {args.images} × {args.side}² 12-bit | {args.study_timeout:g} | {latency:.2f} | "
              f"{'?' if scan_s is None else f'{scan_s:.2f}'} | {'met' if latency <= target_s else 'MISSED'} |")
    print(f"\nMedian {statistics.median(r[1] for r in rows):.2f} s, worst {max(r[1] for r in rows):.2f} s; "
          f"runtime: {rows[-1][3]}; reports: {args.reports}. {harness.cpu_model()}, "
          f"{harness.machine()['cores']} cores, {harness.software()}, {harness.utc_now()}.")


if __name__ == "__main__":
    main()
