"""DICOM network addresses: ``AET@HOST:PORT`` (DIMSE), DICOMweb base URLs, and application entity titles."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?$")


class AddressError(ValueError):
    """A malformed ``AET@HOST:PORT``, DICOMweb URL or AE title; the message says what is wrong."""


def check_aet(title: str, what: str = "AE title") -> str:
    """``title`` without surrounding spaces, or :class:`AddressError` unless it is 1–16 characters of
    the default repertoire without backslash (PS3.5 §6.2, VR AE)."""
    aet = title.strip()
    if not aet:
        raise AddressError(f"{what} is empty")
    if len(aet) > 16:
        raise AddressError(f"{what} {aet!r} is longer than 16 characters")
    if "\\" in aet or not all(" " <= c <= "~" for c in aet):
        raise AddressError(f"{what} {aet!r} may hold only printable ASCII characters, no backslash")
    return aet


@dataclass(frozen=True)
class Address:
    """A remote application entity: its AE title, host name or IP address, and TCP port."""

    aet: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.aet}@{host}:{self.port}"


def parse_address(text: str) -> Address:
    """``AET@HOST:PORT`` (``HOST`` a name, an IPv4 address or a bracketed IPv6 address) → :class:`Address`."""
    aet, at, hostport = text.strip().rpartition("@")
    if not at:
        raise AddressError(f"{text!r}: expected AET@HOST:PORT, e.g. ORTHANC@pacs.example.org:4242")
    host, colon, port_text = hostport.rpartition(":")
    if not colon or not port_text:
        raise AddressError(f"{text!r}: no port; expected AET@HOST:PORT")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise AddressError(f"{text!r}: port {port_text!r} is not a number from 1 to 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise AddressError(f"{text!r}: {host!r} is not an IPv6 address") from None
    elif not host:
        raise AddressError(f"{text!r}: no host; expected AET@HOST:PORT")
    elif ":" in host:
        raise AddressError(f"{text!r}: write an IPv6 host in brackets, e.g. AET@[::1]:104")
    elif not _HOSTNAME.match(host):
        raise AddressError(f"{text!r}: {host!r} is not a host name or IP address")
    try:
        return Address(check_aet(aet, "called AE title"), host, int(port_text))
    except AddressError as exc:
        raise AddressError(f"{text!r}: {exc}") from None


@dataclass(frozen=True)
class WebEndpoint:
    """A DICOMweb service: its base URL (``http(s)://host[:port]/path``, no credentials, no trailing slash),
    and for ``https`` the CA bundle that signs its certificate (default: requests' bundle) and our client
    certificate and key, if it asks for one."""

    url: str
    ca: Path | None = None
    client_cert: tuple[Path, Path] | None = None

    def __str__(self) -> str:
        return self.url


def parse_web_url(text: str) -> WebEndpoint:
    """``http(s)://HOST[:PORT]/PATH`` → :class:`WebEndpoint`; a URL holding ``user:password@`` is refused
    (the message never repeats it): credentials come from the environment."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        raise AddressError("the DICOMweb URL is malformed (its port or host); expected http(s)://HOST[:PORT]/PATH") \
            from None
    shown = f"{parts.scheme}://{parts.hostname or ''}{f':{port}' if port else ''}{parts.path}"
    if "@" in parts.netloc:
        raise AddressError(f"{shown}: credentials in the URL are refused; set CXRSCREEN_DICOMWEB_USER and "
                           "CXRSCREEN_DICOMWEB_PASSWORD (or CXRSCREEN_DICOMWEB_TOKEN) in the environment instead")
    if parts.scheme.lower() not in ("http", "https"):
        raise AddressError(f"{text!r}: expected an http:// or https:// URL")
    host = parts.hostname or ""
    if not host:
        raise AddressError(f"{shown!r}: no host; expected http(s)://HOST[:PORT]/PATH")
    if ":" in host:
        raise AddressError(f"{shown!r}: an IPv6 address as host is not supported for DICOMweb; use a host name")
    if not _HOSTNAME.match(host):
        raise AddressError(f"{shown!r}: {host!r} is not a host name or IP address")
    if parts.query or parts.fragment:
        raise AddressError(f"{shown!r}: a DICOMweb base URL has no query (?) or fragment (#)")
    if port == 0:
        raise AddressError(f"{shown!r}: port 0 is not a number from 1 to 65535")
    netloc = f"{host}:{port}" if port else host
    return WebEndpoint(f"{parts.scheme.lower()}://{netloc}{parts.path.rstrip('/')}")


def parse_destination(text: str) -> Address | WebEndpoint:
    """A PACS: ``AET@HOST:PORT`` (DIMSE) → :class:`Address`, ``http(s)://…`` (DICOMweb) → :class:`WebEndpoint`."""
    if re.match(r"\s*https?://", text, re.IGNORECASE):
        return parse_web_url(text)
    return parse_address(text)
