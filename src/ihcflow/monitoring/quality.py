"""The data-quality section of a drift report: the files' acquisition properties.

Width, height, bit depth, format and file size (:data:`~ihcflow.images.features.
ACQUISITION_COLUMNS`) say how an image was acquired and stored, not what it shows: the content
features are measured at one analysis size whatever the upload's size, so a lab that sends
200 px crops of the cells the model was trained on at 28 px has no content drift. These
columns are therefore reported next to the drift tests, never counted in the drift share, and
warn when more than ``quality_share`` of the current rows lie outside what the reference had
(a number outside its range, a format it never had). A column that is constant in the
reference (fixed-size training patches: every width is 28) has no spread to test against, so
the rule is explicit: any other value is outside.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from ihcflow.images.features import ACQUISITION_COLUMNS, ACQUISITION_NUMERIC


@dataclass
class QualityColumn:
    column: str
    reference: str  # its values on the reference, as people read them
    current: str
    outside: int  # current rows outside the reference's range (or of a format it lacks)
    rows: int  # current rows with a value
    share: float | None
    warn: bool
    note: str = ""


def _range(values: pd.Series) -> str:
    low, mid, high = values.min(), values.median(), values.max()
    if low == high:
        return f"{low:g} (constant)"
    return f"{low:g} .. {high:g} (median {mid:g})"


def _counts(values: pd.Series, top: int = 4) -> str:
    counts = values.value_counts()
    text = ", ".join(f"{k} {v}" for k, v in counts.head(top).items())
    return text + (f", ... ({len(counts)} values)" if len(counts) > top else "")


def _column(name: str, ref: pd.Series, cur: pd.Series, max_share: float) -> QualityColumn:
    numeric = name in ACQUISITION_NUMERIC
    if numeric:
        ref, cur = ref.dropna(), cur.dropna()
    else:
        ref, cur = ref[ref != ""], cur[cur != ""]
    if ref.empty or cur.empty:
        side = "reference" if ref.empty else "current data"
        return QualityColumn(name, "", "", 0, len(cur), None, False, f"not recorded for the {side}")
    if numeric:
        outside = int(((cur < ref.min()) | (cur > ref.max())).sum())
        described = (_range(ref), _range(cur))
    else:
        outside = int((~cur.isin(set(ref))).sum())
        described = (_counts(ref), _counts(cur))
    share = outside / len(cur)
    return QualityColumn(name, *described, outside, len(cur), share, share > max_share)


def data_quality(
    reference: pd.DataFrame, current: pd.DataFrame, max_share: float
) -> dict[str, Any]:
    """Each acquisition column on both sides, how many current rows lie outside the
    reference's values, and a warning per column where that share exceeds ``max_share``."""
    columns = [
        _column(
            name,
            reference[name] if name in reference else pd.Series(dtype=object),
            current[name] if name in current else pd.Series(dtype=object),
            max_share,
        )
        for name in ACQUISITION_COLUMNS
    ]
    return {
        "max_share": max_share,
        "columns": [asdict(c) for c in columns],
        "warnings": [warning_text(asdict(c)) for c in columns if c.warn],
    }


def warning_text(column: Mapping[str, Any]) -> str:
    return (
        f"{column['column']}: {column['outside']} of {column['rows']} current rows "
        f"({column['share']:.0%}) outside the reference's {column['reference']}; current "
        f"{column['current']}"
    )
