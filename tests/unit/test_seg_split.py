"""The nuclei split: one patient's tiles in one split, a given test (and val) split kept."""

from __future__ import annotations

import pandas as pd
import pytest

from ihcflow.segmentation.params import SegSplitParams
from ihcflow.segmentation.prepare import split_tiles
from ihcflow.split import SplitError

PATTERN = r"^(P\d+)_"


def tiles(names: list[str], given: list[str] | None = None) -> pd.DataFrame:
    return pd.DataFrame({"name": names, "given_split": given or [""] * len(names)})


def test_layout_1_keeps_each_patient_in_one_split() -> None:
    names = [f"P{p:03d}_{i}" for p in range(10) for i in range(3)]
    table = split_tiles(tiles(names), SegSplitParams(0.2, 0.2), group_pattern=PATTERN, seed=0)
    assert table["name"].tolist() == names
    assert (table.groupby("group")["split"].nunique() == 1).all()
    assert table["split"].value_counts().to_dict() == {"train": 18, "val": 6, "test": 6}
    again = split_tiles(tiles(names), SegSplitParams(0.2, 0.2), group_pattern=PATTERN, seed=0)
    assert again.equals(table)


def test_layout_2_keeps_the_given_test_split_and_carves_val_from_train() -> None:
    names = [f"P{p:03d}_{i}" for p in range(6) for i in range(2)]
    given = ["test" if n.startswith(("P004", "P005")) else "train" for n in names]
    table = split_tiles(
        tiles(names, given), SegSplitParams(0.25, 0.5), group_pattern=PATTERN, seed=1
    )
    assert (table["split"] == "test").tolist() == [g == "test" for g in given]
    assert set(table["split"]) == {"train", "val", "test"}
    assert (table.groupby("group")["split"].nunique() == 1).all()


def test_a_patient_in_two_given_splits_is_refused() -> None:
    names = ["P001_a", "P001_b", "P002_a", "P003_a"]
    given = ["train", "test", "val", "train"]
    with pytest.raises(SplitError, match=r"more than one given split: \['P001'\]"):
        split_tiles(tiles(names, given), SegSplitParams(0.2, 0.2), group_pattern=PATTERN, seed=0)
