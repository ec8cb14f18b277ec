"""Stage `evaluate`: score the trained model on the test split; metrics, plots, predictions.

Reads the checkpoint, processed/split.csv and processed/images/; writes reports/metrics.json
(DVC metrics), reports/predictions.csv, and reports/plots/ (confusion.csv and roc.csv for DVC
plots, confusion.png, roc.png and misclassified.png to view offline).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ihcflow import plots
from ihcflow.config import load_params
from ihcflow.evaluation import Predictor, evaluate_split, probs_from_predictions, roc_points
from ihcflow.files import write_csv_atomic, write_json_atomic
from ihcflow.reporting.metrics import format_metrics
from ihcflow.tables import METRICS, PREDICTIONS, SPLIT, write_table


@dataclass
class Evaluation:
    metrics: dict[str, Any]
    predictions: pd.DataFrame  # path, image, class, predicted, prob_<class>...
    roc: pd.DataFrame  # class, fpr, tpr, threshold
    class_names: list[str]


def run(
    predictor: Predictor, params: Mapping[str, Any], *, split_csv: Path, root: Path
) -> Evaluation:
    metrics, predictions = evaluate_split(
        predictor,
        split_csv,
        root,
        split=str(params.get("split", "test")),
        batch_size=int(params.get("batch_size", 64)),
    )
    class_names = list(predictor.class_names)
    index = {name: i for i, name in enumerate(class_names)}
    y_true = predictions["class"].map(index).to_numpy()
    probs = probs_from_predictions(predictions, class_names)
    return Evaluation(metrics, predictions, roc_points(y_true, probs, class_names), class_names)


def write_outputs(
    result: Evaluation,
    params: Mapping[str, Any],
    *,
    root: Path,
    input_size: int,
    metrics_path: Path,
    predictions_path: Path,
    plots_dir: Path,
) -> int:
    """Write every output; returns how many misclassified images the grid shows."""
    write_json_atomic(metrics_path, result.metrics)
    write_table(predictions_path, result.predictions, PREDICTIONS)
    confusion = result.predictions[["class", "predicted"]].rename(columns={"class": "actual"})
    write_csv_atomic(plots_dir / "confusion.csv", confusion)
    write_csv_atomic(plots_dir / "roc.csv", result.roc)
    counts = plots.confusion_counts(confusion["actual"], confusion["predicted"], result.class_names)
    plots.plot_confusion(counts, result.class_names, plots_dir / "confusion.png")
    auroc = {c: s["auroc"] for c, s in result.metrics["per_class"].items()}
    plots.plot_roc(result.roc, auroc, plots_dir / "roc.png")
    grid = params.get("misclassified") or {}
    return plots.plot_misclassified(
        result.predictions,
        root,
        input_size,
        plots_dir / "misclassified.png",
        max_images=int(grid.get("max_images", 25)),
        ncols=int(grid.get("columns", 5)),
    )


def _print_summary(metrics: Mapping[str, Any], shown: int) -> None:
    print(format_metrics(metrics))
    print(f"misclassified images shown in the grid: {shown}")


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
    params = load_params(args.params).evaluate
    from ihcflow.training.predictor import load_predictor

    try:
        predictor = load_predictor(args.checkpoint)
        result = run(predictor, params, split_csv=args.split, root=args.root)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"evaluate: {exc}") from None
    shown = write_outputs(
        result,
        params,
        root=args.root,
        input_size=predictor.input_size,
        metrics_path=args.metrics,
        predictions_path=args.predictions,
        plots_dir=args.plots,
    )
    _print_summary(result.metrics, shown)


if __name__ == "__main__":
    main()
