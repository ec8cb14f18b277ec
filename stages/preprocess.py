"""Stage `preprocess`: denoise, correct, normalise and resize every image; record its features.

Reads `processed/manifest.csv` and `data/`; writes `processed/images/<sha256>.png`,
`reports/data/features.csv` and `reports/data/preprocess.json` (see docs/pipeline.md).
Unchanged images are reused from the cache in `preprocess.cache_dir`.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from ihcflow.config import load_params
from ihcflow.files import write_json_atomic
from ihcflow.images.prepare import tune_malloc
from ihcflow.preprocess import MANIFEST_COLUMNS, PreprocessError, preprocess_dataset
from ihcflow.tables import FEATURES, IMAGES_DIR, MANIFEST, read_table, write_table


def run(
    params: Mapping[str, Any],
    data_dir: Path,
    manifest_path: Path,
    out_dir: Path,
    *,
    workers: int | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Preprocess the images of ``manifest_path`` into ``out_dir``; return features and report."""
    manifest = read_table(manifest_path, MANIFEST, columns=MANIFEST_COLUMNS, error=PreprocessError)
    cache_dir = params.get("cache_dir")
    features, stats = preprocess_dataset(
        manifest,
        data_dir,
        out_dir,
        params,
        cache_dir=Path(cache_dir) if cache_dir else None,
        workers=int(params.get("workers", 0)) if workers is None else workers,
    )
    plain = OmegaConf.to_container(params) if isinstance(params, DictConfig) else dict(params)
    report = {**stats, "params": plain}
    return features, report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--manifest", type=Path, default=Path(MANIFEST.path))
    parser.add_argument("--out", type=Path, default=Path(IMAGES_DIR))
    parser.add_argument("--features", type=Path, default=Path(FEATURES.path))
    parser.add_argument("--report", type=Path, default=Path("reports/data/preprocess.json"))
    parser.add_argument("--workers", type=int, default=None, help="override preprocess.workers")
    args = parser.parse_args(argv)

    tune_malloc()  # this process may preprocess a few images itself (incremental runs)
    params = load_params(args.params).preprocess
    features, report = run(params, args.data, args.manifest, args.out, workers=args.workers)
    write_table(args.features, features, FEATURES)
    write_json_atomic(args.report, report)
    print(
        f"preprocess: {report['n']} images, {report['n_cached']} cached, "
        f"{report['n_processed']} processed, {report['images_per_s']} images/s "
        f"({report['workers']} workers, {report['seconds']} s) -> {args.out}"
    )


if __name__ == "__main__":
    main()
