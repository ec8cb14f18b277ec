"""QuPath GeoJSON exports (File > Export objects as GeoJSON) rasterised into annotations.

QuPath writes a FeatureCollection, or a list of Features, in pixel coordinates of the
full-resolution image with the origin at its top-left corner. Each feature is one object:

- ``cell`` objects carry the nucleus in ``nucleusGeometry`` beside the cell outline in
  ``geometry``: the nucleus is used;
- ``detection`` objects (e.g. nuclei from StarDist or cell detection without cells) and
  ``annotation`` objects (nuclei drawn by hand) use ``geometry``. An annotation counts as a
  nucleus only when its class says positive or negative, unless ``unclassified_annotations``:
  large unclassified annotations are usually regions (tumour, stroma), not nuclei.

The class is ``properties.classification.name`` (or ``.names``, QuPath 0.5+; a derived class
such as ``Tumor: Positive`` is split at ``:``): ``Positive``, ``1+``, ``2+``, ``3+`` are positive,
``Negative`` is negative, anything else or none leaves the nucleus unclassified. Polygons
(with holes) and MultiPolygons become one nucleus each, later features drawn over earlier
ones; points and lines are skipped. Parts outside the image are clipped.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ihcflow.segmentation.labels import (
    MAX_INSTANCES,
    NEGATIVE,
    POSITIVE,
    UNCLASSIFIED,
    Annotation,
    relabel,
)

POSITIVE_NAMES = frozenset({"positive", "1+", "2+", "3+"})
NEGATIVE_NAMES = frozenset({"negative"})
NUCLEUS_TYPES = frozenset({"cell", "detection", "annotation", "tile"})


class GeoJSONError(ValueError):
    """The file is not a QuPath GeoJSON export we can rasterise; names the file."""


@dataclass
class Rasterised:
    annotation: Annotation
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> features


def _features(data: Any, source: str) -> Iterator[Mapping[str, Any]]:
    if isinstance(data, Mapping) and data.get("type") == "FeatureCollection":
        items = data.get("features")
    elif isinstance(data, Mapping) and data.get("type") == "Feature":
        items = [data]
    elif isinstance(data, list):
        items = data
    else:
        raise GeoJSONError(f"{source}: expected a FeatureCollection or a list of Features")
    if not isinstance(items, list):
        raise GeoJSONError(f"{source}: 'features' is not a list")
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) or item.get("type") != "Feature":
            raise GeoJSONError(f"{source}: item {i} is not a GeoJSON Feature")
        yield item


def nucleus_class(properties: Mapping[str, Any]) -> int:
    """UNCLASSIFIED, NEGATIVE or POSITIVE from a QuPath ``classification``."""
    cls = properties.get("classification")
    if not isinstance(cls, Mapping):
        return UNCLASSIFIED
    names: list[str] = []
    if isinstance(cls.get("names"), list):
        names = [str(n) for n in cls["names"]]
    elif cls.get("name") is not None:
        names = [part for part in str(cls["name"]).split(":")]
    parts = {n.strip().lower() for n in names}
    if parts & POSITIVE_NAMES:
        return POSITIVE
    if parts & NEGATIVE_NAMES:
        return NEGATIVE
    return UNCLASSIFIED


def _polygons(geometry: Mapping[str, Any]) -> list[list[Any]] | None:
    """The polygons (each a list of rings) of a geometry; None if it has no area."""
    kind = geometry.get("type")
    coords: Any = geometry.get("coordinates")
    if kind == "Polygon":
        return [coords]
    if kind == "MultiPolygon":
        return list(coords or [])
    if kind == "GeometryCollection":
        out: list[list[Any]] = []
        for part in geometry.get("geometries") or []:
            out += _polygons(part) or []
        return out or None
    return None


def _rings(polygons: Iterable[list[Any]], source: str) -> list[np.ndarray]:
    """Each ring as (n, 2) float (x, y) in pixel-centre coordinates: pixel (i, j) covers
    [i, i+1) x [j, j+1) in QuPath's coordinates, so its centre is (i + 0.5, j + 0.5)."""
    rings = []
    for polygon in polygons:
        for ring in polygon or []:
            try:
                pts = np.asarray(ring, dtype=np.float64)
            except (TypeError, ValueError):
                pts = np.zeros(0)
            if pts.ndim != 2 or pts.shape[1] < 2 or not np.all(np.isfinite(pts[:, :2])):
                raise GeoJSONError(f"{source}: a polygon ring is not a list of [x, y] numbers")
            if len(pts) >= 3:
                rings.append(pts[:, :2] - 0.5)
    return rings


def _fill(
    rings: list[np.ndarray], width: int, height: int
) -> tuple[tuple[int, int], np.ndarray] | None:
    """Pixels whose centre lies inside the polygon (even-odd over its rings, so holes stay
    empty; what QuPath's own label export does), within the image: (top, left) and a bool
    mask of the bounding box, or None when no pixel is inside."""
    from skimage.draw import polygon as fill_polygon

    pts = np.concatenate(rings)
    lo = np.maximum(np.floor(pts.min(axis=0)).astype(int), 0)
    hi = np.minimum(np.ceil(pts.max(axis=0)).astype(int), [width - 1, height - 1])
    if np.any(hi < lo):
        return None
    shape = (int(hi[1] - lo[1] + 1), int(hi[0] - lo[0] + 1))
    inside = np.zeros(shape, bool)
    for ring in rings:
        rows, cols = fill_polygon(ring[:, 1] - lo[1], ring[:, 0] - lo[0], shape)
        part = np.zeros(shape, bool)
        part[rows, cols] = True
        inside ^= part
    return ((int(lo[1]), int(lo[0])), inside) if inside.any() else None


def rasterise(
    data: Any, width: int, height: int, source: str, *, unclassified_annotations: bool = False
) -> Rasterised:
    """Nuclei of a parsed QuPath GeoJSON export as an annotation of ``width`` x ``height``."""
    instances = np.zeros((height, width), np.int32)
    classes = [UNCLASSIFIED]
    skipped: Counter[str] = Counter()
    for feature in _features(data, source):
        props = feature.get("properties") or {}
        kind = str(props.get("objectType", props.get("object_type", "annotation"))).lower()
        cls = nucleus_class(props)
        if kind not in NUCLEUS_TYPES:
            skipped[f"object type {kind}"] += 1
            continue
        if kind == "annotation" and cls == UNCLASSIFIED and not unclassified_annotations:
            skipped["unclassified annotation (a region?)"] += 1
            continue
        geometry = feature.get("nucleusGeometry") or feature.get("geometry")
        if not isinstance(geometry, Mapping):
            skipped["no geometry"] += 1
            continue
        polygons = _polygons(geometry)
        if polygons is None:
            skipped[f"{geometry.get('type')} geometry (no area)"] += 1
            continue
        rings = _rings(polygons, source)
        if not rings:
            skipped["degenerate polygon"] += 1
            continue
        window = _fill(rings, width, height)
        if window is None:
            skipped["outside the image"] += 1
            continue
        if len(classes) > MAX_INSTANCES:
            raise GeoJSONError(f"{source}: more than {MAX_INSTANCES} nuclei in one image")
        (y0, x0), inside = window
        instances[y0 : y0 + inside.shape[0], x0 : x0 + inside.shape[1]][inside] = len(classes)
        classes.append(cls)
    return Rasterised(relabel(instances, np.asarray(classes, np.uint8)), skipped)


def read_geojson(
    path: str | Path, width: int, height: int, *, unclassified_annotations: bool = False
) -> Rasterised:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GeoJSONError(f"{path}: cannot read as JSON ({exc})") from None
    return rasterise(
        data, width, height, str(path), unclassified_annotations=unclassified_annotations
    )
