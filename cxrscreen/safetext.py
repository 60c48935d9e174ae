"""Text that leaves the tool (CSV cells, log lines): no control characters, no formulas, bounded.

Header values are validated when read (:mod:`cxrscreen.ingest.tags`); these functions are the
last line of defence for everything else that reaches an output (file paths from disk, old ledger
rows, third-party messages).
"""

from __future__ import annotations

import re

#: C0/C1 controls (NUL, TAB, CR, LF, ESC, DEL, NEL…), the Unicode line and paragraph separators,
#: and the bidirectional embeddings, overrides and isolates (U+202A–E, U+2066–9) that reorder
#: what a reader sees.
FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")

#: A CSV cell starting with one of these is run as a formula by spreadsheets (OWASP "CSV
#: injection"); the apostrophe is included so that :func:`unneutralise` can undo the prefix exactly.
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "'")

#: The longest CSV cell written (Python's ``csv`` module refuses fields over 131,072 characters).
MAX_CELL_CHARS = 32_768
_TRUNCATED = "…[truncated]"


def has_forbidden(text: str) -> bool:
    """True when ``text`` holds a control character, a line separator or a bidi control."""
    return FORBIDDEN.search(text) is not None


def escape_forbidden(text: str) -> str:
    r"""Each forbidden character as its Python escape (``\n``, ``\x00``, ``\u202e``): visible, one line."""
    return FORBIDDEN.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def bounded(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, marked when cut."""
    return text if len(text) <= limit else text[: limit - len(_TRUNCATED)] + _TRUNCATED


def neutralise_cell(value: object) -> object:
    """A CSV cell made safe: strings escaped, bounded and, when they start like a formula, prefixed
    with ``'`` (OWASP); numbers and blanks unchanged (a number the tool writes stays a number)."""
    if not isinstance(value, str):
        return value
    text = bounded(escape_forbidden(value), MAX_CELL_CHARS)
    return "'" + text if text.startswith(FORMULA_TRIGGERS) else text


def unneutralise(text: str) -> str:
    """Undo :func:`neutralise_cell`'s prefix (escapes and truncation are not undone)."""
    return text[1:] if text[:1] == "'" and text[1:2] and text[1:2] in FORMULA_TRIGGERS else text
