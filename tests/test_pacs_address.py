"""``AET@HOST:PORT`` parsing and AE title checks: clear errors for every malformed part."""

import pytest

from cxrscreen.pacs.address import Address, AddressError, check_aet, parse_address


@pytest.mark.parametrize(("text", "expected"), [
    ("ORTHANC@pacs.example.org:4242", Address("ORTHANC", "pacs.example.org", 4242)),
    ("  PACS_1@10.0.0.7:104 ", Address("PACS_1", "10.0.0.7", 104)),
    ("PACS@[::1]:11112", Address("PACS", "::1", 11112)),
    ("MY PACS@localhost:65535", Address("MY PACS", "localhost", 65535)),
    ("A@B@host:1", Address("A@B", "host", 1)),  # '@' may occur in an AE title; the host follows the last one
])
def test_parse_address(text, expected):
    assert parse_address(text) == expected


def test_address_round_trips_through_str():
    for text in ("ORTHANC@pacs.example.org:4242", "PACS@[::1]:104"):
        assert str(parse_address(text)) == text


@pytest.mark.parametrize(("text", "message"), [
    ("pacs.example.org:4242", "expected AET@HOST:PORT"),
    ("PACS@host", "no port"),
    ("PACS@host:", "no port"),
    ("PACS@host:0", "port '0' is not a number from 1 to 65535"),
    ("PACS@host:70000", "port '70000' is not a number from 1 to 65535"),
    ("PACS@host:http", "port 'http' is not a number"),
    ("PACS@:104", "no host"),
    ("PACS@::1:104", "write an IPv6 host in brackets"),
    ("PACS@[not-v6]:104", "is not an IPv6 address"),
    ("PACS@bad_host!:104", "is not a host name or IP address"),
    ("@host:104", "called AE title is empty"),
    ("A_TITLE_OF_17_CHR@host:104", "longer than 16 characters"),
    ("BAD\\AET@host:104", "no backslash"),
])
def test_malformed_addresses_say_what_is_wrong(text, message):
    with pytest.raises(AddressError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_address(text)


def test_check_aet():
    assert check_aet(" CXRSCREEN ") == "CXRSCREEN"
    with pytest.raises(AddressError, match="printable ASCII"):
        check_aet("TAB\tAET")
    with pytest.raises(AddressError, match="--calling-aet is empty"):
        check_aet("   ", "--calling-aet")
