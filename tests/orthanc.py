"""A real PACS for the tests: Orthanc (Debian package ``orthanc``) on free ports, in a temporary folder.

:func:`orthanc_server` starts one (permissive C-FIND/C-GET/C-STORE/C-ECHO, no HTTP authentication,
the storage in a temporary folder), waits until its REST API answers, and stops it; the tests that
use it are skipped with the reason when the ``Orthanc`` binary is absent. Options turn on its
DICOMweb plugin (Debian ``orthanc-dicomweb``), HTTP basic authentication, and DICOM TLS.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cxrscreen.pacs.address import Address
from cxrscreen.pacs.tls import TlsFiles

ORTHANC = shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc",) if Path(p).exists()), None)
START_TIMEOUT = 60.0  # seconds for the REST API to answer (a cold start on a loaded machine)
AET = "ORTHANC"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def require_orthanc() -> str:
    """The Orthanc binary, or skip the test with the reason."""
    if ORTHANC is None:
        pytest.skip("Orthanc is not installed (Debian: apt-get install orthanc; `make sysdeps` does it as root)")
    return ORTHANC


def require_dicomweb() -> Path:
    """Orthanc's DICOMweb plugin, or skip the test with the reason (Orthanc itself is required too)."""
    require_orthanc()
    if not DICOMWEB_PLUGIN.is_file():
        pytest.skip("Orthanc's DICOMweb plugin is not installed (Debian: apt-get install orthanc-dicomweb; "
                    "`make sysdeps` does it as root)")
    return DICOMWEB_PLUGIN


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Orthanc:
    """A running Orthanc: its DICOM address and REST API (``auth``: the user and password it asks for, if any)."""

    dicom: Address
    http_port: int
    storage: Path
    auth: tuple[str, str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        """The base URL of its DICOMweb API (with the plugin on)."""
        return f"{self.url}/dicom-web"

    def _request(self, path: str, method: str = "GET", data: bytes | None = None) -> urllib.request.Request:
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if self.auth is not None:
            req.add_header("Authorization", "Basic " + base64.b64encode(":".join(self.auth).encode()).decode())
        return req

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self._request(path), timeout=30) as rsp:
            body = rsp.read()
        return json.loads(body) if rsp.headers.get_content_type() == "application/json" else body

    def post(self, path: str, data: bytes | str) -> Any:
        body = data.encode() if isinstance(data, str) else data
        with urllib.request.urlopen(self._request(path, "POST", body), timeout=60) as rsp:
            return json.loads(rsp.read())

    def delete(self, path: str) -> None:
        urllib.request.urlopen(self._request(path, "DELETE"), timeout=30).close()

    def upload(self, path: Path) -> dict:
        """Store a DICOM file through the REST API (what C-STORE from a modality would do)."""
        return self.post("/instances", path.read_bytes())

    def sop_uids(self) -> set[str]:
        """SOPInstanceUIDs of every instance stored."""
        return {self.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"] for i in self.get("/instances")}

    def instance_id(self, sop_uid: str) -> str:
        """Orthanc's identifier of the instance ``sop_uid`` (StopIteration if it holds none)."""
        return next(r["ID"] for r in self.post("/tools/lookup", sop_uid) if r["Type"] == "Instance")

    def instance_bytes(self, sop_uid: str) -> bytes:
        """The DICOM file Orthanc stored for ``sop_uid``."""
        return self.get(f"/instances/{self.instance_id(sop_uid)}/file")

    def clear(self) -> None:
        for pid in self.get("/patients"):
            self.delete(f"/patients/{pid}")


@contextlib.contextmanager
def orthanc_server(folder: Path, *, dicomweb: bool = False, users: dict[str, str] | None = None,
                   tls: TlsFiles | None = None, **config: Any) -> Iterator[Orthanc]:
    """Run Orthanc with its storage under ``folder``; ``config`` overrides the permissive defaults.

    ``dicomweb``: its DICOMweb plugin at ``/dicom-web/`` (skips without it). ``users``: HTTP basic
    authentication on, for these users and passwords (the REST helpers log in as the first one).
    ``tls``: DICOM TLS on its DICOM port, with this certificate and key, callers' certificates
    required and checked against this CA. (Its HTTPS server is not offered: Debian's Orthanc 1.10.1
    crashes on the first HTTPS connection.)
    """
    binary = require_orthanc()
    folder.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = free_port(), free_port()
    extra: dict[str, Any] = {}
    if dicomweb:
        extra |= {"Plugins": [str(require_dicomweb())], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    if users:
        extra |= {"AuthenticationEnabled": True, "RegisteredUsers": users}
    if tls is not None:
        extra |= {"DicomTlsEnabled": True, "DicomTlsCertificate": str(tls.cert), "DicomTlsPrivateKey": str(tls.key),
                  "DicomTlsTrustedCertificates": str(tls.ca), "DicomTlsRemoteCertificateRequired": True}
    settings = {
        "Name": "cxrscreen-test",
        "StorageDirectory": str(folder / "db"),
        "IndexDirectory": str(folder / "db"),
        "Plugins": [],
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": True,
        "AuthenticationEnabled": False,
        "OrthancExplorerEnabled": False,
        "WebDavEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": AET,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowGet": True,
        "DicomAlwaysAllowMove": True,
        "DicomAlwaysAllowStore": True,
        "DicomCheckModalityHost": False,
        "UnknownSopClassAccepted": False,
        "ConcurrentJobs": 1,
        "StorageCompression": False,
        "LimitFindResults": 0,
        "LimitFindInstances": 0,
    } | extra | config
    cfg = folder / "orthanc.json"
    cfg.write_text(json.dumps(settings, indent=1))
    log_path = folder / "orthanc.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([binary, str(cfg)], stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    server = Orthanc(Address(AET, "127.0.0.1", dicom_port), http_port, folder,
                     next(iter(users.items())) if users else None)
    try:
        _wait_ready(proc, server, log_path)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(proc: subprocess.Popen, server: Orthanc, log_path: Path) -> None:
    """Poll ``/system`` until it answers; fail with Orthanc's log if it exits or ``START_TIMEOUT`` passes."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            server.get("/system")
            return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.2)  # the poll interval, cut short if Orthanc exits
            break
    proc.kill()
    tail = log_path.read_text(errors="replace")[-3000:]
    pytest.fail(f"Orthanc did not start (exit code {proc.poll()}); its log ends:\n{tail}")
