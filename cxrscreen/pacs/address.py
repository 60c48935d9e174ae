"""DICOM network addresses: ``AET@HOST:PORT`` and application entity titles."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?$")


class AddressError(ValueError):
    """A malformed ``AET@HOST:PORT`` or AE title; the message says what is wrong."""


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
