"""`ihcflow report pr`: the pull-request report on stdout or in a file (docs/ci.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ihcflow.files import write_bytes_atomic, write_text_atomic
from ihcflow.model_format import JSON_NAME
from ihcflow.reporting.metrics import TOLERANCE_FILE
from ihcflow.tables import METRICS, SEG_METRICS


def _cmd_pr(args: argparse.Namespace) -> int:
    from ihcflow.reporting.pr import collect, render

    report = collect(args.root, args.base, base_label=args.base_label)
    if args.assets_dir:
        copies = []
        for title, path in report.images:
            write_bytes_atomic(args.assets_dir / path.name, path.read_bytes())
            copies.append((title, (args.assets_dir / path.name).resolve()))
        report.images = copies
    out: Path | None = args.out
    text = render(
        report,
        image_base_url=args.image_base_url,
        images_relative_to=(out.resolve().parent if out else Path.cwd()),
        notes=args.note,
        command=f"ihcflow report pr --base {args.base_label or args.base}",
    )
    if out:
        write_text_atomic(out, text)
        gate = "n/a" if report.gate is None else "passed" if report.gate.passed else "FAILED"
        print(f"wrote {out} ({len(text)} characters; gate {gate})", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _cmd_metrics(args: argparse.Namespace) -> int:
    from ihcflow.files import read_json
    from ihcflow.reporting import metrics as m

    try:
        here = read_json(args.metrics, "metrics (run `dvc repro`)")
        print(m.format_metrics(here))
        print(m.registered_line(args.model))
        if args.seg_metrics.is_file():  # the second task, when the pipeline has run it
            seg = read_json(args.seg_metrics, "segmentation metrics")
            print(m.format_segmentation(seg))
            print(m.registered_line(args.seg_model, "aji"))
        if args.against:
            print(_against(args, here))
    except (FileNotFoundError, ValueError) as exc:
        print(f"ihcflow report metrics: {exc}", file=sys.stderr)
        return 2
    return 0


def _against(args: argparse.Namespace, here: dict[str, Any]) -> str:
    """The headline metrics against the ones committed at ``args.against``."""
    from ihcflow.files import parse_json
    from ihcflow.reporting import metrics as m
    from ihcflow.reporting.pr import read_at, resolve_rev

    root = Path.cwd()
    commit = resolve_rev(root, args.against)
    text, why = read_at(root, args.metrics.as_posix(), commit)
    if text is None:
        raise ValueError(f"{args.metrics} at {args.against}: cannot read it ({why})")
    committed = parse_json(text, f"{args.metrics} at {args.against}")
    tolerance = m.read_tolerance(args.tolerance) if args.tolerance.is_file() else {}
    source = str(args.tolerance) if tolerance else f"{args.tolerance}: absent, none measured"
    rows = m.compare_metrics(here, committed, tolerance)
    return m.format_comparison(rows, f"{args.against} ({commit[:7]})", source)


def add_parser(subparsers: Any) -> None:
    """Register `ihcflow report ...` on the top-level parser's subparsers."""
    report = subparsers.add_parser(
        "report", help="reports for people (test metrics, the pull-request comment)"
    )
    sub = report.add_subparsers(dest="report_command", required=True)
    pr = sub.add_parser(
        "pr",
        help="Markdown: what the workspace changed vs a base revision (metrics, params, gate, "
        "plots, data, drift)",
    )
    pr.add_argument("--base", default="main", help="git revision to compare with (default: main)")
    pr.add_argument("--base-label", help="name shown for the base, e.g. main when --base is a sha")
    pr.add_argument("--out", type=Path, help="write the Markdown to this file (default: stdout)")
    pr.add_argument(
        "--assets-dir", type=Path, help="copy the plots (PNG) here, e.g. to upload them in CI"
    )
    pr.add_argument(
        "--image-base-url",
        help="reference the plots as URL/<name>.png (where CI publishes them); default: paths "
        "relative to --out (or the current folder)",
    )
    pr.add_argument(
        "--note", action="append", default=[], help="a line shown at the top (repeatable)"
    )
    pr.add_argument("--root", type=Path, default=Path(), help="repository root (default: .)")
    pr.set_defaults(func=_cmd_pr)
    metrics = sub.add_parser(
        "metrics", help="the test metrics and the registered model, as text (make repro ends so)"
    )
    metrics.add_argument("--metrics", type=Path, default=Path(METRICS))
    metrics.add_argument("--model", type=Path, default=Path("models") / JSON_NAME)
    metrics.add_argument("--seg-metrics", type=Path, default=Path(SEG_METRICS))
    metrics.add_argument(
        "--seg-model", type=Path, default=Path("models") / "segmentation" / JSON_NAME
    )
    metrics.add_argument(
        "--against",
        metavar="REV",
        help="also compare the headline metrics with those committed at REV (e.g. HEAD): the "
        "difference, and whether it is inside the spread training on another CPU gives",
    )
    metrics.add_argument(
        "--tolerance",
        type=Path,
        default=TOLERANCE_FILE,
        help="the robustness benchmark's results (its spreads are the tolerances)",
    )
    metrics.set_defaults(func=_cmd_metrics)
