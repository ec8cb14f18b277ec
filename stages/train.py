"""Stage `train`: fit the model of params `model` on the train split, pick the best on val.

Reads processed/split.csv and processed/images/; writes models/checkpoints/{best,last}.ckpt
and reports/train/ (dvclive: metrics.json, plots/metrics/*.tsv; plus summary.json). A run that
was killed resumes from last.ckpt when rerun with the same params and data.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from pytorch_lightning.callbacks import Callback

from ihcflow.config import load_params
from ihcflow.errors import PipelineError
from ihcflow.tables import SPLIT
from ihcflow.training.fit import fit


def run(
    params: DictConfig,
    *,
    split: Path,
    root: Path,
    checkpoints: Path,
    live: Path,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Train from the whole params (sections seed, model, train, trainer, preprocess: the
    checkpoint records them); writes the checkpoints and ``live`` (dvclive, summary.json) and
    returns the summary."""
    return fit(
        params, split_csv=split, root=root, ckpt_dir=checkpoints, live_dir=live, callbacks=callbacks
    )


def _print_summary(summary: dict[str, Any]) -> None:
    print(
        f"train: {summary['model']} on {summary['n_train']} images "
        f"({summary['n_val']} val), {summary['epochs_run']} epoch(s) in "
        f"{summary['train_time_s']:.1f} s, {summary.get('train_images_per_s') or 0:.0f} images/s"
    )
    if summary.get("resumed_from_epoch") is not None:
        print(f"  resumed at epoch {summary['resumed_from_epoch']}")
    score = summary.get("best_score")
    print(f"  best {summary['monitor']}: {'n/a' if score is None else f'{score:.4f}'}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", type=Path, default=Path(SPLIT.path))
    parser.add_argument(
        "--root", type=Path, default=Path(), help="split.csv image paths are relative to it"
    )
    parser.add_argument("--checkpoints", type=Path, default=Path("models/checkpoints"))
    parser.add_argument("--live", type=Path, default=Path("reports/train"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    # torch 2.13 deprecates a check Lightning 2.6 still makes (also filtered in pyproject)
    warnings.filterwarnings("ignore", r".*isinstance\(treespec, LeafSpec\).*", FutureWarning)
    try:
        summary = run(
            load_params(args.params),
            split=args.split,
            root=args.root,
            checkpoints=args.checkpoints,
            live=args.live,
        )
    except PipelineError as exc:
        raise SystemExit(f"train: {exc}") from None
    _print_summary(summary)


if __name__ == "__main__":
    main()
