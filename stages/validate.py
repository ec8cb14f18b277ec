"""Stage `validate`: check every raw file and write the manifest of accepted images.

Reads ``data/``; writes ``processed/manifest.csv`` and ``reports/data/validation.json``
(docs/pipeline.md). Params: the ``validate`` section (conf/validate/default.yaml).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ihcflow.config import load_params, section
from ihcflow.data.layout import DatasetError
from ihcflow.errors import PipelineError
from ihcflow.files import write_json_atomic
from ihcflow.tables import MANIFEST, write_table
from ihcflow.validation import (
    ValidateParams,
    ValidationFailed,
    ValidationResult,
    summarize,
    validate_dataset,
)


def run(
    params: ValidateParams, *, data: Path, manifest: Path, report: Path, workers: int = 0
) -> ValidationResult:
    """Validate ``data``; write the manifest and the report. A data set that cannot be used
    leaves no manifest (a stale one must not feed the next stages) and, when validation got
    that far, the report of what was found."""
    try:
        result = validate_dataset(
            data,
            policy=params.policy,
            max_pixels=params.max_pixels,
            max_bytes=params.max_bytes,
            min_per_class=params.min_per_class,
            workers=workers,
        )
    except DatasetError as exc:
        manifest.unlink(missing_ok=True)
        if isinstance(exc, ValidationFailed):
            write_json_atomic(report, exc.report)
            raise ValidationFailed(f"{exc}\nreport written to {report}", exc.report) from None
        report.unlink(missing_ok=True)
        raise
    write_table(manifest, result.manifest, MANIFEST)
    write_json_atomic(report, result.report)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data"), help="raw data folder")
    parser.add_argument("--manifest", type=Path, default=Path(MANIFEST.path))
    parser.add_argument("--report", type=Path, default=Path("reports/data/validation.json"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument(
        "--workers", type=int, default=0, help="processes decoding files (0: every core)"
    )
    args = parser.parse_args(argv)
    try:
        result = run(
            section(load_params(args.params), "validate", ValidateParams),
            data=args.data,
            manifest=args.manifest,
            report=args.report,
            workers=args.workers,
        )
    except PipelineError as exc:
        raise SystemExit(f"validate: {exc}") from None
    print(f"validate: {summarize(result.report)}")
    print(f"validate: wrote {args.manifest} and {args.report}")


if __name__ == "__main__":
    main()
