"""Bring segmentation data in: a folder of images and masks, or images with QuPath GeoJSON.

Both build the destination beside ``dest`` and rename it into place (a non-empty ``dest`` is
refused unless ``replace``; the old one is then kept beside it), like the classification
importers (``ihcflow.data.importers``). The result is in the layout ``layout`` describes, and
the validate stage checks every pair before anything uses it.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ihcflow.data.importers import DataImportError, is_inside, swap_in
from ihcflow.images.codec import IMAGE_SUFFIXES, ImageError, probe
from ihcflow.segmentation.labels import (
    CLASSES_COLUMNS,
    CLASSES_FILE,
    classes_rows,
    encode_instances,
)
from ihcflow.segmentation.layout import IMAGES, MASKS, discover
from ihcflow.segmentation.qupath import GeoJSONError, read_geojson

GEOJSON_SUFFIXES = (".geojson", ".json")


@dataclass
class SegImportSummary:
    dest: Path
    layout: int
    images: dict[str, int]  # per given split ("" in layout 1)
    nuclei: int = 0  # QuPath import: nuclei rasterised
    skipped: list[str] = field(default_factory=list)  # files left out, with why
    features_skipped: Counter[str] = field(default_factory=Counter)
    replaced_to: Path | None = None

    @property
    def n_images(self) -> int:
        return sum(self.images.values())

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        """Tiles per given split ("all" in layout 1), as nuclei.dvc's meta records them."""
        return {(split or "all"): {"tiles": n} for split, n in self.images.items()}

    def describe(self) -> str:
        total = self.n_images
        lines = [f"imported {total} images with masks into {self.dest} (layout {self.layout})"]
        if self.layout == 2:
            lines.append("  " + ", ".join(f"{s}: {n}" for s, n in self.images.items()))
        if self.nuclei:
            lines.append(f"  {self.nuclei} nuclei rasterised")
        for reason, n in sorted(self.features_skipped.items()):
            lines.append(f"  GeoJSON features skipped: {n} ({reason})")
        lines += [f"  not imported: {s}" for s in self.skipped]
        if self.replaced_to is not None:
            lines.append(f"previous contents of {self.dest} kept in {self.replaced_to}")
        return "\n".join(lines)


def import_mask_folder(
    src: str | os.PathLike[str], dest: str | os.PathLike[str], *, replace: bool = False
) -> SegImportSummary:
    """Copy ``images/``, ``masks/`` and ``classes.csv`` (layout 1, or per split in layout 2).

    Files the layout does not pair are copied too: the validate stage names them.
    """
    src, dest = Path(src), Path(dest)
    layout = discover(src)
    if is_inside(dest, src) or is_inside(src, dest):
        raise DataImportError(
            f"{src} -> {dest}: source and destination must not contain each other"
        )
    counts: Counter[str] = Counter()
    with swap_in(dest, replace) as (tmp, moved):
        for pair in layout.pairs:
            for rel in filter(None, "|".join(filter(None, (pair.image, pair.mask))).split("|")):
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src / rel, tmp / rel)
            if pair.image and pair.mask:
                counts[pair.given_split] += 1
        for folder in layout.folders:
            if (src / folder / CLASSES_FILE).is_file():
                (tmp / folder).mkdir(parents=True, exist_ok=True)
                shutil.copy2(src / folder / CLASSES_FILE, tmp / folder / CLASSES_FILE)
    return SegImportSummary(dest, layout.kind, dict(counts), replaced_to=moved[0])


def _geojson_for(image: Path, folder: Path) -> Path | None:
    """``<stem>.geojson`` or QuPath's ``<name with extension>.geojson`` (or ``.json``)."""
    for base in (image.stem, image.name):
        for suffix in GEOJSON_SUFFIXES:
            candidate = folder / f"{base}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def import_qupath(
    images_dir: str | os.PathLike[str],
    geojson_dir: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    replace: bool = False,
    unclassified_annotations: bool = False,
) -> SegImportSummary:
    """Images beside their QuPath GeoJSON exports -> layout 1 (masks rasterised at each
    image's size, ``classes.csv`` from the QuPath classes). Images without an export are left
    out and listed; an unreadable image or export is an error naming the file."""
    images_dir, geojson_dir, dest = Path(images_dir), Path(geojson_dir), Path(dest)
    for folder in (images_dir, geojson_dir):
        if not folder.is_dir():
            raise DataImportError(f"{folder}: folder not found")
    images = sorted(
        p
        for p in images_dir.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not images:
        raise DataImportError(f"{images_dir}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    stems = [p.stem for p in images]
    repeated = sorted({s for s in stems if stems.count(s) > 1})
    if repeated:
        raise DataImportError(f"{images_dir}: several images share the name(s) {repeated}")
    summary = SegImportSummary(dest, 1, {"": 0})
    rows: list[dict[str, object]] = []
    with swap_in(dest, replace) as (tmp, moved):
        (tmp / IMAGES).mkdir()
        (tmp / MASKS).mkdir()
        for image in images:
            export = _geojson_for(image, geojson_dir)
            if export is None:
                summary.skipped.append(f"{image}: no GeoJSON export beside it in {geojson_dir}")
                continue
            try:
                info = probe(image.read_bytes(), str(image))
                raster = read_geojson(
                    export,
                    info.width,
                    info.height,
                    unclassified_annotations=unclassified_annotations,
                )
            except (ImageError, GeoJSONError) as exc:
                raise DataImportError(str(exc)) from None
            shutil.copy2(image, tmp / IMAGES / image.name)
            (tmp / MASKS / f"{image.stem}.png").write_bytes(
                encode_instances(raster.annotation.instances)
            )
            rows += classes_rows(image.stem, raster.annotation)
            summary.images[""] += 1
            summary.nuclei += raster.annotation.count
            summary.features_skipped.update(raster.skipped)
        if not summary.images[""]:
            raise DataImportError(
                f"{images_dir}: no image has a GeoJSON export in {geojson_dir} "
                "(<image name>.geojson or <image stem>.geojson)"
            )
        pd.DataFrame(rows, columns=list(CLASSES_COLUMNS)).to_csv(
            tmp / CLASSES_FILE, index=False, lineterminator="\n"
        )
    summary.replaced_to = moved[0]
    return summary
