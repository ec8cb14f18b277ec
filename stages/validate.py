"""Stage `validate`: check every raw file and write the manifest of accepted images.

Reads ``data/``; writes ``processed/manifest.csv`` and ``reports/data/validation.json``
(docs/pipeline.md). Params: the ``validate`` section (conf/validate/default.yaml).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ihcflow.config import load_params
from ihcflow.data.layout import DatasetError
from ihcflow.files import write_json_atomic
from ihcflow.tables import MANIFEST, write_table
from ihcflow.validation import ValidationFailed, ValidationResult, summarize, validate_dataset

PARAM_KEYS = ("policy", "max_pixels", "max_bytes", "min_per_class")


def run(
    data_dir: str | Path, params: Mapping[str, Any] | DictConfig, *, workers: int = 0
) -> ValidationResult:
    """Validate ``data_dir`` with the ``validate`` params section."""
    if isinstance(params, DictConfig):
        params = OmegaConf.to_container(params, resolve=True)  # type: ignore[assignment]
    missing = [k for k in PARAM_KEYS if k not in params]
    if missing:
        raise KeyError(f"params section `validate` lacks {missing} (see conf/validate/)")
    return validate_dataset(
        data_dir,
        policy=str(params["policy"]),
        max_pixels=int(params["max_pixels"]),
        max_bytes=int(params["max_bytes"]),
        min_per_class=int(params["min_per_class"]),
        workers=workers,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data", help="raw data folder")
    parser.add_argument("--manifest", default=MANIFEST.path)
    parser.add_argument("--report", default="reports/data/validation.json")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument(
        "--workers", type=int, default=0, help="processes decoding files (0: every core)"
    )
    args = parser.parse_args(argv)
    params = load_params(args.params)["validate"]
    try:
        result = run(args.data, params, workers=args.workers)
    except DatasetError as exc:
        # No manifest from a failed run: a stale one must not feed the next stages.
        Path(args.manifest).unlink(missing_ok=True)
        if isinstance(exc, ValidationFailed):
            write_json_atomic(args.report, exc.report)
            raise SystemExit(
                f"validate: {exc}\nvalidate: report written to {args.report}"
            ) from None
        Path(args.report).unlink(missing_ok=True)
        raise SystemExit(f"validate: {exc}") from None
    write_table(args.manifest, result.manifest, MANIFEST)
    write_json_atomic(args.report, result.report)
    print(f"validate: {summarize(result.report)}")
    print(f"validate: wrote {args.manifest} and {args.report}")


if __name__ == "__main__":
    main()
