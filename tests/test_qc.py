import numpy as np
import pytest

from cxrscreen.qc import OK, check_header, check_pixels, polarity_suspect
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
        ({"PresentationIntentType": "FOR PROCESSING"}, "not_assessable:for_processing"),
        ({"NumberOfFrames": "3"}, "not_assessable:multi_frame"),
        ({"SamplesPerPixel": "3", "PhotometricInterpretation": "RGB"}, "not_assessable:colour"),
        ({"PhotometricInterpretation": "PALETTE COLOR"}, "not_assessable:colour"),
        ({"Rows": "200"}, "not_assessable:too_small"),
    ],
)
def test_header_rules(change, expected):
    assert check_header({**BASE, **change}) == expected


def test_blank_image_not_assessable():
    assert check_pixels(np.zeros((300, 300), np.float32)) == "not_assessable:blank_image"
    assert check_pixels(chest_phantom()) == OK


def test_polarity_heuristic():
    img = chest_phantom()
    assert not polarity_suspect(img)
    assert polarity_suspect(1.0 - img)
