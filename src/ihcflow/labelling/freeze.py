"""``ihcflow label freeze-split``: keep today's train/val/test split of a layout-1 ``data/``.

In layout 1 the split stage recomputes the split from the whole data set, so adding labelled
images moves existing ones between splits, and a model before and after retraining are no
longer tested on the same images. Freezing writes ``data/`` in layout 2 exactly as
``processed/split.csv`` splits it (``data/<split>/<class>/<file>``, val included): the split
stage then keeps that test set and val, and ``label pull`` adds to train only.

The new folder is built from hard links beside ``data/`` and swapped in at once; ``groups.csv``
and ``labelled.csv`` get the new paths. Every file must be in the split table (a file the
validator rejected is not: remove it first), and the table must describe today's ``data/``.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import pandas as pd

from ihcflow.data.layout import discover
from ihcflow.files import atomic_dir, sha256_file
from ihcflow.tables import SPLIT, read_table

METADATA_WITH_PATHS = ("groups.csv", "labelled.csv")  # files under data/ with a `path` column


def freeze_split(data_dir: Path, split_csv: Path) -> dict[str, int]:
    """Rewrite ``data_dir`` (layout 1) into layout 2 by ``split_csv``; images per split."""
    layout = discover(data_dir)
    if layout.kind != 1:
        raise ValueError(f"{data_dir} is already layout 2 (train/test folders): nothing to freeze")
    table = read_table(
        split_csv, SPLIT, error=ValueError, absent="split table not found (`dvc repro`)"
    )
    split_of = dict(zip(table["path"], table["split"], strict=True))
    sha_of = dict(zip(table["path"], table["sha256"], strict=True))
    files = [e.path for e in layout.entries]
    unlisted = [p for p in files if p not in split_of]
    if unlisted:
        raise ValueError(
            f"{len(unlisted)} file(s) of {data_dir} are not in {split_csv} (e.g. {unlisted[:3]}):"
            " rejected by the validator (reports/data/validation.json says why) or added since "
            "the last `dvc repro`; remove them or rerun the pipeline first"
        )
    gone = sorted(set(split_of) - set(files))
    stale = [p for p in files if sha256_file(data_dir / p) != sha_of[p]]
    if gone or stale:
        raise ValueError(
            f"{split_csv} does not describe today's {data_dir} ({len(gone)} listed file(s) "
            f"missing, {len(stale)} changed, e.g. {(gone + stale)[:3]}): run `dvc repro` first"
        )
    new_path = {p: f"{split_of[p]}/{p}" for p in files}
    with atomic_dir(data_dir) as tmp:
        for old, new in new_path.items():
            (tmp / new).parent.mkdir(parents=True, exist_ok=True)
            os.link(data_dir / old, tmp / new)
        for meta in sorted(p for p in data_dir.iterdir() if p.is_file()):
            if meta.name in METADATA_WITH_PATHS:
                frame = pd.read_csv(meta, dtype=str, keep_default_na=False)
                frame["path"] = frame["path"].map(lambda p: new_path.get(p, p))
                frame.to_csv(tmp / meta.name, index=False)
            else:
                shutil.copy2(meta, tmp / meta.name)
    counts = Counter(split_of[p] for p in files)
    return {s: counts.get(s, 0) for s in ("train", "val", "test")}
