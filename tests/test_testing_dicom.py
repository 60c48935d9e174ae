"""The shared DICOM builder: headers, pixels, encodings, files."""

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from cxrscreen.testing import dicom


def _ramp(h: int = 64, w: int = 48, bits: int = 12) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) * 37 % 2**bits).astype(np.uint16)


def test_dataset_defaults_and_overrides():
    ds = dicom.dataset()
    assert (ds.Modality, ds.SOPClassUID) == ("DX", dicom.DX_STORAGE)
    assert (ds.BodyPartExamined, ds.ViewPosition) == ("CHEST", "PA")
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.StudyInstanceUID != dicom.dataset().StudyInstanceUID  # fresh UIDs by default
    study = generate_uid()
    cr = dicom.dataset(sop_class=dicom.CR_STORAGE, modality="CR", StudyInstanceUID=study, view=None, PatientSex="F")
    assert (cr.StudyInstanceUID, cr.PatientSex, cr.Modality) == (study, "F", "CR") and "ViewPosition" not in cr
    assert "PixelData" not in cr and "Rows" not in cr
    assert cr.PatientName == dicom.IDENTITY["PatientName"]
    assert dicom.dataset(PatientName="OTHER^ONE", AccessionNumber="X9").AccessionNumber == "X9"
    with pytest.raises(ValueError, match="not a DICOM keyword"):
        dicom.dataset(PatientNme="x")


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_lossless_encodings_give_back_the_pixels(tmp_path, syntax):
    arr = _ramp()
    ds = dicom.set_pixels(dicom.dataset(), arr, bits=12, photometric="MONOCHROME1", window=("2048", "4096"),
                          rescale=(1, 0))
    uid = ds.SOPInstanceUID
    path = dicom.write(dicom.encode(ds, syntax), tmp_path / "sub" / "f.dcm")
    back = pydicom.dcmread(path)
    assert back.file_meta.TransferSyntaxUID == syntax and back.SOPInstanceUID == uid
    assert (back.BitsStored, back.PhotometricInterpretation, back.WindowCenter) == (12, "MONOCHROME1", 2048)
    np.testing.assert_array_equal(back.pixel_array, arr)


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_encoding_is_deterministic(syntax):
    ds = dicom.dataset(SOPInstanceUID="1.2.3", StudyInstanceUID="1.2.4", SeriesInstanceUID="1.2.5")
    one = dicom.to_bytes(dicom.encode(dicom.set_pixels(ds, _ramp(), bits=12), syntax))
    ds = dicom.dataset(SOPInstanceUID="1.2.3", StudyInstanceUID="1.2.4", SeriesInstanceUID="1.2.5")
    assert dicom.to_bytes(dicom.encode(dicom.set_pixels(ds, _ramp(), bits=12), syntax)) == one


def test_rgb_and_multiframe_pixels():
    rgb = np.zeros((16, 12, 3), np.uint8)
    rgb[..., 0] = 200
    ds = dicom.set_pixels(dicom.dataset(), rgb, photometric="RGB")
    assert (ds.SamplesPerPixel, ds.BitsStored, ds.PlanarConfiguration) == (3, 8, 0)
    frames = np.stack([_ramp(), _ramp()[::-1]])
    ds = dicom.set_pixels(dicom.dataset(), frames, bits=12)
    assert int(ds.NumberOfFrames) == 2 and (ds.Rows, ds.Columns) == (64, 48)
    np.testing.assert_array_equal(pydicom.dcmread(pydicom.filebase.DicomBytesIO(dicom.to_bytes(ds))).pixel_array,
                                  frames)


def test_jpeg_baseline_is_lossy_and_marked():
    arr = (np.add.outer(np.arange(64), np.arange(48)) * 2).astype(np.uint8)
    ds = dicom.encode(dicom.set_pixels(dicom.dataset(), arr, bits=8), JPEGBaseline8Bit, quality=90)
    back = pydicom.dcmread(pydicom.filebase.DicomBytesIO(dicom.to_bytes(ds)))
    assert back.file_meta.TransferSyntaxUID == JPEGBaseline8Bit and back.LossyImageCompression == "01"
    assert np.abs(back.pixel_array.astype(int) - arr).mean() < 3
    with pytest.raises(ValueError, match="8-bit"):
        dicom.encode(dicom.set_pixels(dicom.dataset(), _ramp(), bits=12), JPEGBaseline8Bit)


def test_unknown_syntax_and_too_many_bits_are_refused():
    with pytest.raises(ValueError, match="no encoder"):
        dicom.encode(dicom.set_pixels(dicom.dataset(), _ramp(), bits=12), "1.2.840.10008.1.2.4.50.99")
    with pytest.raises(ValueError):
        dicom.set_pixels(dicom.dataset(), np.full((4, 4), 5000, np.uint16), bits=12)


def test_auto_window_covers_the_bulk_of_values():
    arr = np.arange(1001, dtype=np.uint16).reshape(7, 143)
    center, width = dicom.auto_window(arr)
    assert (center, width) == (500, 990)
    assert dicom.auto_window(np.zeros((4, 4), np.uint16)) == (0, 1)
