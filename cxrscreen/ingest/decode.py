"""pydicom → tags + pixels in display polarity, float32 in [0, 1].

Pixel pipeline, in order (PS3.4 grayscale pipeline): stored values → modality LUT / rescale →
VOI LUT or window (the first one when several; a robust percentile window when none) →
MONOCHROME1 inversion → [0, 1]. Large images are decoded or reduced to roughly the size the
model needs: JPEG 2000 at a reduced resolution level (OpenJPEG via glymur), JPEG baseline
inside the DCT (Pillow ``draft``), everything else block-averaged after decoding; always by a
power of two (:func:`reduction_factor`), so compressed and uncompressed twins match.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.pixels.decoders import JPEGLSLosslessDecoder
from pydicom.uid import JPEG2000, JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless, JPEGLSNearLossless

from cxrscreen.ingest.tags import INVALID_KEY, validated

#: Tags carried from the header into records, worklists and reports.
TAG_KEYWORDS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "AccessionNumber",
    "StudyID",
    "ReferringPhysicianName",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "SeriesDescription",
    "InstitutionName",
    "Modality",
    "BodyPartExamined",
    "ViewPosition",
    "PresentationIntentType",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "SamplesPerPixel",
    "BitsStored",
    "ImageType",
)

PERCENTILE_WINDOW = (0.5, 99.5)

JPEG_LS = (JPEGLSLossless, JPEGLSNearLossless)
#: CharLS (pyjpegls) decodes JPEG-LS faster than GDCM, pydicom's first choice (figures in
#: docs/benchmarks.md); the others remain the fallback.
_PREFERRED_JPEG_LS = "pyjpegls"


class DecodeError(RuntimeError):
    """A file that is DICOM but whose pixels cannot be decoded; ``reason`` is a short code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class Decoded:
    """Pixels in display polarity, [0, 1], plus how they were obtained."""

    pixels: np.ndarray
    reduction: int = 1  # integer downscale factor applied during/after decoding
    notes: list[str] = field(default_factory=list)


def read_dataset(path: Path | str | BinaryIO, header_only: bool = False) -> Dataset:
    """Read a DICOM file or file-like object (preamble optional); raises ``DecodeError`` with a reason."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=header_only, force=True)
    except (EOFError, ValueError, OSError, KeyError, TypeError, AttributeError, NotImplementedError) as exc:
        raise DecodeError("unreadable_header", _short(exc)) from exc
    except Exception as exc:  # pydicom raises many types on malformed input
        raise DecodeError("unreadable_header", _short(exc)) from exc


def extract_tags(ds: Dataset) -> dict[str, str]:
    """Tags of interest as plain strings, validated by VR (:mod:`cxrscreen.ingest.tags`).

    '' when absent or invalid; multi-values joined with '\\'; the keywords of invalid values are
    listed under ``tags.INVALID_KEY`` (``tags.tag_notes`` makes them ``invalid_tag:<keyword>`` notes).
    """
    out = validated(ds, TAG_KEYWORDS)
    meta = validated(getattr(ds, "file_meta", None) or Dataset(), ("TransferSyntaxUID",))
    out["TransferSyntaxUID"] = meta["TransferSyntaxUID"]
    if INVALID_KEY in meta:
        out[INVALID_KEY] = ";".join(filter(None, (out.get(INVALID_KEY), meta[INVALID_KEY])))
    out["HasPixelData"] = "1" if any(t in ds for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")) else ""
    return out


def _short(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:limit]


def reduction_factor(shape: tuple[int, int], target: int | None) -> int:
    """Largest power of two keeping the longest side ≥ ``target`` (1 when no target).

    Powers of two because that is what the codecs' reduced decodes give (JPEG 2000 resolution
    levels, JPEG DCT scaling): a compressed file and its uncompressed twin are then reduced by the
    same factor and reach the model through the same geometry.
    """
    if not target or max(shape) < 2 * target:
        return 1
    return 2 ** int(math.floor(math.log2(max(shape) / target)))


def _j2k_reduced(ds: Dataset, target: int) -> tuple[np.ndarray, int] | None:
    """Decode a JPEG 2000 frame at reduced resolution level r (factor 2**r) with glymur."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    level = int(math.floor(math.log2(max(1.0, max(rows, cols) / target))))
    if level < 1:
        return None
    import glymur

    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.NamedTemporaryFile(suffix=".j2k", dir=shm) as tmp:
        tmp.write(frame)
        tmp.flush()
        jp = glymur.Jp2k(tmp.name)
        cod = next((seg for seg in jp.codestream.segment if hasattr(seg, "num_res")), None)
        if cod is not None:
            level = min(level, int(cod.num_res))
        if level < 1:
            return None
        step = 2**level
        arr = jp[::step, ::step]
    if arr.ndim != 2:
        return None
    return np.asarray(arr), step


def _jpeg_baseline_reduced(ds: Dataset, target: int) -> tuple[np.ndarray, int] | None:
    """Decode an 8-bit JPEG baseline frame scaled inside the DCT (Pillow ``draft``)."""
    from PIL import Image

    rows, cols = int(ds.Rows), int(ds.Columns)
    factor = reduction_factor((rows, cols), target)
    if factor < 2:
        return None
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    with Image.open(io.BytesIO(frame)) as im:
        if im.mode != "L":
            return None
        im.draft("L", (cols // factor, rows // factor))
        arr = np.asarray(im)
    step = max(1, round(cols / arr.shape[1]))
    return arr, step


def _stored_values(ds: Dataset, target: int | None) -> tuple[np.ndarray, int]:
    """Stored pixel values (possibly reduced) and the reduction factor."""
    ts = ds.file_meta.TransferSyntaxUID if hasattr(ds, "file_meta") else None
    if target and ts in (JPEG2000, JPEG2000Lossless):
        try:
            got = _j2k_reduced(ds, target)
        except Exception:
            got = None  # fall back to the full decode
        if got is not None:
            return got
    if target and ts == JPEGBaseline8Bit:
        try:
            got = _jpeg_baseline_reduced(ds, target)
        except Exception:
            got = None
        if got is not None:
            return got
    if ts in JPEG_LS and _PREFERRED_JPEG_LS in JPEGLSLosslessDecoder.available_plugins:
        ds.pixel_array_options(decoding_plugin=_PREFERRED_JPEG_LS)
    arr = ds.pixel_array
    factor = reduction_factor(arr.shape[-2:], target)
    return arr, factor


def _block_mean(arr: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor``×``factor`` blocks (edge remainder dropped), as float32.

    Same values as ``skimage.transform.downscale_local_mean`` on the cropped array, by strided
    sums: whole rows first (cache-friendly, and the float32 copy is ``factor`` times smaller),
    then columns. It skips the generic block view and the float64 reduction, which makes it the faster
    of the two (figures in docs/benchmarks.md).
    """
    if factor < 2:
        return arr.astype(np.float32, copy=False)
    h, w = (arr.shape[0] // factor) * factor, (arr.shape[1] // factor) * factor
    rows = arr[0:h:factor, :w].astype(np.float32)
    for i in range(1, factor):
        rows += arr[i:h:factor, :w]
    out = rows[:, 0::factor].copy()
    for j in range(1, factor):
        out += rows[:, j::factor]
    out *= np.float32(1.0 / (factor * factor))
    return out


def has_voi(ds: Dataset) -> bool:
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0:
        return True
    try:
        width = ds.get("WindowWidth")
        if width is None or ds.get("WindowCenter") is None:
            return False
        first = width[0] if isinstance(width, pydicom.multival.MultiValue) else width
        return float(first) > 0
    except (TypeError, ValueError):
        return False


def _linear_window(ds: Dataset) -> tuple[float, float] | None:
    """The first window as the input values mapped to 0 and 1, when it is LINEAR or LINEAR_EXACT.

    Same mapping as pydicom's ``apply_voi_lut`` followed by scaling its output range to [0, 1]
    (PS3.3 C.11.2.1.2: LINEAR uses ``center − 0.5`` and ``width − 1``), but one float32 pass instead of
    three float64 masked passes (docs/benchmarks.md). ``None`` for a VOI LUT sequence,
    SIGMOID, or an invalid width: those go through pydicom.
    """
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0:
        return None
    func = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    try:
        center, width = ds["WindowCenter"], ds["WindowWidth"]
        c = float(center.value[0] if center.VM > 1 else center.value)
        w = float(width.value[0] if width.VM > 1 else width.value)
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    if func == "LINEAR":
        c, w = c - 0.5, w - 1
    elif func != "LINEAR_EXACT":
        return None
    return (c - w / 2, c + w / 2) if w > 0 else None  # a step or an invalid width: pydicom decides


def to_display(arr: np.ndarray, ds: Dataset, notes: list[str] | None = None) -> np.ndarray:
    """Modality LUT → VOI (first) or percentile window → MONOCHROME1 inversion → [0, 1]."""
    notes = notes if notes is not None else []
    if "ModalityLUTSequence" in ds:
        arr = np.rint(arr).astype(np.int64)
    values = apply_modality_lut(arr, ds)
    if has_voi(ds):
        linear = _linear_window(ds)
        if linear is not None:  # the common case: straight to [0, 1] in float32
            lo, hi = linear
            out = (values.astype(np.float32, copy=False) - np.float32(lo)) * np.float32(1.0 / (hi - lo))
        else:
            windowed = apply_voi_lut(values.astype(np.float64, copy=False), ds, index=0, prefer_lut=True)
            ends = apply_voi_lut(np.array([-1e12, 1e12]), ds, index=0, prefer_lut=True)
            lo, hi = float(np.min(ends)), float(np.max(ends))
            if hi <= lo:
                lo, hi = float(windowed.min()), float(windowed.max())
            out = (windowed - lo) / max(hi - lo, 1e-9)
    else:
        notes.append("percentile_window")
        lo, hi = np.percentile(values, PERCENTILE_WINDOW)
        out = (values - lo) / max(float(hi - lo), 1e-9)
    out = np.clip(out, 0.0, 1.0).astype(np.float32)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        out = 1.0 - out
    return out


def decode_dataset(ds: Dataset, target: int | None = None) -> Decoded:
    """Decode the first frame of a grayscale dataset to display pixels."""
    notes: list[str] = []
    try:
        raw, factor = _stored_values(ds, target)
    except Exception as exc:
        raise DecodeError(_classify(exc), _short(exc)) from exc
    raw = np.asarray(raw)
    if raw.ndim != 2:
        raise DecodeError("unexpected_shape", f"decoded array has shape {raw.shape}")
    already = factor if raw.shape[0] < int(ds.get("Rows", raw.shape[0])) else 1
    if already == 1 and factor > 1:
        raw = _block_mean(raw, factor)
    if factor > 1:
        notes.append(f"reduced_x{factor}")
    try:
        pixels = to_display(raw, ds, notes)
    except Exception as exc:
        raise DecodeError("lut_failed", _short(exc)) from exc
    if not np.isfinite(pixels).all():
        raise DecodeError("non_finite_pixels")
    return Decoded(pixels=pixels, reduction=factor, notes=notes)


def _classify(exc: BaseException) -> str:
    text = str(exc).lower()
    short_data = ("length" in text or "less than expected" in text) and ("pixel data" in text or "expected" in text)
    if short_data or "truncat" in text or isinstance(exc, EOFError):
        return "truncated"
    if "no pixel data" in text or "pixeldata" in text and "missing" in text:
        return "no_pixel_data"
    if "plugin" in text or "no available" in text or "unable to decode" in text or "not supported" in text:
        return "unsupported_codec"
    return "decode_failed"


def decode_file(path: Path | str, target: int | None = None) -> Decoded:
    """Read + decode; convenience wrapper used by training manifests with DICOM paths."""
    return decode_dataset(read_dataset(path), target=target)


def header_summary(tags: dict[str, Any]) -> str:
    """Short non-identifying description for logs."""
    return f"{tags.get('Modality', '?')} {tags.get('Rows', '?')}x{tags.get('Columns', '?')}"
