"""Stage `split`: assign every image to train/val/test, group-aware and checked for leakage.

Reads processed/manifest.csv, reports/data/features.csv and data/groups.csv (optional);
writes processed/split.csv and reports/data/split.json.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ihcflow.config import load_params
from ihcflow.files import write_json_atomic
from ihcflow.split import SplitError, assign_groups, read_split_inputs, split_dataset
from ihcflow.tables import FEATURES, IMAGES_DIR, MANIFEST, SPLIT, write_table


def run(
    params: Mapping[str, Any],
    *,
    seed: int,
    manifest: Path,
    features: Path,
    data_dir: Path,
    images: Path = Path(IMAGES_DIR),
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Return the rows of ``processed/split.csv`` and the ``split.json`` report."""
    frame = read_split_inputs(manifest, features)
    groups_file = params.get("groups_file")
    groups_csv = data_dir / groups_file if groups_file else None
    groups = assign_groups(frame, groups_csv=groups_csv, pattern=params.get("group_pattern"))
    table, report = split_dataset(
        frame, groups, val=params["val"], test=params["test"], seed=int(seed), images_dir=images
    )
    report["groups"]["file"] = str(groups_csv) if groups.source == "file" else None
    report["groups"]["pattern"] = (
        params.get("group_pattern") if groups.source == "pattern" else None
    )
    return table, report


def _print_counts(report: dict[str, Any]) -> None:
    counts = pd.DataFrame(report["counts"]).T
    counts["total"] = counts.sum(axis=1)
    print(counts.to_string())
    for warning in report["warnings"]:
        print(f"warning: {warning}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=Path(MANIFEST.path))
    parser.add_argument("--features", type=Path, default=Path(FEATURES.path))
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument(
        "--images", type=Path, default=Path(IMAGES_DIR), help="the preprocess stage's --out"
    )
    parser.add_argument("--out", type=Path, default=Path(SPLIT.path))
    parser.add_argument("--report", type=Path, default=Path("reports/data/split.json"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    params = load_params(args.params)
    try:
        table, report = run(
            params.split,
            seed=params.seed,
            manifest=args.manifest,
            features=args.features,
            data_dir=args.data,
            images=args.images,
        )
    except SplitError as exc:
        # No split from a failed run: a stale one must not feed training.
        args.out.unlink(missing_ok=True)
        args.report.unlink(missing_ok=True)
        raise SystemExit(f"split: {exc}") from None
    write_table(args.out, table, SPLIT)
    write_json_atomic(args.report, report)
    _print_counts(report)
    print(f"split: wrote {args.out} and {args.report}")


if __name__ == "__main__":
    main()
