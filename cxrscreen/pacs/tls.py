"""DICOM over TLS (PS3.15 Annex B, IHE ATNA): the SSL contexts of our associations, both ways.

Both ends authenticate: a node (``listen``) asks every caller for a certificate signed by the CA it
trusts and refuses the association otherwise; as a caller (``pull``, ``send``, ``--forward``) we check
the peer's certificate against the same CA and present ours.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path


class TlsError(ValueError):
    """The certificate, key or CA files are missing, unreadable or do not belong together."""


@dataclass(frozen=True)
class TlsFiles:
    """Our certificate and private key (PEM), and the CA bundle (PEM) that signs the peers we accept."""

    cert: Path
    key: Path
    ca: Path

    def _load(self, context: ssl.SSLContext) -> ssl.SSLContext:
        for what, path in (("--tls-cert", self.cert), ("--tls-key", self.key), ("--tls-ca", self.ca)):
            if not Path(path).is_file():
                raise TlsError(f"{what} {path}: no such file")
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(str(self.cert), str(self.key))
        except ssl.SSLError as exc:
            raise TlsError(f"--tls-cert {self.cert} / --tls-key {self.key}: not a matching PEM certificate and "
                           f"key ({exc.reason or exc})") from None
        try:
            context.load_verify_locations(cafile=str(self.ca))
        except ssl.SSLError as exc:
            raise TlsError(f"--tls-ca {self.ca}: not a PEM CA certificate ({exc.reason or exc})") from None
        context.verify_mode = ssl.CERT_REQUIRED
        return context


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """The context of a node: our certificate, and a caller's certificate required and checked against the CA."""
    return files._load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """The context of a caller: the peer's certificate checked against the CA (and its host name), ours presented."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = True
    return files._load(context)
