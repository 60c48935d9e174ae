import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrscreen.ingest.decode import decode_file
from cxrscreen.ingest.images import load_raster
from cxrscreen.preprocess import PreprocessSpec
from cxrscreen.qc import (
    OK,
    POLARITY_FEATURES,
    POLARITY_THRESHOLD,
    POLARITY_WEIGHTS,
    check_header,
    check_pixels,
    is_supplementary_view,
    polarity_features,
    polarity_score,
    polarity_suspect,
)
from tests.factory import chest_phantom

BASE = {"HasPixelData": "1", "Modality": "DX", "BodyPartExamined": "CHEST", "ViewPosition": "PA",
        "PhotometricInterpretation": "MONOCHROME2", "Rows": "2048", "Columns": "2048", "SamplesPerPixel": "1",
        "SOPClassUID": "1.2.840.10008.5.1.4.1.1.1.1"}


@pytest.mark.parametrize(
    "change, expected",
    [
        ({}, OK),
        ({"BodyPartExamined": ""}, OK),
        ({"BodyPartExamined": "THORAX"}, OK),
        ({"ViewPosition": "AP"}, OK),
        ({"Modality": "CR"}, OK),
        ({"HasPixelData": ""}, "not_assessable:no_pixel_data"),
        ({"Modality": "CT"}, "not_assessable:modality_ct"),
        ({"Modality": ""}, "not_assessable:modality_missing"),
        ({"Modality": "OT", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}, OK),  # SC saying chest
        ({"Modality": "OT", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.7", "BodyPartExamined": ""},
         "not_assessable:modality_ot"),
        ({"BodyPartExamined": "KNEE"}, "not_assessable:body_part_knee"),
        ({"BodyPartExamined": "LOWER LEG"}, "not_assessable:body_part_lower_leg"),
        ({"ViewPosition": "LL"}, "not_assessable:lateral_view"),
        ({"ViewPosition": "RL"}, "not_assessable:lateral_view"),
        ({"ViewPosition": " left  lateral "}, "not_assessable:lateral_view"),
        ({"ViewPosition": "LLO"}, "not_assessable:oblique_view"),
        ({"ViewPosition": "RAO"}, "not_assessable:oblique_view"),
        ({"ViewPosition": "LLD"}, "not_assessable:decubitus_view"),
        ({"ViewPosition": "RLD"}, "not_assessable:decubitus_view"),
        ({"ViewPosition": ""}, OK),  # unknown view: taken as frontal (most exports that omit it are)
        ({"ViewPosition": "LL", "BodyPartExamined": "KNEE"}, "not_assessable:body_part_knee"),
        ({"PresentationIntentType": "FOR PROCESSING"}, "not_assessable:for_processing"),
        ({"NumberOfFrames": "3"}, "not_assessable:multi_frame"),
        ({"SamplesPerPixel": "3", "PhotometricInterpretation": "RGB"}, "not_assessable:colour"),
        ({"PhotometricInterpretation": "PALETTE COLOR"}, "not_assessable:colour"),
        ({"Rows": "200"}, "not_assessable:too_small"),
    ],
)
def test_header_rules(change, expected):
    assert check_header({**BASE, **change}) == expected


def test_supplementary_views_are_not_doubts():
    assert all(is_supplementary_view(f"not_assessable:{r}") for r in ("lateral_view", "oblique_view", "decubitus_view"))
    for status in ("ok", "not_assessable:body_part_knee", "not_assessable:blank_image", "error:truncated"):
        assert not is_supplementary_view(status)


def test_blank_image_not_assessable():
    assert check_pixels(np.zeros((300, 300), np.float32)) == "not_assessable:blank_image"
    assert check_pixels(chest_phantom()) == OK


def test_polarity_heuristic():
    img = chest_phantom()
    assert not polarity_suspect(img)
    assert polarity_suspect(1.0 - img)


@pytest.mark.parametrize("shape", [(512, 448), (224, 224), (2048, 1700), (37, 23)])
def test_polarity_features_change_sign_on_inversion(shape):
    """The property the fit relies on (no intercept, one weight vector for both polarities)."""
    for img in (chest_phantom(*shape, seed=4), np.random.default_rng(5).random(shape, dtype=np.float32)):
        f = polarity_features(img)
        assert f.shape == (len(POLARITY_WEIGHTS),) and np.isfinite(f).all()
        np.testing.assert_allclose(polarity_features(1.0 - img), -f, atol=1e-9)


def test_polarity_flat_image_is_not_suspect():
    assert polarity_score(np.full((300, 300), 0.5, np.float32)) == 0.0
    assert not polarity_suspect(np.full((300, 300), 0.5, np.float32))


def test_polarity_on_real_films_with_margin(shared_data):
    """25 test films per data set (224 px, correct polarity) and their inverted copies, far from the threshold.

    On these films the score lies below −5.0 (correct) and above +5.0 (inverted); full figures over every
    source: docs/polarity.md (benchmarks/polarity.py).
    """
    manifest = pd.read_csv(shared_data / "cxr224" / "manifest.csv")
    films = manifest[manifest["split"] == "test"].groupby("dataset").head(25)
    scores = np.array([polarity_score(load_raster(shared_data / "cxr224" / p)) for p in films["path"]])
    inverted = np.array([polarity_score(1.0 - load_raster(shared_data / "cxr224" / p)) for p in films["path"]])
    assert len(scores) == 50
    assert scores.max() < POLARITY_THRESHOLD - 3 and inverted.min() > POLARITY_THRESHOLD + 3


def test_polarity_texture_feature_follows_brightness():
    """Fine structure in the dark half, a smooth bright half: brightness and texture are anti-correlated."""
    rng = np.random.default_rng(3)
    img = np.full((256, 256), 0.8)
    img[:, :128] = 0.2 + 0.3 * (np.arange(256)[:, None] % 16 < 6)  # dark 'lung' crossed by bright thin 'ribs'
    img[:, :128] += rng.normal(0, 0.03, (256, 128))
    corr = POLARITY_FEATURES.index("brightness_texture_corr")
    assert polarity_features(img)[corr] < -0.5 and polarity_features(1.0 - img)[corr] > 0.5


def test_polarity_on_narrow_crops_of_real_films(shared_data):
    """Half a chest (45–85 % of the width, as a portrait detector sees a landscape film) is still judged right.

    25 test films per data set, one seeded narrow crop each, and their inverted copies: at most 2 of the
    100 checks wrong (1 here), and the crops score −3 or lower on average.
    """
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from polarity import narrow_crop

    manifest = pd.read_csv(shared_data / "cxr224" / "manifest.csv")
    films = manifest[manifest["split"] == "test"].groupby("dataset").head(25)
    rng = np.random.default_rng(0)
    scores = np.array([polarity_score(narrow_crop(load_raster(shared_data / "cxr224" / p), rng))
                       for p in films["path"]])
    wrong = int(np.sum(scores > POLARITY_THRESHOLD) + np.sum(-scores <= POLARITY_THRESHOLD))
    assert len(scores) == 50 and wrong <= 2 and scores.mean() < -3


def test_polarity_catches_the_lying_header(shared_data):
    """A MONOCHROME1 header on pixels that are not inverted: decoded as the scan does, it is flagged."""
    spec = PreprocessSpec()
    lying = decode_file(shared_data / "dicom" / "SIIM_header_says_MONOCHROME1_pixels_not_inverted.dcm",
                        target=spec.decode_target)
    honest = decode_file(shared_data / "dicom" / "SIIM_CR_PA_jpeg_baseline.dcm", target=spec.decode_target)
    assert polarity_suspect(lying.pixels) and not polarity_suspect(honest.pixels)


def test_an_invalid_qc_value_is_not_read_as_absent() -> None:
    """ingest.tags empties an invalid value (e.g. CS 'ABDOMEN-PELVIS'); QC must not then score the film."""
    tags = {**BASE, "BodyPartExamined": "", "_invalid_tags": "PatientName;BodyPartExamined"}
    assert check_header(tags) == "not_assessable:invalid_bodypartexamined"
    assert check_header({**BASE, "PatientName": "", "_invalid_tags": "PatientName"}) == OK
