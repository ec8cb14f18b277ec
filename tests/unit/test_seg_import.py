"""Importing segmentation data: QuPath GeoJSON exports and a masks folder, then validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ihcflow.data.importers import DataImportError
from ihcflow.images.codec import encode_png
from ihcflow.segmentation.importers import import_mask_folder, import_qupath
from ihcflow.segmentation.labels import NEGATIVE, POSITIVE, UNCLASSIFIED, encode_instances
from ihcflow.segmentation.layout import validate
from ihcflow.segmentation.qupath import GeoJSONError, rasterise


def _square(x: float, y: float, side: float) -> list[list[list[float]]]:
    return [[[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]]]


def _feature(geometry: dict, object_type: str, cls: str | None = None, **extra) -> dict:
    props: dict = {"objectType": object_type}
    if cls is not None:
        props["classification"] = {"name": cls, "color": [255, 0, 0]}
    return {"type": "Feature", "id": "x", "geometry": geometry, "properties": props, **extra}


def _export() -> dict:
    """What QuPath writes for a few kinds of objects (pixel coordinates, top-left origin)."""
    return {
        "type": "FeatureCollection",
        "features": [
            # a cell from positive cell detection: the nucleus rides in nucleusGeometry
            _feature(
                {"type": "Polygon", "coordinates": _square(0, 0, 30)},
                "cell",
                "Tumor: Positive",
                nucleusGeometry={"type": "Polygon", "coordinates": _square(10, 10, 10)},
            ),
            _feature(
                {"type": "Polygon", "coordinates": _square(40, 10, 10)}, "detection", "Negative"
            ),
            _feature({"type": "Polygon", "coordinates": _square(60, 10, 10)}, "detection", "2+"),
            _feature({"type": "Polygon", "coordinates": _square(80, 10, 10)}, "detection"),
            # a nucleus drawn by hand: an annotation with a class
            _feature(
                {"type": "Polygon", "coordinates": _square(10, 40, 10)}, "annotation", "Negative"
            ),
            # a region annotation (unclassified): not a nucleus
            _feature({"type": "Polygon", "coordinates": _square(0, 0, 100)}, "annotation"),
            # a nucleus with a hole, and a two-part nucleus
            _feature(
                {"type": "Polygon", "coordinates": _square(40, 40, 12) + _square(44, 44, 4)[:1]},
                "detection",
                "Positive",
            ),
            _feature(
                {
                    "type": "MultiPolygon",
                    "coordinates": [_square(70, 40, 4), _square(76, 40, 4)],
                },
                "detection",
                "Negative",
            ),
            # partly outside the image, wholly outside, and a point
            _feature(
                {"type": "Polygon", "coordinates": _square(95, 70, 10)}, "detection", "Negative"
            ),
            _feature({"type": "Polygon", "coordinates": _square(300, 300, 5)}, "detection"),
            _feature({"type": "Point", "coordinates": [5, 5]}, "detection"),
        ],
    }


def test_qupath_export_is_rasterised_with_classes() -> None:
    out = rasterise(_export(), 100, 80, "a.geojson")
    ann = out.annotation
    assert ann.count == 8
    area = np.bincount(ann.instances.ravel())[1:]
    classes = ann.classes[1:].tolist()
    assert classes == [
        POSITIVE,
        NEGATIVE,
        POSITIVE,
        UNCLASSIFIED,
        NEGATIVE,
        POSITIVE,
        NEGATIVE,
        NEGATIVE,
    ]
    assert area[:5].tolist() == [100, 100, 100, 100, 100]  # 10x10 px squares, exactly
    assert area[5] == 144 - 16  # the hole stays empty
    assert area[6] == 32  # two parts, one nucleus
    assert area[7] == 5 * 10  # clipped at the image's right edge (x 95..99, y 70..79)
    assert ann.instances[15, 15] == 1 and ann.instances[5, 5] == 0  # nucleus, not the cell
    assert out.skipped == {
        "unclassified annotation (a region?)": 1,
        "outside the image": 1,
        "Point geometry (no area)": 1,
    }
    # kept on request (for nuclei drawn by hand without a class), the region is one more
    # object, drawn over the five before it
    everything = rasterise(_export(), 100, 80, "a.geojson", unclassified_annotations=True)
    assert everything.annotation.count == 8 - 5 + 1
    assert everything.annotation.instances[15, 15] == 1


def test_a_list_of_features_and_bad_files() -> None:
    features = _export()["features"][:2]
    assert rasterise(features, 100, 80, "x").annotation.count == 2
    with pytest.raises(GeoJSONError, match="x: expected a FeatureCollection"):
        rasterise({"type": "Polygon"}, 10, 10, "x")
    with pytest.raises(GeoJSONError, match="x: item 0 is not a GeoJSON Feature"):
        rasterise([{"type": "Polygon"}], 10, 10, "x")
    bad = _feature({"type": "Polygon", "coordinates": [[["a", 1], [2, 2], [3, 3]]]}, "detection")
    with pytest.raises(GeoJSONError, match="x: a polygon ring is not a list"):
        rasterise([bad], 10, 10, "x")


def test_import_qupath_folder_validates(tmp_path: Path) -> None:
    images, exports = tmp_path / "tiles", tmp_path / "exports"
    images.mkdir()
    exports.mkdir()
    for name in ("a", "b", "c"):
        (images / f"{name}.png").write_bytes(encode_png(np.full((80, 100, 3), 220, np.uint8)))
    (exports / "a.geojson").write_text(json.dumps(_export()))
    (exports / "b.png.geojson").write_text(json.dumps(_export()["features"][:3]))  # QuPath's naming
    summary = import_qupath(images, exports, tmp_path / "nuclei")
    assert summary.images == {"": 2} and summary.nuclei == 8 + 3
    assert summary.skipped == [f"{images / 'c.png'}: no GeoJSON export beside it in {exports}"]
    assert "not imported" in summary.describe()
    records, problems = validate(tmp_path / "nuclei")
    assert problems == []
    assert records.set_index("name").loc["a", ["nuclei", "classified", "positive"]].tolist() == [
        8,
        7,
        3,
    ]
    table = pd.read_csv(tmp_path / "nuclei" / "classes.csv")
    assert list(table.columns) == ["image", "instance", "class"]
    with pytest.raises(DataImportError, match="not empty"):
        import_qupath(images, exports, tmp_path / "nuclei")
    (exports / "a.geojson").write_text("{not json")
    with pytest.raises(DataImportError, match=r"a.geojson: cannot read as JSON"):
        import_qupath(images, exports, tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_import_mask_folder_copies_the_layout(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for split in ("train", "test"):
        (src / split / "images").mkdir(parents=True)
        (src / split / "masks").mkdir()
        inst = np.zeros((20, 20), np.uint16)
        inst[2:8, 2:8] = 1
        (src / split / "images" / f"{split}1.png").write_bytes(
            encode_png(np.zeros((20, 20, 3), np.uint8))
        )
        (src / split / "masks" / f"{split}1.png").write_bytes(encode_instances(inst))
    (src / "test" / "classes.csv").write_text(f"image,instance,class\ntest1,1,{POSITIVE}\n")
    (src / "test" / "images" / "lonely.png").write_bytes(
        encode_png(np.zeros((20, 20, 3), np.uint8))
    )
    summary = import_mask_folder(src, tmp_path / "nuclei")
    assert summary.layout == 2 and summary.images == {"train": 1, "test": 1}
    records, problems = validate(tmp_path / "nuclei")
    assert [(p.path, p.reason) for p in problems] == [("test/images/lonely.png", "missing_mask")]
    assert records.set_index("name").loc["test1", "positive"] == 1
    assert records.set_index("name").loc["train1", "classified"] == 0
    with pytest.raises(DataImportError, match="must not contain each other"):
        import_mask_folder(src, src / "inside")
