"""``MODEL_CARD.md``: the registered model for people, written from its ``model.json``.

One function per section: header, intended use, data, training, evaluation, registration gate,
limitations, ethical and clinical considerations.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from ihcflow.model_format import INPUT_NAME
from ihcflow.registry.gate import GateResult
from ihcflow.reporting.format import markdown_table, number
from ihcflow.tables import HEADLINE_METRICS, SPLITS

Lines = list[str]


def model_card(
    info: Mapping[str, Any], gate: GateResult, train_summary: Mapping[str, Any] | None
) -> str:
    """MODEL_CARD.md: intended use, data, training, metrics, gate, limitations, disclaimer."""
    sections = [
        _header(info),
        _intended_use(info),
        _data(info),
        _training(info, train_summary),
        _evaluation(info["metrics"]),
        _gate(info, gate),
        _limitations(info["metrics"]),
        _considerations(),
    ]
    return "\n".join(line for section in sections for line in section)


def _header(info: Mapping[str, Any]) -> Lines:
    return [
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
    ]


def _intended_use(info: Mapping[str, Any]) -> Lines:
    classes, size = info["class_names"], info["input_size"]
    return [
        "## Intended use",
        "",
        f"Classifies a stained microscopy (IHC) image patch into one of {len(classes)} classes: "
        f"{', '.join(classes)}. Intended for research on image-classification pipelines and "
        "as a decision-support prototype to be evaluated by pathologists; every output must be "
        "reviewed by a qualified person.",
        "",
        f"Input: an RGB image, preprocessed like the training data (resized to "
        f"{size}x{size}, see `preprocess` in `model.json`), fed to "
        f"`model.onnx` as `{INPUT_NAME}` float32 (N, 3, {size}, {size}) in [0, 1]; "
        "normalisation is inside the graph. Outputs: `probs` "
        "(softmax over the classes in the order above) and `embedding` (feature vector for "
        "drift monitoring).",
        "",
    ]


def _data(info: Mapping[str, Any]) -> Lines:
    counts = info["data"]["counts"]
    splits = [s for s in SPLITS if s in counts] + sorted(s for s in counts if s not in SPLITS)
    rows = [[c, *(str(counts[s].get(c, 0)) for s in splits)] for c in info["class_names"]]
    rows.append(["**total**", *(str(sum(counts[s].values())) for s in splits)])
    return ["## Data", "", *markdown_table(["class", *splits], rows, "l" + "r" * len(splits))]


def _training(info: Mapping[str, Any], train_summary: Mapping[str, Any] | None) -> Lines:
    lines = ["", "## Training", ""]
    if train_summary:
        lines += [f"- {k}: {number(v)}" for k, v in train_summary.items()] + [""]
    config = {k: v for k, v in (info.get("training") or {}).items() if k != "preprocess"}
    if config:
        lines += ["```yaml", yaml.safe_dump(config, sort_keys=False).rstrip(), "```", ""]
    return lines


def _evaluation(metrics: Mapping[str, Any]) -> Lines:
    headline = [[k, number(metrics.get(k))] for k in HEADLINE_METRICS]
    columns = ("precision", "recall", "f1", "auroc")
    per_class = [
        [cls, *(number(s[c]) for c in columns), str(s["support"])]
        for cls, s in metrics["per_class"].items()
    ]
    return [
        f"## Evaluation (test split, n={metrics['n_test']})",
        "",
        *markdown_table(["metric", "value"], headline, "lr"),
        "",
        *markdown_table(["class", *columns, "support"], per_class, "lrrrrr"),
        "",
    ]


def _gate(info: Mapping[str, Any], gate: GateResult) -> Lines:
    lines = ["## Registration gate", ""]
    lines += gate.table(markdown=True) if gate.rows else ["No thresholds were set."]
    onnx = info["onnx"]
    return [
        *lines,
        "",
        f"The exported ONNX model was checked against the checkpoint on "
        f"{onnx['verified_on']} test images (max probability difference "
        f"{onnx['max_abs_diff']:.1e}).",
        "",
        *_ood(info.get("ood")),
    ]


def _ood(ood: Mapping[str, Any] | None) -> Lines:
    if not ood:
        return [
            "No out-of-distribution threshold: too few validation images to calibrate one; "
            "the server returns no `ood` scores for this model.",
            "",
        ]
    return [
        f"Out-of-distribution flag: Mahalanobis distance to the nearest class in the "
        f"embedding ({ood['components']} axes), threshold {ood['threshold']:.4g} = the "
        f"{ood['quantile']:g} quantile of {ood['calibrated_on']} validation images' scores "
        f"({ood['val_flagged']:.1%} of them flagged).",
        "",
    ]


def _limitations(metrics: Mapping[str, Any]) -> Lines:
    return [
        "## Limitations",
        "",
        f"- Evaluated on {metrics['n_test']} held-out images from the same source as the "
        "training data; performance on other scanners, stains, laboratories or magnifications "
        "is unknown. Monitor input drift (`embedding`, image statistics) before trusting "
        "outputs.",
        "- Patch-level labels only: no localisation, no quantification (e.g. Ki-67 index), no "
        "calibration guarantee for the probabilities.",
        "- Small test sets give wide confidence intervals; per-class figures with low support "
        "are unreliable.",
        "- Classes outside the list above are forced into one of them.",
        "",
    ]


def _considerations() -> Lines:
    return [
        "## Ethical and clinical considerations",
        "",
        "Research use only. The model has not been clinically validated or approved by any "
        "regulator and must not be used to diagnose or treat patients. Patient data used for "
        "training must be handled under the applicable consent and data-protection rules; "
        "errors may fall unevenly across patient groups, stains and scanners that are "
        "under-represented in the data.",
        "",
    ]
