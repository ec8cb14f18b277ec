"""PNG plots of an evaluation, viewable offline (DVC's HTML plots load Vega from the internet).

Figures are built with ``matplotlib.figure.Figure`` on the Agg canvas: no pyplot global state,
no display backend, safe in worker processes and tests.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ihcflow.dataset import load_images
from ihcflow.files import write_bytes_atomic
from ihcflow.tables import prob_column

DPI = 110


def _save(fig: Figure, path: str | Path) -> None:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    write_bytes_atomic(path, buf.getvalue())


def confusion_counts(
    actual: Sequence[str], predicted: Sequence[str], class_names: Sequence[str]
) -> np.ndarray:
    """Counts matrix, rows = actual class, columns = predicted class, in ``class_names`` order."""
    index = {name: i for i, name in enumerate(class_names)}
    counts = np.zeros((len(class_names), len(class_names)), dtype=np.int64)
    for a, p in zip(actual, predicted, strict=True):
        counts[index[a], index[p]] += 1
    return counts


def plot_confusion(counts: np.ndarray, class_names: Sequence[str], path: str | Path) -> None:
    """Confusion matrix: colour = share of the actual class (row), text = count and share."""
    k = len(class_names)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=float), where=rows > 0)
    side = 2.2 + 0.75 * k
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of actual class")
    for i in range(k):
        for j in range(k):
            colour = "white" if share[i, j] > 0.5 else "black"
            ax.text(
                j,
                i,
                f"{counts[i, j]}\n{share[i, j]:.0%}",
                ha="center",
                va="center",
                color=colour,
                fontsize=8,
            )
    ax.set_xticks(range(k), labels=list(class_names), rotation=45, ha="right")
    ax.set_yticks(range(k), labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(f"Confusion matrix (n={int(counts.sum())})")
    fig.tight_layout()
    _save(fig, path)


def plot_roc(roc: pd.DataFrame, auroc: dict[str, float | None], path: str | Path) -> None:
    """One-vs-rest ROC curve per class (columns class, fpr, tpr), AUROC in the legend."""
    fig = Figure(figsize=(6.0, 5.5))
    ax = fig.add_subplot()
    for name, curve in roc.groupby("class", sort=False):
        value = auroc.get(str(name))
        label = f"{name} (AUROC {value:.3f})" if value is not None else str(name)
        ax.plot(curve["fpr"], curve["tpr"], linewidth=1.5, label=label)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC curves (one-vs-rest)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def misclassified(predictions: pd.DataFrame, max_images: int) -> pd.DataFrame:
    """The misclassified rows, most confidently wrong first, at most ``max_images``."""
    wrong = predictions[predictions["class"] != predictions["predicted"]].copy()
    wrong["confidence"] = [
        float(wrong.at[i, prob_column(name)]) for i, name in wrong["predicted"].items()
    ]
    wrong = wrong.sort_values(["confidence", "path"], ascending=[False, True], kind="stable")
    return wrong.head(max(0, max_images))


def plot_misclassified(
    predictions: pd.DataFrame,
    root: str | Path,
    size: int,
    path: str | Path,
    *,
    max_images: int = 25,
    ncols: int = 5,
) -> int:
    """Grid of misclassified images captioned true / predicted (probability). Returns the count
    shown; with none misclassified the PNG says so (the output always exists)."""
    rows = misclassified(predictions, max_images)
    n = len(rows)
    if n == 0:
        fig = Figure(figsize=(4.0, 1.5))
        fig.text(0.5, 0.5, "no misclassified test images", ha="center", va="center")
        _save(fig, path)
        return 0
    images = load_images(rows["image"].tolist(), root, size)
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig = Figure(figsize=(2.2 * ncols, 2.5 * nrows))
    for i, (_, row) in enumerate(rows.iterrows()):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.imshow(images[i])
        ax.set_title(
            f"true: {row['class']}\npred: {row['predicted']} ({row['confidence']:.2f})", fontsize=8
        )
        ax.set_axis_off()
    fig.suptitle(f"Misclassified test images ({n} shown, most confident first)", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return n
