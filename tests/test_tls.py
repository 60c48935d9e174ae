"""DICOM over TLS for ``pull`` and ``send`` against Orthanc with DICOM TLS on (callers' certificates required),
certificates from a throw-away CA made here; and DICOMweb over https checked against ``--tls-ca``."""

from __future__ import annotations

import json
import ssl

import pydicom
import pytest
from typer.testing import CliRunner

from cxrscreen.cli.app import app
from cxrscreen.pacs.tls import TlsFiles
from cxrscreen.pacs.web import ENV_TOKEN
from cxrscreen.state.outbox import Outbox
from tests.certs import make_ca
from tests.orthanc import orthanc_server, require_orthanc
from tests.test_dicomweb import stub_server
from tests.test_pull import SAMPLES, _expected, _pulled
from tests.test_send import pdf, sr

pytestmark = pytest.mark.slow  # openssl, Orthanc
runner = CliRunner()


def _tls_args(files: TlsFiles) -> list[str]:
    return ["--tls-cert", str(files.cert), "--tls-key", str(files.key), "--tls-ca", str(files.ca)]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Our CA (it signs Orthanc's certificate and ours) and another CA that neither side trusts."""
    tmp = tmp_path_factory.mktemp("pki")
    return make_ca(tmp, "ours"), make_ca(tmp, "other")


@pytest.fixture(scope="module")
def pacs(tmp_path_factory, pki):
    """Orthanc with DICOM TLS on its DICOM port, holding the sample films."""
    require_orthanc()
    ca, _ = pki
    films = [p for p in SAMPLES.rglob("*.dcm") if "corrupt" not in p.name]
    with orthanc_server(tmp_path_factory.mktemp("tls") / "orthanc", tls=ca.files("orthanc"),
                        OverwriteInstances=True) as server:
        for path in films:
            assert server.upload(path)["Status"] == "Success", path
        server.films = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in films}
        yield server


def test_pull_and_send_over_tls(pacs, pki, tmp_path):
    ca, _ = pki
    ours = ca.files("cxrscreen")
    dest = tmp_path / "in"
    res = runner.invoke(app, ["pull", "--from", str(pacs.dicom), "--to", str(dest), "--json", *_tls_args(ours)])
    assert res.exit_code == 0, res.output
    expected = _expected(pacs.films)
    assert json.loads(res.stdout)["fetched"] == len(expected) and set(_pulled(dest)) == set(expected)
    again = runner.invoke(app, ["pull", "--from", str(pacs.dicom), "--to", str(dest), "--json", *_tls_args(ours)])
    assert again.exit_code == 0 and json.loads(again.stdout)["fetched"] == 0

    out = tmp_path / "out"
    uids = {pydicom.dcmread(p).SOPInstanceUID for p in (sr(out), pdf(out))}
    res = runner.invoke(app, ["send", str(out), "--to", str(pacs.dicom), "--json", "--retries", "0",
                              *_tls_args(ours)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["sent"] == 2 and uids <= pacs.sop_uids()
    again = runner.invoke(app, ["send", str(out), "--to", str(pacs.dicom), "--json", *_tls_args(ours)])
    assert again.exit_code == 0 and json.loads(again.stdout)["sent"] == 0


def test_a_client_certificate_another_ca_signed_is_refused(pacs, pki, tmp_path):
    ca, other = pki
    stranger = other.issue("stranger")  # we trust Orthanc's CA, but our certificate is not signed by it
    files = TlsFiles(stranger.cert, stranger.key, ca.cert)
    dest = tmp_path / "in"
    refused = (f"TLS handshake with {pacs.dicom} failed (tlsv1 alert unknown ca); it does not accept our "
               "certificate (--tls-cert, --tls-key)")
    closed = (f"{pacs.dicom} closed the connection before answering the association request; it may not accept "
              "our certificate")  # TLS 1.3: the connection closed before the alert was read
    res = runner.invoke(app, ["pull", "--from", str(pacs.dicom), "--to", str(dest), *_tls_args(files)])
    assert res.exit_code == 2
    assert res.stderr in (f"cxrscreen: error: {refused}\n", f"cxrscreen: error: {closed}\n")
    assert not list(dest.rglob("*"))

    out = tmp_path / "out"
    sr(out)
    before = pacs.sop_uids()
    res = runner.invoke(app, ["send", str(out), "--to", str(pacs.dicom), "--retries", "0", "--quiet",
                              *_tls_args(files)])
    assert res.exit_code == 2
    assert res.stderr in (f"cxrscreen: error: {why} (after 1 attempt(s)); nothing sent\n" for why in (refused, closed))
    assert pacs.sop_uids() == before
    with Outbox(out / ".cxrscreen" / "ledger.sqlite") as box:
        assert box.count() == 0


def test_a_server_certificate_from_a_ca_we_do_not_trust_is_refused(pacs, pki, tmp_path):
    _, other = pki
    files = other.files("elsewhere")  # our certificate and CA are the other CA's: Orthanc's is not trusted
    res = runner.invoke(app, ["pull", "--from", str(pacs.dicom), "--to", str(tmp_path / "in"), *_tls_args(files)])
    assert res.exit_code == 2
    assert len(res.stderr.splitlines()) == 1
    assert res.stderr.startswith(f"cxrscreen: error: TLS handshake with {pacs.dicom} failed (certificate verify "
                                 "failed")
    assert res.stderr.rstrip().endswith("check --tls-ca (the CA that signs its certificate)")
    assert not list((tmp_path / "in").rglob("*"))


def test_without_tls_the_tls_port_is_a_clear_error(pacs, tmp_path):
    res = runner.invoke(app, ["pull", "--from", str(pacs.dicom), "--to", str(tmp_path / "in")])
    assert res.exit_code == 2
    assert res.stderr == (f"cxrscreen: error: {pacs.dicom} closed the connection before answering the association "
                          "request; it may expect DICOM over TLS (--tls-cert, --tls-key, --tls-ca)\n")


@pytest.mark.parametrize("command", ["pull", "send"])
def test_tls_options_go_together(tmp_path, command):
    where = ["--from", "PACS@127.0.0.1:104", "--to", str(tmp_path / "in")] if command == "pull" else \
        [str(tmp_path), "--to", "PACS@127.0.0.1:104"]
    res = runner.invoke(app, [command, *where, "--tls-cert", str(tmp_path / "c.pem")])
    assert res.exit_code == 2
    assert "DICOM over TLS needs --tls-cert, --tls-key and --tls-ca; missing --tls-key, --tls-ca" in res.stderr


def test_dicomweb_over_https_is_checked_against_tls_ca(pki, tmp_path):
    """A stub DICOMweb server (Debian's Orthanc 1.10.1 crashes on HTTPS) with a certificate our CA signed."""
    ca, _ = pki
    web = ca.issue("web")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(web.cert, web.key)
    env = {ENV_TOKEN: "tok"}
    with stub_server("tok", context) as (url, seen):
        res = runner.invoke(app, ["pull", "--from", url, "--to", str(tmp_path / "in"), "--tls-ca", str(ca.cert),
                                  "--json"], env=env)
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["studies"] == 0 and seen == ["Bearer tok"] * 2
        res = runner.invoke(app, ["pull", "--from", url, "--to", str(tmp_path / "in")], env=env)
    assert res.exit_code == 2
    assert res.stderr.startswith(f"cxrscreen: error: TLS handshake with {url} failed (certificate verify failed")
    assert len(res.stderr.splitlines()) == 1


def test_dicomweb_over_https_with_a_client_certificate(pki, tmp_path):
    ca, other = pki
    web = ca.issue("web")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(web.cert, web.key)
    context.load_verify_locations(cafile=str(ca.cert))
    context.verify_mode = ssl.CERT_REQUIRED  # the server asks for our certificate, signed by its CA
    env = {ENV_TOKEN: "tok"}
    with stub_server("tok", context) as (url, seen):
        res = runner.invoke(app, ["pull", "--from", url, "--to", str(tmp_path / "in"), "--json",
                                  *_tls_args(ca.files("cxrscreen"))], env=env)
        assert res.exit_code == 0, res.output
        stranger = other.issue("stranger")
        res = runner.invoke(app, ["pull", "--from", url, "--to", str(tmp_path / "in"),
                                  *_tls_args(TlsFiles(stranger.cert, stranger.key, ca.cert))], env=env)
        assert res.exit_code == 2
        (line,) = res.stderr.splitlines()  # TLS 1.3: the server's alert, or only its closing, reaches us first
        assert line.startswith(f"cxrscreen: error: TLS handshake with {url} failed (")
        assert line.endswith("not accept our certificate (--tls-cert, --tls-key)")
        assert seen == ["Bearer tok"] * 2  # the stranger's requests never reached it
