"""A tiny real model, trained, evaluated and registered as the stages do, and a registered model
built without torch (an ONNX graph written node by node).

The torch model: normalise, average-pool the image (the embedding), a linear layer, softmax;
trained in a second on :func:`tests.helpers.data.write_colour_dataset` images.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
import torch
from onnx import TensorProto, helper, numpy_helper

from ihcflow.dataset import load_images
from ihcflow.evaluation import EvaluateParams, Misclassified
from ihcflow.files import sha256_file
from ihcflow.model_format import model_input
from ihcflow.registry.gate import ClassifierGateSettings, GateParams
from tests.helpers import load_stage, plain_preprocess
from tests.helpers.data import CLASSES, SIZE

PASSING = {  # a gate the tiny model passes on the colour data set
    "min_balanced_accuracy": 0.5,
    "min_auroc_macro": 0.6,
    "min_class_recall": 0.2,
    "verify_images": 5,
    "verify_tolerance": 1e-4,
    "model_name": "tiny",
    "version": None,
    "ood_quantile": 0.99,
    "ood_components": 32,
    "ood_framing_zoom": None,
}


class MeanColourNet(torch.nn.Module):
    """Normalise, global-average-pool (the embedding), linear layer, softmax."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, k: int) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, k)
        self.register_buffer("mean", torch.tensor([0.45, 0.35, 0.4]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.2, 0.2, 0.2]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = ((x - self.mean) / self.std).mean(dim=(2, 3))
        return torch.softmax(self.fc(embedding), dim=1), embedding


class TinyPredictor:
    """ihcflow.registry.ExportablePredictor around a real trained torch module."""

    def __init__(self, net: MeanColourNet) -> None:
        self.net = net.eval()
        self.class_names = list(CLASSES)
        self.input_size = SIZE
        self.config = {
            "model": {"kind": "lightning", "net": "MeanColourNet"},
            "train": {"epochs": 1, "lr": 0.1},
            "preprocess": {"size": SIZE},
        }

    @torch.no_grad()
    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        return self.net(torch.from_numpy(model_input(images)))[0].numpy()

    def export_onnx(self, path: str | Path) -> None:
        example = torch.from_numpy(model_input(np.zeros((2, SIZE, SIZE, 3), np.uint8)))
        torch.onnx.export(
            self.net,
            (example,),
            str(path),
            input_names=["image"],
            output_names=["probs", "embedding"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            dynamo=True,
            verbose=False,
        )


def train_tiny(root: Path, seed: int = 0) -> MeanColourNet:
    split = pd.read_csv(root / "processed/split.csv")
    train = split[split["split"] == "train"]
    x = torch.from_numpy(model_input(load_images(train["image"].tolist(), root, SIZE)))
    y = torch.tensor(train["class"].map(CLASSES.index).to_numpy())
    torch.manual_seed(seed)
    net = MeanColourNet(len(CLASSES))
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    for _ in range(150):
        opt.zero_grad()
        loss = torch.nn.functional.nll_loss(torch.log(net(x)[0] + 1e-9), y)
        loss.backward()
        opt.step()
    return net


def evaluate_tiny(
    root: Path, predictor: Any, *, batch_size: int = 8, max_images: int = 4
) -> dict[str, Any]:
    """Save ``predictor`` as the train stage's checkpoint and run the evaluate stage on it."""
    ckpt = root / "models/checkpoints/best.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": predictor.net.state_dict(), "config": predictor.config}, ckpt)
    params = EvaluateParams(
        split="test",
        batch_size=batch_size,
        tta=False,
        misclassified=Misclassified(max_images=max_images, columns=2),
    )
    result = load_stage("evaluate").run(
        params,
        checkpoint=ckpt,
        split=root / "processed/split.csv",
        root=root,
        metrics=root / "reports/metrics.json",
        predictions=root / "reports/predictions.csv",
        plots_dir=root / "reports/plots",
        predictor=predictor,
    )
    return {
        "root": root,
        "predictor": predictor,
        "ckpt": ckpt,
        "shown": result.shown,
        "metrics": result.metrics,
    }


def register_tiny(
    ev: dict[str, Any], gate: dict[str, Any], predictor: Any = None
) -> dict[str, Any]:
    """The register stage on the evaluated tiny model; returns the new model.json."""
    root = ev["root"]
    return (
        load_stage("register")
        .run(
            GateParams.from_section(gate, ClassifierGateSettings),
            checkpoint=ev["ckpt"],
            metrics=root / "reports/metrics.json",
            predictions=root / "reports/predictions.csv",
            split=root / "processed/split.csv",
            train_summary=root / "reports/train/summary.json",
            root=root,
            models=root / "models",
            predictor=predictor or ev["predictor"],
        )
        .info
    )


# --- a registered model without torch -----------------------------------------------------------

ONNX_CLASSES = ["neg", "pos", "mixed"]
ONNX_SIZE = 8


def mean_colour_onnx(path: Path, k: int = 3, outputs: tuple[str, str] = ("probs", "embedding")):
    """image (N, 3, S, S) -> embedding = mean RGB (N, 3) -> linear -> softmax probs (N, k)."""
    weights = np.array([[4.0, -4.0, 0.0], [-4.0, 4.0, 0.0], [0.0, 0.0, 1.0]], np.float32)[:, :k]
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image"], [outputs[1]], axes=[2, 3], keepdims=0),
            helper.make_node("Gemm", [outputs[1], "w", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], [outputs[0]], axis=1),
        ],
        "mean_colour",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, ONNX_SIZE, ONNX_SIZE])],
        [
            helper.make_tensor_value_info(outputs[0], TensorProto.FLOAT, ["N", k]),
            helper.make_tensor_value_info(outputs[1], TensorProto.FLOAT, ["N", 3]),
        ],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(np.zeros(k, "f4"), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def write_model(folder: Path, **changes: Any) -> Path:
    """A registered set (model.onnx + model.json) of :func:`mean_colour_onnx`; ``changes``
    replace model.json keys."""
    folder.mkdir(parents=True, exist_ok=True)
    mean_colour_onnx(folder / "model.onnx")
    info = {
        "name": "unit",
        "version": "2.1.0",
        "class_names": ONNX_CLASSES,
        "input_size": ONNX_SIZE,
        "preprocess": plain_preprocess(ONNX_SIZE),
        "metrics": {"balanced_accuracy": 0.9, "per_class": {}},
        "onnx": {"file": "model.onnx", "sha256": sha256_file(folder / "model.onnx")},
    }
    info.update(changes)
    (folder / "model.json").write_text(json.dumps(info))
    return folder


# A U-Net small enough to train in seconds (overrides of conf/segmentation).
SEG_TINY = (
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "segmentation.model.net.channels=[8,16,32]",
    "segmentation.model.net.strides=[2,2]",
    "segmentation.train.epochs=2",
    "segmentation.train.patches_per_epoch=8",
    "segmentation.train.batch_size=4",
    "segmentation.train.patch=64",
    "segmentation.train.val_patches=2",
    "segmentation.tiling.roi=64",
)
