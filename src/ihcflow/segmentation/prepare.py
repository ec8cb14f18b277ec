"""The seg_prepare and seg_split stages' logic: raw nuclei data -> checked tiles -> a split.

``prepare_tiles`` checks every image/mask pair of the raw folder (either layout of
``layout``; any image format, instance masks or class maps, ``classes.csv``) and writes the
tiles in one form, so that training, evaluation and registration read one thing::

    processed/nuclei/images/<name>.png   RGB
    processed/nuclei/masks/<name>.png    16-bit instance ids 1..K
    processed/nuclei/classes.csv         image,instance,class (classified tiles)
    processed/nuclei/tiles.csv           tables.NUCLEI_TILES

A pair that cannot be used fails the stage, naming every such file and the reason: a
segmentation set is small, and a silently dropped tile changes what the metrics mean.

``split_tiles`` puts each tile in train/val/test with the classifier's group-aware splitter
(``ihcflow.split``: one patient's tiles never straddle two splits); a given test (and val)
split is kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ihcflow.data.layout import DatasetError
from ihcflow.files import atomic_dir
from ihcflow.images.codec import encode_png
from ihcflow.segmentation.labels import (
    CLASSES_COLUMNS,
    CLASSES_FILE,
    classes_rows,
    encode_instances,
)
from ihcflow.segmentation.layout import (
    IMAGES,
    MASKS,
    Pair,
    discover,
    load_pair,
    read_classes,
    validate,
)
from ihcflow.segmentation.params import SegSplitParams
from ihcflow.split import SplitError, groups_from_pattern, stratified_group_split
from ihcflow.tables import NUCLEI_TILES, SPLITS, write_table

MAX_LISTED = 10


def prepare_tiles(raw: str | Path, out: str | Path) -> dict[str, Any]:
    """Check ``raw`` and write its tiles to ``out`` (replaced whole); returns the report."""
    raw, out = Path(raw), Path(out)
    records, problems = validate(raw)
    if problems:
        listed = "; ".join(f"{p.path}: {p.reason} ({p.detail})" for p in problems[:MAX_LISTED])
        more = f"; and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise DatasetError(f"{raw}: {len(problems)} unusable file(s): {listed}{more}")
    if records.empty:
        raise DatasetError(f"{raw}: no image/mask pairs")
    twice = records["name"][records["name"].duplicated()].tolist()
    if twice:
        raise DatasetError(f"{raw}: tile names used in more than one split folder: {twice[:10]}")
    layout = discover(raw)
    classes = {folder: read_classes(raw, folder) for folder in layout.folders}
    rows: list[dict[str, object]] = []
    with atomic_dir(out) as tmp:
        (tmp / IMAGES).mkdir()
        (tmp / MASKS).mkdir()
        for record in records.itertuples(index=False):
            name, split = str(record.name), str(record.given_split)
            pair = Pair(name, str(record.image), str(record.mask), split)
            got = load_pair(raw, pair, classes[split].get(name))
            (tmp / IMAGES / f"{name}.png").write_bytes(encode_png(got.rgb))
            (tmp / MASKS / f"{name}.png").write_bytes(encode_instances(got.annotation.instances))
            rows += classes_rows(name, got.annotation)
        pd.DataFrame(rows, columns=list(CLASSES_COLUMNS)).to_csv(
            tmp / CLASSES_FILE, index=False, lineterminator="\n"
        )
        write_table(
            tmp / Path(NUCLEI_TILES.path).name, records[list(NUCLEI_TILES.columns)], NUCLEI_TILES
        )
    return {
        "layout": layout.kind,
        "tiles": len(records),
        "nuclei": int(records["nuclei"].astype(int).sum()),
        "positive": int(records["positive"].astype(int).sum()),
        "classified": int(records["classified"].astype(int).sum()),
        "given_splits": sorted({s for s in records["given_split"].astype(str) if s}),
    }


def split_tiles(
    tiles: pd.DataFrame, params: SegSplitParams, *, group_pattern: str | None, seed: int
) -> pd.DataFrame:
    """``tables.NUCLEI_SPLIT`` rows for ``tiles`` (``tables.NUCLEI_TILES``)."""
    names = tiles["name"].astype(str).reset_index(drop=True)
    if group_pattern:
        groups, _ = groups_from_pattern(names, group_pattern)
    else:
        groups = names.rename("group")
    given = tiles["given_split"].astype(str).reset_index(drop=True)
    split = given.copy()
    if (given == "").all():  # layout 1: all three splits from the tiles
        split[:] = stratified_group_split(
            ["tile"] * len(names), groups, val=params.val, test=params.test, seed=seed
        )
    elif not (given == "val").any():  # layout 2 without val: carve it from the given train
        train = np.flatnonzero(given == "train")
        carved = stratified_group_split(
            ["tile"] * len(train), groups[train], val=params.val, test=0.0, seed=seed
        )
        split[train] = carved
    for needed in SPLITS:
        if not (split == needed).any():
            raise SplitError(f"no {needed!r} tiles after the split ({len(names)} tiles)")
    leaked = pd.DataFrame({"g": groups, "s": split}).groupby("g")["s"].nunique()
    if (leaked > 1).any():
        raise SplitError(
            f"patients/slides in more than one given split: {sorted(leaked[leaked > 1].index)[:10]}"
        )
    return pd.DataFrame({"name": names, "split": split, "group": groups.astype(str)})
