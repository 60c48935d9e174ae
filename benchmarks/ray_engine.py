"""Benchmark: ``cxrscreen scan --engine ray`` against a running Ray cluster, and the local engine, on the same films
(issue #23).

    .venv/bin/python benchmarks/ray_engine.py [--copies 93] [--rounds 2] [--ray-address ADDR] [--tiny 10000]
                                              [--ref COMMIT] [--mem-rounds 1]

Without ``--ray-address`` a local cluster is started first, as an operator would start one (``ray start --head
--num-cpus N``, N = this machine's cores; its own temporary folder and a free port), and only its processes are
stopped at the end. Inputs: ``sample_dicoms`` × ``--copies``, each copy with its own UIDs
(``benchmarks/startup.py``): uncompressed, JPEG 2000, JPEG-LS, RLE and JPEG baseline films, one truncated.
In alternating rounds, a fresh ``cxrscreen scan FILMS --reports none --json`` process per run (the embedded
model, precision auto), once with the local engine and once with ``--engine ray --ray-address``; per run:

- the rate with start-up included: films over the wall time of the whole process (Python start, imports,
  connecting, actor start, model load, scoring, worklists, summary);
- the scoring pass's rate (run.json ``images_per_s``: films over the pass's wall time);
- Ray's fixed start-up (run.json ``durations_s``): connecting (``ray_connect``), connect to first committed
  batch (``ray_first_batch``), the actor's process start to model ready (``actor_ready``), of which
  loading the model (``actor_model_load``); and the marginal rate after the first batch.

Then the driver's memory: scans of ``--tiny`` and of ``--tiny``/10 tiny (8×8 px, hence
``not_assessable:too_small``) films (``benchmarks/rescan.py``'s), with both engines: with Ray every file still
goes through the preparation tasks and the scoring actor and its record streams back to the driver; the peak
RSS of the ``cxrscreen`` process (the driver alone: the cluster's processes are not its children). With
``--ref COMMIT``, the package at COMMIT (a ``git worktree``, first on the ``PYTHONPATH``, same virtual
environment) is measured in the same way, alternating with this tree, ``--mem-rounds`` times.
Prints Markdown on stdout; the figures go to docs/benchmarks.md by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness
from harness import REPO
from rescan import tiny_dicoms
from startup import films as sample_films

SUMMARY_KEYS = ("ray_connect", "ray_first_batch", "actor_ready", "actor_model_load")


class Head:
    """A local Ray head node started for the benchmark (``ray start --head``), stopped by its processes' ids."""

    def __init__(self, cpus: int, env: dict[str, str]) -> None:
        self.temp = Path(tempfile.mkdtemp(prefix="crb-", dir="/tmp"))  # short: Ray's socket paths must fit
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        t0 = time.perf_counter()
        subprocess.run([str(REPO / ".venv" / "bin" / "ray"), "start", "--head", f"--num-cpus={cpus}",
                        f"--port={port}", f"--temp-dir={self.temp}", "--include-dashboard=false",
                        "--disable-usage-stats"], check=True, capture_output=True, env=env)
        self.start_s = time.perf_counter() - t0
        self.address = f"127.0.0.1:{port}"

    def pids(self) -> list[int]:
        """Processes whose command line names this head's temporary folder (its GCS, raylet…), and theirs
        (workers, actors)."""
        own = []
        for entry in os.scandir("/proc"):
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                with contextlib.suppress(OSError):
                    if str(self.temp).encode() in Path(f"/proc/{entry.name}/cmdline").read_bytes():
                        own.append(int(entry.name))
        return [p for root in own for p in harness._tree(root)]

    def stop(self) -> None:
        """Stop this head's processes (SIGTERM, then SIGKILL) and remove its temporary folder (Ray's logs)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            for _ in range(50):
                if not self.pids():
                    break
                time.sleep(0.2)
            else:
                continue
            break
        shutil.rmtree(self.temp, ignore_errors=True)


def scan(folder: Path, out: Path, env: dict[str, str], *extra: str) -> dict[str, Any]:
    """One ``cxrscreen scan`` process: its wall time and run summary."""
    cmd = [sys.executable, "-m", "cxrscreen", "scan", str(folder), "--out", str(out), "--reports", "none", "--json",
           *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        sys.exit(f"scan failed ({proc.returncode}): {stderr.strip()[-3000:]}")
    return {"wall": wall, "summary": json.loads(stdout)}


def peak_rss(folder: Path, out: Path, env: dict[str, str], *extra: str,
             tree: Path | None = None) -> tuple[float, float, dict[str, Any]]:
    """Peak RSS (MB) and CPU seconds of one ``cxrscreen scan`` process (``wait4``'s rusage: that process and
    the children it waited for, its decode helpers), and its summary; ``tree``: the package of that checkout."""
    cmd = [sys.executable, "-m", "cxrscreen", "scan", str(folder), "--out", str(out), "--reports", "none", "--json",
           *extra]
    if tree is not None:
        env = {**env, "PYTHONPATH": str(tree)}
    with tempfile.TemporaryFile("w+") as fout, tempfile.TemporaryFile("w+") as ferr:
        proc = subprocess.Popen(cmd, stdout=fout, stderr=ferr, text=True, cwd=tree or REPO, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        fout.seek(0)
        ferr.seek(0)
        if proc.returncode not in (0, 1):
            sys.exit(f"scan failed ({proc.returncode}): {ferr.read().strip()[-3000:]}")
        return usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime, json.loads(fout.read())


def span(xs: list[float], fmt: str = "{:.1f}") -> str:
    return (fmt.format(statistics.median(xs)) + (f" ({fmt.format(min(xs))}–{fmt.format(max(xs))})"
                                                   if len(xs) > 1 else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--copies", type=int, default=93, help="copies of sample_dicoms (10 files each)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of both engines (medians reported)")
    ap.add_argument("--ray-address", help="a running cluster (default: start a local one for the benchmark)")
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs of the local cluster")
    ap.add_argument("--tiny", type=int, default=10_000, help="tiny films of the driver-memory check (0: skip)")
    ap.add_argument("--ref", help="baseline commit for the driver-memory check (default: this tree only)")
    ap.add_argument("--mem-rounds", type=int, default=1, help="rounds of the driver-memory check")
    args = ap.parse_args()
    env = dict(os.environ)
    env.setdefault("RAY_AUTH_MODE", "token")  # an explicit address needs it with a token-authenticated cluster
    head = None
    runs: dict[str, list[dict[str, Any]]] = {"local": [], "ray": []}
    mem: list[tuple[str, str, int, float, float, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="cxrscreen-raybench-") as tmp:
        base = Path(tmp)
        trees: dict[str, Path | None] = {"this tree": None}
        if args.ref:
            subprocess.run(["git", "worktree", "add", "--detach", str(base / "ref"), args.ref], cwd=REPO, check=True,
                           capture_output=True)
            trees = {f"{args.ref[:9]} (baseline)": base / "ref", **trees}
        n = sample_films(base / "films", args.copies) if args.rounds else 0
        try:
            if args.ray_address is None:
                head = Head(args.cpus, env)
                print(f"started a local cluster at {head.address} in {head.start_s:.1f} s", file=sys.stderr)
            address = args.ray_address or head.address  # type: ignore[union-attr]
            for r in range(args.rounds):
                for engine in (("local", "ray") if r % 2 == 0 else ("ray", "local")):
                    busy = harness.others_busy(2.0)
                    extra = ("--engine", "ray", "--ray-address", address) if engine == "ray" else ()
                    res = scan(base / "films", base / f"out-{engine}-{r}", env, *extra)
                    res["others_before"] = busy
                    res["load1"] = os.getloadavg()[0]
                    runs[engine].append(res)
                    s = res["summary"]
                    print(f"round {r + 1} {engine}: {res['wall']:.1f} s, {n / res['wall']:.1f} img/s with start-up, "
                          f"pass {s['images_per_s']} img/s, other processes {busy:.2f} cores before", file=sys.stderr)
            sizes = (args.tiny // 10, args.tiny) if args.tiny else ()
            for k in sizes:
                tiny_dicoms(base / f"tiny{k}", k)
            for r in range(args.mem_rounds if sizes else 0):
                for name, tree in trees.items():
                    for k in sizes:
                        for engine in ("ray", "local"):
                            extra = ("--engine", "ray", "--ray-address", address) if engine == "ray" else ()
                            out = base / f"out-tiny{k}-{engine}-{r}-{len(mem)}"
                            rss, cpu, s = peak_rss(base / f"tiny{k}", out, env, *extra, tree=tree)
                            mem.append((name, engine, k, rss, cpu, s))
                            print(f"{name}, tiny {k}, {engine}: peak RSS {rss:.0f} MB, {s['wall_s']:.1f} s",
                                  file=sys.stderr)
        finally:
            if head is not None:
                head.stop()
            if args.ref:
                subprocess.run(["git", "worktree", "remove", "--force", str(base / "ref")], cwd=REPO,
                               capture_output=True)
    report(n, args, runs, mem, head)


def report(n: int, args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]],
           mem: list[tuple[str, str, int, float, float, dict[str, Any]]], head: Head | None) -> None:
    m = harness.machine()
    print(f"Machine: {m['cpu']}, {m['cores']} cores ({m['isa']}), {m['ram']}, {m['sw']}, ray "
          f"{__import__('ray').__version__}; {harness.utc_now()}.  ")
    cluster = (f"a local cluster (`ray start --head --num-cpus {args.cpus}`, started in {head.start_s:.1f} s)"
               if head is not None else f"the cluster at `{args.ray_address}`")
    print(f"Command: `{harness.command('ray_engine.py', None)}`; {n} films, {cluster}, a fresh `cxrscreen scan` "
          f"process per run, `--reports none`, precision auto.  ")
    if runs["local"] and runs["ray"]:
        rates(n, runs)
    if mem:
        memory(mem)


def rates(n: int, runs: dict[str, list[dict[str, Any]]]) -> None:
    others = [r["others_before"] for rs in runs.values() for r in rs]
    loads = [r["load1"] for rs in runs.values() for r in rs]
    print(f"Other processes used {min(others):.2f}–{max(others):.2f} cores just before the runs; load average "
          f"{min(loads):.1f}–{max(loads):.1f} after them.\n")
    print("| engine | wall s | img/s, start-up included | scoring pass img/s | run.json runtime / schedule |")
    print("|---|---:|---:|---:|---|")
    per_s: dict[str, list[float]] = {}
    for engine, rs in runs.items():
        walls = [r["wall"] for r in rs]
        per_s[engine] = [n / w for w in walls]
        s = rs[-1]["summary"]
        sched = s.get("schedule") or {}
        what = (f"{s['runtime']}; {sched.get('actors')} {sched.get('actor_kind')} actor(s) of "
                f"{sched.get('actor_cpus')} CPU, {sched.get('torch_threads')} torch threads"
                if engine == "ray" else f"{s['runtime']}; {sched.get('workers')} decode workers, "
                f"{sched.get('torch_threads')} torch threads")
        print(f"| {engine} | {span(walls)} | {span(per_s[engine])} | "
              f"{span([r['summary']['images_per_s'] for r in rs])} | {what} |")
    ratio = [r / lo for r, lo in zip(per_s["ray"], per_s["local"], strict=True)]
    print(f"\nRay ÷ local, start-up included, round by round: {', '.join(f'{x:.2f}' for x in ratio)}.\n")
    print("| Ray's fixed start-up (run.json) | median (range) s |")
    print("|---|---:|")
    for key in SUMMARY_KEYS:
        print(f"| `{key}` | {span([r['summary']['durations_s'].get(key, 0.0) for r in runs['ray']], '{:.2f}')} |")
    marginal = []
    for r in runs["ray"]:
        d = r["summary"]["durations_s"]
        first = d.get("ray_first_batch", 0.0) + d.get("ray_connect", 0.0)
        batch = 16  # films in the first committed batch (the default batch size)
        marginal.append((n - batch) / max(d["score_wall"] - first, 1e-9))
    print(f"| marginal rate after the first batch | {span(marginal)} img/s |")


def memory(mem: list[tuple[str, str, int, float, float, dict[str, Any]]]) -> None:
    """Per tree, engine and size: the peak RSS (median and range over the rounds), CPU and wall seconds."""
    print("\n| tree | engine | tiny films | peak RSS of the `cxrscreen scan` process, MB | its CPU s | wall s "
          "(in process) |")
    print("|---|---|---:|---:|---:|---:|")
    keys = sorted({(m[0], m[1], m[2]) for m in mem}, key=lambda k: (k[0] == "this tree", k[1] != "ray", k[2]))
    for name, engine, k in keys:
        rows = [m for m in mem if m[:3] == (name, engine, k)]
        print(f"| {name} | {engine} | {k:,} | {span([m[3] for m in rows], '{:.0f}')} | "
              f"{span([m[4] for m in rows])} | {span([m[5]['wall_s'] for m in rows])} |")


if __name__ == "__main__":
    main()
