"""``cxrscreen listen``: the DICOM node against real peers (dcmtk's storescu/storescp/echoscu, TLS callers),
through its Python API (in process, the test's random 64 px model) and its command line (kill -9, SIGTERM)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import AE
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification
from typer.testing import CliRunner

from cxrscreen.cli.app import app
from cxrscreen.options import ScanOptions
from cxrscreen.pacs import Address, WebCredentials, parse_destination
from cxrscreen.pacs.listen import ListenConfig, Node
from cxrscreen.pacs.tls import TlsFiles, client_context
from cxrscreen.testing import dicom
from tests.certs import make_ca
from tests.factory import chest_phantom
from tests.orthanc import free_port, orthanc_server

STORESCU, STORESCP, ECHOSCU = (shutil.which(t) for t in ("storescu", "storescp", "echoscu"))
SECRETS = {"PatientName": "SECRET^PATIENTNAME", "PatientID": "PID-SECRET-42", "AccessionNumber": "ACC-SECRET-7"}
NODE_AET = "CXRSCREEN"
runner = CliRunner()


def require(tool: str | None, name: str) -> str:
    if tool is None:
        pytest.skip(f"dcmtk's {name} is not installed (Debian: apt-get install dcmtk; `make sysdeps` does it)")
    return tool


# --------------------------------------------------------------------------- images, ledger, peers
_PIXELS: dict[int, np.ndarray] = {}


def image(folder: Path, study: str, ts: str = ExplicitVRLittleEndian, side: int = 256, **kw) -> Path:
    """A chest-like 8-bit film (``side`` px: 256 is scored, smaller is rejected by QC) in ``ts``."""
    if side not in _PIXELS:
        _PIXELS[side] = (chest_phantom(side, side) * 255).astype(np.uint8)
    ds = dicom.set_pixels(dicom.dataset(StudyInstanceUID=study, **SECRETS, **kw), _PIXELS[side].copy())
    if ts == ImplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = ts
    else:
        dicom.encode(ds, ts)
    return dicom.write(ds, folder / f"{ds.SOPInstanceUID}.dcm")


def study_uid(n: int) -> str:
    return f"1.2.826.0.1.3680043.8.498.77.{n}"


def sop_of(path: Path) -> str:
    return pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID


def ledger(out: Path) -> list[tuple[str, str]]:
    """(path, status) of every ledger row."""
    with contextlib.closing(sqlite3.connect(out / ".cxrscreen" / "ledger.sqlite")) as db:
        return db.execute("SELECT path, status FROM images ORDER BY path").fetchall()


def processed(out: Path) -> tuple[int, int]:
    """(files processed by the finished runs, runs not finished): each image scored once ⇔ the sum is the count."""
    with contextlib.closing(sqlite3.connect(out / ".cxrscreen" / "ledger.sqlite")) as db:
        rows = db.execute("SELECT summary, finished FROM runs").fetchall()
    return sum(json.loads(s)["files_processed"] for s, _ in rows if s), sum(f is None for _, f in rows)


def scu(aet: str = "TESTSCU") -> AE:
    ae = AE(aet)
    ae.acse_timeout = ae.connection_timeout = ae.dimse_timeout = 10
    return ae


def store(port: int, files: list[Path], aet: str = "TESTSCU", tls: TlsFiles | None = None,
          after: Callable[[int], None] | None = None) -> dict[Path, int | None]:
    """C-STORE ``files`` on one association: each file's status (None: no answer, the association is gone)."""
    ae = scu(aet)
    for ts in {pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID for f in files}:
        ae.add_requested_context(dicom.DX_STORAGE, ts)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET,
                         tls_args=(client_context(tls), "127.0.0.1") if tls else None)
    statuses: dict[Path, int | None] = dict.fromkeys(files)
    if not assoc.is_established:
        return statuses
    assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle stall per message
    for n, f in enumerate(files):
        rsp = assoc.send_c_store(f)
        if not rsp:
            break
        statuses[f] = int(rsp.Status)
        if after is not None:
            after(n)
    if assoc.is_established:
        assoc.release()
    return statuses


def echo(port: int, aet: str = "TESTSCU", tls: TlsFiles | None = None) -> bool:
    ae = scu(aet)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET,
                         tls_args=(client_context(tls), "127.0.0.1") if tls else None)
    if not assoc.is_established:
        return False
    ok = int(assoc.send_c_echo().get("Status", -1)) == 0
    assoc.release()
    return ok


def storescu(port: int, files: list[Path], *args: str) -> subprocess.Popen:
    """dcmtk's storescu sending ``files`` on one association (TCP_NODELAY: without it, Nagle's algorithm and
    the receiver's delayed ACK hold each C-STORE back ~40-90 ms on loopback)."""
    return subprocess.Popen([require(STORESCU, "storescu"), *args, "-aet", "DCMTK", "-aec", NODE_AET, "127.0.0.1",
                             str(port), *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=os.environ | {"TCP_NODELAY": "1"})


def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:g} s: {what}")
        time.sleep(0.1)


@contextlib.contextmanager
def node(tmp_path: Path, model, study_timeout: float = 0.5, **kw) -> Iterator[Node]:
    """A node in this process on a free port (the random model, no reports)."""
    config = ListenConfig(tmp_path / "out", 0, host="127.0.0.1", study_timeout=study_timeout, model=model,
                          options=ScanOptions(reports="none"), **kw)
    with Node(config) as n:
        yield n


# --------------------------------------------------------------------------- receiving
STORESCU_PROFILES = """
[[TransferSyntaxes]]
[RLE]
TransferSyntax1 = 1.2.840.10008.1.2.5
[Implicit]
TransferSyntax1 = 1.2.840.10008.1.2
[JPEGLS]
TransferSyntax1 = 1.2.840.10008.1.2.4.80
[J2K]
TransferSyntax1 = 1.2.840.10008.1.2.4.90
[[PresentationContexts]]
[A]
PresentationContext1 = 1.2.840.10008.5.1.4.1.1.1.1\\RLE
PresentationContext2 = 1.2.840.10008.5.1.4.1.1.1\\Implicit
[B]
PresentationContext1 = 1.2.840.10008.5.1.4.1.1.1.1\\JPEGLS
PresentationContext2 = 1.2.840.10008.5.1.4.1.1.7\\J2K
[[Profiles]]
[A]
PresentationContexts = A
[B]
PresentationContexts = B
"""


@pytest.mark.slow
def test_storescu_four_transfer_syntaxes_from_two_concurrent_associations(tmp_path, random_model):
    """dcmtk pushes DX (RLE), CR (implicit VR), DX (JPEG-LS) and SC (JPEG 2000) on two associations at once;
    each instance is spooled in the transfer syntax it came in, and scored."""
    cfg = tmp_path / "storescu.cfg"
    cfg.write_text(STORESCU_PROFILES)
    src = tmp_path / "src"
    a = [image(src, study_uid(1), RLELossless), image(src, study_uid(1), ImplicitVRLittleEndian,
                                                       sop_class=dicom.CR_STORAGE, modality="CR")]
    b = [image(src, study_uid(2), JPEGLSLossless), image(src, study_uid(2), JPEG2000Lossless,
                                                         sop_class=dicom.SC_STORAGE, modality="DX")]
    with node(tmp_path, random_model) as n:
        senders = [storescu(n.port, a, "-xf", str(cfg), "A"), storescu(n.port, b, "-xf", str(cfg), "B")]
        for p in senders:
            assert p.wait(60) == 0, p.stdout.read() if p.stdout else ""
        assert n.wait_idle(60)
        assert n.stats.associations == 2
    out = tmp_path / "out"
    spooled = {p.stem: pydicom.dcmread(p).file_meta.TransferSyntaxUID for p in (out / "spool").rglob("*.dcm")}
    assert spooled == {sop_of(p): ts for p, ts in zip(a + b, (RLELossless, ImplicitVRLittleEndian, JPEGLSLossless,
                                                               JPEG2000Lossless), strict=True)}
    rows = dict(ledger(out))
    assert sorted(rows) == sorted(f"{study_uid(1 + i // 2)}/{sop_of(p)}.dcm" for i, p in enumerate(a + b))
    assert all(status == "ok" for status in rows.values()), rows
    assert (out / "worklist_studies.csv").is_file() and (out / "summary.pdf").is_file()  # what scan writes


@pytest.mark.slow
def test_a_thousand_images_from_four_concurrent_senders(tmp_path, random_model):
    """4 storescu at once, 1,000 distinct images (each sender also re-sends 25 of another's): 1,000 rows,
    no duplicate, each scored once. One film in ten is 256 px (scored), the rest 32 px (rejected by QC)."""
    src = tmp_path / "src"
    files = [image(src / str(i // 250), study_uid(100 + i // 5), side=256 if i % 10 == 0 else 32)
             for i in range(1000)]
    parts = [files[k * 250:(k + 1) * 250] + files[((k + 1) % 4) * 250:][:25] for k in range(4)]
    with node(tmp_path, random_model) as n:
        t0 = time.monotonic()
        senders = [storescu(n.port, part) for part in parts]
        for p in senders:
            assert p.wait(180) == 0, p.stdout.read()[-2000:] if p.stdout else ""
        received_s = time.monotonic() - t0
        assert n.wait_idle(120)
        assert (n.stats.stored, n.stats.out_of_resources) == (1100, 0)
    out = tmp_path / "out"
    rows = ledger(out)
    assert len(rows) == 1000 and {Path(p).stem for p, _ in rows} == {sop_of(f) for f in files}
    assert sum(s == "ok" for _, s in rows) == 100
    assert processed(out) == (1000, 0), "an image was scored more than once"
    print(f"1,100 C-STOREs from 4 storescu in {received_s:.1f} s")


def test_resent_late_and_unusable_instances(tmp_path, random_model):
    """A re-sent instance keeps one row and is not scored again; an image arriving after its study was
    scored re-decides the study; a data set that cannot be decoded is acknowledged and becomes an error row."""
    src = tmp_path / "src"
    first, late = image(src, study_uid(3)), image(src, study_uid(3))
    broken = dicom.dataset(StudyInstanceUID=study_uid(3))
    dicom.set_pixels(broken, _PIXELS[256].copy())
    broken.PixelData = broken.PixelData[:1000]  # Rows × Columns promise more than this
    bad = dicom.write(broken, src / "broken.dcm")
    orphan = dicom.set_pixels(dicom.dataset(), _PIXELS[256].copy())
    del orphan.StudyInstanceUID
    no_study = dicom.write(orphan, src / "no_study.dcm")
    out = tmp_path / "out"
    with node(tmp_path, random_model) as n:
        assert set(store(n.port, [first, first]).values()) == {0}
        assert n.wait_idle(60) and len(ledger(out)) == 1
        assert set(store(n.port, [first, late, bad, no_study]).values()) == {0}  # the association goes on
        assert n.wait_idle(60)
    rows = dict(ledger(out))
    assert len(rows) == 4 and rows[f"{study_uid(3)}/{sop_of(bad)}.dcm"].startswith("error")
    assert f"unknown-study/{sop_of(no_study)}.dcm" in rows
    assert processed(out) == (4, 0)  # the re-sent film was not scored again
    with open(out / "worklist_studies.csv", newline="") as fh:
        (study,) = [r for r in csv.DictReader(fh) if r["StudyInstanceUID"] == study_uid(3)]
    assert study["n_images"] == "3"  # the late image joined its study: re-decided as a rescan would


def test_association_aborted_mid_instance_leaves_nothing(tmp_path, random_model):
    """Part of an instance's P-DATA, then A-ABORT: nothing spooled, nothing scored; the node goes on."""
    path = image(tmp_path / "src", study_uid(4))
    ds = pydicom.dcmread(path)
    with node(tmp_path, random_model) as n:
        ae = scu()
        ae.add_requested_context(dicom.DX_STORAGE, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", n.port, ae_title=NODE_AET)
        assert assoc.is_established
        req = C_STORE()
        req.MessageID, req.Priority = 1, 2
        req.AffectedSOPClassUID, req.AffectedSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
        buf = BytesIO()
        pydicom.dcmwrite(buf, ds, little_endian=True, implicit_vr=False)  # the data set alone, no file meta
        req.DataSet = BytesIO(buf.getvalue()[buf.getvalue().index(b"\x08\x00"):])
        msg = C_STORE_RQ()
        msg.primitive_to_message(req)
        pdus = list(msg.encode_msg(assoc.accepted_contexts[0].context_id, assoc.acceptor.maximum_length))
        assert len(pdus) > 3
        for pdu in pdus[:len(pdus) // 2]:
            assoc.dul.send_pdu(pdu)
        time.sleep(0.5)
        assoc.abort()
        assert echo(n.port)
        assert n.wait_idle(30) and n.stats.stored == 0
    assert not [p for p in (tmp_path / "out" / "spool").rglob("*") if p.is_file()]
    assert ledger(tmp_path / "out") == []


@pytest.mark.slow
def test_full_spool_answers_out_of_resources_and_the_node_lives_on(tmp_path, random_model):
    """The spool on a 160 KiB tmpfs: the first films fit, then 0xA700 (never success); echoscu still gets
    an answer and what was stored is scored."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    spool = tmp_path / "out" / "spool"
    spool.mkdir(parents=True)
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(spool)], capture_output=True,
                           text=True, check=False)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    try:
        files = [image(tmp_path / "src", study_uid(5)) for _ in range(5)]  # ~66 KB each
        with node(tmp_path, random_model) as n:
            statuses = list(store(n.port, files).values())
            stored = statuses.count(0)
            assert 1 <= stored < 5 and statuses[stored:] == [0xA700] * (5 - stored), statuses
            result = subprocess.run([require(ECHOSCU, "echoscu"), "-aec", NODE_AET, "127.0.0.1", str(n.port)],
                                    capture_output=True, text=True, timeout=30, check=False)
            assert result.returncode == 0, result.stdout + result.stderr
            assert n.wait_idle(60) and n.stats.out_of_resources == 5 - stored
        assert len(ledger(tmp_path / "out")) == stored
        assert not list(spool.rglob(".*.tmp"))  # no half-written instance left behind
    finally:
        subprocess.run(["umount", "-l", str(spool)], check=False)


# --------------------------------------------------------------------------- forward, access, TLS
@contextlib.contextmanager
def storescp(folder: Path, *tls: str) -> Iterator[int]:
    """dcmtk's storescp (AE title FWD) writing what it receives to ``folder``; its port."""
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([require(STORESCP, "storescp"), *tls, "-aet", "FWD", "-od", str(folder), "+xa", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def sr_in(folder: Path, study: str) -> bool:
    """Whether ``folder`` holds an SR of ``study``."""
    for f in folder.iterdir():
        with contextlib.suppress(Exception):
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            if ds.Modality == "SR" and ds.StudyInstanceUID == study:
                return True
    return False


@pytest.mark.slow
def test_forward_sends_the_sr_to_storescp_and_allow_rejects_unknown_callers(tmp_path, random_model):
    received = tmp_path / "received"
    with storescp(received) as port, node(tmp_path, random_model, forward=Address("FWD", "127.0.0.1", port),
                                          allow=("TESTSCU", "DCMTK")) as n:
        echoscu = [require(ECHOSCU, "echoscu"), "-aec", NODE_AET, "127.0.0.1", str(n.port)]
        refused = subprocess.run([*echoscu, "-aet", "INTRUDER"], capture_output=True, text=True, check=False)
        assert refused.returncode != 0
        until(lambda: n.stats.rejected == 1, 10, "the rejection counted")
        film = image(tmp_path / "src", study_uid(6))
        assert store(n.port, [film], aet="INTRUDER") == {film: None}
        assert storescu(n.port, [film]).wait(60) == 0
        until(lambda: sr_in(received, study_uid(6)), 60, "the SR at the forward target")
        until(lambda: n.stats.forwarded >= 1, 30, "the acknowledgement recorded")
        assert n.stats.rejected == 2 and n.stats.stored == 1


ORTHANC_LUA = """
function OnStoredInstance(instanceId, tags, metadata, origin)
  if tags['Modality'] == 'CR' or tags['Modality'] == 'DX' then
    SendToModality(instanceId, 'cxrscreen')
  end
end
"""  # the README's script


@pytest.mark.slow
def test_orthanc_pushes_a_study_and_gets_the_sr_and_pdf_back_over_dicomweb(tmp_path, random_model):
    """The site's loop as the README sets it up: Orthanc's Lua script pushes each film it stores to the node
    (Orthanc as a real C-STORE SCU); the results come back into the same study through STOW-RS with a password
    (the DICOMweb plugin, HTTP basic authentication), and are not pushed back again."""
    port, lua = free_port(), tmp_path / "cxrscreen.lua"
    lua.write_text(ORTHANC_LUA)
    config = ListenConfig(tmp_path / "out", port, host="127.0.0.1", study_timeout=0.5, model=random_model,
                          options=ScanOptions(reports="all"), forward_credentials=WebCredentials("cxr", "s3cret"))
    with orthanc_server(tmp_path / "orthanc", dicomweb=True, users={"cxr": "s3cret"}, LuaScripts=[str(lua)],
                        DicomModalities={"cxrscreen": [NODE_AET, "127.0.0.1", port]}) as pacs, \
            Node(replace(config, forward=parse_destination(pacs.dicomweb))) as n:
        study = pacs.upload(image(tmp_path / "src", study_uid(8)))["ParentStudy"]

        def modalities() -> set[str]:
            return {pacs.get(f"/instances/{i['ID']}/simplified-tags")["Modality"]
                    for i in pacs.get(f"/studies/{study}/instances")}

        until(lambda: modalities() == {"DX", "SR", "DOC"}, 60, "the SR and the PDF in the study in Orthanc")
        assert n.stats.forward_pending == 0
        assert n.wait_idle(30) and n.stats.stored == 1  # the results were not pushed back to the node


@pytest.mark.slow
def test_tls_refuses_a_caller_whose_certificate_another_ca_signed(tmp_path, random_model):
    """Over TLS: dcmtk's storescu (a certificate our CA signed) gets in, the SR goes out to a TLS storescp;
    a caller signed by another CA, a caller without TLS, and one that never shakes hands do not (and the
    last holds nobody back)."""
    ca, other = make_ca(tmp_path, "site-ca"), make_ca(tmp_path, "other-ca")
    intruder, ours, modality, pacs = other.issue("intruder"), ca.files("node"), ca.issue("modality"), ca.issue("pacs")
    received = tmp_path / "received"
    with (storescp(received, "+tls", str(pacs.key), str(pacs.cert), "+cf", str(ca.cert)) as port,
          node(tmp_path, random_model, tls=ours, forward=Address("FWD", "127.0.0.1", port), forward_tls=ours) as n):
        silent = socket.create_connection(("127.0.0.1", n.port))  # a caller that never shakes hands
        try:
            assert not echo(n.port, tls=TlsFiles(intruder.cert, intruder.key, ca.cert))  # trusts us; we refuse it
            assert not echo(n.port)  # no TLS at all
            film = image(tmp_path / "src", study_uid(7))
            sender = storescu(n.port, [film], "+tls", str(modality.key), str(modality.cert), "+cf", str(ca.cert))
            assert sender.wait(60) == 0, sender.stdout.read() if sender.stdout else ""
            until(lambda: sr_in(received, study_uid(7)), 60, "the SR at the TLS forward target")
        finally:
            silent.close()
        assert n.stats.associations == 1 and n.stats.stored == 1
    assert len(ledger(tmp_path / "out")) == 1


# --------------------------------------------------------------------------- the command line
def cli_node(out: Path, port: int, model: Path, log: Path) -> subprocess.Popen:
    """``cxrscreen listen`` in a process of its own, once it answers C-ECHO (its stderr appended to ``log``.stderr)."""
    cmd = [sys.executable, "-m", "cxrscreen", "listen", "--out", str(out), "--port", str(port), "--host",
           "127.0.0.1", "--study-timeout", "0.5", "--reports", "none", "--model", str(model), "--log-file", str(log)]
    with open(log.with_suffix(".stderr"), "a") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 120
    while not echo(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the node did not start: {log.with_suffix('.stderr').read_text()[-3000:]}")
        time.sleep(0.3)
    return proc


@pytest.mark.slow
def test_kill_9_mid_burst_then_restart_scores_every_image_once_and_sigterm_exits_0(tmp_path, random_model_path):
    out, log, port = tmp_path / "out", tmp_path / "listen.log", free_port()
    files = [image(tmp_path / "src", study_uid(200 + i // 5), side=256 if i % 3 == 0 else 32) for i in range(150)]
    proc = cli_node(out, port, random_model_path, log)

    def kill_at(n: int) -> None:
        if n == 60:
            os.kill(proc.pid, signal.SIGKILL)

    first = store(port, files, after=kill_at)
    assert proc.wait(30) == -signal.SIGKILL
    acknowledged = [f for f, s in first.items() if s == 0]
    assert 60 <= len(acknowledged) < 150

    proc = cli_node(out, port, random_model_path, log)
    try:
        again = store(port, [f for f in files if first[f] != 0])  # the sender re-sends what failed
        assert set(again.values()) == {0}
        until(lambda: len(ledger(out)) == 150 and processed(out)[1] == 0, 120, "every image scored")
        assert processed(out) == (150, 0), "an image was scored twice"

        last = [image(tmp_path / "src", study_uid(300)) for _ in range(12)]  # the study in hand at SIGTERM
        assert set(store(port, last).values()) == {0}
        until(lambda: (out / "spool" / study_uid(300)).is_dir(), 30, "the last study handed to the scan")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.with_suffix(".stderr").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    rows = ledger(out)
    assert len(rows) == 162 and len({p for p, _ in rows}) == 162
    assert processed(out) == (162, 0)
    text = log.read_text()
    assert "association from" in text and "image(s) received" in text
    for secret in [*SECRETS.values(), study_uid(300), *(sop_of(f) for f in last)]:
        assert secret not in text


def test_cli_usage_errors_and_a_second_node_on_the_same_folder(tmp_path, random_model):
    out = tmp_path / "out"
    cases = [(["--aet", "A" * 17], "longer than 16 characters"),
             (["--allow", ""], "--allow is empty"),
             (["--forward", "nowhere"], "--forward: 'nowhere': expected AET@HOST:PORT"),
             (["--tls-cert", "c.pem"], "needs --tls-cert, --tls-key and --tls-ca; missing --tls-key, --tls-ca"),
             (["--threshold", "1.5"], "--threshold")]
    for args, message in cases:
        res = runner.invoke(app, ["listen", "--out", str(out), "--port", "11112", *args])
        assert res.exit_code == 2 and message in res.stderr, (args, res.stderr)
    with node(tmp_path, random_model) as n:
        res = runner.invoke(app, ["listen", "--out", str(out), "--port", str(free_port())])
        assert res.exit_code == 75 and "another cxrscreen listen serves" in res.stderr
        busy = runner.invoke(app, ["listen", "--out", str(tmp_path / "other"), "--port", str(n.port), "--host",
                                   "127.0.0.1", "--quiet"])
        assert busy.exit_code == 2 and f"cannot listen on 127.0.0.1:{n.port}: address already in use" in busy.stderr
