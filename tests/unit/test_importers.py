"""Importing a folder (layout 1 or 2) or a MedMNIST-format .npz into data/."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from ihcflow.data.importers import DataImportError, import_folder, import_npz
from ihcflow.data.layout import DatasetError, discover
from ihcflow.images.codec import encode_png, read_rgb8


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(np.full((8, 8, 3), value, np.uint8)))


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _layout1(root: Path) -> None:
    for i in range(2):
        _png(root / "a" / f"P{i}_a{i}.png", 10 + i)
    for i in range(3):
        _png(root / "b" / f"P{i}_b{i}.png", 50 + i)
    (root / "groups.csv").write_text("path,group\na/P0_a0.png,P0\n")
    (root / "README.md").write_text("notes that are not data\n")
    (root / "a" / ".DS_Store").write_bytes(b"junk")


def test_import_folder_layout1_copies_layout_files_and_groups(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "data"
    _layout1(src)
    summary = import_folder(src, dest)
    assert summary.layout == 1
    assert summary.classes == ("a", "b")
    assert summary.counts == {"all": {"a": 2, "b": 3}}
    assert summary.replaced_to is None and summary.n_images == 5
    copied = _tree(dest)
    expected = {k: v for k, v in _tree(src).items() if k not in {"README.md", "a/.DS_Store"}}
    assert copied == expected
    assert "groups.csv" in copied
    assert "5 files" in summary.describe()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_import_folder_layout2_counts_per_split(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "data"
    for split, n in (("train", 3), ("val", 1), ("test", 2)):
        for cls in ("x", "y"):
            for i in range(n):
                _png(src / split / cls / f"{i}.png", i)
    summary = import_folder(src, dest)
    assert summary.layout == 2
    assert summary.counts == {
        "train": {"x": 3, "y": 3},
        "val": {"x": 1, "y": 1},
        "test": {"x": 2, "y": 2},
    }
    assert _tree(dest) == _tree(src)
    assert discover(dest).kind == 2


def test_import_folder_rejects_a_folder_that_is_no_layout(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _png(src / "only_class" / "x.png", 1)
    with pytest.raises(DatasetError, match="need at least 2"):
        import_folder(src, tmp_path / "data")
    assert not (tmp_path / "data").exists()


def test_import_folder_refuses_destination_inside_source(tmp_path: Path) -> None:
    _layout1(tmp_path / "src")
    with pytest.raises(DataImportError, match="must not contain each other"):
        import_folder(tmp_path / "src", tmp_path / "src" / "data")


def test_refuses_non_empty_destination(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "data"
    _layout1(src)
    _png(dest / "old" / "keep.png", 200)
    before = _tree(dest)
    with pytest.raises(DataImportError, match=r"data: destination is not empty.*replace=True"):
        import_folder(src, dest)
    assert _tree(dest) == before
    npz = tmp_path / "set.npz"
    _medmnist(npz)
    with pytest.raises(DataImportError, match="not empty"):
        import_npz(npz, dest)
    assert _tree(dest) == before


def test_empty_destination_folder_is_used(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "data"
    _layout1(src)
    dest.mkdir()
    assert import_folder(src, dest).n_images == 5


def test_replace_keeps_the_old_data_beside_it(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "data"
    _layout1(src)
    _png(dest / "old" / "keep.png", 200)
    old = _tree(dest)
    summary = import_folder(src, dest, replace=True)
    backup = summary.replaced_to
    assert backup is not None and backup.parent == tmp_path
    assert re.fullmatch(r"data\.replaced-\d{8}-\d{6}(-\d+)?", backup.name)
    assert _tree(backup) == old
    assert set(_tree(dest)) == set(_tree(src)) - {"README.md", "a/.DS_Store"}
    assert str(backup) in summary.describe()

    # a second replace (maybe within the same second) gets its own backup
    first = _tree(dest)
    npz = tmp_path / "bloodmnist.npz"
    _medmnist(npz, n_classes=8)
    second = import_npz(npz, dest, replace=True)
    assert second.replaced_to is not None and second.replaced_to != backup
    assert _tree(second.replaced_to) == first
    assert _tree(backup) == old
    assert discover(dest).kind == 2


def _medmnist(
    path: Path,
    *,
    rgb: bool = True,
    n_classes: int = 3,
    sizes: dict[str, int] | None = None,
    column: bool = True,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for split, n in (sizes or {"train": 12, "val": 4, "test": 6}).items():
        shape = (n, 28, 28, 3) if rgb else (n, 28, 28)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        labels = (np.arange(n) % n_classes).astype(np.uint8)
        arrays[f"{split}_labels"] = labels[:, None] if column else labels
    np.savez_compressed(path, **arrays)
    return arrays


@pytest.mark.parametrize("rgb", [True, False], ids=["rgb", "gray"])
def test_npz_round_trip(tmp_path: Path, rgb: bool) -> None:
    npz = tmp_path / "bloodmnist.npz"
    arrays = _medmnist(npz, rgb=rgb, n_classes=8, sizes={"train": 20, "val": 9, "test": 10})
    dest = tmp_path / "data"
    summary = import_npz(npz, dest)
    names = ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte")
    names += ("neutrophil", "platelet")
    assert summary.layout == 2 and summary.classes == tuple(sorted(names))
    assert summary.counts["train"]["basophil"] == 3 and summary.counts["val"]["platelet"] == 1
    layout = discover(dest)
    assert layout.kind == 2 and len(layout.entries) == 39
    for split in ("train", "val", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"].ravel()
        files = sorted((dest / split).glob("*/*.png"), key=lambda p: p.name)
        assert [p.name for p in files] == [f"{split}_{i:05d}.png" for i in range(len(images))]
        for i, path in enumerate(files):
            assert path.parent.name == names[labels[i]]
            back = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if rgb:
                np.testing.assert_array_equal(read_rgb8(path)[0], images[i])
            else:
                assert back.ndim == 2  # gray stays gray: nothing invented
                np.testing.assert_array_equal(back, images[i])


def test_npz_class_names_given_or_generic(tmp_path: Path) -> None:
    npz = tmp_path / "mine.npz"
    _medmnist(npz, n_classes=3, column=False, sizes={"train": 6, "test": 3})  # no val
    generic = import_npz(npz, tmp_path / "d1")
    assert generic.classes == ("class_0", "class_1", "class_2")
    assert set(generic.counts) == {"train", "test"}
    named = import_npz(npz, tmp_path / "d2", classes=["neg", "weak", "strong"])
    assert named.classes == ("neg", "strong", "weak")
    assert sorted(p.name for p in (tmp_path / "d2/train/strong").iterdir()) == [
        "train_00002.png",
        "train_00005.png",
    ]


def test_npz_own_class_names_are_used_and_made_folder_names(tmp_path: Path) -> None:
    npz = tmp_path / "bloodmnist_28.npz"  # its own names win over the MedMNIST table
    arrays = _medmnist(tmp_path / "plain.npz", n_classes=3)
    np.savez(npz, **arrays, class_names=np.array(["Neg cells", "weak/DAB", "..strong"]))
    summary = import_npz(npz, tmp_path / "data")
    assert summary.classes == ("Neg_cells", "strong", "weak_DAB")
    assert "class names from the file's class_names: 0=Neg_cells, 1=weak_DAB, 2=strong" in (
        summary.describe()
    )
    assert sorted(p.name for p in (tmp_path / "data/train/strong").iterdir()) == [
        "train_00002.png", "train_00005.png", "train_00008.png", "train_00011.png",
    ]  # fmt: skip
    # bytes names (np.savez of b"...") read the same; given names still win over the file's
    np.savez(npz, **arrays, class_names=np.array([b"a", b"b", b"c"]))
    assert import_npz(npz, tmp_path / "d2").classes == ("a", "b", "c")
    named = import_npz(npz, tmp_path / "d3", classes=["x", "y", "z"])
    assert named.classes == ("x", "y", "z") and "from given class names" in named.describe()


def test_npz_without_class_names_says_it_numbered_them(tmp_path: Path) -> None:
    npz = tmp_path / "mine.npz"
    _medmnist(npz, n_classes=2)
    summary = import_npz(npz, tmp_path / "data")
    assert "class names from class_<label>: the file has no class_names: 0=class_0" in (
        summary.describe()
    )


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["a", "b", "a"], r"class names repeat \(the file's class_names\): 'a' and 'a'"),
        (["a b", "a_b", "c"], r"class names repeat .*: 'a b' and 'a_b' are both folder 'a_b'"),
        (
            ["a", " ", "c"],
            r"class name ' ' \(the file's class_names\) cannot be a class folder "
            r"name \(nothing left once made safe\)",
        ),
        (["a", "test", "c"], r"class name 'test' .* cannot be a class folder name"),
        (["a", "b"], r"train_labels has label 2 but there are only 2 classes"),
        ([[1, 2, 3]], r"class_names has shape \(1, 3\) and dtype int64, expected a 1-D array"),
    ],
)
def test_npz_bad_class_names_are_named(tmp_path: Path, names: list, message: str) -> None:
    npz = tmp_path / "bad.npz"
    np.savez(npz, **_medmnist(tmp_path / "ok.npz", n_classes=3), class_names=np.array(names))
    with pytest.raises(DataImportError, match=rf"{re.escape(str(npz))}: {message}"):
        import_npz(npz, tmp_path / "data")
    assert not (tmp_path / "data").exists()


def test_npz_medmnist_size_suffix_uses_the_same_names(tmp_path: Path) -> None:
    npz = tmp_path / "pneumoniamnist_64.npz"
    _medmnist(npz, rgb=False, n_classes=2)
    assert import_npz(npz, tmp_path / "data").classes == ("normal", "pneumonia")


def _bad(arrays: dict[str, np.ndarray], case: str) -> dict[str, np.ndarray]:
    a = dict(arrays)
    if case == "missing":
        del a["test_labels"]
    elif case == "length":
        a["train_labels"] = a["train_labels"][:-1]
    elif case == "dtype":
        a["train_images"] = a["train_images"].astype(np.float32)
    elif case == "shape":
        a["val_images"] = np.zeros((4, 28, 28, 4), np.uint8)
    elif case == "volume":
        a["train_images"] = np.zeros((12, 28, 28, 28), np.uint8)
    elif case == "range":
        a["test_labels"] = a["test_labels"].copy()
        a["test_labels"][0] = 7
    elif case == "negative":
        a["val_labels"] = a["val_labels"].astype(np.int64) - 1
    elif case == "multilabel":
        a["train_labels"] = np.zeros((12, 14), np.uint8)
    elif case == "float_labels":
        a["train_labels"] = a["train_labels"].astype(np.float64)
    elif case == "empty":
        a["test_images"] = a["test_images"][:0]
        a["test_labels"] = a["test_labels"][:0]
    return a


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", r"missing key 'test_labels'"),
        ("length", r"train_images has 12 images but train_labels has 11 labels"),
        ("dtype", r"train_images has dtype float32, expected uint8"),
        ("shape", r"val_images has shape \(4, 28, 28, 4\)"),
        ("volume", r"train_images has shape \(12, 28, 28, 28\)"),
        ("range", r"test_labels has label 7 but there are only 3 classes"),
        ("negative", r"val_labels has a negative label -1"),
        ("multilabel", r"train_labels has shape \(12, 14\): multi-label not supported"),
        ("float_labels", r"train_labels has dtype float64, expected integers"),
        ("empty", r"test_images is empty"),
    ],
)
def test_npz_bad_content_is_named(tmp_path: Path, case: str, message: str) -> None:
    arrays = _medmnist(tmp_path / "ok.npz")
    npz = tmp_path / "bad.npz"
    np.savez(npz, **_bad(arrays, case))
    with pytest.raises(DataImportError, match=rf"{re.escape(str(npz))}: {message}"):
        import_npz(npz, tmp_path / "data", classes=["a", "b", "c"])
    assert not (tmp_path / "data").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_npz_label_beyond_the_medmnist_table(tmp_path: Path) -> None:
    npz = tmp_path / "breastmnist.npz"
    _medmnist(npz, rgb=False, n_classes=3)  # breastmnist has 2 classes
    with pytest.raises(DataImportError, match=r"label 2 but there are only 2 classes \(MedMNIST"):
        import_npz(npz, tmp_path / "data")


def test_npz_label_beyond_given_classes(tmp_path: Path) -> None:
    npz = tmp_path / "x.npz"
    _medmnist(npz, n_classes=3)
    with pytest.raises(DataImportError, match=r"label 2 but there are only 2 classes"):
        import_npz(npz, tmp_path / "data", classes=["a", "b"])


@pytest.mark.parametrize("names", [["a", "a", "b"], ["a", "b/c", "d"], ["a", ".b", "c"]])
def test_npz_bad_class_names(tmp_path: Path, names: list[str]) -> None:
    npz = tmp_path / "x.npz"
    _medmnist(npz, n_classes=3)
    with pytest.raises(DataImportError, match="class name"):
        import_npz(npz, tmp_path / "data", classes=names)


def test_npz_not_an_archive(tmp_path: Path) -> None:
    text = tmp_path / "notes.npz"
    text.write_text("not numpy at all")
    with pytest.raises(DataImportError, match=r"notes\.npz: not a readable \.npz"):
        import_npz(text, tmp_path / "data")
    single = tmp_path / "single.npz"
    with single.open("wb") as fh:
        np.save(fh, np.zeros(3))
    with pytest.raises(DataImportError, match=r"single\.npz: a single array"):
        import_npz(single, tmp_path / "data")
    with pytest.raises(DataImportError, match=r"absent\.npz: file not found"):
        import_npz(tmp_path / "absent.npz", tmp_path / "data")
