"""Coverage-guided fuzzing of ``prepare_file`` with atheris (libFuzzer), DICOM-aware mutations first.

    .venv/bin/python -m tests.fuzz.atheris_prepare CORPUS_DIR -max_total_time=3600 -timeout=120 \\
        -rss_limit_mb=4096 -artifact_prefix=findings/

``CORPUS_DIR`` is filled with the harness's seeds when empty. An input fails (libFuzzer writes it
under ``-artifact_prefix``) when ``prepare_file`` raises, ends in a status that is not
``ok``/``not_assessable:*``/``error:*`` with a known reason, allocates beyond the harness's bound,
runs past ``-timeout`` seconds, or the process exceeds ``-rss_limit_mb``. Half of the mutations are
:func:`tests.fuzz.harness.mutate` (lying headers, smashed lengths, sequences…), half libFuzzer's own.
"""

from __future__ import annotations

import random
import sys
import warnings
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["cxrscreen", "pydicom"]):
    from cxrscreen.prepare import prepare_file  # noqa: F401  (instrumented for coverage)
    from tests.fuzz import harness

RUNNER: harness.Runner | None = None


def test_one_input(data: bytes) -> None:
    global RUNNER
    RUNNER = RUNNER or harness.Runner()
    status, peak, finding = RUNNER.check(data)
    if finding:
        raise AssertionError(finding)


def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    if rng.random() < 0.5:
        return atheris.Mutate(data, max_size)
    return harness.mutate(data, rng)[:max_size]


def main() -> None:
    warnings.simplefilter("ignore")
    dirs = [Path(a) for a in sys.argv[1:] if not a.startswith("-")]
    if dirs and dirs[0].is_dir() and not any(dirs[0].iterdir()):
        for name, blob in harness.all_seeds().items():
            (dirs[0] / f"seed_{name}").write_bytes(blob)
    atheris.Setup(sys.argv, test_one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
