"""Register a nuclei segmentation candidate: the classifier's gate, versioning and one-set swap
(``ihcflow.registry``) with this task's checks, ``model.json`` and model card.

Steps: the gate on ``reports/segmentation/metrics.json`` (thresholds ``segmentation.gate``);
the metrics must be this checkpoint's (evaluate records its ``model_digest``); the export to
ONNX with dynamic height and width, compared with the checkpoint on test-tile crops of two
sizes; then ``models/segmentation/`` is replaced as one set.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ihcflow.data.provenance import read_dvc_file, recorded_md5
from ihcflow.files import sha256_file
from ihcflow.model_format import CARD_NAME, JSON_NAME, ONNX_NAME
from ihcflow.registry.card import considerations, gate_section, header, training
from ihcflow.registry.gate import GateFailed, GateParams, GateResult, GateSettings, evaluate_gate
from ihcflow.registry.install import (
    install_set,
    next_version,
    read_registered,
    recover_interrupted_swap,
)
from ihcflow.registry.register import RegisterError, git_revision, staging_dir
from ihcflow.reporting.format import markdown_table, number
from ihcflow.segmentation.inference import TilingConfig
from ihcflow.segmentation.model_format import TASK, input_spec, output_spec
from ihcflow.segmentation.predictor import SegPredictor, verify_onnx
from ihcflow.tables import NUCLEI_SPLIT, NUCLEI_TILES, SEG_HEADLINE_METRICS, SPLITS, read_table

DATA_FILE = "nuclei.dvc"


@dataclass(frozen=True)
class SegRegistered:
    info: dict[str, Any]
    gate: GateResult
    rolled_back: bool


def verification_crops(images: list[np.ndarray], n: int, multiple: int) -> list[np.ndarray]:
    """``n`` crops (at least two) of the test tiles, of two sizes that are multiples of the
    network's stride: one square, one not, so a fixed H or W in the graph would show."""
    crops = []
    for i in range(max(2, n)):
        image = images[i % len(images)]
        h, w = image.shape[:2]
        side = max(multiple, min(h, w) // 2 // multiple * multiple)
        ch, cw = (side, side) if i % 2 == 0 else (side, max(multiple, side - multiple))
        crops.append(np.ascontiguousarray(image[:ch, :cw]))
    return crops


def register_segmentation(
    predictor: SegPredictor,
    *,
    checkpoint: Path,
    metrics: Mapping[str, Any],
    gate: GateParams[GateSettings],
    tiling: TilingConfig,
    test_images: list[np.ndarray],
    split_csv: Path,
    tiles_csv: Path,
    train_summary: Mapping[str, Any] | None,
    root: Path,
    models_dir: Path,
) -> SegRegistered:
    models_dir.mkdir(parents=True, exist_ok=True)
    rolled_back = recover_interrupted_swap(models_dir)
    result = evaluate_gate(metrics, gate.thresholds)
    if not result.passed:
        raise GateFailed(result)
    if metrics.get("model_digest") != predictor.digest:
        raise RegisterError(
            "the segmentation metrics are not this checkpoint's (model digest "
            f"{str(metrics.get('model_digest'))[:12]}, checkpoint {predictor.digest[:12]}): "
            "run the seg_evaluate stage again"
        )
    if not test_images:
        raise RegisterError("no test tiles to verify the exported model on")
    checkpoint_sha = sha256_file(checkpoint)
    version = gate.settings.version or next_version(read_registered(models_dir), predictor.digest)
    crops = verification_crops(test_images, gate.settings.verify_images, predictor.size_multiple)
    with staging_dir(models_dir) as staging:
        onnx_path = staging / ONNX_NAME
        predictor.export_onnx(onnx_path)
        try:
            check = verify_onnx(onnx_path, predictor, crops, gate.settings.verify_tolerance)
        except ValueError as exc:
            raise RegisterError(str(exc)) from None
        info = {
            "name": gate.settings.model_name,
            "version": str(version),
            "task": TASK,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "git_revision": git_revision(root),
            "input": input_spec(predictor.size_multiple),
            "outputs": output_spec(),
            "size_multiple": predictor.size_multiple,
            "microns_per_pixel": predictor.config.get("microns_per_pixel"),
            "tiling": {
                "roi": tiling.roi,
                "overlap": tiling.overlap,
                "batch": tiling.batch,
                "blend": tiling.blend,
            },
            "postprocess": dict(metrics["postprocess"]),  # what evaluation scored
            "metrics": dict(metrics),
            "gate": [
                {"metric": r.metric, "value": r.value, "op": r.op, "threshold": r.threshold}
                for r in result.rows
            ],
            "data": {**data_hash(root, tiles_csv), "counts": split_counts(split_csv)},
            "checkpoint": {
                "path": checkpoint.as_posix(),
                "sha256": checkpoint_sha,
                "model_digest": predictor.digest,
            },
            "onnx": {"file": ONNX_NAME, "sha256": sha256_file(onnx_path), **check},
            "training": json.loads(json.dumps(predictor.config, default=str)),
        }
        text = json.dumps(info, indent=2) + "\n"
        (staging / JSON_NAME).write_text(text)
        (staging / CARD_NAME).write_text(model_card(info, result, train_summary))
        install_set(staging, models_dir)
    return SegRegistered(json.loads(text), result, rolled_back)


def data_hash(root: Path, tiles_csv: Path) -> dict[str, str]:
    md5 = recorded_md5(read_dvc_file(root / DATA_FILE))
    if md5:
        return {"hash": str(md5), "source": f"{DATA_FILE} (md5)"}
    return {"hash": sha256_file(tiles_csv), "source": f"{NUCLEI_TILES.path} (sha256)"}


def split_counts(split_csv: Path) -> dict[str, int]:
    frame = read_table(split_csv, NUCLEI_SPLIT, error=RegisterError)
    counts = frame["split"].value_counts()
    return {s: int(counts[s]) for s in SPLITS if s in counts}


def model_card(
    info: Mapping[str, Any], gate: GateResult, train_summary: Mapping[str, Any] | None
) -> str:
    """MODEL_CARD.md, with the classifier card's header, training, gate and considerations."""
    metrics = info["metrics"]
    um = info.get("microns_per_pixel")
    intended = [
        "## Intended use",
        "",
        "Finds the nuclei in an IHC image (RGB, any size, "
        f"{um} um per pixel: 40x) and tells DAB-positive from negative ones, for the Ki-67 "
        "labelling index (positive / all nuclei). Research and decision support only: every "
        "count must be reviewed by a qualified person.",
        "",
        f"Input: `{info['input']['name']}` float32 (N, 3, H, W) RGB in [0, 1], H and W multiples "
        f"of {info['size_multiple']}; images of any size are run in {info['tiling']['roi']} px "
        f"windows overlapping by {info['tiling']['overlap']}. Output `probs` (N, 4, H, W): "
        "background, nucleus interior, nucleus boundary (softmax) and positivity (sigmoid); "
        "`postprocess` in model.json turns them into nuclei.",
        "",
    ]
    counts = info["data"]["counts"]
    data = [
        "## Data",
        "",
        *markdown_table(list(counts), [[str(v) for v in counts.values()]], "r" * len(counts)),
        "",
    ]
    headline = [[k, number(metrics.get(k))] for k in SEG_HEADLINE_METRICS]
    evaluation = [
        f"## Evaluation (test tiles, n={metrics['n_images']}, {metrics['true_nuclei']} nuclei)",
        "",
        *markdown_table(["metric", "value"], headline, "lr"),
        "",
        "Post-processing (chosen on the validation tiles by AJI):",
        "",
        "```yaml",
        yaml.safe_dump(dict(info["postprocess"]), sort_keys=False).rstrip(),
        "```",
        "",
    ]
    limitations = [
        "## Limitations",
        "",
        f"- Evaluated on {metrics['n_images']} held-out tiles from the same source as the "
        "training data; other scanners, stains, laboratories or magnifications are unknown.",
        "- Nuclei much smaller or larger than at 40x are missed or split: resample images to "
        f"{um} um per pixel first.",
        "- The Ki-67 index counts every nucleus the model finds; it does not select tumour "
        "cells or hot spots.",
        "",
    ]
    sections = [
        header(info),
        intended,
        data,
        training(info, train_summary),
        evaluation,
        gate_section(info, gate),
        limitations,
        considerations(),
    ]
    return "\n".join(line for section in sections for line in section)
