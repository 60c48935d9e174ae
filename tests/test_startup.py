"""Start-up: a scan with nothing to score imports no torch and loads no model (DESIGN.md, "Nothing is
loaded that the run does not need"); the model loads when a film needs it; such a run writes what a
run that loaded it would have written.

The no-torch checks run the scan in a fresh interpreter (pytest's own has imported torch long ago).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cxrscreen import scan
from cxrscreen.model.meta import ModelIntegrityError, read_model_info
from cxrscreen.options import ScanOptions
from cxrscreen.pipeline.plan import plan
from cxrscreen.runs import NOT_LOADED
from cxrscreen.state.ledger import Ledger
from tests.factory import chest_phantom, make_dicom, truncate

REPO = Path(__file__).resolve().parents[1]
OPTS = {"device": "cpu", "precision": "fp32", "workers": 0, "batch_size": 4}  # ScanOptions for every scan here


def fresh_python(code: str, env: dict[str, str] | None = None) -> dict:
    """Run ``code`` in a new interpreter; it prints one JSON line last."""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=600,
                         env={**os.environ, **(env or {})})
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def scan_in_fresh_python(folder: Path, out: Path, model: Path, **kw: object) -> dict:
    """``scan()`` in a new interpreter: its summary, and which heavy packages it imported."""
    args = {**OPTS, **kw}
    return fresh_python(
        "import json, sys\n"
        "from cxrscreen import scan\nfrom cxrscreen.options import ScanOptions\n"
        f"r = scan({str(folder)!r}, out={str(out)!r}, model={str(model)!r}, options=ScanOptions(**{args!r}))\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'monai': 'monai' in sys.modules,"
        " 'summary': r.summary.to_json()}))\n")


@pytest.fixture()
def films(tmp_path: Path) -> Path:
    """Two studies (one with two films) and a truncated file: every study flagged at threshold 0.01."""
    d = tmp_path / "in"
    make_dicom(d / "s1" / "pa.dcm", chest_phantom(seed=1), study_uid="1.2.3.1", accession="A1")
    make_dicom(d / "s1" / "ap.dcm", chest_phantom(seed=2), study_uid="1.2.3.1", accession="A1", view="AP")
    make_dicom(d / "s2" / "pa.dcm", chest_phantom(seed=3), study_uid="1.2.3.2", accession="A2")
    full = make_dicom(tmp_path / "full.dcm", chest_phantom(seed=4), study_uid="1.2.3.3", accession="A3")
    (d / "s3").mkdir()
    truncate(full, d / "s3" / "cut.dcm")
    return d


def outputs(out: Path) -> dict[str, bytes]:
    """The worklists and every report (name → content)."""
    got = {name: (out / name).read_bytes() for name in ("worklist_images.csv", "worklist_studies.csv")}
    got.update({f"reports/{p.name}": p.read_bytes() for p in sorted((out / "reports").iterdir())})
    return got


@pytest.mark.slow
def test_empty_folder_imports_no_torch(tmp_path: Path, random_model_path: Path) -> None:
    (tmp_path / "in").mkdir()
    got = scan_in_fresh_python(tmp_path / "in", tmp_path / "out", random_model_path, reports="flagged")
    assert not got["torch"] and not got["monai"]
    s = got["summary"]
    assert (s["files_found"], s["files_processed"], s["exit_code"]) == (0, 0, 0)
    assert s["runtime"] == NOT_LOADED
    for name in ("worklist_images.csv", "worklist_studies.csv", "summary.pdf", f"runs/{s['run_id']}/run.json"):
        assert (tmp_path / "out" / name).is_file(), name
    assert (tmp_path / "out" / "reports").is_dir()


@pytest.mark.slow
def test_cli_scan_of_an_empty_folder_imports_no_torch(tmp_path: Path) -> None:
    """The command itself, embedded model: exit 0, no torch (``-X importtime`` would miss the imports made
    while the scan sends native stderr to the log)."""
    (tmp_path / "in").mkdir()
    got = fresh_python(
        "import json, sys\n"
        "from cxrscreen.cli.app import app\n"
        "try:\n"
        f"    app(['scan', {str(tmp_path / 'in')!r}, '--out', {str(tmp_path / 'out')!r}, '-q'])\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "print(json.dumps({'code': code, 'torch': 'torch' in sys.modules}))\n")
    assert got == {"code": 0, "torch": False}
    assert (tmp_path / "out" / "worklist_images.csv").is_file()


@pytest.mark.slow
def test_rescan_of_unchanged_films_imports_no_torch_and_writes_the_same(films: Path, tmp_path: Path,
                                                                          random_model_path: Path) -> None:
    out = tmp_path / "out"
    first = scan(films, out, model=random_model_path, options=ScanOptions(threshold=0.01, reports="flagged", **OPTS))
    assert first.summary.files_processed == 4 and first.summary.runtime == "cpu float32 channels_last"
    before = outputs(out)
    assert sum(k.startswith("reports/") for k in before) == 3  # every study is flagged

    got = scan_in_fresh_python(films, out, random_model_path, threshold=0.01, reports="flagged")
    assert not got["torch"] and not got["monai"]
    s = got["summary"]
    assert (s["files_found"], s["files_skipped_already_scored"], s["files_processed"]) == (4, 4, 0)
    assert s["runtime"] == NOT_LOADED and s["exit_code"] == 0
    assert set(s) == set(first.summary.to_json())  # run.json keeps its keys
    assert outputs(out) == before
    assert (out / "runs" / s["run_id"] / "new_images.csv").is_file()

    # with DICOM results too: the objects of the first run's studies are written, still without torch
    got = scan_in_fresh_python(films, out, random_model_path, threshold=0.01, reports="flagged", dicom_results=True)
    assert not got["torch"] and len(list((out / "dicom").rglob("*.dcm"))) == 4  # 2 studies: SR + PDF each


@pytest.mark.slow
def test_a_rescan_still_remakes_what_changed(films: Path, tmp_path: Path, random_model_path: Path) -> None:
    """A rescan still (re)makes reports: after a deleted report, a new threshold or another report policy."""
    out = tmp_path / "out"
    scan(films, out, model=random_model_path, options=ScanOptions(threshold=0.01, reports="flagged", **OPTS))
    reports = sorted((out / "reports").iterdir())
    reports[0].unlink()
    scan(films, out, model=random_model_path, options=ScanOptions(threshold=0.01, reports="flagged", **OPTS))
    assert sorted((out / "reports").iterdir()) == reports  # made again

    res = scan(films, out, model=random_model_path, options=ScanOptions(threshold=0.02, reports="flagged", **OPTS))
    assert res.summary.rows_redecided_new_threshold == 4
    remade = sorted((out / "reports").iterdir())
    assert len(remade) == 3 and not set(remade) & set(reports)  # the threshold is on the page: new reports

    res = scan(films, out, model=random_model_path, options=ScanOptions(threshold=0.999, reports="all", **OPTS))
    images = (out / "worklist_images.csv").read_text()
    assert all(f"reports/{p.name}" in images for p in (out / "reports").iterdir())
    assert len(list((out / "reports").iterdir())) == 3


@pytest.mark.slow
def test_modified_weights_are_refused_when_they_are_loaded(tmp_path: Path, random_model_path: Path) -> None:
    """The weights' sha256 is checked when they are loaded: a run with nothing to score does not read them."""
    model = tmp_path / "model" / random_model_path.name
    model.parent.mkdir()
    for f in random_model_path.parent.glob(random_model_path.stem + ".*"):
        shutil.copy(f, model.parent / f.name)
    weights = model.with_suffix(".safetensors")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    (tmp_path / "empty").mkdir()
    assert scan(tmp_path / "empty", tmp_path / "o1", model=model, options=ScanOptions(**OPTS)).exit_code == 0
    make_dicom(tmp_path / "in" / "a.dcm")
    with pytest.raises(ModelIntegrityError):
        scan(tmp_path / "in", tmp_path / "o2", model=model, options=ScanOptions(**OPTS))
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="model weights not found"):  # still refused at once
        scan(tmp_path / "empty", tmp_path / "o3", model=model, options=ScanOptions(**OPTS))


@pytest.mark.slow
def test_a_run_that_imports_torch_gives_back_its_settings(films: Path, tmp_path: Path,
                                                          random_model_path: Path) -> None:
    """Torch imported by the run (not before it): the thread count and MONAI's metadata tracking it
    changes while scoring are put back to what torch and MONAI started with."""
    code = (
        "import json, sys\n"
        "from cxrscreen import scan\nfrom cxrscreen.options import ScanOptions\n"
        f"r = scan({str(films)!r}, out={str(tmp_path / 'out')!r}, model={str(random_model_path)!r},"
        f" options=ScanOptions(reports='none', **{OPTS!r}))\n"
        "import torch\n"
        "from monai.data import get_track_meta\n"
        "print(json.dumps([r.summary.files_processed, torch.get_num_threads(), get_track_meta()]))\n")
    assert fresh_python(code, env={"OMP_NUM_THREADS": "1"}) == [4, 1, True]  # scoring ran with 2 threads


@pytest.mark.slow
def test_one_thread_imports_torch_while_the_plan_goes_on(films: Path, tmp_path: Path,
                                                        random_model_path: Path) -> None:
    """The model loads in a thread of its own; torch's package graph is imported by that thread alone
    (two threads importing it at once can see half-initialised modules)."""
    code = (
        "import json, sys, threading\n"
        "seen = set()\n"
        "def loading():\n"
        "    return any(t.name == 'cxrscreen-model-load' for t in threading.enumerate())\n"
        "class Spy:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        top = name.split('.')[0]\n"
        "        if top in ('torch', 'monai') and (top not in sys.modules or loading()):\n"
        "            seen.add((threading.current_thread().name, top))\n"
        "        return None\n"
        "sys.meta_path.insert(0, Spy())\n"
        "from cxrscreen import scan\nfrom cxrscreen.options import ScanOptions\n"
        f"r = scan({str(films)!r}, out={str(tmp_path / 'out')!r}, model={str(random_model_path)!r},"
        f" options=ScanOptions(reports='flagged', threshold=0.01, **{OPTS!r}))\n"
        "print(json.dumps([r.summary.files_processed, sorted(seen)]))\n")
    processed, importers = fresh_python(code)
    assert processed == 4
    # every torch or MONAI import made while the model loads (and the first of each) is the loader's
    assert importers == [["cxrscreen-model-load", "monai"], ["cxrscreen-model-load", "torch"]]


@pytest.mark.slow
def test_the_metadata_side_imports_no_torch() -> None:
    got = fresh_python(
        "import json, sys\n"
        "import cxrscreen.cli.app, cxrscreen.model, cxrscreen.model.calibration, cxrscreen.model.lazy\n"
        "import cxrscreen.outputs.dicom, cxrscreen.outputs.summary, cxrscreen.pipeline\n"
        "from cxrscreen.model import ModelIntegrityError\n"
        "info = cxrscreen.model.meta.read_model_info()\n"
        "print(json.dumps([info.sha256, 'torch' in sys.modules, 'monai' in sys.modules]))\n")
    assert got[1:] == [False, False] and len(got[0]) == 64


def test_plan_starts_the_model_at_the_first_file_to_score(tmp_path: Path) -> None:
    root = tmp_path / "in"
    files = [make_dicom(root / f"{i}.dcm", chest_phantom(64, 64, seed=i)) for i in range(3)]
    calls: list[int] = []
    with Ledger(tmp_path / "l.sqlite") as led:
        todo, _ = plan(files, root, led, "a" * 64, rescan=False, on_work=lambda: calls.append(len(calls)))
        assert len(todo) == 3 and calls == [0]  # once
        todo, _ = plan([], root, led, "a" * 64, rescan=False, on_work=lambda: calls.append(len(calls)))
        assert todo == [] and calls == [0]  # nothing to score: not called


def test_lazy_model_loads_once_on_demand(random_model_path: Path) -> None:
    from cxrscreen.model.lazy import LazyModel

    lazy = LazyModel(read_model_info(random_model_path), "cpu", "fp32")
    assert not lazy.started and lazy.runtime_description() is None
    assert lazy.sha256 == lazy.loaded.sha256 and lazy.spec.input_size == 64
    lazy.start()
    nets = []
    threads = [threading.Thread(target=lambda: nets.append(lazy.scoring_net)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lazy.close()
    assert len({id(n) for n in nets}) == 1 and nets[0] is not lazy.net  # built once; a copy of the network
    assert lazy.runtime_description() == "cpu float32 channels_last"


def test_lazy_model_raises_a_load_error_to_whoever_asks(tmp_path: Path, random_model_path: Path) -> None:
    from cxrscreen.model.lazy import LazyModel

    info = read_model_info(random_model_path)
    bad = type(info)({**info.meta, "sha256": "0" * 64}, info.path)
    lazy = LazyModel(bad, "cpu", "fp32")
    lazy.start()
    lazy.close()
    for _ in range(2):
        with pytest.raises(ModelIntegrityError):
            _ = lazy.scoring_net
    assert lazy.rt.describe() == "cpu float32 channels_last"  # what did not fail is there


def test_the_report_stage_module_imports_no_torch() -> None:
    """A report stage with every report in place must not pull torch in by importing its module."""
    import subprocess
    import sys

    code = ("import sys, cxrscreen.outputs.report, cxrscreen.outputs.summary, cxrscreen.outputs.worklist; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_scoring_copy_shares_no_tensor_with_the_model(random_model) -> None:
    """Built without copying every weight first (start-up), yet a copy: training the model later leaves it."""
    import itertools

    from cxrscreen.model.inference import choose_runtime, inference_net

    net = random_model.net
    before = [t.clone() for t in net.state_dict().values()]
    ptrs = {t.data_ptr() for t in itertools.chain(net.parameters(), net.buffers()) if t.numel()}
    for precision in ("fp32", "bf16"):
        scorer = inference_net(net, choose_runtime("cpu", precision))
        assert not {t.data_ptr() for t in itertools.chain(scorer.parameters(), scorer.buffers())} & ptrs
    assert all(a.equal(b) for a, b in zip(before, net.state_dict().values(), strict=True))
