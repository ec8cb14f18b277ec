"""The data-quality section: acquisition properties are reported and warn, never drift."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ihcflow.monitoring.drift import DriftParams, compare
from ihcflow.monitoring.quality import data_quality
from ihcflow.monitoring.report import DriftRun, summary_markdown
from ihcflow.monitoring.sources import Table
from tests.helpers.data import draw


def acquired(n: int, side: int, fmt: str, size: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "width": float(side),
            "height": float(side),
            "bit_depth": 8.0,
            "format": fmt,
            "bytes": rng.normal(size, size / 10, n).round(),
        }
    )


def test_uploads_like_the_training_files_raise_no_warning() -> None:
    quality = data_quality(
        acquired(300, 28, "PNG", 2000, 0), acquired(60, 28, "PNG", 2000, 1), 0.05
    )
    assert quality["warnings"] == []
    width = quality["columns"][0]
    assert width["reference"] == "28 (constant)" and width["outside"] == 0 and not width["warn"]


def test_other_crops_and_formats_warn_per_column() -> None:
    ref, cur = acquired(300, 28, "PNG", 2000, 0), acquired(60, 200, "JPEG", 9000, 1)
    cur.loc[:1, "width"] = 28.0  # 2 of 60 like the reference
    quality = data_quality(ref, cur, 0.05)
    by_name = {c["column"]: c for c in quality["columns"]}
    assert [c for c, v in by_name.items() if v["warn"]] == ["width", "height", "format", "bytes"]
    assert by_name["width"]["outside"] == 58 and by_name["width"]["rows"] == 60
    assert by_name["format"]["current"] == "JPEG 60" and by_name["format"]["reference"] == "PNG 300"
    assert quality["warnings"][0].startswith(
        "width: 58 of 60 current rows (97%) outside the reference's 28 (constant)"
    )
    missing = data_quality(ref.drop(columns=["bytes"]), cur, 0.05)["columns"][-1]
    assert missing["share"] is None and missing["note"] == "not recorded for the reference"


def test_acquisition_never_counts_as_content_drift() -> None:
    reference, current = draw(3, 60)  # one population: no content drift
    reference.frame = pd.concat(
        [reference.frame, acquired(len(reference), 28, "PNG", 2000, 0)], axis=1
    )
    current.frame = pd.concat([current.frame, acquired(60, 360, "JPEG", 30000, 1)], axis=1)
    result = compare(reference, current, DriftParams())
    assert result.status == "no_drift"
    assert not {"width", "height", "bytes"} & {c.column for c in result.columns}
    quality = data_quality(reference.frame, current.frame, 0.05)
    summary = DriftRun(reference, current, result, quality=quality).summary()
    text = summary_markdown(summary)
    assert "## Data quality (acquisition: reported, not counted as drift)" in text
    assert "| width | 28 (constant) | 360 (constant) | 60 of 60 (100%) | **yes** |" in text


def test_constant_reference_table_is_explicit() -> None:
    ref = Table(acquired(40, 28, "PNG", 2000, 0), None, "ref", "reference")
    quality = data_quality(ref.frame, ref.frame.assign(width=29.0), 0.0)
    assert quality["columns"][0]["warn"] and "28 (constant)" in quality["warnings"][0]
