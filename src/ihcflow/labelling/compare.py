"""``ihcflow label compare``: the registered model before and after retraining, on the same
test images.

- before: the model registered at a git revision (``models/model.json`` from git,
  ``models/model.onnx`` from the DVC cache or remote) and that revision's
  ``processed/split.csv``;
- after: the workspace's ``models/`` and ``processed/split.csv`` (after ``dvc exp run``).

The images: the workspace's test split, less every image (by content) the earlier model was
trained or validated on. With a given test split (layout 2) that is the whole test split. In
layout 1 the split stage recomputes the split when images are added, so images move between
splits and fewer remain: the count is printed, and docs/labelling.md says how to keep the test
split fixed. Each model prepares the raw file from ``data/`` with its own preprocessing params,
as the server would, and the metrics are the evaluate stage's (:func:`compute_metrics`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ihcflow.labelling.model import RegisteredModel, load_model, load_model_bytes
from ihcflow.labelling.pull import PROVENANCE, PROVENANCE_TABLE
from ihcflow.tables import HEADLINE_METRICS, SPLIT, read_table


def read_at_rev(root: Path, path: str, rev: str) -> bytes:
    """The bytes of ``path`` at ``rev``: git-tracked, or a DVC output (cache or remote)."""
    import dvc.api
    from dvc.exceptions import DvcException

    try:
        return bytes(dvc.api.read(path, repo=str(root), rev=rev, mode="rb"))
    except (DvcException, OSError) as exc:
        raise ValueError(
            f"{path} at {rev}: cannot read it ({type(exc).__name__}: {exc}); `dvc pull` or "
            "`dvc fetch` the revision's outputs first"
        ) from None


def _split_table(path: Path, what: str) -> Any:
    return read_table(path, SPLIT, error=ValueError, absent=f"{what} not found (`dvc repro`)")


def _predict(model: RegisteredModel, files: list[Path]) -> np.ndarray:
    out = model.predict_files(files)
    if out.problems:
        first = next(iter(out.problems.values()))
        raise ValueError(f"{len(out.problems)} test image(s) cannot be predicted (first: {first})")
    return out.probs


def _metrics(
    probs: np.ndarray, labels: list[str], mask: np.ndarray, model: RegisteredModel
) -> dict[str, Any]:
    from ihcflow.evaluation import compute_metrics, label_indices

    y = label_indices(labels, model.class_names, f"model {model.label}")
    return compute_metrics(y[mask], probs[mask], model.class_names)


def compare(
    root: Path,
    base: str,
    *,
    models_dir: str = "models",
    split_csv: str = "processed/split.csv",
    data_dir: str = "data",
) -> dict[str, Any]:
    """Both models' test metrics on the images neither was trained or validated on."""
    import tempfile

    from ihcflow.reporting.pr import resolve_rev

    commit = resolve_rev(root, base)
    new_model = load_model(root / models_dir)
    old_model = load_model_bytes(
        read_at_rev(root, f"{models_dir}/model.json", commit),
        read_at_rev(root, f"{models_dir}/model.onnx", commit),
    )
    if old_model.class_names != new_model.class_names:
        raise ValueError(
            f"the models have different classes ({old_model.class_names} at {base}, "
            f"{new_model.class_names} now): no common test to compare them on"
        )
    new_split = _split_table(root / split_csv, str(root / split_csv))
    with tempfile.TemporaryDirectory() as tmp:
        old_csv = Path(tmp) / "split.csv"
        old_csv.write_bytes(read_at_rev(root, split_csv, commit))
        old_split = _split_table(old_csv, f"{split_csv} at {base}")
    seen = set(old_split.loc[old_split["split"].isin(["train", "val"]), "sha256"])
    test = new_split[new_split["split"] == "test"]
    common = test[~test["sha256"].isin(seen)]
    if common.empty:
        raise ValueError(
            f"none of the {len(test)} test image(s) is unseen by the model registered at {base}: "
            "the split moved them all (layout 1 reshuffles when images are added; "
            "docs/labelling.md shows how to keep the test split)"
        )
    provenance = root / data_dir / PROVENANCE
    labelled: set[str] = set()
    if provenance.is_file():
        labelled = set(
            read_table(provenance, PROVENANCE_TABLE, columns=["sha256"], error=ValueError)["sha256"]
        )
    files = [root / data_dir / p for p in common["path"]]
    labels = common["class"].tolist()
    from_pull = common["sha256"].isin(labelled).to_numpy()
    everything = np.ones(len(common), dtype=bool)
    result: dict[str, Any] = {
        "base": {"rev": base, "commit": commit, "model": old_model.label},
        "new": {"rev": "workspace", "model": new_model.label},
        "images": len(common),
        "test_images": len(test),
        "labelled_images": int(from_pull.sum()),
        "per_class": {
            str(k): int(v) for k, v in common["class"].value_counts().sort_index().items()
        },
        "metrics": {},
        "labelled_metrics": {},  # on the test images `label pull` added (e.g. a new scanner's)
    }
    for side, model in (("base", old_model), ("new", new_model)):
        probs = _predict(model, files)
        result["metrics"][side] = _metrics(probs, labels, everything, model)
        if from_pull.any():
            result["labelled_metrics"][side] = _metrics(probs, labels, from_pull, model)
    return result


def describe(result: Mapping[str, Any]) -> str:
    base, new = result["base"], result["new"]
    mb, mn = result["metrics"]["base"], result["metrics"]["new"]
    left = f"{base['rev']} ({base['model']})"
    right = f"workspace ({new['model']})"
    width = max(len(left), len(right), 8)
    lines = [
        f"{result['images']} of the {result['test_images']} test image(s) are unseen by both "
        f"models ({result['labelled_images']} of them from `label pull`): "
        + ", ".join(f"{c} {n}" for c, n in result["per_class"].items()),
        f"  {'metric':<18} {left:>{width}} {right:>{width}} {'change':>8}",
    ]
    for key in HEADLINE_METRICS:
        a, b = mb.get(key), mn.get(key)
        change = "n/a" if a is None or b is None else f"{b - a:+.4f}"
        cells = ["n/a" if v is None else f"{v:.4f}" for v in (a, b)]
        lines.append(f"  {key:<18} {cells[0]:>{width}} {cells[1]:>{width}} {change:>8}")
    recall = [
        f"{c} {_r(mb['per_class'][c]['recall'])} -> {_r(mn['per_class'][c]['recall'])}"
        for c in mb["per_class"]
        if mb["per_class"][c]["support"]
    ]
    lines.append("  recall per class: " + ", ".join(recall))
    if result["labelled_metrics"]:
        lb, ln = result["labelled_metrics"]["base"], result["labelled_metrics"]["new"]
        lines.append(
            f"  on the {result['labelled_images']} test image(s) from `label pull`: accuracy "
            f"{lb['accuracy']:.4f} -> {ln['accuracy']:.4f}, balanced accuracy "
            f"{lb['balanced_accuracy']:.4f} -> {ln['balanced_accuracy']:.4f}"
        )
    if result["images"] < 30:
        lines.append(
            f"  only {result['images']} image(s): a difference of one image is "
            f"{1 / result['images']:.3f} in accuracy; read the change with care"
        )
    return "\n".join(lines)


def _r(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
