"""Stage `preprocess`: denoise, correct, normalise and resize every image; record its features.

Reads `processed/manifest.csv` and `data/`; writes `processed/images/<sha256>.png`,
`reports/data/features.csv` and `reports/data/preprocess.json` (see docs/pipeline.md).
Unchanged images are reused from the cache in `preprocess.cache_dir`.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Only light imports at the top: each worker process of preprocess_dataset imports this script
# again (multiprocessing's forkserver re-runs __main__'s top level), and pandas there would
# double a worker's start-up (~0.5 s instead of ~0.2 s with ihcflow.images.worker alone).
if TYPE_CHECKING:
    from ihcflow.preprocess import PreprocessParams


def run(
    params: PreprocessParams,
    *,
    data: Path,
    manifest: Path,
    images: Path,
    features: Path,
    report: Path,
    workers: int | None = None,
) -> dict[str, Any]:
    """Preprocess the images of ``manifest`` into ``images``; write the feature table and the
    report, and return the report (``workers`` overrides ``params.workers``)."""
    from ihcflow.files import write_json_atomic
    from ihcflow.preprocess import MANIFEST_COLUMNS, PreprocessError, preprocess_dataset
    from ihcflow.tables import FEATURES, MANIFEST, read_table, write_table

    table = read_table(manifest, MANIFEST, columns=MANIFEST_COLUMNS, error=PreprocessError)
    feature_table, stats = preprocess_dataset(
        table,
        data,
        images,
        params,
        cache_dir=Path(params.cache_dir) if params.cache_dir else None,
        workers=params.workers if workers is None else workers,
    )
    result = {**stats, "params": asdict(params)}
    write_table(features, feature_table, FEATURES)
    write_json_atomic(report, result)
    return result


def main(argv: list[str] | None = None) -> None:
    from ihcflow.config import load_params
    from ihcflow.errors import PipelineError
    from ihcflow.images.prepare import tune_malloc
    from ihcflow.preprocess import PreprocessParams
    from ihcflow.tables import FEATURES, IMAGES_DIR, MANIFEST

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
    try:
        report = run(
            PreprocessParams.from_section(load_params(args.params).get("preprocess")),
            data=args.data,
            manifest=args.manifest,
            images=args.out,
            features=args.features,
            report=args.report,
            workers=args.workers,
        )
    except PipelineError as exc:
        raise SystemExit(f"preprocess: {exc}") from None
    print(
        f"preprocess: {report['n']} images, {report['n_cached']} cached, "
        f"{report['n_processed']} processed, {report['images_per_s']} images/s "
        f"({report['workers']} workers, {report['seconds']} s) -> {args.out}"
    )


if __name__ == "__main__":
    main()
