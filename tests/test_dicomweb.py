"""DICOMweb ``pull`` (QIDO-RS + WADO-RS) and ``send`` (STOW-RS) against Orthanc's DICOMweb plugin with a
password, credentials from the environment only; the bearer token against a local stub server."""

from __future__ import annotations

import contextlib
import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.uid import ComprehensiveSRStorage, EncapsulatedPDFStorage
from typer.testing import CliRunner

from cxrscreen.cli.app import app
from cxrscreen.pacs import (
    Address,
    AddressError,
    CredentialsError,
    Link,
    LoginRefused,
    Retry,
    WebCredentials,
    WebEndpoint,
    parse_destination,
    pull,
    send,
)
from cxrscreen.pacs.web import ENV_PASSWORD, ENV_TOKEN, ENV_USER
from cxrscreen.state.outbox import Outbox
from tests.orthanc import free_port, orthanc_server, require_dicomweb
from tests.test_pull import _expected, _pulled, pacs_films
from tests.test_send import pdf, sr

runner = CliRunner()
USER, PASSWORD = "cxrscreen", "s3cret-Pa55word-never-logged"
TOKEN = "tok-3f9a1c-never-logged"


# --- addresses and credentials -----------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("https://pacs.example.org/dicom-web", WebEndpoint("https://pacs.example.org/dicom-web")),
    (" HTTP://127.0.0.1:8042/dicom-web/ ", WebEndpoint("http://127.0.0.1:8042/dicom-web")),
    ("https://pacs:443", WebEndpoint("https://pacs:443")),
    ("ORTHANC@pacs:4242", Address("ORTHANC", "pacs", 4242)),
])
def test_parse_destination(text, expected):
    assert parse_destination(text) == expected
    assert str(parse_destination(text)) == str(expected)


@pytest.mark.parametrize(("text", "message"), [
    ("https://user:hunter2@pacs/dicom-web", "credentials in the URL are refused"),
    ("https://hunter2@pacs/dicom-web", "credentials in the URL are refused"),
    ("https:///dicom-web", "no host"),
    ("https://pacs:99999/dicom-web", "malformed"),
    ("https://pacs/dicom-web?x=1", "no query"),
    ("https://[::1]/dicom-web", "IPv6"),
    ("https://bad_host!/x", "is not a host name"),
    ("ftp://pacs/dicom-web", "expected AET@HOST:PORT"),
])
def test_malformed_urls_say_what_is_wrong_without_repeating_a_password(text, message):
    with pytest.raises(AddressError, match=message) as info:
        parse_destination(text)
    assert "hunter2" not in str(info.value)


def test_credentials_from_the_environment_hide_their_secrets():
    assert WebCredentials.from_env({}) is None
    basic = WebCredentials.from_env({ENV_USER: USER, ENV_PASSWORD: PASSWORD, "OTHER": "x"})
    assert basic == WebCredentials(USER, PASSWORD)
    bearer = WebCredentials.from_env({ENV_TOKEN: TOKEN})
    for creds in (basic, bearer):
        assert PASSWORD not in repr(creds) and TOKEN not in repr(creds) and PASSWORD not in str(creds)
        assert TOKEN not in repr(creds.auth())
    assert USER in repr(basic)
    for env, message in [({ENV_USER: USER}, "go together"), ({ENV_PASSWORD: PASSWORD}, "go together"),
                         ({ENV_USER: USER, ENV_PASSWORD: PASSWORD, ENV_TOKEN: TOKEN}, "not both"),
                         ({ENV_USER: "a:b", ENV_PASSWORD: PASSWORD}, "may not hold ':'"),
                         ({ENV_TOKEN: "two words"}, "cannot carry")]:
        with pytest.raises(CredentialsError, match=message) as info:
            WebCredentials.from_env(env)
        assert PASSWORD not in str(info.value) and TOKEN not in str(info.value)


def test_the_credentials_set_the_authorization_header():
    req = requests.Request("GET", "https://pacs/dicom-web/studies")
    prepared = requests.Session().prepare_request(req)
    WebCredentials(token=TOKEN).auth()(prepared)
    assert prepared.headers["Authorization"] == f"Bearer {TOKEN}"
    prepared = requests.Session().prepare_request(req)
    WebCredentials(USER, PASSWORD).auth()(prepared)
    assert prepared.headers["Authorization"].startswith("Basic ")


# --- a stub DICOMweb server: the bearer token on the wire, a refused login -----------------------


@contextlib.contextmanager
def stub_server(token: str, context: ssl.SSLContext | None = None) -> Iterator[tuple[str, list[str]]]:
    """An HTTP server (HTTPS with ``context``) answering QIDO-RS with no study when the bearer ``token`` comes
    with the request, else 401; yields its DICOMweb URL and the Authorization headers it received."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            seen.append(self.headers.get("Authorization", ""))
            ok = self.headers.get("Authorization") == f"Bearer {token}"
            body = b"[]" if ok else b"{}"
            self.send_response(200 if ok else 401)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with serving(Handler, context) as url:
        yield url, seen


@contextlib.contextmanager
def serving(handler: type[http.server.BaseHTTPRequestHandler], context: ssl.SSLContext | None = None) -> Iterator[str]:
    """``handler`` served on a free local port (HTTPS with ``context``) for the ``with`` block; yields the
    server's DICOMweb URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"{'https' if context else 'http'}://127.0.0.1:{server.server_address[1]}/dicom-web"
    finally:
        server.shutdown()
        server.server_close()


def test_bearer_token_goes_in_the_authorization_header(tmp_path):
    with stub_server(TOKEN) as (url, seen):
        result = pull(parse_destination(url), tmp_path / "in", link=Link(credentials=WebCredentials(token=TOKEN)))
        assert result.complete and result.studies == 0
        assert seen and set(seen) == {f"Bearer {TOKEN}"}  # one QIDO-RS per modality, each with the token

        with pytest.raises(LoginRefused, match="refused the login"):
            pull(parse_destination(url), tmp_path / "in", link=Link(credentials=WebCredentials(token="wrong")))
        res = runner.invoke(app, ["pull", "--from", url, "--to", str(tmp_path / "in")], env={ENV_TOKEN: "wrong"})
    assert res.exit_code == 2
    assert res.stderr == (f"cxrscreen: error: {url} refused the login (HTTP 401); check {ENV_USER} and "
                          f"{ENV_PASSWORD}, or {ENV_TOKEN}\n")


@contextlib.contextmanager
def stow_stub(answers: list[tuple[int, dict | None]]) -> Iterator[str]:
    """An HTTP server answering each STOW-RS request with the next (HTTP status, DICOM JSON body) of ``answers``."""
    todo = list(answers)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            self.rfile.read(int(self.headers["Content-Length"]))
            code, answer = todo.pop(0)
            body = json.dumps(answer).encode() if answer is not None else b""
            self.send_response(code)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with serving(Handler) as url:
        yield url
    assert not todo  # every answer was asked for


def _failed(uid: str, reason: int) -> dict:
    """A STOW-RS answer listing ``uid`` in the Failed SOP Sequence with ``reason``."""
    return {"00081198": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": [uid]},
                                                "00081197": {"vr": "US", "Value": [reason]}}]}}


@pytest.mark.parametrize(("answers", "sent", "slept"), [
    ([(503, None), (200, None)], 1, [0.5]),  # busy: retried after the back-off
    ([(409, "A700"), (202, None)], 1, [0.5]),  # out of resources (Failure Reason): retried
    ([(409, "C000")], 0, []),  # refused: not retried in this run
    ([(400, None)], 0, []),
])
def test_stow_statuses_are_retried_only_when_transient(tmp_path, answers, sent, slept):
    out = tmp_path / "out"
    uid = str(pydicom.dcmread(sr(out)).SOPInstanceUID)
    answers = [(code, _failed(uid, int(a, 16)) if isinstance(a, str) else a) for code, a in answers]
    waits: list[float] = []
    with stow_stub(answers) as url:
        result = send(out, parse_destination(url), retry=Retry(retries=3, backoff=0.5, sleep=waits.append))
    assert (result.sent, result.failed, waits) == (sent, 1 - sent, slept) and not result.unreachable
    with Outbox(out / ".cxrscreen" / "ledger.sqlite") as box:
        assert box.count(url) == sent


def test_cli_refuses_credentials_in_the_url_without_repeating_them(tmp_path):
    res = runner.invoke(app, ["pull", "--from", f"https://{USER}:{PASSWORD}@pacs/dicom-web", "--to",
                              str(tmp_path / "in")])
    assert res.exit_code == 2 and PASSWORD not in res.output
    assert res.stderr.startswith("cxrscreen: error: --from: https://pacs/dicom-web: credentials in the URL are refused")
    res = runner.invoke(app, ["send", str(tmp_path), "--to", f"https://{USER}:{PASSWORD}@pacs/dicom-web"])
    assert res.exit_code == 2 and PASSWORD not in res.output


@pytest.mark.parametrize(("env", "message"), [
    ({ENV_USER: USER}, "go together"),
    ({ENV_TOKEN: TOKEN, ENV_USER: USER, ENV_PASSWORD: PASSWORD}, "not both"),
])
def test_cli_incomplete_credentials_exit_2(tmp_path, env, message):
    res = runner.invoke(app, ["pull", "--from", "http://127.0.0.1:1/dicom-web", "--to", str(tmp_path / "in")],
                        env=env)
    assert res.exit_code == 2 and message in res.stderr and len(res.stderr.splitlines()) == 1


def test_unreachable_dicomweb_service_exits_2_for_pull_and_send(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/dicom-web"  # nothing listens there
    res = runner.invoke(app, ["pull", "--from", url, "--to", str(tmp_path / "in")])
    assert res.exit_code == 2
    assert res.stderr == f"cxrscreen: error: cannot connect to {url}: connection refused\n"
    out = tmp_path / "out"
    sr(out)
    res = runner.invoke(app, ["send", str(out), "--to", url, "--retries", "1", "--retry-delay", "0"])
    assert res.exit_code == 2
    assert res.stderr.strip().endswith(f"cannot connect to {url}: connection refused (after 2 attempt(s)); "
                                       "nothing sent")


def test_tls_options_need_an_https_url(tmp_path):
    res = runner.invoke(app, ["pull", "--from", "http://pacs/dicom-web", "--to", str(tmp_path / "in"),
                              "--tls-ca", str(tmp_path)])
    assert res.exit_code == 2 and "apply to an https:// URL" in res.stderr


# --- Orthanc with its DICOMweb plugin and a password ---------------------------------------------


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """Orthanc (DICOMweb on, HTTP authentication on) holding the sample films and two extra films."""
    require_dicomweb()
    tmp = tmp_path_factory.mktemp("dicomweb")
    films = pacs_films(tmp / "extra")
    with orthanc_server(tmp / "orthanc", dicomweb=True, users={USER: PASSWORD}, OverwriteInstances=True) as server:
        for path in films:
            assert server.upload(path)["Status"] == "Success", path
        server.films = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in films}
        yield server


ENV = {ENV_USER: USER, ENV_PASSWORD: PASSWORD}


def _holds_no_secret(*places: Path | str) -> None:
    """Neither the password nor the token is in any of these texts, or in any file under these folders."""
    for place in places:
        if isinstance(place, Path):
            files = [place] if place.is_file() else [p for p in place.rglob("*") if p.is_file()]
            for f in files:
                data = f.read_bytes()
                assert PASSWORD.encode() not in data and TOKEN.encode() not in data, f
        else:
            assert PASSWORD not in place and TOKEN not in place


@pytest.mark.slow
def test_pull_over_dicomweb_gives_what_the_dimse_pull_gives_and_resumes(pacs, tmp_path):
    web_dir, dimse_dir, log = tmp_path / "web", tmp_path / "dimse", tmp_path / "pull.log"
    res = runner.invoke(app, ["pull", "--from", pacs.dicomweb, "--to", str(web_dir), "--json", "--log-file", str(log)],
                        env=ENV)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    expected = _expected(pacs.films)
    assert (summary["fetched"], summary["failed"], summary["already_present"]) == (len(expected), 0, 0)
    assert pull(pacs.dicom, dimse_dir, link=Link(calling_aet="TESTSCU")).complete

    web, dimse = _pulled(web_dir), _pulled(dimse_dir)
    assert set(web) == set(dimse) == set(expected)
    for uid, path in web.items():
        assert path.relative_to(web_dir) == dimse[uid].relative_to(dimse_dir)
        assert path.stat().st_mode & 0o777 == 0o640
        got, src = pydicom.dcmread(path), pydicom.dcmread(expected[uid])
        assert got.file_meta.TransferSyntaxUID == src.file_meta.TransferSyntaxUID  # as stored, not transcoded
        assert got == src and got.PixelData == src.PixelData

    again = runner.invoke(app, ["pull", "--from", pacs.dicomweb, "--to", str(web_dir), "--json"], env=ENV)
    assert again.exit_code == 0
    assert (json.loads(again.stdout)["fetched"], json.loads(again.stdout)["already_present"]) == (0, len(expected))

    day = runner.invoke(app, ["pull", "--from", pacs.dicomweb, "--to", str(tmp_path / "day"), "--since", "20261124",
                              "--until", "20261124", "--modality", "CR", "--json"], env=ENV)
    assert day.exit_code == 0
    assert set(_pulled(tmp_path / "day")) == set(_expected(pacs.films, ("20261124", "20261124"), ("CR",)))

    text = log.read_text()
    assert "fetched" in text
    assert not [uid for uid in expected if uid in text]  # no UID in the log (dicomweb-client logs them)
    _holds_no_secret(res.output, again.output, day.output, log, web_dir)


@pytest.mark.slow
def test_wrong_password_exits_2_with_one_line_for_pull_and_send(pacs, tmp_path):
    env = {ENV_USER: USER, ENV_PASSWORD: "wrong-" + PASSWORD}
    log = tmp_path / "run.log"
    res = runner.invoke(app, ["pull", "--from", pacs.dicomweb, "--to", str(tmp_path / "in"), "--log-file", str(log)],
                        env=env)
    assert res.exit_code == 2
    assert res.stderr.splitlines() == [f"cxrscreen: error: {pacs.dicomweb} refused the login (HTTP 401); check "
                                       f"{ENV_USER} and {ENV_PASSWORD}, or {ENV_TOKEN}"]
    assert not list((tmp_path / "in").rglob("*.dcm"))
    out = tmp_path / "out"
    sr(out)
    res2 = runner.invoke(app, ["send", str(out), "--to", pacs.dicomweb, "--retry-delay", "0", "--log-file", str(log)],
                         env=env)
    assert res2.exit_code == 2
    assert len(res2.stderr.splitlines()) == 1 and "refused the login (HTTP 401)" in res2.stderr
    assert "after 1 attempt(s)" in res2.stderr  # not retried
    with Outbox(out / ".cxrscreen" / "ledger.sqlite") as box:
        assert box.count() == 0
    _holds_no_secret(res.output, res2.output, log, out, tmp_path / "in")
    assert ("wrong-" + PASSWORD) not in log.read_text()


@pytest.mark.slow
def test_send_stores_a_scans_sr_and_pdf_over_stow_once(pacs, tmp_path, random_model):
    from cxrscreen import scan
    from cxrscreen.options import ScanOptions

    films, out, log = tmp_path / "films", tmp_path / "out", tmp_path / "send.log"
    assert pull(parse_destination(pacs.dicomweb), films, link=Link(credentials=WebCredentials(USER, PASSWORD))).complete
    scan(films, out=out, model=random_model, options=ScanOptions(threshold=1e-6, workers=0, dicom_results=True))
    objects = sorted((out / "dicom").rglob("*.dcm"))
    classes = {pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID for p in objects}
    assert {ComprehensiveSRStorage, EncapsulatedPDFStorage} <= classes

    res = runner.invoke(app, ["send", str(out), "--to", pacs.dicomweb, "--json", "--log-file", str(log)], env=ENV)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert (summary["found"], summary["sent"], summary["failed"]) == (len(objects), len(objects), 0)
    for p in objects:  # each object sits in its source study in Orthanc, as it is on disk
        src = pydicom.dcmread(p)
        tags = pacs.get(f"/instances/{pacs.instance_id(src.SOPInstanceUID)}/simplified-tags")
        assert tags["StudyInstanceUID"] == src.StudyInstanceUID and tags["SOPClassUID"] == src.SOPClassUID
    with Outbox(out / ".cxrscreen" / "ledger.sqlite") as box:
        assert box.count(pacs.dicomweb) == len(objects)

    again = runner.invoke(app, ["send", str(out), "--to", pacs.dicomweb, "--json"], env=ENV)
    assert again.exit_code == 0
    assert (json.loads(again.stdout)["sent"], json.loads(again.stdout)["already_acknowledged"]) == (0, len(objects))
    _holds_no_secret(res.output, again.output, log, out, films)


@pytest.mark.slow
def test_stow_refusals_are_counted_and_not_acknowledged(pacs, tmp_path):
    out = tmp_path / "out"
    good, doc = sr(out), pdf(out)
    ds = pydicom.dcmread(good)  # an SR without StudyInstanceUID: Orthanc refuses it (HTTP 400)
    del ds.StudyInstanceUID
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    broken = out / "dicom" / "broken" / "x.dcm"
    broken.parent.mkdir(parents=True)
    ds.save_as(broken, enforce_file_format=True)
    slept: list[float] = []
    result = send(out, parse_destination(pacs.dicomweb), link=Link(credentials=WebCredentials(USER, PASSWORD)),
                  retry=Retry(retries=2, backoff=0, sleep=slept.append))
    assert (result.found, result.sent, result.failed) == (3, 2, 1) and not result.unreachable
    assert slept == []  # a permanent refusal is not retried
    assert {pydicom.dcmread(p).SOPInstanceUID for p in (good, doc)} <= pacs.sop_uids()
