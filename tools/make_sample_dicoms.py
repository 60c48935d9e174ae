"""Build the demo folder ``sample_dicoms/``: small, realistic, re-identified chest X-ray DICOM files.

Sources (read-only, beside the repo in ``../shared/data``): the Kermany 2018 full-resolution JPEGs
(``fullres/``, CC BY 4.0) and two NEMA WG04 CR films from PyPI ``pydicom-data`` (``dicom/``, MIT).
Every image is downscaled, every identity is synthetic, every UID is derived from a fixed root, and
no date/time is taken from the clock, so a rerun writes byte-identical files.

Usage, from the repository root::

    .venv/bin/python tools/make_sample_dicoms.py            # (re)write sample_dicoms/ and verify it
    .venv/bin/python tools/make_sample_dicoms.py --check    # rebuild in memory, compare with the files, verify
    .venv/bin/python -m pytest tests/test_sample_dicoms.py -q

Verification decodes every file with pydicom, requires the lossless and uncompressed files to give back
exactly the pixels that were encoded, and requires ``corrupt_truncated.dcm`` to fail to decode.
``sample_dicoms/README.md`` (written here too) lists each file and its expected triage outcome.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import (
    PYDICOM_ROOT_UID,
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from cxrscreen.testing import dicom as build_dicom
from cxrscreen.testing.dicom import CR_STORAGE, DX_STORAGE, SC_STORAGE, auto_window, to_bytes

REPO = Path(__file__).resolve().parents[1]
UID_ROOT = "cxrscreen-sample-dicoms-v1"
LOSSLESS = (ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless)
MAX_TOTAL_BYTES = 15 * 1024 * 1024
CORRUPT_NAME = "corrupt_truncated.dcm"
KERMANY = "Kermany et al. 2018 (Mendeley Data, CC BY 4.0)"
NEMA = "NEMA WG04 sample via PyPI pydicom-data (MIT)"


def uid(*parts: object) -> UID:
    """A stable UID under pydicom's root, hashed from the fixed root and ``parts``.

    (``generate_uid(prefix=None, ...)`` ignores ``entropy_srcs`` and returns a random UUID-based UID.)
    """
    return generate_uid(prefix=PYDICOM_ROOT_UID, entropy_srcs=[UID_ROOT, *map(str, parts)])


@dataclass(frozen=True)
class Study:
    """A synthetic patient + study."""

    acc: str
    name: str
    pid: str
    birth: str
    sex: str
    date: str
    time: str
    description: str

    @property
    def folder(self) -> str:
        return f"{self.date[:4]}-{self.date[4:6]}-{self.date[6:]}/{self.acc}"


@dataclass
class Built:
    """One file to write: where, its bytes, the pixels that must decode from it, and what triage should say."""

    relpath: str
    data: bytes
    pixels: np.ndarray | None  # exact expected pixels (lossless), or the pre-JPEG array (lossy)
    expected: str  # QC status the pipeline should give
    label: str  # source label: normal / abnormal / n/a
    what: str
    source: str

    @property
    def syntax(self) -> str:
        name = _read(self.data).file_meta.TransferSyntaxUID.keyword
        return f"{name} (truncated)" if self.relpath.endswith(CORRUPT_NAME) else name


STUDIES = {
    s.acc: s
    for s in (
        Study("ACC0001", "DEMO^ALPHA", "DEMO0001", "20220314", "F", "20261123", "081502", "XR CHEST PA AND LATERAL"),
        Study("ACC0002", "DEMO^BRAVO", "DEMO0002", "20230607", "M", "20261123", "094411", "XR CHEST PA"),
        Study("ACC0003", "DEMO^CHARLIE", "DEMO0003", "20211129", "M", "20261124", "101733", "XR CHEST PA AND AP"),
        Study("ACC0004", "DEMO^DELTA", "DEMO0004", "20240102", "F", "20261124", "113020", "XR CHEST PA"),
        Study("ACC0005", "DEMO^ECHO", "DEMO0005", "20220921", "M", "20261124", "140251", "CHEST PA (scanned film)"),
        Study("ACC0006", "DEMO^FOXTROT", "DEMO0006", "19580411", "F", "20261125", "083948", "XR CHEST PA"),
        Study("ACC0007", "DEMO^GOLF", "DEMO0007", "19790826", "F", "20261125", "092210", "XR TIBIA FIBULA RIGHT"),
        Study("ACC0008", "DEMO^HOTEL", "DEMO0008", "20230115", "M", "20261125", "104505", "XR CHEST PA"),
    )
}


# ---------------------------------------------------------------- pixels


def fullres(data: Path, name: str, longest: int) -> tuple[np.ndarray, float]:
    """A Kermany JPEG as float [0, 1] with its longest side resized to ``longest``; returns (image, scale)."""
    with open(data / "fullres" / "manifest.csv", newline="") as fh:
        rows = {Path(r["path"]).name: r["path"] for r in csv.DictReader(fh)}
    with Image.open(data / "fullres" / rows[name]) as im:
        im = im.convert("L")
        scale = longest / max(im.size)
        size = (round(im.width * scale), round(im.height * scale))
        small = im.convert("F").resize(size, Image.Resampling.LANCZOS)
    return np.clip(np.asarray(small, dtype=np.float64) / 255.0, 0.0, 1.0), scale


def to_detector(img: np.ndarray, bits: int, seed: int, gamma: float = 0.85) -> np.ndarray:
    """Map display [0, 1] to ``bits``-bit stored values (mild gamma, small seeded noise), MONOCHROME2."""
    top = 2**bits - 1
    rng = np.random.default_rng(seed)
    values = top * (0.04 + 0.92 * img**gamma) + rng.normal(0.0, top / 4000.0, img.shape)
    return np.clip(np.rint(values), 0, top).astype(np.uint16)


def nema(data: Path, name: str, longest: int) -> tuple[Dataset, np.ndarray, float]:
    """A pydicom-data CR film, stored values resized (area average) to ``longest``; returns (ds, pixels, scale)."""
    src = pydicom.dcmread(data / "dicom" / name)
    arr = src.pixel_array.astype(np.float32)
    scale = longest / max(arr.shape)
    size = (round(arr.shape[1] * scale), round(arr.shape[0] * scale))
    small = np.asarray(Image.fromarray(arr, mode="F").resize(size, Image.Resampling.BOX))
    top = 2 ** int(src.BitsStored) - 1
    return src, np.clip(np.rint(small), 0, top).astype(np.uint16), scale


# ---------------------------------------------------------------- headers


def header(
    study: Study,
    series: int,
    *,
    modality: str,
    sop_class: str,
    view: str | None,
    body: str,
    spacing_mm: float,
    derivation: str,
) -> Dataset:
    """Patient/study/series/image-level attributes shared by every file (no pixel data yet)."""
    series_time = f"{int(study.time) + 100 * series:06d}"
    spacing = [f"{spacing_mm:.4f}", f"{spacing_mm:.4f}"]
    ds = build_dicom.dataset(
        sop_class=sop_class, modality=modality, PatientName=study.name, PatientID=study.pid,
        PatientBirthDate=study.birth, AccessionNumber=study.acc, StudyDate=study.date, body_part=body,
        view=view or None,
        StudyInstanceUID=uid(study.acc, "study"), SeriesInstanceUID=uid(study.acc, series, "series"),
        SOPInstanceUID=uid(study.acc, series, "instance"),
        SpecificCharacterSet="ISO_IR 100", ImageType=["DERIVED", "SECONDARY" if sop_class == SC_STORAGE else "PRIMARY"],
        SeriesDate=study.date, ContentDate=study.date, StudyTime=study.time, SeriesTime=series_time,
        ContentTime=series_time, Manufacturer="Demo Imaging", InstitutionName="Demo General Hospital",
        ReferringPhysicianName="DEMO^REFERRER", StudyDescription=study.description,
        SeriesDescription=f"{body} {view}" if view else body, PatientSex=study.sex, PatientIdentityRemoved="YES",
        DeidentificationMethod="Synthetic demo identity; images downscaled from public data",
        StudyID=study.acc[3:], SeriesNumber=series, InstanceNumber=1, DerivationDescription=derivation[:1024],
        BurnedInAnnotation="NO", PixelSpacing=spacing, ImagerPixelSpacing=spacing,
    )  # fmt: skip
    ds.file_meta.ImplementationClassUID = uid("implementation")
    ds.file_meta.ImplementationVersionName = "CXRSCREEN_DEMO"
    if sop_class == DX_STORAGE:
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1
    if sop_class == SC_STORAGE:
        ds.ConversionType = "DF"
        del ds.ImagerPixelSpacing
    return ds


def set_pixels(ds: Dataset, arr: np.ndarray, photometric: str, bits: int) -> None:
    """Uncompressed pixel data + window + rescale 1/0 for ``arr`` (uint16, MONOCHROME1/2)."""
    window = tuple(map(str, auto_window(arr)))  # "1914", not DS(1914) = "1914.0": same bytes as before
    build_dicom.set_pixels(ds, arr, bits=bits, photometric=photometric, window=window, rescale=("1", "0"))
    ds.RescaleType = "US"
    ds.WindowCenterWidthExplanation = "DEMO DEFAULT"


# ---------------------------------------------------------------- the files


@dataclass(frozen=True)
class Spec:
    """One chest file built from a Kermany JPEG."""

    acc: str
    series: int
    image: str
    modality: str
    view: str
    bits: int
    syntax: str
    filename: str
    expected: str
    label: str
    what: str
    mono1: bool = False
    longest: int = 1024


KERMANY_FILES = (
    Spec("ACC0001", 1, "IM-0634-0001.jpeg", "DX", "PA", 12, ExplicitVRLittleEndian, "DX_PA_uncompressed.dcm",
         "ok", "normal", "DX For Presentation PA, MONOCHROME2, 12-bit, rescale 1/0 + window"),
    Spec("ACC0001", 2, "NORMAL2-IM-0736-0001.jpeg", "DX", "LL", 12, JPEG2000Lossless, "DX_LL_lateral.dcm",
         "not_assessable:lateral_view", "normal",
         "DX tagged ViewPosition LL, 2nd image of the ACC0001 study (pixels are a frontal film)", longest=768),
    Spec("ACC0002", 1, "person366_virus_746.jpeg", "CR", "PA", 12, ExplicitVRLittleEndian, "CR_PA_monochrome1.dcm",
         "ok", "abnormal", "CR PA, MONOCHROME1 (stored values inverted), 12-bit", mono1=True),
    Spec("ACC0003", 1, "person88_virus_165.jpeg", "DX", "PA", 14, JPEG2000Lossless, "DX_PA_j2k_lossless.dcm",
         "ok", "abnormal", "DX PA, MONOCHROME2, 14-bit; study with two images (source: same child)", longest=1280),
    Spec("ACC0003", 2, "person88_virus_166.jpeg", "DX", "AP", 12, JPEGLSLossless, "DX_AP_jpegls_lossless.dcm",
         "ok", "abnormal", "DX AP, MONOCHROME2, 12-bit; 2nd image of the ACC0003 study", longest=1280),
    Spec("ACC0004", 1, "NORMAL2-IM-1261-0001.jpeg", "CR", "PA", 12, RLELossless, "IMG00001",
         "ok", "normal", "CR PA, MONOCHROME2, 12-bit; file name without extension"),
)  # fmt: skip


def hash_seed(*parts: object) -> int:
    """A deterministic RNG seed (Python's ``hash`` of str is salted per process)."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, (UID_ROOT, *parts))).encode()).digest()[:4], "little")


def kermany_file(data: Path, spec: Spec) -> Built:
    """A DX/CR chest built from a Kermany JPEG (0.14 mm nominal original pixel pitch)."""
    img, scale = fullres(data, spec.image, spec.longest)
    stored = to_detector(img, spec.bits, seed=hash_seed(spec.acc, spec.series))
    if spec.mono1:
        stored = (2**spec.bits - 1 - stored).astype(np.uint16)
    source = f"{KERMANY}: {spec.image}"
    ds = header(
        STUDIES[spec.acc],
        spec.series,
        modality=spec.modality,
        sop_class=DX_STORAGE if spec.modality == "DX" else CR_STORAGE,
        view=spec.view,
        body="CHEST",
        spacing_mm=0.14 / scale,
        derivation=f"Downscaled to {max(stored.shape)} px from {source}",
    )
    set_pixels(ds, stored, "MONOCHROME1" if spec.mono1 else "MONOCHROME2", spec.bits)
    build_dicom.encode(ds, spec.syntax)  # pylibjpeg-openjpeg / pyjpegls / pylibjpeg-rle
    relpath = f"{STUDIES[spec.acc].folder}/{spec.filename}"
    return Built(relpath, to_bytes(ds), stored, spec.expected, spec.label, spec.what, source)


def sc_jpeg(data: Path) -> Built:
    """Secondary Capture, Modality OT, 8-bit JPEG baseline (Pillow, quality 90), encapsulated by pydicom."""
    image, acc = "person1066_bacteria_3000.jpeg", "ACC0005"
    img, scale = fullres(data, image, 1024)
    arr = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    source = f"{KERMANY}: {image}"
    ds = header(
        STUDIES[acc],
        1,
        modality="OT",
        sop_class=SC_STORAGE,
        view="PA",
        body="CHEST",
        spacing_mm=0.14 / scale,
        derivation=f"Downscaled to 1024 px, JPEG q90, from {source}",
    )
    build_dicom.encode(build_dicom.set_pixels(ds, arr, bits=8), JPEGBaseline8Bit, quality=90)
    what = "Secondary Capture (Modality OT, BodyPartExamined CHEST), MONOCHROME2, 8-bit, lossy q90"
    relpath = f"{STUDIES[acc].folder}/SC_chest_jpeg_baseline.dcm"
    return Built(relpath, to_bytes(ds), arr, "ok", "abnormal", what, source)


def nema_file(
    data: Path,
    name: str,
    acc: str,
    *,
    body: str,
    longest: int,
    plate_mm: float,
    filename: str,
    expected: str,
    label: str,
    what: str,
) -> Built:
    """A CR derived from a NEMA WG04 film: downscaled, MONOCHROME1, bit depth and view kept, new identity."""
    src, stored, scale = nema(data, name, longest)
    source = f"{NEMA}: {name}"
    spacing = plate_mm / max(int(src.Rows), int(src.Columns)) / scale
    ds = header(
        STUDIES[acc],
        1,
        modality="CR",
        sop_class=CR_STORAGE,
        view=str(src.ViewPosition),
        body=body,
        spacing_mm=spacing,
        derivation=f"Downscaled to {max(stored.shape)} px from {source}",
    )
    ds.PatientOrientation = list(src.PatientOrientation)
    set_pixels(ds, stored, str(src.PhotometricInterpretation), int(src.BitsStored))
    return Built(f"{STUDIES[acc].folder}/{filename}", to_bytes(ds), stored, expected, label, what, source)


def corrupt(data: Path) -> Built:
    """A valid DX file cut off halfway through its (uncompressed) Pixel Data value."""
    what = "DX PA, 12-bit, cut off halfway through Pixel Data (header intact)"
    spec = Spec("ACC0008", 1, "IM-0505-0001-0002.jpeg", "DX", "PA", 12, ExplicitVRLittleEndian, CORRUPT_NAME,
                "error:truncated", "normal", what, longest=640)  # fmt: skip
    good = kermany_file(data, spec)
    tag = good.data.rfind(b"\xe0\x7f\x10\x00OW\x00\x00")  # (7FE0,0010) OW, explicit VR LE
    length = int.from_bytes(good.data[tag + 8 : tag + 12], "little")
    good.data = good.data[: tag + 12 + length // 4 * 2]
    good.pixels = None
    return good


def build(data: Path) -> list[Built]:
    """Every sample file, in README order."""
    return [
        *(kermany_file(data, spec) for spec in KERMANY_FILES),
        sc_jpeg(data),
        nema_file(data, "RG1_UNCR.dcm", "ACC0006", body="CHEST", longest=1024, plate_mm=500,
                  filename="CR_PA_adult_nodules.dcm", expected="ok", label="abnormal",
                  what="adult CR PA, MONOCHROME1, 15-bit; multiple round nodules/masses"),
        nema_file(data, "RG3_UNCR.dcm", "ACC0007", body="LEG", longest=800, plate_mm=350,
                  filename="CR_lower_leg.dcm", expected="not_assessable:body_part_leg", label="n/a",
                  what="CR AP lower leg, MONOCHROME1, 10-bit (not a chest)"),
        corrupt(data),
    ]  # fmt: skip


# ---------------------------------------------------------------- verification & output


def _read(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)


def verify(items: list[Built], out: Path) -> list[str]:
    """Problems found in the files on disk (empty when all is well)."""
    problems: list[str] = []
    for item in items:
        path = out / item.relpath
        if not path.is_file():
            problems.append(f"{item.relpath}: missing")
            continue
        try:
            ds = pydicom.dcmread(path)
            arr = ds.pixel_array
        except Exception as exc:  # noqa: BLE001 - any decode failure counts
            if item.pixels is not None:
                problems.append(f"{item.relpath}: does not decode ({exc})")
            continue
        if item.pixels is None:
            problems.append(f"{item.relpath}: should fail to decode but gave {arr.shape}")
        elif ds.file_meta.TransferSyntaxUID in LOSSLESS and not np.array_equal(arr, item.pixels):
            problems.append(f"{item.relpath}: lossless pixels differ from the encoded ones")
        elif arr.shape != item.pixels.shape or np.abs(arr.astype(int) - item.pixels).mean() > 3:
            problems.append(f"{item.relpath}: lossy pixels too far from the source")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    if total > MAX_TOTAL_BYTES:
        problems.append(f"{out}: {total} bytes > {MAX_TOTAL_BYTES}")
    return problems


def readme(items: list[Built]) -> str:
    """Markdown description of the folder."""
    lines = [
        "# sample_dicoms — demo input for cxrscreen",
        "",
        "Built by `tools/make_sample_dicoms.py` (deterministic; rerun it rather than editing files here).",
        "Run `cxrscreen` on this folder to see every outcome: it recurses into subfolders and reads files",
        "with or without a `.dcm` extension.",
        "",
        "**All identities are synthetic** (DEMO^… names, DEMO000n IDs, ACC000n accession numbers,",
        "Demo General Hospital, dates in November 2026); UIDs are hashed from a fixed seed under the",
        "pydicom root `1.2.826.0.1.3680043.8.498`.",
        "Images are downscaled copies of public data; no original file is included.",
        "",
        "| file | what | transfer syntax | size | expected outcome | source label |",
        "|---|---|---|---|---|---|",
    ]
    for it in items:
        size = f"{len(it.data) / 1024:.0f} KiB"
        lines.append(f"| `{it.relpath}` | {it.what} | {it.syntax} | {size} | `{it.expected}` | {it.label} |")
    lines += [
        "",
        "Expected outcomes are QC statuses (`ok`, `not_assessable:<reason>`, `error:<reason>`). The source",
        "label is the ground truth of the source image, not a promise about the model's score.",
        "The lossless files decode to exactly the pixels that were encoded; the JPEG baseline file is lossy (q90).",
        "",
        "## Sources and licenses",
        "",
        "- Pediatric chest films: Kermany D, Zhang K, Goldbaum M (2018), *Labeled Optical Coherence Tomography",
        "  (OCT) and Chest X-Ray Images for Classification*, Mendeley Data, v2, doi:10.17632/rscbjbr9sj.2 —",
        "  CC BY 4.0. Downscaled, mapped to 12/14-bit stored values with a mild gamma and small noise.",
        "- Adult chest with nodules (RG1) and lower leg (RG3): NEMA WG04 compressed-image samples, distributed",
        "  in PyPI `pydicom-data` (MIT). Downscaled, bit depth and MONOCHROME1 kept, headers rebuilt.",
        "- Source file of each image: see `DerivationDescription` (0008,2111) in its header.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "sample_dicoms", help="output folder")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="shared data folder")
    ap.add_argument("--check", action="store_true", help="verify the existing files only (no writing)")
    args = ap.parse_args(argv)
    items = build(args.data)
    if args.check:
        stale = [
            it.relpath
            for it in items
            if (args.out / it.relpath).is_file() and (args.out / it.relpath).read_bytes() != it.data
        ]
        for rel in stale:
            print(f"differs from a fresh build (codec not deterministic?): {rel}")
    else:
        for it in items:
            path = args.out / it.relpath
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(it.data)
        (args.out / "README.md").write_text(readme(items))
    problems = verify(items, args.out)
    for it in items:
        print(f"{len(it.data):>9,d}  {it.syntax:<36} {it.expected:<28} {it.label:<8} {it.relpath}")
    for p in problems:
        print(f"PROBLEM: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
