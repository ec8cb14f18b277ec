"""Stage `evaluate`: score the trained model on the test split; metrics, plots, predictions.

Reads the checkpoint, processed/split.csv and processed/images/; writes reports/metrics.json
(DVC metrics), reports/predictions.csv, and reports/plots/ (confusion.csv and roc.csv for DVC
plots, confusion.png, roc.png and misclassified.png to view offline).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ihcflow import plots
from ihcflow.config import load_params, section
from ihcflow.errors import PipelineError
from ihcflow.evaluation import (
    EvaluateParams,
    Predictor,
    evaluate_split,
    probs_from_predictions,
    roc_points,
)
from ihcflow.files import write_json_atomic
from ihcflow.reporting.metrics import format_metrics
from ihcflow.tables import METRICS, PREDICTIONS, SPLIT, write_csv_atomic, write_table


@dataclass
class Evaluation:
    metrics: dict[str, Any]
    predictions: pd.DataFrame  # path, image, class, predicted, prob_<class>...
    roc: pd.DataFrame  # class, fpr, tpr, threshold
    class_names: list[str]
    shown: int  # misclassified images in the grid


def run(
    params: EvaluateParams,
    *,
    checkpoint: Path,
    split: Path,
    root: Path,
    metrics: Path,
    predictions: Path,
    plots_dir: Path,
    predictor: Predictor | None = None,
) -> Evaluation:
    """Evaluate the model in ``checkpoint`` (``predictor``: that model, already loaded) on the
    ``params.split`` rows of ``split``; write the metrics, the predictions and the plots."""
    if predictor is None:
        from ihcflow.training.predictor import load_predictor

        predictor = load_predictor(checkpoint, tta=params.tta)
    scores, table = evaluate_split(
        predictor, split, root, split=params.split, batch_size=params.batch_size
    )
    class_names = list(predictor.class_names)
    index = {name: i for i, name in enumerate(class_names)}
    y_true = table["class"].map(index).to_numpy()
    roc = roc_points(y_true, probs_from_predictions(table, class_names), class_names)
    write_json_atomic(metrics, scores)
    write_table(predictions, table, PREDICTIONS)
    result = Evaluation(scores, table, roc, class_names, shown=0)
    result.shown = write_plots(result, params, root, predictor.input_size, plots_dir)
    return result


def write_plots(
    result: Evaluation, params: EvaluateParams, root: Path, input_size: int, plots_dir: Path
) -> int:
    """The DVC plots' data and the PNGs; returns how many misclassified images the grid shows."""
    confusion = result.predictions[["class", "predicted"]].rename(columns={"class": "actual"})
    write_csv_atomic(plots_dir / "confusion.csv", confusion)
    write_csv_atomic(plots_dir / "roc.csv", result.roc)
    names = result.class_names
    counts = plots.confusion_counts(confusion["actual"], confusion["predicted"], names)
    plots.plot_confusion(counts, names, plots_dir / "confusion.png")
    auroc = {c: s["auroc"] for c, s in result.metrics["per_class"].items()}
    plots.plot_roc(result.roc, auroc, plots_dir / "roc.png")
    return plots.plot_misclassified(
        result.predictions,
        root,
        input_size,
        plots_dir / "misclassified.png",
        max_images=params.misclassified.max_images,
        ncols=params.misclassified.columns,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("models/checkpoints/best.ckpt"))
    parser.add_argument("--split", type=Path, default=Path(SPLIT.path))
    parser.add_argument(
        "--root", type=Path, default=Path(), help="split.csv paths are relative to it"
    )
    parser.add_argument("--metrics", type=Path, default=Path(METRICS))
    parser.add_argument("--predictions", type=Path, default=Path(PREDICTIONS.path))
    parser.add_argument("--plots", type=Path, default=Path("reports/plots"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    try:
        result = run(
            section(load_params(args.params), "evaluate", EvaluateParams),
            checkpoint=args.checkpoint,
            split=args.split,
            root=args.root,
            metrics=args.metrics,
            predictions=args.predictions,
            plots_dir=args.plots,
        )
    except PipelineError as exc:
        raise SystemExit(f"evaluate: {exc}") from None
    print(format_metrics(result.metrics))
    print(f"misclassified images shown in the grid: {result.shown}")


if __name__ == "__main__":
    main()
