"""The split: deterministic, stratified, group-aware, leakage-checked; and the stage end to end."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ihcflow.split import (
    LeakageError,
    SplitError,
    assign_groups,
    check_leakage,
    class_targets,
    split_dataset,
    stratified_group_split,
)
from tests.helpers.data import layout1_paths, split_inputs, splits_per_group

# ----------------------------------------------------------------------------- the algorithm


def test_same_seed_same_split_other_seed_differs():
    labels = np.repeat(["a", "b", "c"], 40)
    groups = np.arange(len(labels))
    first = stratified_group_split(labels, groups, val=0.15, test=0.15, seed=1)
    again = stratified_group_split(labels, groups, val=0.15, test=0.15, seed=1)
    other = stratified_group_split(labels, groups, val=0.15, test=0.15, seed=2)
    assert (first == again).all()
    assert (first != other).any()


def test_result_does_not_depend_on_row_order():
    labels = np.repeat(["a", "b"], 30)
    groups = np.array([f"g{i // 3}" for i in range(60)])
    split = stratified_group_split(labels, groups, val=0.2, test=0.2, seed=5)
    perm = np.random.default_rng(0).permutation(60)
    shuffled = stratified_group_split(labels[perm], groups[perm], val=0.2, test=0.2, seed=5)
    assert (shuffled == split[perm]).all()


@pytest.mark.parametrize("seed", range(5))
def test_singleton_groups_give_exact_per_class_fractions(seed):
    sizes = {"tiny": 3, "small": 7, "mid": 20, "big": 101}
    labels = np.concatenate([[c] * n for c, n in sizes.items()])
    split = stratified_group_split(labels, np.arange(len(labels)), val=0.15, test=0.2, seed=seed)
    for cls, n in sizes.items():
        got = {s: int((split[labels == cls] == s).sum()) for s in ("train", "val", "test")}
        assert (got["train"], got["val"], got["test"]) == class_targets(n, val=0.15, test=0.2)
        assert abs(got["val"] - 0.15 * n) <= 1 and abs(got["test"] - 0.2 * n) <= 1
        assert min(got.values()) >= 1  # every class with >= 3 images is in every split


def test_class_targets_small_classes():
    assert class_targets(1, val=0.15, test=0.15) == (1, 0, 0)
    assert class_targets(2, val=0.15, test=0.15) == (2, 0, 0)
    assert class_targets(3, val=0.15, test=0.15) == (1, 1, 1)
    assert class_targets(4, val=0.45, test=0.45) == (1, 1, 2)  # train keeps one, val gives way
    assert class_targets(100, val=0.15, test=0.15) == (70, 15, 15)
    assert class_targets(10, val=0.25, test=0.0) == (7, 3, 0)  # half rounds up


@pytest.mark.parametrize("seed", range(8))
def test_groups_never_straddle_splits(seed):
    """Random groups of random sizes whose images span several classes."""
    rng = np.random.default_rng(100 + seed)
    n_groups = int(rng.integers(3, 80))
    sizes = rng.integers(1, 15, size=n_groups)
    groups = np.repeat([f"patient{i}" for i in range(n_groups)], sizes)
    labels = rng.choice(["Er", "Pr", "Ki-67", "Her2neu"], size=len(groups))
    split = stratified_group_split(labels, groups, val=0.15, test=0.15, seed=seed)
    assert (splits_per_group(groups, split) == 1).all()
    assert set(split) == {"train", "val", "test"}


def test_many_groups_spanning_classes_come_close_to_requested_fractions():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(200), 6)  # 200 patients, 6 slides each
    labels = rng.choice(["a", "b", "c", "d", "e"], size=len(groups))
    split = stratified_group_split(labels, groups, val=0.15, test=0.15, seed=0)
    assert (splits_per_group(groups, split) == 1).all()
    for cls in "abcde":
        mine = split[labels == cls]
        for name, frac in (("val", 0.15), ("test", 0.15), ("train", 0.7)):
            assert abs((mine == name).mean() - frac) < 0.03, (cls, name)


def test_three_unequal_groups_still_fill_three_splits():
    labels = ["a"] * 50 + ["b"] * 50 + ["a", "b"] * 2
    groups = ["big"] * 100 + ["s1", "s1", "s2", "s2"]
    split = stratified_group_split(labels, groups, val=0.15, test=0.15, seed=0)
    assert set(split) == {"train", "val", "test"}
    assert set(split[:100]) == {"train"}


def test_too_few_groups_is_an_error():
    with pytest.raises(SplitError, match=r"2 group\(s\) cannot fill 3 non-empty splits"):
        stratified_group_split(["a", "b"] * 10, ["p1", "p2"] * 10, val=0.15, test=0.15, seed=0)


@pytest.mark.parametrize(("val", "test"), [(0.5, 0.5), (-0.1, 0.2), (0.2, 1.0)])
def test_bad_fractions_are_an_error(val, test):
    with pytest.raises(SplitError, match="split"):
        stratified_group_split(["a"] * 10, range(10), val=val, test=test, seed=0)


# ----------------------------------------------------------------------------- groups


def test_pattern_reads_the_file_name_and_counts_unmatched():
    frame = split_inputs(["P7_x/P001_a.png", "P7_x/P001_b.png", "Er/P002_c.png", "Er/slide.png"])
    got = assign_groups(frame, groups_csv=None, pattern=r"^(P\d+)_")
    assert got.groups.tolist() == ["P001", "P001", "P002", "Er/slide.png"]
    assert (got.source, got.n_ungrouped) == ("pattern", 1)


def test_no_pattern_makes_every_file_its_own_group():
    frame = split_inputs(["Er/P001_a.png", "Er/P001_b.png"])
    got = assign_groups(frame, groups_csv=None, pattern=None)
    assert got.groups.tolist() == frame["path"].tolist()
    assert got.source == "none"


@pytest.mark.parametrize("pattern", [r"^P\d+_", r"^(P\d+"])
def test_unusable_pattern_is_an_error(pattern):
    with pytest.raises(SplitError, match="group_pattern"):
        assign_groups(split_inputs(["Er/P001_a.png"]), groups_csv=None, pattern=pattern)


def test_groups_file_beats_pattern_and_counts_unknown_and_unlisted(tmp_path):
    frame = split_inputs(["Er/P001_a.png", "Er/P001_b.png", "Pr/P002_c.png"])
    groups_csv = tmp_path / "groups.csv"
    groups_csv.write_text(
        "path,group\n./Er/P001_a.png,slideA\nEr/P001_a.png,slideA\nPr/P002_c.png,slideA\n"
        "Er/gone.png,slideB\n"
    )
    got = assign_groups(frame, groups_csv=groups_csv, pattern=r"^(P\d+)_")
    assert got.source == "file"
    assert got.groups.tolist() == ["slideA", "Er/P001_b.png", "slideA"]
    assert got.n_ungrouped == 1
    assert got.unknown_paths == ("Er/gone.png",)


def test_missing_groups_file_falls_back_to_pattern(tmp_path):
    got = assign_groups(
        split_inputs(["Er/P001_a.png"]), groups_csv=tmp_path / "groups.csv", pattern=r"^(P\d+)_"
    )
    assert (got.source, got.groups.tolist()) == ("pattern", ["P001"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file,patient\nEr/a.png,p1\n", r"missing column\(s\) \['path', 'group'\]"),
        (
            "path,group\nEr/a.png,p1\nEr/b.png,p1\nEr/a.png,p2\n",
            r"'Er/a.png' is 'p1' \(line 2\)"
            r" and 'p2' \(line 4\)",
        ),
        ("path,group\ndata/Er/a.png,p1\n", "none of its 1 path"),
    ],
)
def test_bad_groups_file_is_an_error_naming_it(tmp_path, text, message):
    groups_csv = tmp_path / "groups.csv"
    groups_csv.write_text(text)
    with pytest.raises(SplitError, match=message) as err:
        assign_groups(split_inputs(["Er/a.png", "Er/b.png"]), groups_csv=groups_csv, pattern=None)
    assert str(groups_csv) in str(err.value)


# ----------------------------------------------------------------------------- data sets


def _split_with_pattern(frame, **kw):
    groups = assign_groups(frame, groups_csv=None, pattern=r"^(P\d+)_")
    return split_dataset(frame, groups, **kw)


def test_layout1_split_is_group_aware_and_reported():
    frame = split_inputs(layout1_paths({"Er": 60, "Pr": 60, "Ki-67": 60}, patients=12))
    table, report = _split_with_pattern(frame, val=0.15, test=0.15, seed=42)
    assert list(table.columns) == ["path", "sha256", "class", "split", "group", "image"]
    assert table["path"].is_monotonic_increasing
    assert (table["image"] == "processed/images/" + table["sha256"] + ".png").all()
    assert (splits_per_group(table["group"], table["split"]) == 1).all()
    assert report["groups"]["source"] == "pattern" and report["groups"]["n_groups"] == 12
    assert sum(report["totals"].values()) == 180
    assert (
        report["counts"]["test"]["Er"]
        == ((table["split"] == "test") & (table["class"] == "Er")).sum()
    )
    assert report["fractions"]["requested"] == {"train": 0.7, "val": 0.15, "test": 0.15}
    assert report["leakage"]["ok"] is True


def test_identical_content_in_different_groups_stays_together():
    frame = split_inputs([f"{c}/img{i:03d}.png" for c in ("a", "b") for i in range(30)])
    # two blank tiles that become the same PNG, and a byte-identical copy
    frame.loc[[0, 45], "processed_sha256"] = "f" * 64
    frame.loc[[3, 50], "sha256"] = "e" * 64
    for seed in range(10):
        table, report = split_dataset(
            frame,
            assign_groups(frame, groups_csv=None, pattern=None),
            val=0.2,
            test=0.2,
            seed=seed,
        )
        assert table.loc[0, "split"] == table.loc[45, "split"]
        assert table.loc[3, "split"] == table.loc[50, "split"]
    assert report["groups"]["n_split_units"] == 58


def test_layout2_keeps_test_and_carves_val_from_train():
    paths = [f"train/{c}/P{i % 20:03d}_{i:03d}.png" for c in ("a", "b") for i in range(80)]
    paths += [f"test/{c}/Q{i % 5:03d}_{i:03d}.png" for c in ("a", "b") for i in range(15)]
    given = [p.split("/")[0] for p in paths]
    frame = split_inputs(paths, given)
    table, report = _split_with_pattern(frame, val=0.2, test=0.5, seed=3)
    by_path = table.set_index("path")["split"]
    test_paths = [p for p in paths if p.startswith("test/")]
    assert (by_path[test_paths] == "test").all() and (by_path == "test").sum() == 30
    train_side = by_path[[p for p in paths if p.startswith("train/")]]
    assert set(train_side) == {"train", "val"}
    assert abs((train_side == "val").mean() - 0.2) <= 0.05  # val is a fraction of given train
    assert (splits_per_group(table["group"], table["split"]) == 1).all()
    assert report["layout"] == 2 and report["fractions"]["val_source"] == "carved from given train"


def test_layout2_keeps_a_given_val_set():
    paths = [
        "train/a/1.png",
        "train/b/2.png",
        "val/a/3.png",
        "val/b/4.png",
        "test/a/5.png",
        "test/b/6.png",
    ]
    frame = split_inputs(paths, [p.split("/")[0] for p in paths])
    table, report = split_dataset(
        frame, assign_groups(frame, groups_csv=None, pattern=None), val=0.15, test=0.15, seed=0
    )
    assert table["split"].tolist() == [p.split("/")[0] for p in sorted(paths)]
    assert report["fractions"]["val_source"] == "given"


def test_mixed_given_split_is_an_error():
    frame = split_inputs(["train/a/1.png", "test/a/2.png", "a/3.png"], ["train", "test", ""])
    with pytest.raises(SplitError, match="given_split is set for 2 image"):
        split_dataset(
            frame, assign_groups(frame, groups_csv=None, pattern=None), val=0.15, test=0.15, seed=0
        )


def test_layout2_group_in_train_and_test_is_leakage():
    paths = [f"train/a/P{i:03d}_x.png" for i in range(10)] + [
        "test/a/P001_y.png",
        "test/a/P050_z.png",
    ]
    frame = split_inputs(paths, [p.split("/")[0] for p in paths])
    with pytest.raises(LeakageError, match="group 'P001'") as err:
        _split_with_pattern(frame, val=0.2, test=0.2, seed=0)
    assert "train/a/P001_x.png" in str(err.value) and "test/a/P001_y.png" in str(err.value)


# ----------------------------------------------------------------------------- leakage


def _splitted(splits: list[str]) -> pd.DataFrame:
    frame = split_inputs([f"a/{i}.png" for i in range(len(splits))])
    return frame.assign(split=splits, group=frame["path"])


@pytest.mark.parametrize("column", ["sha256", "processed_sha256"])
def test_identical_content_in_two_splits_raises_naming_files(column):
    frame = _splitted(["train", "train", "val", "test"])
    frame.loc[[1, 3], column] = "c" * 64
    with pytest.raises(LeakageError, match=column) as err:
        check_leakage(frame)
    assert "train: a/1.png" in str(err.value) and "test: a/3.png" in str(err.value)
    assert "a/0.png" not in str(err.value)


def test_identical_content_within_one_split_is_fine():
    frame = _splitted(["train", "train", "val", "test"])
    frame.loc[[0, 1], ["sha256", "processed_sha256"]] = "c" * 64
    assert check_leakage(frame)["ok"] is True
