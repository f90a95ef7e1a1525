"""Text output, one way: aligned tables, Markdown tables, stderr lines and UTC timestamps.

Every stage prints through these, so a table in `sources`, `dataset`, `eval` and `runs` looks the
same, progress and warnings go to stderr (stdout stays pipeable), and every record on disk carries
the same timestamp format (UTC ISO 8601, "2026-12-01T09:50:40Z").
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Sequence
from typing import Any


def utc_now() -> str:
    """The current time as UTC ISO 8601 to the second, the one timestamp format on disk."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def stderr(text: str = "", nl: bool = True) -> None:
    """One line of progress or warning on stderr, flushed at once (stdout stays the result)."""
    sys.stderr.write(text + ("\n" if nl else ""))
    sys.stderr.flush()


def is_numeric(cell: str) -> bool:
    """A number, a percentage or a count such as 3/6: right-aligned in tables."""
    if re.fullmatch(r"\d+/\d+", cell):
        return True
    try:
        float(cell.rstrip("%").replace(",", ""))
    except ValueError:
        return False
    return True


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table: numeric columns right-aligned, the rest (and the first) left."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in [list(headers), *cells]) for i in range(len(headers))]
    # A column of numbers is right-aligned; "-" and empty cells (no value) do not decide it.
    right = [i > 0 and any(r[i] not in ("-", "") for r in cells)
             and all(is_numeric(r[i]) or r[i] in ("-", "") for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if right[i] else c.ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()

    return "\n".join([line(list(headers)), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table, pipes in cells escaped."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] * len(headers)) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out)
