"""Shared CLI helpers: exit codes and one-line error messages."""

from __future__ import annotations

import ssl
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from cxrscreen.options import Device, Precision, ReportPolicy

if TYPE_CHECKING:
    from cxrscreen.pacs import Address, WebCredentials, WebEndpoint
    from cxrscreen.pacs.tls import TlsFiles

# Help of the options shared by several commands; Typer lists their choices (cxrscreen.options) itself.
DEVICE_HELP = "auto: CUDA when available, else the CPU."
TRAIN_PRECISION_HELP = "auto: bf16 on CPUs that support it, AMP on CUDA, else fp32."
PRECISION_HELP = ("auto: AMP on CUDA, bf16 on CPUs that support it, else int8 when the model has an int8 "
                  "calibration for this torch release, else fp32. int8: CPU only, needs the model's .int8.json "
                  "calibration.")


# Options several commands share, declared once (``quiet: Quiet = False`` in a command's signature).
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the result (run summary or counts) as JSON on stdout.")]
LogFile = Annotated[Path | None, typer.Option("--log-file", help="Append a log (no patient identifiers) here.")]
Timeout = Annotated[float, typer.Option(min=1, max=3600, help="Seconds to wait for a connection, an association "
                                                               "answer, or each DICOM message.")]
CallingAet = Annotated[str, typer.Option("--calling-aet", help="Our AE title, as the PACS or destination knows it.")]
# The scoring options of `scan` (and of `listen`, which scans what it receives).
ModelFile = Annotated[Path | None, typer.Option("--model", help="Model metadata (.json) or weights (.safetensors); default: the embedded model.")]
Threshold = Annotated[float | None, typer.Option("--threshold", help="Decision threshold in (0, 1) for every film; default: the model's own operating points.")]
DeviceOpt = Annotated[Device, typer.Option("--device", help=DEVICE_HELP)]
PrecisionOpt = Annotated[Precision, typer.Option("--precision", help=PRECISION_HELP)]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, max=1024, help="Films per scoring batch.")]
Reports = Annotated[ReportPolicy, typer.Option("--reports", help="Which studies get a PDF report (flagged: abnormal + review).")]
DicomResults = Annotated[bool, typer.Option("--dicom-results", help="Also write each scored study's results as DICOM objects in its own study (OUT/dicom/: SR + encapsulated PDF), for `cxrscreen send`.")]
TlsCert = Annotated[Path | None, typer.Option("--tls-cert", help="DICOM over TLS: our certificate (PEM); with --tls-key and --tls-ca.")]
TlsKey = Annotated[Path | None, typer.Option("--tls-key", help="DICOM over TLS: the private key (PEM) of --tls-cert.")]
TlsCa = Annotated[Path | None, typer.Option("--tls-ca", help="DICOM over TLS, or an https:// DICOMweb URL: the CA certificate(s) (PEM) a peer's certificate must be signed by.")]


class ExitCode(IntEnum):
    """Documented exit codes (README, "Exit codes")."""

    OK = 0
    FILE_ERRORS = 1  # the run finished, but some files could not be read/decoded
    USAGE = 2  # bad arguments, missing input, unusable model or manifest
    INTERNAL = 3  # unexpected failure (bug); details in the log
    GATE_REFUSED = 4  # adapt: the adapted model failed its acceptance gate; no model written
    NOT_SENT = 5  # send: some result objects were not acknowledged by the destination; the next send retries them
    LOCKED = 75  # another run holds the output folder's lock (EX_TEMPFAIL)


def fail(message: str, code: ExitCode = ExitCode.USAGE) -> NoReturn:
    """Print ``cxrscreen: error: message`` to stderr and exit with ``code``."""
    typer.echo(f"cxrscreen: error: {message}", err=True)
    raise typer.Exit(int(code))


def load_model_and_manifest(model: Path, manifest: Path, split: str, device: str, precision: str) -> tuple:
    """(LoadedModel, manifest rows of ``split``, Runtime), or exit 2 with the reason."""
    from cxrscreen.model.files import ModelIntegrityError, load_model
    from cxrscreen.model.inference import runtime_for
    from cxrscreen.training.data import ManifestError, read_manifest

    try:
        lm = load_model(None if str(model) == "default" else model)
        return lm, read_manifest(manifest, split), runtime_for(lm, device, precision)
    except (ManifestError, FileNotFoundError, ModelIntegrityError, ValueError, RuntimeError) as exc:
        fail(str(exc))


def pacs_address(text: str, option: str, calling_aet: str) -> Any:
    """The PACS address ``AET@HOST:PORT`` given to ``option``, with our ``--calling-aet`` checked too;
    exit 2 with the reason when either is not valid."""
    from cxrscreen.pacs import AddressError, check_aet, parse_address

    try:
        address = parse_address(text)
    except AddressError as exc:
        fail(f"{option}: {exc}")
    try:
        check_aet(calling_aet, "--calling-aet")
    except AddressError as exc:
        fail(str(exc))
    return address


def tls_files(cert: Path | None, key: Path | None, ca: Path | None) -> Any:
    """The :class:`~cxrscreen.pacs.tls.TlsFiles` of ``--tls-cert/--tls-key/--tls-ca`` (None when none is given),
    checked by building a context; exit 2 with the reason when only some are given or they do not load."""
    if cert is None and key is None and ca is None:
        return None
    missing = [name for name, v in (("--tls-cert", cert), ("--tls-key", key), ("--tls-ca", ca)) if v is None]
    if missing:
        fail(f"DICOM over TLS needs --tls-cert, --tls-key and --tls-ca; missing {', '.join(missing)}")
    from cxrscreen.pacs.tls import TlsError, TlsFiles, client_context

    files = TlsFiles(cert, key, ca)
    try:
        client_context(files)
    except TlsError as exc:
        fail(str(exc))
    return files


@dataclass(frozen=True)
class Destination:
    """A PACS named on the command line, with the TLS files and the DICOMweb credentials to reach it."""

    peer: Address | WebEndpoint
    tls: TlsFiles | None = None
    credentials: WebCredentials | None = None


def destination(text: str, option: str, calling_aet: str, cert: Path | None, key: Path | None, ca: Path | None,
                environ: Mapping[str, str]) -> Destination:
    """``option``'s ``AET@HOST:PORT`` (with ``--calling-aet`` checked, and the TLS files) or DICOMweb URL (with
    the credentials in ``environ``; for https, ``--tls-ca`` alone or with our certificate); exit 2 with the
    reason when any of it is unusable."""
    from cxrscreen.pacs import AddressError, CredentialsError, WebCredentials, WebEndpoint, parse_destination

    try:
        peer = parse_destination(text)
    except AddressError as exc:
        fail(f"{option}: {exc}")
    if not isinstance(peer, WebEndpoint):
        return Destination(pacs_address(text, option, calling_aet), tls_files(cert, key, ca))
    if peer.url.startswith("http://") and (cert or key or ca):
        fail(f"{option}: --tls-cert, --tls-key and --tls-ca apply to an https:// URL, not {peer}")
    tls = None
    if cert is not None or key is not None:
        tls = tls_files(cert, key, ca)
    elif ca is not None:
        try:
            ssl.create_default_context(cafile=str(ca))
        except (OSError, ssl.SSLError) as exc:
            fail(f"--tls-ca {ca}: not a readable PEM CA certificate ({getattr(exc, 'reason', None) or exc.strerror or type(exc).__name__})")
        peer = replace(peer, ca=ca)
    try:
        credentials = WebCredentials.from_env(environ)
    except CredentialsError as exc:
        fail(str(exc))
    return Destination(peer, tls, credentials)


def is_tty() -> bool:
    return sys.stderr.isatty()
