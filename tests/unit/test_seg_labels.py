"""The annotation contract: mask kinds, classes.csv, relabelling and the training targets."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ihcflow.images.codec import ImageError
from ihcflow.segmentation.labels import (
    IGNORE,
    NEGATIVE,
    POSITIVE,
    SEG_BACKGROUND,
    SEG_BOUNDARY,
    SEG_INTERIOR,
    UNCLASSIFIED,
    MaskError,
    decode_mask,
    encode_instances,
    from_class_map,
    read_classes_table,
    relabel,
    targets,
    to_annotation,
)


def _png(arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    return buf.tobytes()


def _pil(arr: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    out = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(out, format=fmt)
    return out.getvalue()


def _two_touching() -> np.ndarray:
    inst = np.zeros((20, 30), np.uint16)
    inst[4:14, 3:13] = 7
    inst[4:14, 13:23] = 300  # ids need not be consecutive; 300 needs 16 bits
    return inst


def test_instance_masks_in_16_bit_png_and_tiff_and_32_bit_tiff() -> None:
    inst = _two_touching()
    for data in (
        _png(inst),
        encode_instances(inst),
        _pil(inst, "TIFF"),
        _pil(inst.astype(np.int32), "TIFF"),
    ):
        labels = decode_mask(data, "m")
        assert labels.dtype == np.uint16
        np.testing.assert_array_equal(labels, inst)


def test_class_maps_grey_and_palette() -> None:
    cmap = np.zeros((10, 10), np.uint8)
    cmap[1:4, 1:4] = NEGATIVE
    cmap[6:9, 6:9] = POSITIVE
    cmap[1:4, 6:9] = POSITIVE
    pal = Image.fromarray(cmap, mode="L").convert("P")
    buf = io.BytesIO()
    pal.save(buf, format="PNG")
    for data in (_png(cmap), buf.getvalue()):
        labels = decode_mask(data, "m")
        assert labels.dtype == np.uint8
        ann = to_annotation(labels, "m")
        assert ann.count == 3 and ann.positive == 2 and ann.ki67_index() == pytest.approx(2 / 3)
        np.testing.assert_array_equal(ann.class_map(), cmap)


def test_touching_nuclei_of_one_class_merge_in_a_class_map() -> None:
    cmap = np.zeros((10, 10), np.uint8)
    cmap[2:5, 2:8] = NEGATIVE  # two nuclei side by side: one component
    cmap[5:8, 2:8] = POSITIVE  # a positive one below it stays apart (other class)
    ann = from_class_map(cmap)
    assert ann.count == 2
    assert sorted(ann.classes[1:].tolist()) == [NEGATIVE, POSITIVE]


@pytest.mark.parametrize(
    ("data", "reason", "message"),
    [
        (_png(np.full((4, 4), 3, np.uint8)), "labels_out_of_range", r"values \[3\]"),
        (_png(np.zeros((4, 4, 3), np.uint8)), "not_a_label_image", "RGB"),
        (b"", "empty", "empty"),
        (b"no image here", "not_an_image", "not an image"),
        (_pil(np.full((4, 4), 70_000, np.int32), "TIFF"), "labels_out_of_range", "0..65535"),
        (_pil(np.full((4, 4), -1, np.int32), "TIFF"), "labels_out_of_range", r"-1\.\.-1"),
    ],
)
def test_bad_masks_are_named_with_a_reason(data: bytes, reason: str, message: str) -> None:
    with pytest.raises(ImageError, match=message) as e:
        to_annotation(decode_mask(data, "masks/x.png"), "masks/x.png")
    assert e.value.reason == reason
    assert str(e.value).startswith("masks/x.png: ")


def test_classes_csv_gives_each_instance_its_class() -> None:
    frame = pd.DataFrame(
        {"image": ["a", "a", "b"], "instance": ["7", "300", "1"], "class": ["Positive", "1", "2"]}
    )
    table = read_classes_table("classes.csv", frame)
    assert table == {"a": {7: POSITIVE, 300: NEGATIVE}, "b": {1: POSITIVE}}
    ann = to_annotation(_two_touching(), "a.png", table["a"])
    assert ann.count == 2 and ann.classes.tolist() == [UNCLASSIFIED, POSITIVE, NEGATIVE]
    assert ann.instances.max() == 2  # renumbered 1..K in id order


def test_classes_csv_problems() -> None:
    with pytest.raises(MaskError, match="line 2: class 'brown'"):
        read_classes_table(
            "c.csv", pd.DataFrame({"image": ["a"], "instance": [1], "class": ["brown"]})
        )
    with pytest.raises(MaskError, match="line 3: a instance 1 listed twice"):
        read_classes_table(
            "c.csv", pd.DataFrame({"image": ["a", "a"], "instance": [1, 1], "class": [1, 2]})
        )
    with pytest.raises(MaskError, match=r"missing column\(s\) \['class'\]"):
        read_classes_table("c.csv", pd.DataFrame({"image": ["a"], "instance": [1]}))
    with pytest.raises(MaskError, match=r"nuclei \[300\] have no class") as e:
        to_annotation(_two_touching(), "a.png", {7: POSITIVE})
    assert e.value.reason == "classes_mismatch"
    with pytest.raises(MaskError, match=r"lists ids \[5\] that are not in the mask"):
        to_annotation(_two_touching(), "a.png", {7: POSITIVE, 300: NEGATIVE, 5: NEGATIVE})


def test_targets_mark_the_band_between_touching_nuclei() -> None:
    ann = relabel(_two_touching(), np.array([0] * 7 + [POSITIVE] + [0] * 292 + [NEGATIVE]))
    seg, pos = targets(ann, boundary_px=1)
    assert seg[0, 0] == SEG_BACKGROUND
    assert seg[8, 8] == SEG_INTERIOR and seg[8, 18] == SEG_INTERIOR
    # both sides of the contact, and every nucleus's rim, are boundary
    assert seg[8, 12] == SEG_BOUNDARY and seg[8, 13] == SEG_BOUNDARY
    assert seg[4, 8] == SEG_BOUNDARY and seg[8, 11] == SEG_INTERIOR
    assert pos[8, 8] == 1 and pos[8, 18] == 0 and pos[0, 0] == IGNORE
    # the image edge is not a boundary
    edge = relabel(np.ones((6, 6), np.uint16))
    seg, pos = targets(edge, boundary_px=2)
    assert (seg == SEG_INTERIOR).all() and (pos == IGNORE).all()  # unclassified: not learnt


def test_relabel_drops_absent_ids_and_keeps_classes() -> None:
    inst = np.array([[0, 5, 5], [9, 9, 0]], np.uint16)
    classes = np.zeros(10, np.uint8)
    classes[5], classes[9] = POSITIVE, NEGATIVE
    ann = relabel(inst, classes)
    assert ann.instances.tolist() == [[0, 1, 1], [2, 2, 0]]
    assert ann.classes.tolist() == [0, POSITIVE, NEGATIVE]
