"""Stage `seg_train`: fit the nuclei U-Net on random patches of the train tiles.

Reads processed/nuclei_split.csv and processed/nuclei/; writes models/segmentation/checkpoints
and reports/segmentation/train (dvclive and summary.json). Params: ``segmentation.model``,
``segmentation.train``, ``segmentation.data.microns_per_pixel``, ``trainer``, ``seed``. A killed
run resumes from last.ckpt when rerun with the same params and split.
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
from ihcflow.segmentation.fit import fit_segmentation
from ihcflow.tables import NUCLEI_DIR, NUCLEI_SPLIT


def run(
    params: DictConfig,
    *,
    split: Path,
    tiles: Path,
    checkpoints: Path,
    live: Path,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Train from the whole params (the checkpoint records the sections it used)."""
    return fit_segmentation(
        params,
        split_csv=split,
        root=tiles,
        ckpt_dir=checkpoints,
        live_dir=live,
        callbacks=callbacks,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", type=Path, default=Path(NUCLEI_SPLIT.path))
    parser.add_argument("--tiles", type=Path, default=Path(NUCLEI_DIR))
    parser.add_argument("--checkpoints", type=Path, default=Path("models/segmentation/checkpoints"))
    parser.add_argument("--live", type=Path, default=Path("reports/segmentation/train"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    # torch 2.13 deprecates a check Lightning 2.6 still makes (also filtered in pyproject)
    warnings.filterwarnings("ignore", r".*isinstance\(treespec, LeafSpec\).*", FutureWarning)
    try:
        s = run(
            load_params(args.params),
            split=args.split,
            tiles=args.tiles,
            checkpoints=args.checkpoints,
            live=args.live,
        )
    except PipelineError as exc:
        raise SystemExit(f"seg_train: {exc}") from None
    score = s.get("best_score")
    print(
        f"seg_train: {s['model']} on {s['train_tiles']} tiles ({s['val_tiles']} val), "
        f"{s['epochs_run']} epoch(s) of {s['patches_per_epoch']} patches in "
        f"{s['train_time_s']:.1f} s, {s.get('train_images_per_s') or 0:.0f} patches/s; best "
        f"{s['monitor']}: {'n/a' if score is None else f'{score:.4f}'}"
    )


if __name__ == "__main__":
    main()
