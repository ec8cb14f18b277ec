"""``ihcflow drift``: compare prediction logs or a folder of new images with the training data.

Exit codes: 0 no drift, 1 drift, 2 error or not enough data to decide (the report says why), so
a cron job or CI step can act on it; ``--exit-zero`` returns 0 whenever a report was written.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from ihcflow.config import ConfigError
from ihcflow.images.prepare import ImageParams
from ihcflow.monitoring.drift import WINDOWS, DriftParams
from ihcflow.monitoring.report import EXIT_ERROR, EXIT_NO_DRIFT, run_drift, write_report
from ihcflow.monitoring.sources import (
    DriftInputError,
    Model,
    is_log_source,
    load_model,
    load_reference,
    parse_since,
    parse_time,
    read_image_folder,
    read_logs,
)

DEFAULT_CACHE = ".cache/drift"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--reference",
        type=Path,
        default=Path("reports/data/features.csv"),
        help="training feature table (the preprocess stage's features.csv)",
    )
    add(
        "--split",
        type=Path,
        default=None,
        help="split table; only its --reference-split rows are the reference (default: "
        "<root>/processed/split.csv when it exists; 'none': every row of --reference)",
    )
    add("--reference-split", default="train", help="split used as reference (default: train)")
    add(
        "--current",
        type=Path,
        default=Path("logs/predictions"),
        help="prediction logs (a folder of predictions-*.jsonl, also read in its <pod>/ "
        "sub-folders, or one .jsonl) or an image folder",
    )
    add(
        "--model",
        type=Path,
        default=None,
        help="registered model.onnx (model.json beside it): embeddings, predicted classes, "
        "the model version the logs must match",
    )
    add(
        "--reference-embeddings",
        type=Path,
        default=None,
        help=".npz with 'sha256' and 'embedding' (and 'predicted') for the reference rows",
    )
    add("--since", default=None, help="only logs from this time: 7d, 36h, 2w or an ISO date")
    add("--until", default=None, help="only logs before this ISO time (default: now)")
    add("--window", choices=WINDOWS, default="none", help="one summary row per day or week")
    add(
        "--model-version",
        default=None,
        help="compare logs of this version (default: the --model's, else the newest logged)",
    )
    add(
        "--strict-version",
        action="store_true",
        help="fail (exit 2) if the logs hold other model versions instead of excluding them",
    )
    add("--drift-share", type=float, default=None, help="override params drift.drift_share")
    add("--min-rows", type=int, default=None, help="override params drift.min_rows")
    add(
        "--params",
        type=Path,
        default=Path("params.yaml"),
        help="its 'drift' section sets the tests (defaults apply without it)",
    )
    add("--root", type=Path, default=Path(), help="split table image paths are relative to it")
    add("--out", type=Path, default=Path("reports/drift"), help="report folder (replaced)")
    add(
        "--exit-zero",
        action="store_true",
        help="exit 0 whenever the report was written (a DVC stage must not fail on drift)",
    )


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``drift`` on the ``ihcflow`` command's subparsers."""
    parser = subparsers.add_parser(
        "drift",
        help="drift report: prediction logs or new images vs. the training data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=cmd_drift)
    return parser


def _image_params(args: argparse.Namespace) -> ImageParams | None:
    """The ``preprocess`` section of ``--params`` (how the reference images were measured),
    for an image folder checked without ``--model``; None without one."""
    if not args.params.is_file():
        return None
    node = OmegaConf.select(OmegaConf.load(args.params), "preprocess")
    if node is None:
        return None
    try:
        return ImageParams.from_section(node)
    except ConfigError as exc:
        raise DriftInputError(f"{args.params}: {exc}") from None


def _params(args: argparse.Namespace) -> tuple[DriftParams, str]:
    section: dict[str, Any] = {}
    if args.params.is_file():
        cfg = OmegaConf.load(args.params)
        node = OmegaConf.select(cfg, "drift")
        if node is not None:
            section = dict(OmegaConf.to_container(node, resolve=True))  # type: ignore[arg-type]
    cache_dir = str(section.get("cache_dir", DEFAULT_CACHE))
    params = DriftParams.from_mapping(section)
    overrides = {
        k: v
        for k, v in (("drift_share", args.drift_share), ("min_rows", args.min_rows))
        if v is not None
    }
    if overrides:
        params = DriftParams(**{**vars(params), **overrides})
    return params, cache_dir


def _split(args: argparse.Namespace) -> Path | None:
    if args.split is not None:
        return None if str(args.split).lower() == "none" else args.split
    default = args.root / "processed/split.csv"
    return default if default.is_file() else None


def drift(args: argparse.Namespace) -> int:
    """Run the check and write the report; returns the exit code (exceptions propagate)."""
    params, cache_dir = _params(args)
    model: Model | None = load_model(args.model) if args.model is not None else None
    until = parse_time(args.until, "--until") if args.until else None
    now = until if until is not None else pd.Timestamp.now(tz="UTC")
    since = parse_since(args.since, now) if args.since else None
    if since is not None and since >= now:
        raise DriftInputError(f"--since {args.since} is not before --until {now.isoformat()}")
    reference = load_reference(
        args.reference,
        split_csv=_split(args),
        split=args.reference_split,
        model=model,
        embeddings_file=args.reference_embeddings,
        root=args.root,
        cache_dir=args.root / cache_dir,
        features=params.features,
    )
    if is_log_source(args.current):
        current = read_logs(
            args.current,
            since=since,
            until=until,
            model_version=args.model_version or (model.version if model else None),
            model_name=model.name if model and not args.model_version else None,
            strict_version=args.strict_version,
            features=params.features,
        )
    elif args.current.is_dir():
        if args.window != "none" or since is not None or until is not None:
            raise DriftInputError(
                f"{args.current}: an image folder has no times; --window/--since/--until need "
                "prediction logs"
            )
        current = read_image_folder(
            args.current,
            model=model,
            image_params=None if model else _image_params(args),
            features=params.features,
        )
    else:
        raise DriftInputError(
            f"{args.current}: not found (expected a folder of predictions-*.jsonl, a .jsonl "
            "file or an image folder)"
        )
    result = run_drift(
        reference,
        current,
        params,
        window=args.window,
        since=since,
        until=until,
        model=f"{model.name} {model.version}" if model else None,
    )
    write_report(result, args.out)
    status = result.overall.status.replace("_", " ").upper()
    print(f"drift: {status}: {args.out}/summary.md")
    print(Path(args.out, "summary.md").read_text(encoding="utf-8").split("\n")[2])
    return EXIT_NO_DRIFT if args.exit_zero else result.exit_code


def cmd_drift(args: argparse.Namespace) -> int:
    """``drift`` with every failure mapped to exit code 2 (1 means drift, never a crash)."""
    try:
        return drift(args)
    except (DriftInputError, ValueError, OSError) as exc:
        print(f"ihcflow drift: error: {exc}", file=sys.stderr)
    except Exception:  # a bug: show it, but still exit 2 so "1 = drift" stays true
        traceback.print_exc()
        print("ihcflow drift: internal error (see above)", file=sys.stderr)
    return EXIT_ERROR


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ihcflow.monitoring",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return cmd_drift(parser.parse_args(argv))
