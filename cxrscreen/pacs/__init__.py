"""The DICOM network at cxrscreen's edges: ``pull`` studies from a PACS, ``send`` results back, over DIMSE
(pynetdicom, optionally TLS) or DICOMweb (dicomweb-client)."""

from cxrscreen.pacs.address import (
    Address,
    AddressError,
    WebEndpoint,
    check_aet,
    parse_address,
    parse_destination,
    parse_web_url,
)
from cxrscreen.pacs.common import DateRangeError, PullResult, SendResult, date_range
from cxrscreen.pacs.link import Link, Retry
from cxrscreen.pacs.net import DEFAULT_CALLING_AET, DEFAULT_TIMEOUT, PacsError
from cxrscreen.pacs.pull import pull
from cxrscreen.pacs.send import send
from cxrscreen.pacs.web import CredentialsError, LoginRefused, WebCredentials

__all__ = [
    "DEFAULT_CALLING_AET", "DEFAULT_TIMEOUT", "Address", "AddressError", "CredentialsError", "DateRangeError",
    "Link", "LoginRefused", "PacsError", "PullResult", "Retry", "SendResult", "WebCredentials", "WebEndpoint",
    "check_aet", "date_range", "parse_address", "parse_destination", "parse_web_url", "pull", "send",
]
