"""Stage `seg_split`: put every nuclei tile in train/val/test, one patient's tiles together.

Reads processed/nuclei/tiles.csv; writes processed/nuclei_split.csv. Params:
``segmentation.split`` (fractions), the classifier's ``split.group_pattern`` and ``seed``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ihcflow import config
from ihcflow.config import load_params, section
from ihcflow.errors import PipelineError
from ihcflow.segmentation.params import SegSplitParams, split_params
from ihcflow.segmentation.prepare import split_tiles
from ihcflow.split import SplitParams
from ihcflow.tables import NUCLEI_SPLIT, NUCLEI_TILES, read_table, write_table


def run(
    params: SegSplitParams, *, group_pattern: str | None, seed: int, tiles: Path, out: Path
) -> pd.DataFrame:
    """Split the tiles of ``tiles``; write and return the table. A failed split leaves none."""
    out.unlink(missing_ok=True)
    table = split_tiles(
        read_table(tiles, NUCLEI_TILES), params, group_pattern=group_pattern, seed=seed
    )
    write_table(out, table, NUCLEI_SPLIT)
    return table


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=Path, default=Path(NUCLEI_TILES.path))
    parser.add_argument("--out", type=Path, default=Path(NUCLEI_SPLIT.path))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        table = run(
            split_params(params),
            group_pattern=section(params, "split", SplitParams).group_pattern,
            seed=config.seed(params),
            tiles=args.tiles,
            out=args.out,
        )
    except PipelineError as exc:
        raise SystemExit(f"seg_split: {exc}") from None
    counts = table.groupby("split").agg(tiles=("name", "size"), groups=("group", "nunique"))
    print(counts.to_string())
    print(f"seg_split: wrote {args.out}")


if __name__ == "__main__":
    main()
