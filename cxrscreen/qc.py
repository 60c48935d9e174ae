"""Assessability rules: pure functions of the header tags and the decoded image.

Every file gets exactly one status: ``ok``, ``not_assessable:<reason>`` or ``error:<reason>``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from cxrscreen.ingest.tags import INVALID_KEY
from cxrscreen.records import OK, SUPPLEMENTARY_VIEW_REASONS, Status

ACCEPTED_MODALITIES = {"CR", "DX"}
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
CHEST_TERMS = ("CHEST", "THORAX", "LUNG", "PULMON", "CXR", "TORSO", "BREAST_CHEST", "THORACIC")
# ViewPosition (0018,5101) values of the supplementary views of a chest exam (DICOM defined terms
# LL, RL, LLO, RLO, LLD, RLD, plus free-text spellings). The model reads frontal (PA/AP) films only.
LATERAL_VIEWS = {"LL", "RL", "LAT", "LATERAL", "LEFT LATERAL", "RIGHT LATERAL"}
OBLIQUE_VIEWS = {"LLO", "RLO", "LAO", "RAO", "LPO", "RPO", "OBL", "OBLIQUE"}
DECUBITUS_VIEWS = {"LLD", "RLD", "DECUBITUS"}
MIN_SIDE = 256
#: Header values the rules below read: when one was invalid (emptied by ``ingest.tags``) the film is
#: not assessed, rather than judged as if the value were absent.
QC_KEYWORDS = frozenset({"Modality", "BodyPartExamined", "ViewPosition", "PresentationIntentType", "NumberOfFrames",
                         "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "SOPClassUID"})


not_assessable = Status.not_assessable
error = Status.error


SUPPLEMENTARY_VIEW_STATUSES = frozenset(not_assessable(r) for r in SUPPLEMENTARY_VIEW_REASONS)


def is_ok(status: str) -> bool:
    return Status(status).is_ok


def is_supplementary_view(status: str) -> bool:
    """A lateral, oblique or decubitus view: an expected part of a chest exam that the model does not read.

    Such an image is not analysed, but unlike every other ``not_assessable``/``error`` status it casts
    no doubt on its study (see ``outputs.worklist.studies_frame``).
    """
    return Status(status).is_supplementary_view


def _says_chest(*texts: str) -> bool:
    joined = " ".join(texts).upper()
    return any(term in joined for term in CHEST_TERMS)


def _int(value: str, default: int = 0) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return default


def check_header(tags: Mapping[str, str]) -> Status:
    """Rules that need only the header; returns ``ok`` or ``not_assessable:<reason>``."""
    if not tags.get("HasPixelData"):
        return not_assessable("no_pixel_data")
    invalid = [kw for kw in tags.get(INVALID_KEY, "").split(";") if kw in QC_KEYWORDS]
    if invalid:  # an emptied value must not read as "absent": an invalid body part is no chest
        return not_assessable(f"invalid_{_token(invalid[0])}")
    modality = tags.get("Modality", "").upper()
    body = tags.get("BodyPartExamined", "").strip()
    is_sc = tags.get("SOPClassUID", "").startswith(SECONDARY_CAPTURE_PREFIX)
    if modality not in ACCEPTED_MODALITIES:
        sc_chest = is_sc and _says_chest(body, tags.get("StudyDescription", ""), tags.get("SeriesDescription", ""))
        if not sc_chest:
            return not_assessable(f"modality_{_token(modality) or 'missing'}")
    if body and not _says_chest(body):
        return not_assessable(f"body_part_{_token(body)}")
    view = " ".join(tags.get("ViewPosition", "").upper().split())
    if view in LATERAL_VIEWS:
        return not_assessable("lateral_view")
    if view in OBLIQUE_VIEWS:
        return not_assessable("oblique_view")
    if view in DECUBITUS_VIEWS:
        return not_assessable("decubitus_view")
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


def check_pixels(pixels: np.ndarray) -> Status:
    """Rules on the decoded display image (e.g. a blank frame)."""
    if pixels.ndim != 2:
        return not_assessable("not_2d")
    if float(np.std(pixels)) < 1e-3:
        return not_assessable("blank_image")
    return OK


# Polarity check: a linear score on five antisymmetric features (each changes sign when the film is
# inverted, f(1 − x) = −f(x)), so one weight vector serves both polarities and no intercept is needed.
# Weights fitted by ``benchmarks/polarity.py --fit`` (logistic regression on cxr224 train films, random
# crops of them, narrow crops like a portrait detector's view of a landscape film, and their inverted
# copies); threshold checked on cxr224 val. Figures: docs/polarity.md.
POLARITY_FEATURES = ("corners_minus_centre", "skewness", "base_minus_lungs", "mediastinal_peak",
                     "brightness_texture_corr")
POLARITY_WEIGHTS = (19.0, 1.5, -16.3, -1.3, 6.5)
POLARITY_THRESHOLD = 0.5  # score above it (odds of an inverted film above 1.6:1) → polarity_suspect
_GRID = 64  # features are computed on a ~64×64 strided sample of the film


def _band(a: float, b: float, n: int) -> slice:
    """Fractions ``[a, b)`` of ``n`` as a slice that holds at least one index."""
    lo = min(int(a * n), n - 1)
    return slice(lo, max(int(b * n), lo + 1))


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equally shaped arrays; 0 when either is flat."""
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    den = float(np.sqrt(np.dot(a, a) * np.dot(b, b)))
    return float(np.dot(a, b)) / den if den > 1e-12 else 0.0


def polarity_features(pixels: np.ndarray) -> np.ndarray:
    """Five statistics of a display image in [0, 1] (``POLARITY_FEATURES``); inverting it negates each.

    In display polarity (air dark, bone and soft tissue bright): the corners (air outside the body) are
    darker than the centre; the histogram is skewed left (a tail of dark lung and air); the base of the
    film (diaphragm, abdomen) is brighter than the lung rows; the column profile of the lung rows has a
    bright peak near the middle between dark valleys, wherever the film was centred; and brightness is
    anti-correlated with local texture (the fine structure — vessels, rib edges — lies in the dark lungs,
    while mediastinum and abdomen are bright and smooth), which holds on any crop of the chest. Inverting
    the film negates every one (texture, a local RMS deviation, does not change). The image is read on a
    strided ~64×64 grid (only the grid is copied; no averaging), so its cost does not grow with the
    film's size.
    """
    from scipy.ndimage import uniform_filter

    h, w = pixels.shape
    sy, sx = max(h // _GRID, 1), max(w // _GRID, 1)
    g = np.asarray(pixels[sy // 2::sy, sx // 2::sx], dtype=np.float64)
    gh, gw = g.shape
    lung_rows = g[_band(0.25, 0.6, gh)].mean()
    k, j = max(gh // 10, 1), max(gw // 10, 1)
    corners = (g[:k, :j].mean() + g[:k, -j:].mean() + g[-k:, :j].mean() + g[-k:, -j:].mean()) / 4
    centre = g[_band(0.25, 0.75, gh), _band(0.25, 0.75, gw)].mean()
    d = g - g.mean()  # skewness from numpy moments: scipy.stats.skew alone costs more than this whole check
    var = float(np.mean(d * d))
    skew = float(np.mean(d * d * d)) / var**1.5 if var > 1e-12 else 0.0
    base = g[_band(0.8, 1.0, gh)].mean()
    profile = g[_band(0.25, 0.65, gh)].mean(axis=0)
    left, right, middle = profile[_band(0.0, 0.5, gw)], profile[_band(0.5, 1.0, gw)], profile[_band(0.3, 0.7, gw)]
    peak = middle.max() - (left.min() + right.min()) / 2  # bright mediastinum above dark lungs
    trough = (left.max() + right.max()) / 2 - middle.min()  # the same of the inverted film
    detail = g - uniform_filter(g, 3, mode="nearest")  # negated exactly by inversion, so its RMS is not
    energy = np.maximum(uniform_filter(detail * detail, 3, mode="nearest"), 0.0)  # the filter can round below 0
    texture = uniform_filter(np.sqrt(energy), 5, mode="nearest")
    return np.array([corners - centre, skew, base - lung_rows, peak - trough, _corr(g, texture)])


def polarity_score(pixels: np.ndarray) -> float:
    """Evidence (a logit) that a display image is inverted: > 0 looks inverted, < 0 looks right."""
    return float(np.dot(POLARITY_WEIGHTS, polarity_features(pixels)))


def polarity_suspect(pixels: np.ndarray) -> bool:
    """True when a frontal film looks inverted (e.g. a MONOCHROME1 header on non-inverted pixels)."""
    return polarity_score(pixels) > POLARITY_THRESHOLD


def _token(text: str) -> str:
    """Tag value → safe lowercase token for a status string."""
    out = "".join(c.lower() if c.isalnum() else "_" for c in text.strip())
    return "_".join(p for p in out.split("_") if p)[:40]
