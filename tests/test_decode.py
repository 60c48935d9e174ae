"""Decoding: codecs, the grayscale pipeline order, polarity, reduced-resolution paths, real files."""

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

from cxrscreen.ingest.decode import DecodeError, decode_dataset, decode_file, read_dataset, to_display
from cxrscreen.preprocess import PreprocessSpec, build_transform
from tests.factory import chest_phantom, make_dicom

MR_VARIANTS = [
    "MR_small_implicit.dcm",  # implicit VR little endian
    "MR_small_bigendian.dcm",  # explicit VR big endian
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
]


def _stored(path) -> np.ndarray:
    return pydicom.dcmread(path).pixel_array


@pytest.mark.parametrize("name", MR_VARIANTS)
def test_lossless_syntaxes_decode_to_the_uncompressed_pixels(name):
    ref = decode_file(get_testdata_file("MR_small.dcm")).pixels
    got = decode_file(get_testdata_file(name)).pixels
    np.testing.assert_array_equal(got, ref)


def test_deflated_transfer_syntax(tmp_path: Path):
    src = get_testdata_file("MR_small.dcm")
    ds = pydicom.dcmread(src)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out = tmp_path / "deflated.dcm"
    ds.save_as(out, enforce_file_format=True)
    assert pydicom.dcmread(out).file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    np.testing.assert_array_equal(decode_file(out).pixels, decode_file(src).pixels)
    real = get_testdata_file("image_dfl.dcm")  # a deflated file written by another toolkit
    assert decode_file(real).pixels.shape == pydicom.dcmread(real).pixel_array.shape


def test_jpeg_lossless_sv1_matches_uncompressed(tmp_path: Path):
    gdcm = pytest.importorskip("gdcm", reason="python-gdcm builds the JPEG Lossless SV1 fixture")
    src = get_testdata_file("MR_small.dcm")
    reader = gdcm.ImageReader()
    reader.SetFileName(src)
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    out = tmp_path / "jll.dcm"
    writer.SetFileName(str(out))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()
    assert pydicom.dcmread(out).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    np.testing.assert_array_equal(decode_file(out).pixels, decode_file(src).pixels)


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_encoded_chest_lossless_roundtrip(tmp_path: Path, syntax):
    img = chest_phantom(600, 520)
    ref = make_dicom(tmp_path / "ref.dcm", img, bits=12)
    enc = make_dicom(tmp_path / "enc.dcm", img, bits=12, transfer_syntax=syntax)
    np.testing.assert_array_equal(_stored(enc), _stored(ref))
    np.testing.assert_array_equal(decode_file(enc).pixels, decode_file(ref).pixels)


def test_monochrome1_and_monochrome2_give_the_same_display(tmp_path: Path):
    img = chest_phantom()
    m2 = decode_file(make_dicom(tmp_path / "m2.dcm", img, photometric="MONOCHROME2")).pixels
    m1 = decode_file(make_dicom(tmp_path / "m1.dcm", img, photometric="MONOCHROME1")).pixels
    # Percentile windows of x and (max - x) mirror exactly; only interpolation of the
    # percentile can differ by a fraction of one grey level.
    assert np.abs(m1 - m2).max() < 2e-3


def test_pipeline_order_rescale_then_window_then_invert(tmp_path: Path):
    img = np.tile(np.linspace(0, 1, 400, dtype=np.float32), (300, 1))
    # stored 0..4095 (inverted: MONOCHROME1), rescaled to -1000..3095; the window spans exactly the
    # rescaled range, so the display must reproduce ``img``. Skipping the rescale shifts it by ~0.24,
    # inverting before the window mirrors it.
    p = make_dicom(tmp_path / "w.dcm", img, bits=12, rescale=(1.0, -1000.0), window=(1047.5, 4096.0),
                   photometric="MONOCHROME1")
    out = decode_file(p).pixels
    assert np.abs(out - img).max() < 2e-3
    ds = read_dataset(p)
    notes: list[str] = []
    plain = to_display(ds.pixel_array, ds, notes)
    assert "percentile_window" not in notes
    np.testing.assert_allclose(plain, out, atol=1e-6)


def test_percentile_window_when_no_voi(tmp_path: Path):
    img = chest_phantom()
    d = decode_file(make_dicom(tmp_path / "n.dcm", img))
    assert "percentile_window" in d.notes
    assert d.pixels.min() == 0.0 and d.pixels.max() == 1.0


def test_reduced_decode_keeps_aspect(tmp_path: Path):
    img = chest_phantom(1200, 1000)
    d = decode_dataset(read_dataset(make_dicom(tmp_path / "big.dcm", img)), target=448)
    assert d.reduction == 2 and d.pixels.shape == (600, 500)


def test_j2k_reduced_resolution_is_faithful(tmp_path: Path):
    img = chest_phantom(1400, 1200)
    ref = make_dicom(tmp_path / "u.dcm", img)
    j2k = make_dicom(tmp_path / "j.dcm", img, transfer_syntax=JPEG2000Lossless)
    a = decode_dataset(read_dataset(ref), target=448)
    b = decode_dataset(read_dataset(j2k), target=448)
    assert a.reduction == b.reduction == 2  # block mean ×2 vs resolution level 1: the same power of two
    chain = build_transform(PreprocessSpec())
    ta, tb = chain(a.pixels), chain(b.pixels)
    assert ta.shape == tb.shape == (1, 224, 224)
    # in model-input units (1 = std 0.25 of [0,1] intensity): mean abs difference small
    assert float((ta - tb).abs().mean()) < 0.05


def test_truncated_pixel_data_is_an_error(tmp_path: Path):
    p = make_dicom(tmp_path / "t.dcm")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 20000])
    with pytest.raises(DecodeError) as err:
        decode_file(p)
    assert err.value.reason == "truncated"


# ---------------------------------------------------------------- the real files in ../shared/data/dicom
def test_rg1_copies_agree(shared_data):
    d = shared_data / "dicom"
    unc = decode_file(d / "RG1_UNCR.dcm").pixels
    np.testing.assert_array_equal(decode_file(d / "RG1_J2KR.dcm").pixels, unc)  # lossless, full decode
    lossy = decode_file(d / "RG1_J2KI.dcm").pixels
    assert np.abs(lossy - unc).mean() < 0.01


def test_rg1_lungs_darker_than_mediastinum(shared_data):
    px = decode_file(shared_data / "dicom" / "RG1_UNCR.dcm", target=448).pixels  # MONOCHROME1 source
    h, w = px.shape
    rows = slice(int(0.3 * h), int(0.6 * h))
    lungs = np.r_[px[rows, int(0.2 * w): int(0.35 * w)].ravel(), px[rows, int(0.65 * w): int(0.8 * w)].ravel()]
    mediastinum = px[rows, int(0.45 * w): int(0.55 * w)]
    assert lungs.mean() + 0.1 < mediastinum.mean()


def test_jpeg_extended_12bit_decodes():
    src = get_testdata_file("JPGExtended.dcm")  # JPEG extended (process 2 & 4), 12-bit
    d = decode_file(src)
    assert d.pixels.ndim == 2 and 0.0 <= d.pixels.min() < d.pixels.max() <= 1.0


def test_jpeg_baseline_dct_scaling_is_faithful(shared_data):
    ds = read_dataset(shared_data / "dicom" / "SIIM_CR_PA_jpeg_baseline.dcm")
    fast = decode_dataset(ds, target=448)  # Pillow draft: scaled inside the DCT
    assert fast.reduction == 2 and fast.pixels.shape == (512, 512)
    full = decode_dataset(read_dataset(shared_data / "dicom" / "SIIM_CR_PA_jpeg_baseline.dcm"))
    chain = build_transform(PreprocessSpec())
    assert float((chain(fast.pixels) - chain(full.pixels)).abs().mean()) < 0.03


@pytest.mark.parametrize("factor", [1, 2, 3, 4, 6, 7])
@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.uint8, np.float32])
def test_block_mean_matches_scikit_image(factor, dtype):
    from skimage.transform import downscale_local_mean

    from cxrscreen.ingest.decode import _block_mean

    rng = np.random.default_rng(factor)
    hi = 255 if dtype == np.uint8 else 4095
    arr = rng.integers(-hi if dtype == np.int16 else 0, hi, size=(301, 257)).astype(dtype)
    h, w = (301 // factor) * factor, (257 // factor) * factor
    ref = downscale_local_mean(arr[:h, :w].astype(np.float64), (factor, factor))
    got = _block_mean(arr, factor)
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize(
    "func, window, rescale, photometric",
    [
        (None, (1047.5, 4096.0), (1.0, -1000.0), "MONOCHROME1"),  # no VOILUTFunction: LINEAR
        ("LINEAR", (1800.0, 1200.0), None, "MONOCHROME2"),
        ("LINEAR_EXACT", (1800.0, 1200.0), None, "MONOCHROME2"),
        ("LINEAR", ([3000.0, 1500.0], [5000.0, 900.0]), (2.0, -1024.0), "MONOCHROME2"),  # the first of two
        ("SIGMOID", (1800.0, 1200.0), None, "MONOCHROME2"),  # through pydicom
    ],
)
@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # pydicom's SIGMOID far from the centre
def test_display_window_matches_pydicom(tmp_path: Path, func, window, rescale, photometric):
    """The float32 window path gives pydicom's ``apply_voi_lut`` result, scaled to [0, 1]."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    img = chest_phantom(200, 180, seed=3)
    p = make_dicom(tmp_path / "w.dcm", img, bits=12, rescale=rescale, photometric=photometric)
    ds = read_dataset(p)
    ds.WindowCenter, ds.WindowWidth = window
    if func:
        ds.VOILUTFunction = func
    raw = ds.pixel_array
    values = apply_modality_lut(raw, ds).astype(np.float64)
    ref = apply_voi_lut(values, ds, index=0, prefer_lut=True)
    ends = apply_voi_lut(np.array([-1e12, 1e12]), ds, index=0, prefer_lut=True)
    ref = np.clip((ref - ends.min()) / (ends.max() - ends.min()), 0, 1)
    if photometric == "MONOCHROME1":
        ref = 1.0 - ref
    got = to_display(raw, ds)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=2e-6)
    assert float(np.mean((got > 0) & (got < 1))) > 0.05  # the window is not trivially saturated


def test_jpeg_ls_prefers_charls(tmp_path: Path):
    """JPEG-LS goes through pyjpegls (CharLS, faster than GDCM: docs/benchmarks.md) and stays lossless."""
    from pydicom.pixels.decoders import JPEGLSLosslessDecoder

    from cxrscreen.ingest import decode

    assert decode._PREFERRED_JPEG_LS in JPEGLSLosslessDecoder.available_plugins
    img = chest_phantom(300, 260, seed=4)
    ref = make_dicom(tmp_path / "ref.dcm", img, bits=12)
    enc = make_dicom(tmp_path / "enc.dcm", img, bits=12, transfer_syntax=JPEGLSLossless)
    ds = read_dataset(enc)
    raw, factor = decode._stored_values(ds, None)
    assert ds._pixel_array_opts.get("decoding_plugin") == "pyjpegls"
    np.testing.assert_array_equal(raw, _stored(ref))
    assert factor == 1
