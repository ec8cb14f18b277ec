"""`ihcflow report pr`: the pull-request report on stdout or in a file (docs/ci.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ihcflow.io import write_bytes_atomic, write_text_atomic


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
    from ihcflow.io import read_json
    from ihcflow.reporting.metrics import format_metrics, registered_line

    try:
        print(format_metrics(read_json(args.metrics, "metrics (run `dvc repro`)")))
        print(registered_line(args.model))
    except (FileNotFoundError, ValueError) as exc:
        print(f"ihcflow report metrics: {exc}", file=sys.stderr)
        return 2
    return 0


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
    metrics.add_argument("--metrics", type=Path, default=Path("reports/metrics.json"))
    metrics.add_argument("--model", type=Path, default=Path("models/model.json"))
    metrics.set_defaults(func=_cmd_metrics)
