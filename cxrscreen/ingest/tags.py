"""Header values validated and bounded by their VR before anything else sees them.

Each value is checked against the VR the DICOM dictionary gives its keyword (not the VR the file
claims), with pydicom's own validators (``pydicom.valuerep.validate_value``: lengths, character
repertoires, number ranges) plus what they leave out:

* no control characters, line separators or bidi controls (:data:`cxrscreen.safetext.FORBIDDEN`)
  and no backslash inside one value;
* DA and TM must be real dates and times (pydicom's ``DA``/``TM`` parse them), not just digits;
* at most :data:`MAX_VALUES` values, and one where the dictionary says VM 1.

Padding (trailing NULs, surrounding spaces) is dropped and CS values are upper-cased first (lower
case is a common, harmless deviation); an AS value of bare digits (``81``, as several public
exports write an age in years) is read as years (``081Y``). Character sets come from the file's SpecificCharacterSet
(pydicom decodes every text value with it). A value that fails becomes ``""`` and its keyword is
listed under :data:`INVALID_KEY`; :func:`tag_notes` turns that into ``invalid_tag:<keyword>`` notes.
An invalid value is never kept, in part or whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydicom import config
from pydicom.datadict import dictionary_VM, dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import DA, DT, TM, validate_value

from cxrscreen.safetext import has_forbidden

#: Tag key listing the keywords whose values were invalid (``;``-separated); absent when none.
INVALID_KEY = "_invalid_tags"
NOTE_PREFIX = "invalid_tag:"
MAX_VALUES = 16
_INTEGER_VRS = {"US": (0, 0xFFFF), "SS": (-0x8000, 0x7FFF), "UL": (0, 0xFFFFFFFF), "SL": (-0x80000000, 0x7FFFFFFF)}
_PARSED = {"DA": DA, "TM": TM, "DT": DT}


class InvalidValue(ValueError):
    """A header value that does not conform to its VR (the message names no value)."""


def _text(vr: str, value: Any) -> str:
    """One value as validated text (raises ``InvalidValue``)."""
    if isinstance(value, bytes | bytearray):  # an undecodable or unknown-VR value
        raise InvalidValue("binary value")
    if vr in _INTEGER_VRS:
        lo, hi = _INTEGER_VRS[vr]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise InvalidValue(f"not a {vr} number")
        return str(int(value))
    written = getattr(value, "original_string", None) if vr in ("IS", "DS") else None  # as written
    text = str(value if written is None else written)
    if has_forbidden(text.rstrip("\x00")):
        raise InvalidValue("control character")
    text = text.rstrip("\x00").strip()
    if vr == "CS":
        text = text.upper()
    if vr == "AS" and text.isdigit() and len(text) <= 3:  # "81": a common export of an age in years
        text = f"{int(text):03d}Y"
    if "\\" in text:
        raise InvalidValue("backslash in a single value")
    try:
        validate_value(vr, text, config.RAISE)
        if vr in _PARSED and text:
            _PARSED[vr](text)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidValue(f"not a valid {vr}") from exc
    return text


def element_text(elem: DataElement, keyword: str) -> str:
    """The element's value(s) as one string (multi-values joined with ``\\``); raises ``InvalidValue``."""
    vr = dictionary_VR(keyword)
    value = elem.value
    if value is None or value == "":
        return ""
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    if len(values) > MAX_VALUES or (len(values) > 1 and dictionary_VM(keyword) == "1"):
        raise InvalidValue("too many values")
    return "\\".join(_text(vr, v) for v in values)


def validated(ds: Dataset, keywords: Iterable[str]) -> dict[str, str]:
    """``{keyword: value}`` ('' when absent or invalid), plus :data:`INVALID_KEY` when any was invalid."""
    out: dict[str, str] = {}
    invalid: list[str] = []
    for kw in keywords:
        try:
            elem = ds.data_element(kw) if kw in ds else None  # decoding (character set…) happens here
            out[kw] = "" if elem is None else element_text(elem, kw)
        except Exception:  # InvalidValue, or a malformed element pydicom cannot convert
            out[kw] = ""
            invalid.append(kw)
    if invalid:
        out[INVALID_KEY] = ";".join(invalid)
    return out


def tag_notes(tags: Mapping[str, str]) -> tuple[str, ...]:
    """``invalid_tag:<keyword>`` for each header value that was dropped as invalid."""
    return tuple(NOTE_PREFIX + kw for kw in tags.get(INVALID_KEY, "").split(";") if kw)
