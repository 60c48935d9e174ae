"""Fuzzing read → decode → QC → preprocess: a short seeded run of the harness, and of atheris when installed.

Longer runs: README, "Fuzzing". Both run in a subprocess: a hang then dumps its stack and fails the
test (harness.INPUT_TIMEOUT_S) instead of stalling the suite, and a runaway allocation cannot take
pytest down with it.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz import harness

REPO = Path(__file__).resolve().parents[1]
N_MUTANTS = 80  # a sample small enough for the slow suite; the open-ended search is tests/fuzz/atheris_prepare.py
SEED = 1


@pytest.mark.slow
def test_seeded_mutants_all_end_in_a_known_status() -> None:
    res = subprocess.run([sys.executable, "-m", "tests.fuzz.harness", "--n", str(N_MUTANTS), "--seed", str(SEED)],
                         capture_output=True, text=True, cwd=REPO, timeout=1800)
    assert res.returncode in (0, 1), res.stderr[-3000:]  # 1: findings, listed below
    out = json.loads(res.stdout)
    assert out["findings"] == []
    assert out["inputs"] == N_MUTANTS + len(out["seeds"]) == sum(out["statuses"].values())
    assert all(harness.STATUS.match(s) for s in out["statuses"])
    kinds = {s.split(":")[0] for s in out["statuses"]}
    assert kinds == {"ok", "not_assessable", "error"}  # the mutants reach every outcome, not only rejection
    assert {"rle_16_monochrome2", "jls_8_monochrome2", "j2k_16_monochrome1", "raw_8"} <= set(out["seeds"])


def test_mutators_are_deterministic_and_change_the_file() -> None:
    seeds = harness.derived_seeds(size=256)
    data = seeds["rle_16_monochrome2"]
    for mutator in harness.MUTATORS:
        a, b = mutator(data, random.Random(7)), mutator(data, random.Random(7))
        assert a == b, mutator.__name__
    changed = [harness.mutate(data, random.Random(i)) != data for i in range(20)]
    assert sum(changed) >= 18


def test_huge_sequence_mutant_is_read_without_blowing_up(tmp_path: Path) -> None:
    """3000 nested sequences (past Python's recursion limit) or 20 000 items: one status, bounded memory."""
    runner = harness.Runner()
    data = harness.derived_seeds(size=256)["raw_16"]
    for seed in range(6):
        status, peak, finding = runner.check(harness.huge_sequence(data, random.Random(seed)))
        assert finding is None and harness.STATUS.match(status), (seed, status, finding)


@pytest.mark.slow
def test_atheris_short_run(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    # -rss_limit_mb: libFuzzer reads the peak RSS, which Linux carries over from the forked pytest
    # process; the harness bounds each input's allocations itself
    res = subprocess.run([sys.executable, "-m", "tests.fuzz.atheris_prepare", str(corpus), "-runs=60", "-seed=1",
                          "-timeout=120", "-max_len=2000000", "-rss_limit_mb=16384", f"-artifact_prefix={tmp_path}/"],
                         capture_output=True, text=True, cwd=REPO, timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    done = re.search(r"^Done (\d+) runs", res.stderr, re.M)  # the count includes loading the seed corpus
    assert done and int(done.group(1)) >= 60
    assert not list(tmp_path.glob("crash-*")) and not list(tmp_path.glob("timeout-*"))
