"""``ihcflow label select|push|pull|compare``: the labelling loop (docs/labelling.md)."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

DEFAULT_BATCHES = Path("labelling")


def _cmd_select(args: argparse.Namespace) -> int:
    from ihcflow.labelling import select
    from ihcflow.labelling.model import load_model

    if (args.folder is None) == (args.from_uploads is None):
        raise ValueError("give a folder of new images, or --from-uploads DIR (not both)")
    if args.from_uploads is not None:
        since = dt.date.fromisoformat(args.since) if args.since else None
        candidates, skipped = select.upload_candidates(args.from_uploads, since)
        others, source = 0, f"uploads kept by the server in {args.from_uploads}"
        log_dir = args.log_dir if args.log_dir.is_dir() else None
    else:
        if args.since:
            raise ValueError("--since applies to --from-uploads only")
        log_dir = None
        candidates, others = select.folder_candidates(args.folder)
        skipped, source = [], f"folder {args.folder}"
    out = args.out or DEFAULT_BATCHES / dt.datetime.now(dt.UTC).strftime("batch-%Y%m%d-%H%M%S")
    summary = select.select_batch(
        candidates,
        load_model(args.models),
        out,
        n=args.n,
        data_dir=args.data,
        root=Path.cwd(),
        method=args.uncertainty,
        ood_weight=args.ood_weight,
        balance=args.balance,
        source=source,
        skipped=skipped,
        others=others,
        log_dir=log_dir,
    )
    print(summary.describe())
    print(f"next: ihcflow label push {out}")
    return 0


def _studio() -> Any:
    from ihcflow.labelling.studio import Studio, connection

    url, key = connection()
    return Studio(url, key)


def _cmd_push(args: argparse.Namespace) -> int:
    from ihcflow.labelling.push import push

    if args.no_api:
        result = push(args.batch, None)
        print(result.describe())
        print("upload it in Label Studio: the project's Import button (the images travel inside)")
        return 0
    with _studio() as studio:
        result = push(
            args.batch,
            studio,
            title=args.title,
            project_id=args.project,
            annotators=args.annotators,
        )
        print(result.describe(studio.url))
    return 0


def _cmd_pull(args: argparse.Namespace) -> int:
    from ihcflow.labelling import pull

    common: dict[str, Any] = {
        "data_dir": args.data,
        "batch": args.batch,
        "batches_dir": args.batches_dir,
        "split": args.split,
        "version": not args.no_dvc,
    }
    if args.export is not None:
        tasks = pull.read_export(args.export)
        result = pull.pull(tasks, source=str(args.export), project=args.export.name, **common)
    else:
        project = args.project
        if project is None:
            if args.batch is None:
                raise ValueError(
                    "say where the annotations are: --export FILE, --project ID, or --batch DIR"
                )
            _, project = pull.pushed_project(args.batch)
        with _studio() as studio:
            tasks = studio.export(project)
            result = pull.pull(
                tasks,
                source=f"{studio.url} project {project}",
                project=str(project),
                names=studio.user_names(),
                **common,
            )
    print(result.describe())
    report = args.report or (args.batch / pull.PULL_JSON if args.batch is not None else None)
    if report is not None:
        pull.write_report(result, report)
        print(f"report: {report}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from ihcflow.files import write_json_atomic
    from ihcflow.labelling.compare import compare, describe

    result = compare(Path.cwd(), args.base, models_dir=args.models, data_dir=args.data)
    print(describe(result))
    if args.json:
        write_json_atomic(args.json, result)
    return 0


def _cmd_freeze(args: argparse.Namespace) -> int:
    from ihcflow.data.provenance import dvc_add
    from ihcflow.labelling.freeze import freeze_split

    counts = freeze_split(args.data, args.split_csv)
    print(
        f"{args.data} is layout 2 now, as {args.split_csv} split it: "
        + ", ".join(f"{s} {n}" for s, n in counts.items())
    )
    dvc_file = dvc_add(args.data, "rewritten as layout 2", "run it yourself once it is fixed")
    if dvc_file is not None:
        print(f"`dvc add {args.data}` done: `git add {dvc_file.name} && git commit`, `dvc repro`")
    return 0


def add_parser(subparsers: Any) -> None:
    """Register ``ihcflow label ...`` on the top-level parser's subparsers."""
    label = subparsers.add_parser(
        "label", help="choose images to label, send them to Label Studio, bring the labels back"
    )
    sub = label.add_subparsers(dest="label_command", required=True)

    sel = sub.add_parser(
        "select",
        help="rank new images by the model's doubt, novelty and class balance; write a batch",
    )
    sel.add_argument("folder", nargs="?", type=Path, help="folder of new images (recursive)")
    sel.add_argument(
        "--from-uploads",
        type=Path,
        metavar="DIR",
        help="the uploads the server kept: DIR/YYYY-MM-DD/<sha256>.<ext>",
    )
    sel.add_argument("--since", metavar="YYYY-MM-DD", help="with --from-uploads: days from this on")
    sel.add_argument(
        "--log-dir",
        type=Path,
        default=Path("logs/predictions"),
        help="with --from-uploads: the server's prediction log, for what it answered "
        "(default logs/predictions, when it exists)",
    )
    sel.add_argument("-n", type=int, default=20, help="images in the batch (default 20)")
    sel.add_argument(
        "--out", type=Path, help="batch folder (default labelling/batch-<UTC time>); never reused"
    )
    sel.add_argument("--uncertainty", choices=("margin", "entropy"), default="margin")
    sel.add_argument(
        "--ood-weight",
        type=float,
        default=1.0,
        help="weight of the out-of-distribution score against uncertainty (0: ignore it)",
    )
    sel.add_argument(
        "--no-balance",
        dest="balance",
        action="store_false",
        help="take the top scores only (default: predicted classes take turns, rare ones more)",
    )
    sel.add_argument("--models", type=Path, default=Path("models"), help="registered model folder")
    sel.add_argument("--data", type=Path, default=Path("data"))
    sel.set_defaults(func=_cmd_select)

    psh = sub.add_parser(
        "push",
        help="import a batch into Label Studio with the model's prediction pre-selected; also "
        "write BATCH/tasks.json",
    )
    psh.add_argument("batch", type=Path)
    psh.add_argument("--title", help="project title (default: 'ihcflow <model name>')")
    psh.add_argument("--project", type=int, help="push into this project id")
    psh.add_argument(
        "--annotators", type=int, default=1, help="annotations wanted per task (default 1)"
    )
    psh.add_argument(
        "--no-api", action="store_true", help="only write BATCH/tasks.json (upload it by hand)"
    )
    psh.set_defaults(func=_cmd_push)

    pul = sub.add_parser(
        "pull",
        help="majority-vote the annotations, write accepted images into data/ with provenance, "
        "dvc add data",
    )
    where = pul.add_mutually_exclusive_group()
    where.add_argument("--export", type=Path, help="a Label Studio JSON export file")
    where.add_argument("--project", type=int, help="a Label Studio project id (API)")
    pul.add_argument(
        "--batch", type=Path, help="only this batch's tasks (its push.json names the project)"
    )
    pul.add_argument(
        "--batches-dir",
        type=Path,
        default=DEFAULT_BATCHES,
        help="where batch folders are (why each image was chosen)",
    )
    pul.add_argument("--data", type=Path, default=Path("data"))
    pul.add_argument(
        "--split",
        choices=("train", "val", "test"),
        help="layout 2 only: the given split to add to (default train; test only when asked)",
    )
    pul.add_argument("--no-dvc", action="store_true", help="do not run `dvc add data`")
    pul.add_argument("--report", type=Path, help="write the report as JSON here")
    pul.set_defaults(func=_cmd_pull)

    frz = sub.add_parser(
        "freeze-split",
        help="write a layout-1 data/ as layout 2 by processed/split.csv, so that the test set "
        "stays the same when labelled images are added",
    )
    frz.add_argument("--data", type=Path, default=Path("data"))
    frz.add_argument("--split-csv", type=Path, default=Path("processed/split.csv"))
    frz.set_defaults(func=_cmd_freeze)

    cmp_ = sub.add_parser(
        "compare",
        help="the model registered at a revision vs the workspace's, on test images neither saw",
    )
    cmp_.add_argument("--base", default="HEAD", help="git revision of the earlier model")
    cmp_.add_argument("--models", default="models")
    cmp_.add_argument("--data", default="data")
    cmp_.add_argument("--json", type=Path, help="also write the result as JSON")
    cmp_.set_defaults(func=_cmd_compare)
