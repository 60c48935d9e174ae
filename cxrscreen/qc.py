"""Assessability rules: pure functions of the header tags and the decoded image.

Every file gets exactly one status: ``ok``, ``not_assessable:<reason>`` or ``error:<reason>``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

OK = "ok"
ACCEPTED_MODALITIES = {"CR", "DX"}
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
CHEST_TERMS = ("CHEST", "THORAX", "LUNG", "PULMON", "CXR", "TORSO", "BREAST_CHEST", "THORACIC")
LATERAL_VIEWS = {"LL", "RL", "LAT", "LATERAL", "LLD", "RLD", "LLO", "RLO", "LEFT LATERAL", "RIGHT LATERAL"}
MIN_SIDE = 256


def not_assessable(reason: str) -> str:
    return f"not_assessable:{reason}"


def error(reason: str) -> str:
    return f"error:{reason}"


def is_ok(status: str) -> bool:
    return status == OK


def _says_chest(*texts: str) -> bool:
    joined = " ".join(texts).upper()
    return any(term in joined for term in CHEST_TERMS)


def _int(value: str, default: int = 0) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return default


def check_header(tags: Mapping[str, str]) -> str:
    """Rules that need only the header; returns ``ok`` or ``not_assessable:<reason>``."""
    if not tags.get("HasPixelData"):
        return not_assessable("no_pixel_data")
    modality = tags.get("Modality", "").upper()
    body = tags.get("BodyPartExamined", "").strip()
    is_sc = tags.get("SOPClassUID", "").startswith(SECONDARY_CAPTURE_PREFIX)
    if modality not in ACCEPTED_MODALITIES:
        sc_chest = is_sc and _says_chest(body, tags.get("StudyDescription", ""), tags.get("SeriesDescription", ""))
        if not sc_chest:
            return not_assessable(f"modality_{_token(modality) or 'missing'}")
    if body and not _says_chest(body):
        return not_assessable(f"body_part_{_token(body)}")
    view = tags.get("ViewPosition", "").strip().upper()
    if view in LATERAL_VIEWS:
        return not_assessable("lateral_view")
    if tags.get("PresentationIntentType", "").strip().upper() == "FOR PROCESSING":
        return not_assessable("for_processing")
    if _int(tags.get("NumberOfFrames", ""), 1) > 1:
        return not_assessable("multi_frame")
    photometric = tags.get("PhotometricInterpretation", "").strip().upper()
    if _int(tags.get("SamplesPerPixel", ""), 1) > 1 or (photometric and not photometric.startswith("MONOCHROME")):
        return not_assessable("colour")
    rows, cols = _int(tags.get("Rows", "")), _int(tags.get("Columns", ""))
    if rows and cols and min(rows, cols) < MIN_SIDE:
        return not_assessable("too_small")
    return OK


def check_pixels(pixels: np.ndarray) -> str:
    """Rules on the decoded display image (e.g. a blank frame)."""
    if pixels.ndim != 2:
        return not_assessable("not_2d")
    if float(np.std(pixels)) < 1e-3:
        return not_assessable("blank_image")
    return OK


def polarity_suspect(pixels: np.ndarray) -> bool:
    """Heuristic: in a frontal chest film the mediastinum/spine strip is brighter than the lungs.

    Looks at the central third of the rows: the central column strip vs the two lung strips.
    Returns True when the centre is clearly *darker* (polarity probably inverted).
    """
    h, w = pixels.shape
    rows = slice(int(0.3 * h), int(0.7 * h))
    centre = float(np.mean(pixels[rows, int(0.45 * w): int(0.55 * w)]))
    right = float(np.mean(pixels[rows, int(0.18 * w): int(0.35 * w)]))
    left = float(np.mean(pixels[rows, int(0.65 * w): int(0.82 * w)]))
    return centre + 0.08 < min(right, left)


def _token(text: str) -> str:
    """Tag value → safe lowercase token for a status string."""
    out = "".join(c.lower() if c.isalnum() else "_" for c in text.strip())
    return "_".join(p for p in out.split("_") if p)[:40]
