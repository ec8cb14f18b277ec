"""The `ihcflow` command line: data set-up and params composition (stages run via `dvc repro`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

ROOT_MARKERS = ("dvc.yaml", "conf")


def _synth_defaults(root: Path, task: str = "data") -> dict[str, Any]:
    """`data.synth` (`segmentation.data.synth` for the nuclei sample) from params.yaml, else
    from conf/."""
    sources = {
        "data": ((root / "params.yaml", "data.synth"), (root / "conf/data/default.yaml", "synth")),
        "segmentation": (
            (root / "params.yaml", "segmentation.data.synth"),
            (root / "conf/segmentation/default.yaml", "data.synth"),
        ),
    }
    for path, key in sources[task]:
        if path.is_file():
            node = OmegaConf.select(OmegaConf.load(path), key)
            if node is not None:
                return dict(OmegaConf.to_container(node, resolve=True))  # type: ignore[arg-type]
    return {}


def _cmd_synth(args: argparse.Namespace) -> int:
    from ihcflow.data import synth

    opts = _synth_defaults(Path.cwd())
    for key in ("per_class", "patients", "size", "seed"):
        if getattr(args, key) is not None:
            opts[key] = getattr(args, key)
    if args.classes:
        opts["classes"] = args.classes.split(",")
    if "classes" in opts:
        opts["classes"] = tuple(opts["classes"])
    files = synth.generate(Path(args.out), overwrite=args.overwrite, **opts)
    print(f"wrote {len(files)} images to {args.out}/ ({', '.join(opts.get('classes', ()))})")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from ihcflow.data import importers
    from ihcflow.data.provenance import version_import

    src, out = Path(args.src), Path(args.out)
    classes = args.classes.split(",") if args.classes else None
    if src.suffix.lower() == ".npz":
        summary = importers.import_npz(src, out, classes=classes, replace=args.replace)
    else:
        summary = importers.import_folder(src, out, replace=args.replace)
    print(summary.describe())
    dvc_file = version_import(out, summary, src)
    if dvc_file is None:
        print(f"{out} is not in a DVC project: not versioned (`dvc init`, then import again)")
    else:
        print(f"`dvc add {args.out}` done; {dvc_file.name} records the import in its meta")
        print(f"next: `git add {dvc_file.name} && git commit` to version it")
    return 0


def _cmd_import_nuclei(args: argparse.Namespace) -> int:
    from ihcflow.data.provenance import version_import
    from ihcflow.segmentation import importers

    src, out = Path(args.src), Path(args.out)
    if args.qupath:
        summary = importers.import_qupath(src, Path(args.qupath), out, replace=args.replace)
    else:
        summary = importers.import_mask_folder(src, out, replace=args.replace)
    print(summary.describe())
    dvc_file = version_import(out, summary, src)
    if dvc_file is None:
        print(f"{out} is not in a DVC project: not versioned (`dvc init`, then import again)")
    else:
        print(f"`dvc add {args.out}` done; next: `git add {dvc_file.name} && git commit`")
    return 0


def _cmd_get(args: argparse.Namespace) -> int:
    from ihcflow.data.fetch import get_data, nuclei_sample, pull_if_remote

    root = Path.cwd()
    result = get_data(root, _synth_defaults(root), data=args.data, pull=False)
    print(f"data: {result.message}")
    if args.nuclei:
        nuclei = get_data(
            root,
            _synth_defaults(root, "segmentation"),
            data=args.nuclei,
            generate=nuclei_sample,
            pull=False,
        )
        print(f"nuclei: {nuclei.message}")
    outputs = pull_if_remote(root)
    if outputs is not None:
        print(f"outputs: {outputs}")
    return 0


def _cmd_params(args: argparse.Namespace) -> int:
    """Compose params.yaml from conf/ exactly as `dvc exp run -S ...` does."""
    import tempfile

    from dvc.utils.hydra import compose_and_dump

    root = Path.cwd()
    out = root / "params.yaml"
    with tempfile.TemporaryDirectory() as tmp:
        composed = Path(tmp) / "params.yaml"
        compose_and_dump(composed, str(root / "conf"), None, "config", str(root), args.overrides)
        text = composed.read_text(encoding="utf-8")
    if args.check:
        if not out.is_file() or out.read_text(encoding="utf-8") != text:
            print("params.yaml is out of date with conf/: run `make params`", file=sys.stderr)
            return 1
        print("params.yaml matches conf/")
        return 0
    from ihcflow.files import write_text_atomic

    write_text_atomic(out, text)
    print(f"wrote {out.name} from conf/ (overrides: {' '.join(args.overrides) or 'none'})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ihcflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="get, generate or import raw images into data/")
    data_sub = data.add_subparsers(dest="data_command", required=True)

    get = data_sub.add_parser(
        "get",
        help="make data/ and nuclei/ match data.dvc and nuclei.dvc (cache, remote, or the "
        "samples); with a remote, "
        "also pull the pipeline outputs dvc.lock records",
    )
    get.add_argument("--data", default="data")
    get.add_argument(
        "--nuclei",
        default="nuclei",
        help="the segmentation data folder (nuclei.dvc; the nuclei sample); '' to skip it",
    )
    get.set_defaults(func=_cmd_get)

    nuc = data_sub.add_parser(
        "import-nuclei",
        help="copy a segmentation set (images/ + masks/, or images with QuPath GeoJSON "
        "exports) into nuclei/ and `dvc add` it",
    )
    nuc.add_argument("src", help="folder with images/ and masks/ (or the images, with --qupath)")
    nuc.add_argument("--qupath", help="folder of QuPath GeoJSON exports, one per image")
    nuc.add_argument("--out", default="nuclei")
    nuc.add_argument("--replace", action="store_true", help="replace a non-empty --out")
    nuc.set_defaults(func=_cmd_import_nuclei)

    syn = data_sub.add_parser("synth", help="write the deterministic synthetic IHC sample")
    syn.add_argument("--out", default="data")
    syn.add_argument("--per-class", type=int, dest="per_class")
    syn.add_argument("--patients", type=int)
    syn.add_argument("--size", type=int)
    syn.add_argument("--seed", type=int)
    syn.add_argument("--classes", help="comma-separated class names")
    syn.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    syn.set_defaults(func=_cmd_synth)

    imp = data_sub.add_parser(
        "import",
        help="import a class-folder tree or a MedMNIST .npz, then `dvc add` it (data.dvc "
        "records the source)",
    )
    imp.add_argument("src", help="folder (layout 1 or 2) or .npz file")
    imp.add_argument("--out", default="data")
    imp.add_argument("--classes", help="comma-separated class names for an .npz")
    imp.add_argument(
        "--replace", action="store_true", help="replace a non-empty --out (old kept beside it)"
    )
    imp.set_defaults(func=_cmd_import)

    params = sub.add_parser("params", help="compose params.yaml from conf/ (as dvc exp run does)")
    params.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=resnet")
    params.add_argument("--check", action="store_true", help="exit 1 if params.yaml is stale")
    params.set_defaults(func=_cmd_params)

    from ihcflow.reporting.cli import add_parser as add_report_parser

    add_report_parser(sub)

    from ihcflow.serving.cli import add_parser as add_serve_parser

    add_serve_parser(sub)

    from ihcflow.monitoring.cli import add_parser as add_drift_parser

    add_drift_parser(sub)

    from ihcflow.labelling.cli import add_parser as add_label_parser

    add_label_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as exc:
        print(f"ihcflow: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
