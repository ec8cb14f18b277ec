"""The registration gate and the registered model set (``models/model.{onnx,json}``, card).

The paper's gate: "if the results are as expected, the model is saved". A candidate is
exported and registered only when every threshold in params ``gate`` holds; otherwise the
stage fails with a table of each metric against its threshold and the registered set is left
as it was. The three files are replaced as a set: staged in a temporary folder, the previous
set backed up to ``models/.previous/``, then renamed into place; an interrupted swap is rolled
back from the backup on the next run.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import yaml

from ihcflow.dataset import load_images
from ihcflow.evaluation import Predictor, probs_from_predictions
from ihcflow.files import read_json, sha256_file
from ihcflow.model_format import (
    CARD_NAME,
    INPUT_NAME,
    JSON_NAME,
    ONNX_NAME,
    REGISTERED,
    OnnxModel,
    input_spec,
    output_spec,
)
from ihcflow.tables import HEADLINE_METRICS, SPLIT, SPLITS, read_table

BACKUP_DIR = ".previous"
FIRST_VERSION = "1.0.0"
_THRESHOLD_KEY = re.compile(r"^(min|max)_(class_)?(.+)$")


class ExportablePredictor(Predictor, Protocol):
    """A :class:`~ihcflow.evaluation.Predictor` that also exports itself to the registered
    format and carries the config it was trained with."""

    config: dict[str, Any]

    def export_onnx(self, path: str | Path) -> None: ...


# ---------------------------------------------------------------------------------------------
# Gate


@dataclass(frozen=True)
class GateRow:
    metric: str
    value: float | None  # None: the metric is undefined for this evaluation (fails the gate)
    op: str  # ">=" or "<="
    threshold: float
    ok: bool


@dataclass(frozen=True)
class GateResult:
    passed: bool
    rows: list[GateRow]

    def table(self) -> str:
        if not self.rows:
            return "gate: no thresholds set (params gate.min_*/max_*), the candidate passes"
        width = max(len("metric"), *(len(r.metric) for r in self.rows))
        lines = [f"{'metric':<{width}}  {'value':>8}  op  {'threshold':>9}  result"]
        for r in self.rows:
            value = "n/a" if r.value is None else f"{r.value:.4f}"
            lines.append(
                f"{r.metric:<{width}}  {value:>8}  {r.op}  {r.threshold:>9.4f}  {_verdict(r.ok)}"
            )
        verdict = "PASSED" if self.passed else "FAILED"
        failed = sum(not r.ok for r in self.rows)
        lines.append(f"gate {verdict}: {len(self.rows) - failed}/{len(self.rows)} checks hold")
        return "\n".join(lines)


class GateFailed(SystemExit):
    """The candidate did not pass: exits non-zero with the metric-vs-threshold table."""

    def __init__(self, result: GateResult, reason: str = "") -> None:
        self.result = result
        head = "register: the candidate model failed the gate; the registered model is unchanged"
        super().__init__("\n".join(filter(None, [head, reason, result.table()])))


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def gate_checks(
    gate: Mapping[str, Any], metrics: Mapping[str, Any]
) -> list[tuple[str, str, float]]:
    """(metric, op, threshold) from ``min_<metric>`` / ``max_<metric>`` params.

    ``<metric>`` is a top-level number in metrics.json; ``min_class_<m>`` / ``max_class_<m>``
    apply to ``per_class[<every class>][<m>]``. A null threshold switches the check off; an
    unknown metric is an error (a typo must not silently disable a check).
    """
    per_class = metrics.get("per_class") or {}
    top = sorted(k for k, v in metrics.items() if _numeric(v) or v is None)
    class_keys = sorted({m for stats in per_class.values() for m in stats})
    checks: list[tuple[str, str, float]] = []
    for key, threshold in gate.items():
        match = _THRESHOLD_KEY.match(str(key))
        if not match or threshold is None:
            continue
        if not _numeric(threshold):
            raise ValueError(f"gate.{key}: threshold must be a number, got {threshold!r}")
        op = ">=" if match.group(1) == "min" else "<="
        name = match.group(3)
        if match.group(2):
            if name not in class_keys:
                raise ValueError(
                    f"gate.{key}: per-class metric {name!r} not in metrics "
                    f"(per-class metrics: {', '.join(class_keys)})"
                )
            checks += [(f"per_class.{c}.{name}", op, float(threshold)) for c in per_class]
        else:
            if name not in metrics:
                raise ValueError(
                    f"gate.{key}: metric {name!r} not in metrics (metrics: {', '.join(top)})"
                )
            checks.append((name, op, float(threshold)))
    return checks


def _lookup(metrics: Mapping[str, Any], dotted: str) -> float | None:
    if dotted.startswith("per_class."):
        _, rest = dotted.split(".", 1)
        cls, name = rest.rsplit(".", 1)
        value = metrics["per_class"][cls].get(name)
    else:
        value = metrics.get(dotted)
    return float(value) if _numeric(value) else None


def evaluate_gate(metrics: Mapping[str, Any], gate: Mapping[str, Any]) -> GateResult:
    """Compare ``metrics`` (reports/metrics.json) with the thresholds in params ``gate``."""
    rows = []
    for metric, op, threshold in gate_checks(gate, metrics):
        value = _lookup(metrics, metric)
        ok = value is not None and (value >= threshold if op == ">=" else value <= threshold)
        rows.append(GateRow(metric, value, op, threshold, ok))
    return GateResult(all(r.ok for r in rows), rows)


# ---------------------------------------------------------------------------------------------
# Provenance


def git_revision(root: str | Path = ".") -> str:
    """``git rev-parse HEAD`` plus ``-dirty`` when tracked files changed; "unknown" without git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}-dirty" if status else head


def data_hash(root: str | Path = ".") -> dict[str, str]:
    """The data version: md5 of ``data/`` from data.dvc, else sha256 of the manifest."""
    root = Path(root)
    dvc_file = root / "data.dvc"
    if dvc_file.is_file():
        spec = yaml.safe_load(dvc_file.read_text()) or {}
        for out in spec.get("outs") or []:
            if out.get("md5"):
                return {"hash": str(out["md5"]), "source": "data.dvc (md5)"}
    for rel in ("processed/manifest.csv", "processed/split.csv"):
        if (root / rel).is_file():
            return {"hash": sha256_file(root / rel), "source": f"{rel} (sha256)"}
    return {"hash": "unknown", "source": "none"}


def split_counts(split_csv: str | Path) -> dict[str, dict[str, int]]:
    """Images per split and class: ``{split: {class: n}}``."""
    frame = read_table(split_csv, SPLIT, columns=("split", "class"))
    counts = frame.groupby(["split", "class"]).size()
    out: dict[str, dict[str, int]] = {}
    for (split, cls), n in counts.items():
        out.setdefault(str(split), {})[str(cls)] = int(n)
    return out


def next_version(previous: Mapping[str, Any] | None, digest: str) -> str:
    """The previous version for the same model (its ``model_digest``), else previous + 1 patch.

    The digest is of the weights, not of the checkpoint file, so the same training rerun in
    another clone (another absolute path in Lightning's callback state) keeps the version.
    """
    if not previous or "version" not in previous:
        return FIRST_VERSION
    version = str(previous["version"])
    if previous.get("checkpoint", {}).get("model_digest") == digest:
        return version
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(
            f"registered model.json has version {version!r}, expected MAJOR.MINOR.PATCH"
        )
    return f"{parts[0]}.{parts[1]}.{int(parts[2]) + 1}"


def read_registered(models_dir: str | Path) -> dict[str, Any] | None:
    path = Path(models_dir) / JSON_NAME
    if not path.is_file():
        return None
    return read_json(path, "registered model")


# ---------------------------------------------------------------------------------------------
# ONNX


def verify_onnx(
    onnx_path: str | Path, images: np.ndarray, expected: np.ndarray, tolerance: float
) -> dict[str, Any]:
    """Run the exported model with onnxruntime and compare its ``probs`` with ``expected``."""
    probs, embedding = OnnxModel(onnx_path).predict(images)
    if probs.shape != expected.shape:
        raise ValueError(f"{onnx_path}: probs shape {probs.shape}, expected {expected.shape}")
    diff = float(np.max(np.abs(probs.astype(np.float64) - expected)))
    if not diff <= tolerance:
        raise ValueError(
            f"{onnx_path}: ONNX probabilities differ from the checkpoint's by {diff:.2e} "
            f"> tolerance {tolerance:.0e} on {len(images)} test images"
        )
    return {
        "input": input_spec(images.shape[1]),
        "outputs": output_spec(probs.shape[1], embedding.shape[1]),
        "max_abs_diff": diff,
        "verified_on": len(images),
    }


# ---------------------------------------------------------------------------------------------
# The registered set


def recover_interrupted_swap(models_dir: str | Path) -> bool:
    """Roll back a swap that was interrupted (``.previous/`` still present). True if it did."""
    models_dir = Path(models_dir)
    shutil.rmtree(models_dir / f"{BACKUP_DIR}.partial", ignore_errors=True)
    backup = models_dir / BACKUP_DIR
    if not backup.is_dir():
        return False
    for name in REGISTERED:
        if (backup / name).exists():
            (backup / name).replace(models_dir / name)
        else:  # the interrupted swap added it; the previous set did not have it
            (models_dir / name).unlink(missing_ok=True)
    shutil.rmtree(backup)
    return True


def install_set(staging: str | Path, models_dir: str | Path) -> None:
    """Move the staged ``REGISTERED`` files into ``models_dir`` as one set.

    The current set is copied to ``.previous/`` first (built as ``.previous.partial`` and
    renamed, so it is complete whenever it exists); any failure while renaming rolls back
    from it, and it is removed once every new file is in place.
    """
    staging, models_dir = Path(staging), Path(models_dir)
    missing = [n for n in REGISTERED if not (staging / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{staging}: staged set lacks {missing}")
    models_dir.mkdir(parents=True, exist_ok=True)
    recover_interrupted_swap(models_dir)
    partial = models_dir / f"{BACKUP_DIR}.partial"
    partial.mkdir()
    for name in REGISTERED:
        if (models_dir / name).exists():
            shutil.copy2(models_dir / name, partial / name)
    partial.replace(models_dir / BACKUP_DIR)
    try:
        for name in REGISTERED:
            (staging / name).replace(models_dir / name)
    except BaseException:
        recover_interrupted_swap(models_dir)
        raise
    shutil.rmtree(models_dir / BACKUP_DIR)


# ---------------------------------------------------------------------------------------------
# model.json and the model card


def _verdict(ok: bool) -> str:
    return "ok" if ok else "FAIL"


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def model_card(info: Mapping[str, Any], gate: GateResult, train_summary: Mapping | None) -> str:
    """MODEL_CARD.md: intended use, data, training, metrics, gate, limitations, disclaimer."""
    m = info["metrics"]
    classes = info["class_names"]
    counts = info["data"]["counts"]
    splits = [s for s in SPLITS if s in counts] + sorted(s for s in counts if s not in SPLITS)
    lines = [
        f"# Model card: {info['name']} {info['version']}",
        "",
        "> **Research use only.** Not a medical device; not validated for diagnosis, prognosis "
        "or treatment decisions.",
        "",
        "| | |",
        "|---|---|",
        f"| created | {info['created']} |",
        f"| git revision | `{info['git_revision']}` |",
        f"| data version | `{info['data']['hash']}` ({info['data']['source']}) |",
        f"| checkpoint | `{info['checkpoint']['sha256'][:16]}` |",
        f"| model.onnx sha256 | `{info['onnx']['sha256']}` |",
        "",
        "## Intended use",
        "",
        f"Classifies a stained microscopy (IHC) image patch into one of {len(classes)} classes: "
        f"{', '.join(classes)}. Intended for research on image-classification pipelines and "
        "as a decision-support prototype to be evaluated by pathologists; every output must be "
        "reviewed by a qualified person.",
        "",
        f"Input: an RGB image, preprocessed like the training data (resized to "
        f"{info['input_size']}x{info['input_size']}, see `preprocess` in `model.json`), fed to "
        f"`model.onnx` as `{INPUT_NAME}` float32 (N, 3, {info['input_size']}, "
        f"{info['input_size']}) in [0, 1]; normalisation is inside the graph. Outputs: `probs` "
        "(softmax over the classes in the order above) and `embedding` (feature vector for "
        "drift monitoring).",
        "",
        "## Data",
        "",
        "| class | " + " | ".join(splits) + " |",
        "|---|" + "---:|" * len(splits),
    ]
    for cls in classes:
        lines.append(f"| {cls} | " + " | ".join(str(counts[s].get(cls, 0)) for s in splits) + " |")
    lines.append("| **total** | " + " | ".join(str(sum(counts[s].values())) for s in splits) + " |")
    lines += ["", "## Training", ""]
    if train_summary:
        lines += [f"- {k}: {_fmt(v)}" for k, v in train_summary.items()] + [""]
    config = {k: v for k, v in (info.get("training") or {}).items() if k != "preprocess"}
    if config:
        lines += ["```yaml", yaml.safe_dump(config, sort_keys=False).rstrip(), "```", ""]
    lines += [
        f"## Evaluation (test split, n={m['n_test']})",
        "",
        "| metric | value |",
        "|---|---:|",
    ]
    lines += [f"| {k} | {_fmt(m.get(k))} |" for k in HEADLINE_METRICS]
    lines += [
        "",
        "| class | precision | recall | f1 | auroc | support |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for cls, s in m["per_class"].items():
        lines.append(
            f"| {cls} | {_fmt(s['precision'])} | {_fmt(s['recall'])} | {_fmt(s['f1'])} | "
            f"{_fmt(s['auroc'])} | {s['support']} |"
        )
    lines += ["", "## Registration gate", ""]
    if gate.rows:
        lines += ["| metric | value | rule | result |", "|---|---:|---|---|"]
        lines += [
            f"| {r.metric} | {_fmt(r.value)} | {r.op} {r.threshold:g} | {_verdict(r.ok)} |"
            for r in gate.rows
        ]
    else:
        lines.append("No thresholds were set.")
    lines += [
        "",
        f"The exported ONNX model was checked against the checkpoint on "
        f"{info['onnx']['verified_on']} test images (max probability difference "
        f"{info['onnx']['max_abs_diff']:.1e}).",
        "",
        "## Limitations",
        "",
        f"- Evaluated on {m['n_test']} held-out images from the same source as the training "
        "data; performance on other scanners, stains, laboratories or magnifications is "
        "unknown. Monitor input drift (`embedding`, image statistics) before trusting outputs.",
        "- Patch-level labels only: no localisation, no quantification (e.g. Ki-67 index), no "
        "calibration guarantee for the probabilities.",
        "- Small test sets give wide confidence intervals; per-class figures with low support "
        "are unreliable.",
        "- Classes outside the list above are forced into one of them.",
        "",
        "## Ethical and clinical considerations",
        "",
        "Research use only. The model has not been clinically validated or approved by any "
        "regulator and must not be used to diagnose or treat patients. Patient data used for "
        "training must be handled under the applicable consent and data-protection rules; "
        "errors may fall unevenly across patient groups, stains and scanners that are "
        "under-represented in the data.",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Register


def check_predictions_match(
    predictor: ExportablePredictor,
    predictions: pd.DataFrame,
    probs: np.ndarray,
    tolerance: float,
    source: str,
) -> None:
    """Fail if the evaluated predictions were not made by this checkpoint (stale metrics)."""
    recorded = probs_from_predictions(predictions, predictor.class_names)
    diff = float(np.max(np.abs(recorded - probs)))
    if not diff <= tolerance:
        raise ValueError(
            f"{source}: the predictions differ from this checkpoint's by {diff:.2e}: the metrics "
            "were computed with another model; run the evaluate stage again"
        )


def register(
    predictor: ExportablePredictor,
    metrics: Mapping[str, Any],
    predictions: pd.DataFrame,
    gate_params: Mapping[str, Any],
    *,
    checkpoint: str | Path,
    root: str | Path,
    split_csv: str | Path,
    models_dir: str | Path,
    preprocess: Mapping[str, Any] | None = None,
    train_summary: Mapping[str, Any] | None = None,
    predictions_source: str = "reports/predictions.csv",
    model_digest: str | None = None,
) -> dict[str, Any]:
    """Gate, export, verify and register the candidate; returns the new model.json.

    ``model_digest`` identifies the model for versioning (the same digest keeps the registered
    version): :func:`ihcflow.training.checkpoints.model_digest`, a hash of the weights, as the
    register stage passes it; without it, the checkpoint file's sha256.

    Raises :class:`GateFailed` (a ``SystemExit``) when a threshold does not hold; any error
    before the final swap leaves ``models_dir`` as it was.
    """
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    if recover_interrupted_swap(models_dir):
        print(f"register: rolled back an interrupted swap in {models_dir}")
    result = evaluate_gate(metrics, gate_params)
    if not result.passed:
        raise GateFailed(result)
    print(result.table())

    class_names = list(predictor.class_names)
    if list(metrics.get("per_class", {})) != class_names:
        raise ValueError(
            f"metrics are for classes {list(metrics.get('per_class', {}))}, the checkpoint has "
            f"{class_names}: run the evaluate stage again"
        )
    if predictions.empty:
        raise ValueError(f"{predictions_source}: no predictions (run the evaluate stage)")
    n_verify = int(gate_params.get("verify_images", 16))
    tolerance = float(gate_params.get("verify_tolerance", 1e-4))
    # spread over the split (it is sorted by path, so the head may be one class)
    picks = np.unique(np.linspace(0, len(predictions) - 1, max(1, n_verify)).round().astype(int))
    sample = predictions.iloc[picks].reset_index(drop=True)
    images = load_images(sample["image"].tolist(), root, predictor.input_size)
    probs = np.asarray(predictor.predict_proba(images), dtype=np.float64)
    check_predictions_match(predictor, sample, probs, tolerance, predictions_source)

    checkpoint_sha = sha256_file(checkpoint)
    digest = model_digest or checkpoint_sha
    previous = read_registered(models_dir)
    version = gate_params.get("version") or next_version(previous, digest)
    config = json.loads(json.dumps(dict(predictor.config or {}), default=str))
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=models_dir))
    try:
        onnx_path = staging / ONNX_NAME
        predictor.export_onnx(onnx_path)
        if not onnx_path.is_file():
            raise FileNotFoundError(f"{onnx_path}: export_onnx wrote no file")
        io_spec = verify_onnx(onnx_path, images, probs, tolerance)
        info: dict[str, Any] = {
            "name": str(gate_params.get("model_name") or "ihc-classifier"),
            "version": str(version),
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "git_revision": git_revision(root),
            "class_names": class_names,
            "input_size": int(predictor.input_size),
            "input": io_spec["input"],
            "outputs": io_spec["outputs"],
            "preprocess": dict(config.get("preprocess") or preprocess or {}),
            "metrics": dict(metrics),
            "gate": [
                {"metric": r.metric, "value": r.value, "op": r.op, "threshold": r.threshold}
                for r in result.rows
            ],
            "data": {**data_hash(root), "counts": split_counts(split_csv)},
            "checkpoint": {
                "path": Path(checkpoint).as_posix(),
                "sha256": checkpoint_sha,
                "model_digest": digest,
            },
            "onnx": {
                "file": ONNX_NAME,
                "sha256": sha256_file(onnx_path),
                "max_abs_diff": io_spec["max_abs_diff"],
                "verified_on": io_spec["verified_on"],
            },
            "training": config,
        }
        text = json.dumps(info, indent=2, default=str) + "\n"
        (staging / JSON_NAME).write_text(text)
        (staging / CARD_NAME).write_text(model_card(info, result, train_summary))
        install_set(staging, models_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return json.loads(text)


def summary_line(info: Mapping[str, Any]) -> str:
    return (
        f"registered {info['name']} {info['version']} ({len(info['class_names'])} classes, "
        f"balanced_accuracy {_fmt(info['metrics'].get('balanced_accuracy'))}, "
        f"git {info['git_revision'][:12]})"
    )
