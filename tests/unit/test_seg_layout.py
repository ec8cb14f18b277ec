"""The segmentation layout and validation: every bad pair is named with its reason."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from ihcflow.data.layout import DatasetError
from ihcflow.images.codec import encode_png
from ihcflow.segmentation.labels import NEGATIVE, POSITIVE, encode_instances
from ihcflow.segmentation.layout import discover, validate


def _image(h: int = 24, w: int = 32) -> bytes:
    return encode_png(np.full((h, w, 3), 200, np.uint8))


def _instances(h: int = 24, w: int = 32, n: int = 2) -> np.ndarray:
    inst = np.zeros((h, w), np.uint16)
    for k in range(1, n + 1):
        inst[2:8, 4 * k : 4 * k + 3] = k
    return inst


def _write(folder: Path, name: str, image: bytes | None, mask: bytes | None, ext=".png") -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    if image is not None:
        (folder / "images" / f"{name}{ext}").write_bytes(image)
    if mask is not None:
        (folder / "masks" / f"{name}.png").write_bytes(mask)


def test_a_corpus_of_bad_pairs_each_with_its_reason(tmp_path: Path) -> None:
    root = tmp_path / "nuclei"
    good = encode_instances(_instances())
    _write(root, "good", _image(), good)
    _write(
        root,
        "good_classmap",
        _image(),
        cv2.imencode(".png", np.ones((24, 32), np.uint8))[1].tobytes(),
    )
    _write(root, "no_mask", _image(), None)
    _write(root, "no_image", None, good)
    _write(root, "small_mask", _image(), encode_instances(_instances(12, 32)))
    _write(
        root,
        "bad_values",
        _image(),
        cv2.imencode(".png", np.full((24, 32), 9, np.uint8))[1].tobytes(),
    )
    _write(root, "rgb_mask", _image(), encode_png(np.zeros((24, 32, 3), np.uint8)))
    _write(root, "broken", b"\x89PNG\r\n\x1a\nbroken", good)
    _write(root, "twice", _image(), good)
    _write(root, "twice", _image(), None, ext=".tif")
    _write(root, "wrong_classes", _image(), good)
    pd.DataFrame(
        {
            "image": ["good", "good", "wrong_classes", "gone"],
            "instance": [1, 2, 1, 1],
            "class": ["positive", "negative", "positive", "negative"],
        }
    ).to_csv(root / "classes.csv", index=False)

    records, problems = validate(root)
    reasons = {(p.path, p.reason) for p in problems}
    assert reasons == {
        ("images/no_mask.png", "missing_mask"),
        ("masks/no_image.png", "missing_image"),
        ("masks/small_mask.png", "size_mismatch"),
        ("masks/bad_values.png", "labels_out_of_range"),
        ("masks/rgb_mask.png", "not_a_label_image"),
        ("images/broken.png", "corrupt"),
        ("images/twice.png|images/twice.tif", "duplicate_name"),
        ("masks/wrong_classes.png", "classes_mismatch"),
        ("classes.csv", "classes_mismatch"),  # names an image ("gone") that has no mask
    }
    detail = {p.path: p.detail for p in problems}
    assert (
        "mask is 32x12 px, its image images/small_mask.png is 32x24"
        in detail["masks/small_mask.png"]
    )
    assert "nuclei [2] have no class in classes.csv" in detail["masks/wrong_classes.png"]
    assert "lists images without a mask: ['gone']" in detail["classes.csv"]
    ok = records.set_index("name")
    assert list(ok.index) == ["good", "good_classmap"]
    assert ok.loc["good", ["nuclei", "classified", "positive"]].tolist() == [2, 2, 1]
    assert ok.loc["good", "mask_kind"] == "instance"
    assert ok.loc["good_classmap", ["mask_kind", "nuclei", "positive"]].tolist() == ["class", 1, 0]
    assert ok.loc["good", "given_split"] == ""


def test_layout_2_keeps_the_given_splits(tmp_path: Path) -> None:
    root = tmp_path / "nuclei"
    for split in ("train", "test"):
        _write(root / split, f"{split}_a", _image(), encode_instances(_instances()))
    pd.DataFrame(
        {"image": ["test_a"] * 2, "instance": [1, 2], "class": [POSITIVE, NEGATIVE]}
    ).to_csv(root / "test" / "classes.csv", index=False)
    layout = discover(root)
    assert layout.kind == 2 and layout.folders == ("train", "test")
    records, problems = validate(root)
    assert problems == []
    assert dict(zip(records["name"], records["given_split"], strict=True)) == {
        "train_a": "train",
        "test_a": "test",
    }
    assert records.set_index("name").loc["test_a", "positive"] == 1


def test_unusable_folders(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        discover(tmp_path / "absent")
    (tmp_path / "x" / "stuff").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"expected images/ and masks/"):
        discover(tmp_path / "x")
    (tmp_path / "x" / "images").mkdir()
    (tmp_path / "x" / "train").mkdir()
    (tmp_path / "x" / "test").mkdir()
    with pytest.raises(DatasetError, match="use one layout"):
        discover(tmp_path / "x")
    root = tmp_path / "y"
    _write(root, "a", _image(), encode_instances(_instances()))
    (root / "classes.csv").write_text("image,instance,class\na,1,brownish\n")
    with pytest.raises(DatasetError, match=r"classes.csv: line 2: class 'brownish'"):
        validate(root)
