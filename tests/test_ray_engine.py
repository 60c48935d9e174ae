"""``scan --engine ray`` (issue #23): Ray Data prepares and scores, the driver keeps the ledger.

On a local Ray cluster of 2 CPUs started here (skipped where Ray is not installed: ``pip install
'cxrscreen[ray]'``): the same worklists as the local engine, a decoder crash is one row, a scoring
actor killed mid-run loses and duplicates nothing, one that keeps crashing stops the scan (exit 3), kill -9
of the driver then a rerun equals an uninterrupted run, report pages are made in the actors. The 64 px random
model keeps them fast; most of their time is Ray starting worker processes (each imports torch and MONAI).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import CTImageStorage, JPEGLSLossless, RLELossless

from cxrscreen import faults, scan, settings
from cxrscreen.events import BatchScored, Event
from cxrscreen.options import ScanOptions
from cxrscreen.outputs.worklist import read_csv
from cxrscreen.pipeline import ScanInputError
from cxrscreen.pipeline.ray_engine import INSTALL_HINT, MAX_BLOCK_BATCHES, MIN_BLOCKS, block_batches, budget
from tests.crashers import rle_panic_file
from tests.factory import chest_phantom, make_dicom, truncate

HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="Ray is not installed (pip install 'cxrscreen[ray]')")
REPO = Path(__file__).resolve().parents[1]
BATCH = 4
N = 16  # 4 batches


def options(**kw: object) -> ScanOptions:
    base: dict = {"device": "cpu", "precision": "fp32", "batch_size": BATCH, "workers": 0, "reports": "none"}
    return ScanOptions(**{**base, **kw})


def worklists(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both worklists without the run-specific column (scored_at)."""
    return read_csv(out / "worklist_images.csv").drop(columns=["scored_at"]), read_csv(out / "worklist_studies.csv")


def assert_same_worklists(got: Path, want: Path) -> None:
    """Same rows, decisions and ranks; probabilities within 1e-4."""
    for g, w in zip(worklists(got), worklists(want), strict=True):
        num = [c for c in g.columns if "probability" in c]
        pd.testing.assert_frame_equal(g.drop(columns=num), w.drop(columns=num))
        for c in num:
            np.testing.assert_allclose(pd.to_numeric(g[c]), pd.to_numeric(w[c]), atol=1e-4)


def ledger_rows(out: Path, sql: str) -> list[tuple]:
    db = sqlite3.connect(f"{(out / '.cxrscreen' / 'ledger.sqlite').resolve().as_uri()}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def uid_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


# --------------------------------------------------------------------------- no cluster needed
@pytest.mark.parametrize(("nodes", "gpu"), [([(2, 0)], False), ([(1, 0)], False), ([(4, 0), (4, 0)], False),
                                            ([(2, 0), (64, 0)], False), ([(64, 0)], False), ([(8, 1), (8, 1)], True),
                                            ([(2, 1)], True), ([(2, 2)], True), ([(1, 1), (32, 0)], True)])
def test_budget_leaves_every_node_cpus_for_preparation(nodes: list[tuple[float, float]], gpu: bool) -> None:
    """An actor that reserved a node's CPUs beside a preparation task waiting for them deadlocks the pipeline."""
    b = budget(nodes, gpu)
    assert b.actor_kind == ("gpu" if gpu else "cpu") and b.actors >= 1 and b.torch_threads >= 1
    assert b.actor_cpus == int(b.actor_cpus) or b.actor_cpus < 1  # Ray: fractions of one CPU only
    if gpu:  # one actor per GPU, on its node beside one preparation task
        assert b.actors == sum(g for _, g in nodes)
        assert all(g * b.actor_cpus + b.prep_cpus <= c for c, g in nodes if g)
    else:  # one actor and one preparation task fit on any node; the actors reserve at most half the cluster
        assert b.actor_cpus + b.prep_cpus <= min(c for c, _ in nodes)
        assert b.actors * b.actor_cpus <= sum(max(c / 2, b.actor_cpus) for c, _ in nodes)
    with pytest.raises(ScanInputError):
        budget([(0, 0)], gpu)


def test_without_ray_engine_ray_is_a_usage_error(tmp_path: Path, random_model_path: Path, monkeypatch) -> None:
    """One line that says how to install it, exit 2, and nothing scanned or written."""
    from typer.testing import CliRunner

    from cxrscreen.cli.app import app

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError
    folder = tmp_path / "in"
    make_dicom(folder / "a.dcm", chest_phantom(256, 256))
    with pytest.raises(ScanInputError, match=r"pip install 'cxrscreen\[ray\]'"):
        scan(folder, tmp_path / "out", random_model_path, options(engine="ray"))
    assert not (tmp_path / "out").exists()
    res = CliRunner().invoke(app, ["scan", str(folder), "--out", str(tmp_path / "out2"), "--model",
                                   str(random_model_path), "--engine", "ray"])
    assert res.exit_code == 2, res.output
    assert INSTALL_HINT in res.output and not (tmp_path / "out2").exists()


@needs_ray
def test_a_modified_model_is_refused_before_any_work(tmp_path: Path, random_model_path: Path) -> None:
    """Weights whose sha256 is not the metadata's: ModelIntegrityError (the CLI's exit 2), as with the local
    engine, before any cluster is asked for anything."""
    from cxrscreen.model.meta import ModelIntegrityError

    model = tmp_path / "model" / random_model_path.name
    shutil.copytree(random_model_path.parent, model.parent)
    weights = model.with_suffix(".safetensors")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    folder = tmp_path / "in"
    make_dicom(folder / "a.dcm", chest_phantom(256, 256))
    with pytest.raises(ModelIntegrityError):
        scan(folder, tmp_path / "out", model, options(engine="ray", ray_address="127.0.0.1:1"))


LOCAL_CLUSTER_RUN = """
import json, logging, os, signal, sys, time
import ray
import psutil  # vendored by Ray: importable once ray is
from cxrscreen import scan
from cxrscreen.options import ScanOptions
before = (os.environ.get("RAY_AUTH_MODE"), signal.getsignal(signal.SIGTERM), logging.getLogger("ray").handlers[:])
res = scan(sys.argv[1], sys.argv[2], sys.argv[3], ScanOptions(device="cpu", precision="fp32", batch_size=4,
                                                              reports="none", engine="ray"))
for _ in range(50):  # the local cluster's processes are this process's children until they exit
    left = [p.pid for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]
    if not left:
        break
    time.sleep(0.2)
after = (os.environ.get("RAY_AUTH_MODE"), signal.getsignal(signal.SIGTERM), logging.getLogger("ray").handlers[:])
print(json.dumps({"cluster": res.summary.schedule["cluster"], "rows": res.summary.files_processed,
                  "initialized": ray.is_initialized(), "left": left, "restored": before == after}))
"""


@pytest.mark.parametrize("batches", [1, 31, 63, 64, 100, 127, 128, 625, 10**6])
def test_blocks_grow_with_the_run_but_never_below_min_blocks(batches: int) -> None:
    """One batch per block in a small run; up to MAX_BLOCK_BATCHES in a large one, never fewer than MIN_BLOCKS
    blocks where the run has that many batches."""
    k = block_batches(batches)
    assert 1 <= k <= MAX_BLOCK_BATCHES
    assert -(-batches // k) >= min(batches, MIN_BLOCKS)
    assert (k == 1) == (batches < 2 * MIN_BLOCKS)
    assert (k == MAX_BLOCK_BATCHES) == (batches >= MAX_BLOCK_BATCHES * MIN_BLOCKS)


@needs_ray
@pytest.mark.slow
def test_a_local_cluster_is_started_for_the_run_and_stopped_after_it(tmp_path: Path, random_model_path: Path) -> None:
    """No ``--ray-address``: a local cluster for the run; afterwards no Ray process is left, and what
    ``ray.init`` changed in the process (environment, SIGTERM handler, the ``ray`` logger) is put back."""
    got = run_script(LOCAL_CLUSTER_RUN, tmp_path, random_model_path)
    assert got == {"cluster": "local", "rows": 4, "initialized": False, "left": [], "restored": True}


def run_script(script: str, tmp_path: Path, model: Path) -> dict:
    """``script`` in a fresh Python process, given a folder of 4 films, an OUT and ``model``; the JSON it
    printed last."""
    folder = tmp_path / "in"
    for i in range(4):
        make_dicom(folder / f"f{i}.dcm", chest_phantom(256, 256, seed=800 + i), accession=f"L{i}")
    res = subprocess.run([sys.executable, "-c", script, str(folder), str(tmp_path / "out"), str(model)],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


GPU_CLUSTER_RUN = """
import json, sys
import ray
import torch
from cxrscreen import scan
from cxrscreen.options import ScanOptions
ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
try:
    res = scan(sys.argv[1], sys.argv[2], sys.argv[3], ScanOptions(device="auto", precision="fp32", batch_size=4,
                                                                  reports="none", engine="ray"))
finally:
    ray.shutdown()
s = res.summary
print(json.dumps({"schedule": s.schedule, "runtime": s.runtime, "rows": s.files_processed,
                  "cuda": torch.cuda.is_available()}))
"""


@needs_ray
@pytest.mark.slow
def test_a_cluster_with_a_gpu_gets_one_gpu_actor_per_gpu(tmp_path: Path, random_model_path: Path) -> None:
    """A cluster that has a GPU (here one declared to Ray: ``num_gpus=1``): one scoring actor asking for it
    (``num_gpus=1``), with a CPU beside one preparation task, and the films scored; the actor's device is
    the GPU where CUDA works (``--device auto``), else the CPU (this machine)."""
    got = run_script(GPU_CLUSTER_RUN, tmp_path, random_model_path)
    sched = got["schedule"]
    assert (sched["actor_kind"], sched["actors"], sched["cluster_gpus"], sched["actor_cpus"]) == ("gpu", 1, 1.0, 1.0)
    assert got["rows"] == 4 and got["runtime"].startswith("cuda" if got["cuda"] else "cpu")


# --------------------------------------------------------------------------- on a local cluster
@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Ray cluster of 2 CPUs for this module (``address="local"``: never one already running on the
    machine); its GCS address for ``--ray-address``. Shut down, and the environment Ray changed put back."""
    if not HAS_RAY:
        pytest.skip("Ray is not installed (pip install 'cxrscreen[ray]')")
    import ray

    env = dict(os.environ)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        os.environ.clear()
        os.environ.update(env)


@pytest.fixture(scope="module")
def films(tmp_path_factory) -> Path:
    """N assessable films in studies of 2 (some PA, some AP; RLE and JPEG-LS among them), a truncated file
    and a CT."""
    folder = tmp_path_factory.mktemp("ray") / "in"
    for i in range(N):
        kw = {"transfer_syntax": (None, RLELossless, JPEGLSLossless)[i % 3]}
        make_dicom(folder / f"s{i // 8}" / f"img{i:03d}.dcm", chest_phantom(256, 256, seed=500 + i),
                   patient_id=f"P{i // 2:04d}", accession=f"A{i // 2:04d}", **{k: v for k, v in kw.items() if v})
    full = make_dicom(folder.parent / "full.dcm", chest_phantom(256, 256, seed=600), accession="T0001")
    (folder / "bad").mkdir()
    truncate(full, folder / "bad" / "truncated.dcm")
    make_dicom(folder / "bad" / "ct.dcm", chest_phantom(256, 256, seed=601), modality="CT", sop_class=CTImageStorage,
               body_part="ABDOMEN", view=None, accession="T0002")
    return folder


@pytest.fixture(scope="module")
def reference(films: Path, random_model_path: Path, tmp_path_factory) -> Path:
    """The local engine's scan of ``films`` (what the Ray engine must reproduce)."""
    out = tmp_path_factory.mktemp("ref") / "out"
    res = scan(films, out, random_model_path, options())
    assert res.exit_code == 1  # the truncated file
    return out


@needs_ray
@pytest.mark.slow
def test_same_worklists_as_the_local_engine(cluster: str, films: Path, reference: Path, random_model_path: Path,
                                            tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = scan(films, out, random_model_path, options(engine="ray"))
    assert res.exit_code == 1
    assert_same_worklists(out, reference)
    s = json.loads((res.run_dir / "run.json").read_text())
    assert s["schedule"]["engine"] == "ray" and s["schedule"]["actors"] == 1
    assert s["schedule"]["actor_kind"] == "cpu" and s["schedule"]["runtime"] == "cpu float32 channels_last"
    assert s["files_processed"] == N + 2 and s["images_scored"] == N
    assert ledger_rows(out, "SELECT COUNT(*), COUNT(DISTINCT path) FROM images") == [(N + 2, N + 2)]
    assert scan(films, out, random_model_path, options(engine="ray")).summary.files_processed == 0  # ledger skip


@needs_ray
@pytest.mark.slow
def test_report_pages_are_made_in_the_actors(cluster: str, films: Path, random_model_path: Path,
                                              tmp_path: Path) -> None:
    """Every film flagged (threshold near 0): every page comes from the actor that scored the film, none is
    read again by the report stage, and the reports are the local engine's."""
    o = {"reports": "flagged", "threshold": 1e-6}
    ray_run = scan(films, tmp_path / "ray", random_model_path, options(engine="ray", **o))
    scan(films, tmp_path / "local", random_model_path, options(**o))
    assert ray_run.summary.durations_s.get("report_rereads", 0) == 0
    assert ray_run.summary.durations_s.get("pages", 0) > 0
    names = {p.name for p in (tmp_path / "local" / "reports").rglob("*.pdf")}
    assert names and names == {p.name for p in (tmp_path / "ray" / "reports").rglob("*.pdf")}
    assert_same_worklists(tmp_path / "ray", tmp_path / "local")


@needs_ray
@pytest.mark.slow
def test_a_decoder_crash_is_one_row(cluster: str, tmp_path: Path, random_model_path: Path) -> None:
    """A codec panic (RLE), and an abort while decoding an uncompressed file (fault injection: in the local
    engine it would kill the process that decodes it): one ``error:decoder_crash`` row each."""
    folder = tmp_path / "in"
    for i in range(5):
        make_dicom(folder / f"good{i}.dcm", chest_phantom(256, 256, seed=700 + i), accession=f"C{i}")
    rle_panic_file(folder / "panic.dcm", accession="C9")
    abort = make_dicom(folder / "abort.dcm", chest_phantom(256, 256, seed=710), accession="C8")
    with settings.override(fault_decode={uid_of(abort): "abort"}):
        res = scan(folder, tmp_path / "out", random_model_path, options(engine="ray"))
    assert res.exit_code == 1
    images = read_csv(tmp_path / "out" / "worklist_images.csv").set_index("path")
    assert images.loc["panic.dcm", "status"] == images.loc["abort.dcm", "status"] == "error:decoder_crash"
    assert (images.drop(index=["panic.dcm", "abort.dcm"])["status"] == "ok").all() and len(images) == 7


def _scoring_actors() -> list:
    """This test process's scoring actor processes (the local cluster's are its descendants)."""
    import psutil

    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "MapWorker(MapBatches(_Scorer))" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:  # gone meanwhile
            pass
    return found


@needs_ray
@pytest.mark.slow
def test_a_scoring_actor_killed_mid_run_loses_and_duplicates_nothing(cluster: str, films: Path, reference: Path,
                                                                      random_model_path: Path,
                                                                      tmp_path: Path) -> None:
    """SIGKILL to the scoring actor after the first committed batch: Ray restarts it, the batches it held are
    scored again, each film is committed once."""
    killed: list[int] = []

    def on_event(e: Event) -> None:
        if isinstance(e, BatchScored) and not killed:
            for p in _scoring_actors():
                p.send_signal(signal.SIGKILL)
                killed.append(p.pid)

    out = tmp_path / "out"
    res = scan(films, out, random_model_path, options(engine="ray"), progress=on_event)
    assert killed
    assert res.summary.schedule is not None and res.summary.schedule["actor_processes"] >= 2  # a restarted actor
    assert res.summary.files_processed == N + 2
    assert_same_worklists(out, reference)
    assert ledger_rows(out, "SELECT COUNT(*), COUNT(DISTINCT path) FROM images") == [(N + 2, N + 2)]


@needs_ray
@pytest.mark.slow
def test_a_scoring_actor_that_keeps_crashing_stops_the_scan(cluster: str, films: Path, random_model_path: Path,
                                                            tmp_path: Path) -> None:
    """Every scoring actor SIGKILLs itself on every batch (fault injection): Ray's restarts are bounded
    (``ACTOR_RESTARTS``), so the real CLI ends instead of restarting it without end: exit 3, one line that says
    so, Ray's error in the log, nothing committed."""
    from cxrscreen.pipeline.ray_engine import ACTOR_RESTARTS

    out, log = tmp_path / "out", tmp_path / "scan.log"
    args = [sys.executable, "-m", "cxrscreen", "scan", str(films), "--out", str(out), "--model",
            str(random_model_path), "--batch-size", str(BATCH), "--reports", "none", "--device", "cpu",
            "--precision", "fp32", "--engine", "ray", "--ray-address", cluster, "--log-file", str(log)]
    env = dict(os.environ, **{faults.ACTOR_CRASH: "1"})
    res = subprocess.run(args, capture_output=True, text=True, cwd=REPO, env=env, timeout=240)  # a hang fails here
    assert res.returncode == 3, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert lines[0].startswith(f"cxrscreen: error: --engine ray: a scoring actor died {ACTOR_RESTARTS + 1} times")
    assert "0 film(s) committed so far are kept in the ledger" in lines[0]
    assert ledger_rows(out, "SELECT COUNT(*) FROM images") == [(0,)]
    assert "ActorDiedError" in log.read_text()  # Ray's own error, for whoever looks into it


@needs_ray
@pytest.mark.slow
def test_kill9_of_the_driver_then_rerun_equals_uninterrupted(cluster: str, films: Path, reference: Path,
                                                             random_model_path: Path, tmp_path: Path) -> None:
    """The real CLI against the cluster (``--ray-address``), SIGKILLed right after its 2nd committed batch."""
    out = tmp_path / "out"
    args = [sys.executable, "-m", "cxrscreen", "scan", str(films), "--out", str(out), "--model",
            str(random_model_path), "--batch-size", str(BATCH), "--reports", "none", "--device", "cpu",
            "--precision", "fp32", "--engine", "ray", "--ray-address", cluster, "--json"]
    env = dict(os.environ, **{faults.KILL_AFTER_BATCH: "2"})
    res = subprocess.run(args, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert ledger_rows(out, "SELECT COUNT(*) FROM images") == [(2 * BATCH,)]  # whole batches: a transaction each
    assert not (out / "worklist_images.csv").exists()

    res = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert res.returncode == 1, res.stderr  # the truncated file
    assert "Traceback" not in res.stderr and not res.stderr.strip(), res.stderr  # Ray's own lines go to the log
    s = json.loads(res.stdout)
    assert s["files_skipped_already_scored"] == 2 * BATCH and len(s["resumed_runs"]) == 1
    assert s["files_processed"] == N + 2 and s["schedule"]["cluster"] == cluster
    assert_same_worklists(out, reference)
    assert ledger_rows(out, "SELECT COUNT(*), COUNT(DISTINCT path) FROM images") == [(N + 2, N + 2)]


@needs_ray
@pytest.mark.slow
def test_ctrl_c_cancels_the_dataset(cluster: str, films: Path, random_model_path: Path, tmp_path: Path) -> None:
    """KeyboardInterrupt in the driver stops the dataset: no scoring actor is left running, the committed
    batches stay in the ledger."""
    def on_event(e: Event) -> None:
        if isinstance(e, BatchScored):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        scan(films, tmp_path / "out", random_model_path, options(engine="ray"), progress=on_event)
    assert ledger_rows(tmp_path / "out", "SELECT COUNT(*) FROM images") == [(BATCH,)]
    deadline = threading.Event()
    for _ in range(50):  # the actor is killed asynchronously
        if not _scoring_actors():
            break
        deadline.wait(0.2)
    assert not _scoring_actors()
