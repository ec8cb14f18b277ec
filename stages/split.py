"""Stage `split`: assign every image to train/val/test, group-aware and checked for leakage.

Reads processed/manifest.csv, reports/data/features.csv and data/groups.csv (optional);
writes processed/split.csv and reports/data/split.json.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ihcflow import config
from ihcflow.config import load_params, section
from ihcflow.errors import PipelineError
from ihcflow.files import write_json_atomic
from ihcflow.split import SplitParams, assign_groups, read_split_inputs, split_dataset
from ihcflow.tables import FEATURES, IMAGES_DIR, MANIFEST, SPLIT, write_table


def run(
    params: SplitParams,
    *,
    seed: int,
    manifest: Path,
    features: Path,
    data: Path,
    images: Path,
    out: Path,
    report: Path,
) -> dict[str, Any]:
    """Split; write ``out`` (processed/split.csv) and ``report``, and return the report. A
    failed split leaves neither (a stale one must not feed training)."""
    out.unlink(missing_ok=True)
    report.unlink(missing_ok=True)
    frame = read_split_inputs(manifest, features)
    groups_csv = data / params.groups_file if params.groups_file else None
    groups = assign_groups(frame, groups_csv=groups_csv, pattern=params.group_pattern)
    table, result = split_dataset(
        frame, groups, val=params.val, test=params.test, seed=seed, images_dir=images
    )
    result["groups"]["file"] = str(groups_csv) if groups.source == "file" else None
    result["groups"]["pattern"] = params.group_pattern if groups.source == "pattern" else None
    write_table(out, table, SPLIT)
    write_json_atomic(report, result)
    return result


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
    try:
        params = load_params(args.params)
        report = run(
            section(params, "split", SplitParams),
            seed=config.seed(params),
            manifest=args.manifest,
            features=args.features,
            data=args.data,
            images=args.images,
            out=args.out,
            report=args.report,
        )
    except PipelineError as exc:
        raise SystemExit(f"split: {exc}") from None
    _print_counts(report)
    print(f"split: wrote {args.out} and {args.report}")


if __name__ == "__main__":
    main()
