"""Crash-isolated, bounded decoding (cxrscreen.ingest.isolation) on files that really crash or hang a codec."""

from __future__ import annotations

import contextlib
import io
import sys
import tracemalloc
from pathlib import Path

import pydicom
import pytest
from pydicom.encaps import generate_fragments
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from cxrscreen import faults, settings
from cxrscreen.ingest import isolation
from cxrscreen.ingest.decode import DecodeError, decode_dataset
from cxrscreen.options import ScanOptions
from cxrscreen.prepare import prepare_file
from cxrscreen.preprocess import PreprocessSpec, build_transform
from cxrscreen.settings import Isolation, Settings
from tests.crashers import jpegls_hang_file, rle_panic_file
from tests.factory import chest_phantom, make_dicom

SPEC = PreprocessSpec(input_size=64)


@pytest.fixture
def prepare():
    transform = build_transform(SPEC, augment=False)
    return lambda path, isolate=None: prepare_file(path, SPEC, transform, isolate=isolate)


@pytest.fixture
def fresh_helpers(monkeypatch):
    """Helpers started after the test's settings are made (``fresh_helpers.use(decode_timeout_s=2)``: the
    helpers get them), stopped afterwards; the settings are put back."""
    isolation.shutdown()
    with contextlib.ExitStack() as stack:
        monkeypatch.use = lambda **changes: stack.enter_context(settings.override(**changes))
        yield monkeypatch
        isolation.shutdown()


def uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_rle_panic_is_a_base_exception_in_process(tmp_path: Path) -> None:
    """The crasher is real: decoded in process, pylibjpeg-rle's panic gets past ``except Exception``."""
    ds = pydicom.dcmread(rle_panic_file(tmp_path / "rle.dcm"))
    with pytest.raises(BaseException) as info:  # noqa: B017,PT011 (the point is what it is not)
        decode_dataset(ds, target=128)
    assert not isinstance(info.value, Exception) and type(info.value).__name__ == "PanicException"


def test_rle_panic_becomes_decoder_crash_and_the_next_file_decodes(tmp_path: Path, prepare, fresh_helpers) -> None:
    bad = rle_panic_file(tmp_path / "rle_bad.dcm")
    good_rle = make_dicom(tmp_path / "rle_good.dcm", chest_phantom(320, 288, seed=4), transfer_syntax=RLELossless)
    good_jls = make_dicom(tmp_path / "jls_good.dcm", chest_phantom(320, 288, seed=5), transfer_syntax=JPEGLSLossless)
    got = prepare(bad)
    assert got.status == "error:decoder_crash" and got.image is None
    assert got.tags["Columns"] == "511" and got.sha256  # the header was read; the row can be recorded
    pool = isolation.pool()
    assert pool.crashes == 1
    assert prepare(good_rle).status == prepare(good_jls).status == "ok"  # a new helper took over
    assert pool.started == 2


def test_in_process_panic_is_still_one_row(tmp_path: Path, prepare) -> None:
    """With isolation off, prepare_file catches the BaseException itself: the run goes on."""
    got = prepare(rle_panic_file(tmp_path / "rle.dcm"), isolate="none")
    assert got.status == "error:decoder_crash"


@pytest.mark.slow
def test_jpegls_hang_becomes_decoder_timeout(tmp_path: Path, prepare, fresh_helpers) -> None:
    """CharLS loops forever on this stream in most tries (tests/crashers.py): up to 6 tries, each in a
    fresh helper (a timeout replaces it); every try ends in a row, and one is the timeout."""
    fresh_helpers.use(decode_timeout_s=2.0)  # the decode never ends: any timeout is reached
    path = jpegls_hang_file(tmp_path / "jls.dcm")
    tries = []
    while len(tries) < 6 and "error:decoder_timeout" not in tries:
        isolation.shutdown()
        tries.append(prepare(path).status)
    assert set(tries) <= {"error:decoder_timeout", "error:unsupported_codec"}, tries
    assert tries[-1] == "error:decoder_timeout", tries
    ok = make_dicom(tmp_path / "jls_ok.dcm", chest_phantom(320, 288, seed=6), transfer_syntax=JPEGLSLossless)
    assert prepare(ok).status == "ok"


@pytest.mark.parametrize("action", ["abort", "panic"])
def test_injected_faults_in_a_helper(tmp_path: Path, prepare, fresh_helpers, action: str) -> None:
    path = make_dicom(tmp_path / "j2k.dcm", chest_phantom(300, 280, seed=7), transfer_syntax=JPEG2000Lossless)
    fresh_helpers.use(fault_decode={uid(path): action})
    assert prepare(path).status == "error:decoder_crash"
    other = make_dicom(tmp_path / "j2k_other.dcm", chest_phantom(300, 280, seed=8), transfer_syntax=JPEG2000Lossless)
    assert prepare(other).status == "ok"


def test_uncompressed_files_stay_in_process_unless_all(tmp_path: Path, prepare, fresh_helpers) -> None:
    path = make_dicom(tmp_path / "raw.dcm", chest_phantom(300, 280, seed=9))
    fresh_helpers.use(fault_decode={uid(path): "panic"})
    assert prepare(path).status == "error:decoder_crash"  # caught in process (BaseException)
    assert isolation.pool().started == 0
    fresh_helpers.use(fault_decode={uid(path): "abort"})
    assert prepare(path, isolate="all").status == "error:decoder_crash"  # would have killed this process
    assert isolation.pool().started == 1


def test_helper_that_cannot_start_is_an_internal_error(tmp_path: Path, prepare, fresh_helpers) -> None:
    path = make_dicom(tmp_path / "jls.dcm", chest_phantom(300, 280), transfer_syntax=JPEGLSLossless)
    fresh_helpers.setattr(sys, "executable", "/bin/false")
    with pytest.raises(isolation.IsolationError):
        prepare(path)


@pytest.mark.slow
def test_no_helper_outlives_a_scan(tmp_path: Path, random_model_path) -> None:
    from cxrscreen import scan

    make_dicom(tmp_path / "in" / "a.dcm", chest_phantom(300, 280), transfer_syntax=JPEGLSLossless)
    scan(tmp_path / "in", out=tmp_path / "out", model=random_model_path, options=ScanOptions(workers=0, reports="none"))
    assert isolation._POOL is None


# --------------------------------------------------------------------------- bounds
def lying(path: Path, **tags) -> Path:
    ds = pydicom.dcmread(path)
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.save_as(path)
    return path


@pytest.mark.parametrize(("syntax", "tags", "reason"), [
    (None, {"Rows": 65535, "Columns": 65535}, "truncated"),  # 8 GiB claimed, 180 KB present
    (None, {"BitsAllocated": 32}, "truncated"),
    (RLELossless, {"Rows": 60000, "Columns": 60000}, "image_too_large"),
    (RLELossless, {"Rows": 4000, "Columns": 3000}, "size_mismatch"),  # 24 MB from ≤ 64× a few KB
    (JPEGLSLossless, {"Rows": 30000, "Columns": 30000}, "image_too_large"),
    (None, {"Rows": 0}, "invalid_image_header"),
])
def test_lying_header_is_rejected_before_any_allocation(tmp_path: Path, prepare, syntax, tags, reason) -> None:
    kw = {"transfer_syntax": syntax} if syntax else {}
    path = lying(make_dicom(tmp_path / "f.dcm", chest_phantom(320, 288, seed=2), **kw), **tags)
    with pytest.raises(DecodeError) as info:
        isolation.check_pixel_budget(pydicom.dcmread(path))
    assert info.value.reason == reason
    tracemalloc.start()
    try:
        got = prepare(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got.status in (f"error:{reason}", "not_assessable:too_small")
    assert peak < 16 * path.stat().st_size + (8 << 20)  # the file and its parse, never the header's claim


def test_jpeg_frame_header_larger_than_the_budget_is_rejected(tmp_path: Path) -> None:
    """A JPEG-LS frame header (SOF) claiming 65535×65535: the codec would allocate by it."""
    path = make_dicom(tmp_path / "f.dcm", chest_phantom(320, 288, seed=2), transfer_syntax=JPEGLSLossless)
    ds = pydicom.dcmread(path)
    data = bytearray(ds.PixelData)
    sof = data.index(b"\xff\xf7")
    data[sof + 5:sof + 9] = b"\xff\xff\xff\xff"  # height, width
    ds.PixelData = bytes(data)
    with pytest.raises(DecodeError) as info:
        isolation.check_pixel_budget(ds)
    assert info.value.reason == "image_too_large"


def test_jpeg_frame_header_of_jpeg_and_jpeg_ls(tmp_path: Path) -> None:
    """Precision, rows, columns and components from the SOF, past the segments before it (APP0, DQT)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (80, 48)).save(buf, format="JPEG")
    assert isolation.jpeg_frame_header(buf.getvalue()) == (8, 48, 80, 1)
    ds = pydicom.dcmread(make_dicom(tmp_path / "f.dcm", chest_phantom(320, 288, seed=2),
                                    transfer_syntax=JPEGLSLossless))
    fragments = generate_fragments(ds.PixelData)
    next(fragments)  # the basic offset table
    assert isolation.jpeg_frame_header(next(fragments)) == (ds.BitsStored, ds.Rows, ds.Columns, 1)


@pytest.mark.parametrize("stream", [
    b"", b"\xff\xd8", b"\x00" * 16,  # empty, SOI only, not JPEG
    b"\xff\xd8\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00",  # a scan before any frame header
    b"\xff\xd8\xff\xe0\xff\xff\x00",  # an APP segment longer than the stream
    b"\xff\xd8\xff\xc0\x00\x0b\x08\x00",  # a frame header cut short
    b"\xff\xd8\x12\x34\x00\x04",  # not a marker where one must be
])
def test_jpeg_frame_header_is_none_without_a_whole_one(stream: bytes) -> None:
    assert isolation.jpeg_frame_header(stream) is None


def test_settings_from_the_environment() -> None:
    default = Settings()
    assert Settings.from_env({}) == default and default.decode_isolation == "compressed"
    s = Settings.from_env({settings.DECODE_ISOLATION: "ALL", settings.DECODE_TIMEOUT_S: "2.5",
                           settings.DECODE_MEMORY_MB: "512", settings.DISABLE_BF16: "1"})
    assert (s.decode_isolation, s.decode_timeout_s, s.decode_memory_mb, s.disable_bf16) == ("all", 2.5, 512, True)
    bad = Settings.from_env({settings.DECODE_ISOLATION: "bogus", settings.DECODE_TIMEOUT_S: "-1",
                             settings.DECODE_MEMORY_MB: "lots", settings.FAULT_KILL_AFTER_BATCH: "x"})
    assert bad.decode_isolation == default.decode_isolation and bad.decode_timeout_s == default.decode_timeout_s
    assert bad.decode_memory_mb == default.decode_memory_mb and bad.fault_kill_after_batch is None
    assert set(bad.ignored) == {settings.DECODE_ISOLATION, settings.DECODE_TIMEOUT_S, settings.DECODE_MEMORY_MB,
                                settings.FAULT_KILL_AFTER_BATCH}
    assert Settings.from_env(s.child_env()) == s  # a helper process gets the same settings


def test_settings_are_read_once_and_overridden_in_scope(monkeypatch) -> None:
    monkeypatch.setattr(settings, "_current", settings.current())  # this process's settings, back afterwards
    settings.load({})
    monkeypatch.setenv(settings.DECODE_TIMEOUT_S, "7")  # read at the edge only: no effect until load()
    assert isolation.decode_timeout() == Settings().decode_timeout_s
    with settings.override(decode_timeout_s=3.0, decode_isolation=Isolation.all):
        assert isolation.decode_timeout() == 3.0 and isolation.isolation_mode() == "all"
    assert isolation.decode_timeout() == Settings().decode_timeout_s
    assert settings.load().decode_timeout_s == 7.0


def test_fault_settings_parse() -> None:
    s = Settings.from_env({settings.FAULT_DECODE: "abort@1.2.3, hang@4.5 ,nonsense,boom@6"})
    assert dict(s.fault_decode) == {"1.2.3": "abort", "4.5": "hang"}
    assert dict(Settings.from_env({}).fault_decode) == {}
    faults.maybe_fail_decode("1.2.3")  # no fault configured here: nothing happens
