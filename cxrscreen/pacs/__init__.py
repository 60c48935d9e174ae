"""The DICOM network at cxrscreen's edges (pynetdicom): ``pull`` studies from a PACS, ``send`` results back."""

from cxrscreen.pacs.address import Address, AddressError, check_aet, parse_address
from cxrscreen.pacs.net import DEFAULT_CALLING_AET, DEFAULT_TIMEOUT, PacsError
from cxrscreen.pacs.pull import PullResult, pull
from cxrscreen.pacs.send import SendResult, send

__all__ = [
    "DEFAULT_CALLING_AET", "DEFAULT_TIMEOUT", "Address", "AddressError", "PacsError", "PullResult", "SendResult",
    "check_aet", "parse_address", "pull", "send",
]
