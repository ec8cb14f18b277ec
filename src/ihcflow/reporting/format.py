"""How numbers and tables look in every report: one formatter, one table layout.

Used by ``ihcflow report``, the PR comment, the register stage's gate table and the model card.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MISSING = "n/a"  # a value that is undefined (e.g. the AUROC of a class with no test image)


def number(value: Any, digits: int = 4, *, signed: bool = False) -> str:
    """A metric as people read it: ``digits`` decimals (``signed``: with its sign), an integer
    as it is, a tiny non-zero value in scientific notation rather than as 0.0000, None as
    :data:`MISSING`; anything else as text."""
    if value is None:
        return MISSING
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    sign = "+" if signed else ""
    if isinstance(value, int) or (digits == 0 and float(value).is_integer()):
        return f"{int(value):{sign}d}"
    if 0 < abs(value) < 10.0**-digits:
        return f"{value:{sign}.2e}"
    return f"{value:{sign}.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> list[str]:
    """A Markdown table; ``align`` has one letter per column: ``l`` left, ``r`` right. A ``|``
    in a cell is escaped."""
    rule = {"l": "---", "r": "---:"}

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return [line(header), "|" + "|".join(rule[a] for a in align) + "|", *map(line, rows)]


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> list[str]:
    """The same table as aligned plain text (for a terminal)."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            f"{c:<{w}}" if a == "l" else f"{c:>{w}}"
            for c, w, a in zip(cells, widths, align, strict=True)
        ).rstrip()

    return [line(header), *(line(r) for r in rows)]
