"""Telling the two raw-data layouts apart, and what counts as a data file."""

from __future__ import annotations

from pathlib import Path

import pytest

from ihcflow.data.layout import DatasetError, Entry, discover


def touch(root: Path, *paths: str) -> None:
    for rel in paths:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_layout_one(tmp_path: Path) -> None:
    touch(tmp_path, "b/2.png", "a/1.png", "a/sub/3.png", "groups.csv", "README.md")
    layout = discover(tmp_path)
    assert layout.kind == 1
    assert layout.classes == ("a", "b")
    assert layout.entries == (
        Entry("a/1.png", "a", ""),
        Entry("a/sub/3.png", "a", ""),  # nested folders belong to their class
        Entry("b/2.png", "b", ""),
    )


def test_hidden_files_and_folders_are_ignored(tmp_path: Path) -> None:
    touch(tmp_path, "a/1.png", "a/.DS_Store", "a/.ipynb_checkpoints/1.png", "b/2.png")
    touch(tmp_path, ".cache/x/1.png")
    layout = discover(tmp_path)
    assert layout.classes == ("a", "b")
    assert [e.path for e in layout.entries] == ["a/1.png", "b/2.png"]


def test_empty_class_folder_is_still_a_class(tmp_path: Path) -> None:
    touch(tmp_path, "a/1.png", "b/2.png")
    (tmp_path / "c").mkdir()
    assert discover(tmp_path).classes == ("a", "b", "c")


def test_layout_two_with_val(tmp_path: Path) -> None:
    touch(tmp_path, "train/a/1.png", "train/b/2.png", "val/a/3.png", "test/b/4.png", "groups.csv")
    layout = discover(tmp_path)
    assert layout.kind == 2
    assert layout.classes == ("a", "b")
    assert layout.entries == (
        Entry("test/b/4.png", "b", "test"),
        Entry("train/a/1.png", "a", "train"),
        Entry("train/b/2.png", "b", "train"),
        Entry("val/a/3.png", "a", "val"),
    )


def test_layout_two_classes_are_the_union_over_splits(tmp_path: Path) -> None:
    touch(tmp_path, "train/a/1.png", "test/b/2.png")
    (tmp_path / "test" / "c").mkdir()
    assert discover(tmp_path).classes == ("a", "b", "c")


def test_layout_two_rejects_files_beside_class_folders(tmp_path: Path) -> None:
    touch(tmp_path, "train/a/1.png", "train/b/1.png", "train/stray.png", "test/a/2.png")
    with pytest.raises(DatasetError, match=r"train/stray\.png"):
        discover(tmp_path)


def test_split_folders_without_test_are_an_error(tmp_path: Path) -> None:
    touch(tmp_path, "train/a/1.png", "val/a/2.png")
    with pytest.raises(DatasetError, match=r"both train/ and test/"):
        discover(tmp_path)


def test_split_folders_mixed_with_classes_are_an_error(tmp_path: Path) -> None:
    touch(tmp_path, "train/a/1.png", "test/a/2.png", "cats/3.png")
    with pytest.raises(DatasetError, match=r"cats"):
        discover(tmp_path)


def test_one_class_is_an_error(tmp_path: Path) -> None:
    touch(tmp_path, "only/1.png")
    with pytest.raises(DatasetError, match=r"1 class folder\(s\) \['only'\]; need at least 2"):
        discover(tmp_path)


def test_missing_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="data folder not found"):
        discover(tmp_path / "nope")
