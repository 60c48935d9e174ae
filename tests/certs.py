"""Throw-away certificate authorities for the TLS tests, made with the ``openssl`` command line.

:func:`make_ca` creates a CA; :meth:`CA.issue` signs a certificate for ``127.0.0.1``/``localhost``
(server and client use). Two CAs made in one test do not trust each other's certificates.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from cxrscreen.pacs.tls import TlsFiles

OPENSSL = shutil.which("openssl")
DAYS = "2"


def _run(*args: str, cwd: Path) -> None:
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path


@dataclass(frozen=True)
class CA:
    """A CA's certificate and key, in its own folder."""

    folder: Path
    cert: Path
    key: Path

    def issue(self, name: str, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> Certificate:
        """A certificate + key signed by this CA for ``hosts`` (IP addresses or DNS names)."""
        key, csr, cert = (self.folder / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
        _run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
             "-subj", f"/CN={name}", cwd=self.folder)
        sans = ",".join(f"IP:{h}" if h[0].isdigit() else f"DNS:{h}" for h in hosts)
        ext = self.folder / f"{name}.ext"
        ext.write_text(f"subjectAltName={sans}\nextendedKeyUsage=serverAuth,clientAuth\n"
                       "basicConstraints=CA:FALSE\n")
        _run("x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key), "-CAcreateserial",
             "-out", str(cert), "-days", DAYS, "-sha256", "-extfile", str(ext), cwd=self.folder)
        return Certificate(cert, key)

    def files(self, name: str) -> TlsFiles:
        """:class:`TlsFiles` for a party ``name`` that this CA signs and that trusts this CA."""
        c = self.issue(name)
        return TlsFiles(c.cert, c.key, self.cert)


def make_ca(folder: Path, name: str = "test-ca") -> CA:
    """A new self-signed CA in ``folder/name`` (skips the test without the openssl command)."""
    if OPENSSL is None:
        pytest.skip("the openssl command is not installed (Debian: apt-get install openssl)")
    root = folder / name
    root.mkdir(parents=True)
    key, cert = root / "ca.key", root / "ca.pem"
    _run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", DAYS, "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=root)
    return CA(root, cert, key)
