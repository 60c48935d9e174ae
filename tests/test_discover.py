import os
from pathlib import Path

from cxrscreen.ingest.discover import discover, is_dicom
from tests.factory import make_dicom


def test_discovers_by_content_sorted_and_skips_foreign_files(tmp_path: Path):
    make_dicom(tmp_path / "b" / "IMG0002")  # no extension: found by content
    make_dicom(tmp_path / "a" / "x.dcm")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / "junk.dcm").write_bytes(os.urandom(2000))  # claims DICOM by name
    (tmp_path / ".hidden").mkdir()
    make_dicom(tmp_path / ".hidden" / "y.dcm")
    found = [p.relative_to(tmp_path).as_posix() for p in discover(tmp_path)]
    assert found == ["a/junk.dcm", "a/x.dcm", "b/IMG0002"]
    assert discover(tmp_path) == discover(tmp_path)  # deterministic


def test_symlinks_do_not_escape_the_folder(tmp_path: Path):
    outside = tmp_path / "outside"
    inside = tmp_path / "in"
    make_dicom(outside / "secret.dcm")
    make_dicom(inside / "own.dcm")
    (inside / "link.dcm").symlink_to(outside / "secret.dcm")
    (inside / "dirlink").symlink_to(outside, target_is_directory=True)
    (inside / "inner.dcm").symlink_to(inside / "own.dcm")
    found = sorted(p.name for p in discover(inside))
    assert found == ["inner.dcm", "own.dcm"]


def test_is_dicom_with_and_without_preamble(tmp_path: Path):
    p = make_dicom(tmp_path / "x.dcm")
    assert is_dicom(p)
    bare2 = tmp_path / "bare2"
    bare2.write_bytes(p.read_bytes()[132:])  # raw group-0002 elements
    assert is_dicom(bare2)
    rnd = tmp_path / "r.dcm"
    rnd.write_bytes(b"\x00" * 10)
    assert not is_dicom(rnd)
