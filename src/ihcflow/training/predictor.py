"""Rebuild a trained model from its checkpoint alone, predict, embed, and export to ONNX.

Input convention for ``predict_proba``/``embed``: uint8 (N, S, S, 3) RGB, preprocessed like
the training data (``S = input_size``). The ONNX export has the registered model's inputs and
outputs (:mod:`ihcflow.model_format`, dynamic N); normalisation is inside the graph.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from torch import nn

from ihcflow.model_format import INPUT_NAME, OUTPUT_NAMES
from ihcflow.training.checkpoints import CheckpointError, load_checkpoint, model_digest
from ihcflow.training.module import CKPT_KEY, Normalize, scale_pixels
from ihcflow.training.networks import ImageFeatures

BATCH = 256


def dihedral(x: torch.Tensor) -> torch.Tensor:
    """The 8 views of each square image in (N, C, S, S) under the dihedral group (4 rotations,
    each with and without a mirror), as one (8N, C, S, S) batch: view-major."""
    mirrored = x.flip(-1)
    return torch.cat(
        [torch.rot90(base, k, dims=(-2, -1)) for base in (x, mirrored) for k in range(4)]
    )


class InferenceNet(nn.Module):
    """float [0, 1] images -> (softmax probabilities, embedding).

    ``tta``: test-time augmentation over the 8 dihedral views (flips and 90-degree rotations:
    a cell has no orientation): the network sees one batch of 8N images, and the
    probabilities and embedding are the means over the views. It is part of the module, so
    evaluation and the exported ONNX graph (the served model) do the same.
    """

    def __init__(self, normalize: Normalize, net: nn.Module, *, tta: bool = False) -> None:
        super().__init__()
        self.normalize = normalize
        self.net: Any = net  # a network of ihcflow.training.networks: features, head, embed_dim
        self.tta = tta

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.tta:
            embedding = self.net.features(self.normalize(x))
            return torch.softmax(self.net.head(embedding), dim=1), embedding
        n = x.shape[0]
        embedding = self.net.features(self.normalize(dihedral(x)))
        probs = torch.softmax(self.net.head(embedding), dim=1)
        return (
            probs.reshape(8, n, probs.shape[1]).mean(dim=0),
            embedding.reshape(8, n, embedding.shape[1]).mean(dim=0),
        )


def _dynamic_batch() -> dict[str, Any]:
    return {"x": {0: torch.export.Dim("batch", min=1, max=65_536)}}


def _export_torch(module: nn.Module, size: int, path: Path, output_names: list[str]) -> None:
    module = module.eval()
    example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    # The exporter logs a warning per torchvision op it cannot register (torchvision is not
    # installed and not used here); keep that noise out of the stage's output.
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)
    try:
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=output_names,
            dynamic_shapes=_dynamic_batch(),
            external_data=False,
            verbose=False,
        )
    finally:
        registry_log.setLevel(level)
    assert program is not None
    program.save(str(path), external_data=False)


class CheckpointPredictor:
    """A model rebuilt from a checkpoint (Lightning network or scikit-learn baseline).

    ``tta``: predict with test-time augmentation (:class:`InferenceNet`; networks only), in
    PyTorch and in the ONNX export alike; the registry's digest says so.
    """

    def __init__(self, ckpt: dict[str, Any], source: str, *, tta: bool = False) -> None:
        meta = ckpt[CKPT_KEY]
        try:
            self.class_names: list[str] = list(meta["class_names"])
            self.input_size: int = int(meta["input_size"])
            self.config: dict[str, Any] = dict(meta["config"])
            self.kind: str = str(meta["kind"])
        except KeyError as exc:
            raise CheckpointError(
                f"{source}: checkpoint lacks {exc.args[0]!r} in {CKPT_KEY!r}"
            ) from None
        self.source = source
        self.meta = meta
        self.tta = tta
        # names the model in the registry (see register): the same weights with and without
        # TTA are two models
        self.digest = model_digest(ckpt) + ("+tta8" if tta else "")
        if tta and self.kind != "lightning":
            raise CheckpointError(
                f"{source}: test-time augmentation (evaluate.tta) needs a network, "
                f"not a {self.kind!r} model"
            )
        if self.kind == "lightning":
            net = instantiate(
                self.config["model"]["net"],
                num_classes=len(self.class_names),
                input_size=self.input_size,
            )
            self.model = InferenceNet(Normalize(meta["mean"], meta["std"]), net, tta=tta)
            state = {
                k: v
                for k, v in ckpt["state_dict"].items()
                if k.split(".")[0] in {"normalize", "net"}
            }
            self.model.load_state_dict(state)
            self.model.eval()
            self.features: ImageFeatures | None = None
            self.estimator = None
        elif self.kind == "sklearn":
            self.features = ImageFeatures(**meta["features"]).eval()
            # The estimator is a pickle: checkpoints are trusted files this pipeline wrote.
            self.estimator = pickle.loads(ckpt["estimator"])
        else:
            raise CheckpointError(f"{source}: unknown model kind {self.kind!r}")

    # -- inference -------------------------------------------------------------------------

    def _to_float(self, images: np.ndarray) -> torch.Tensor:
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        s = self.input_size
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise ValueError(
                f"expected uint8 RGB images (N, {s}, {s}, 3), got {images.dtype} {images.shape}"
            )
        if images.shape[1:3] != (s, s):
            raise ValueError(
                f"images are {images.shape[2]}x{images.shape[1]} px, the model expects {s}x{s} "
                "(preprocess them like the training data)"
            )
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        return scale_pixels(x)

    @torch.inference_mode()
    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = self._to_float(images)
        probs, embeds = [], []
        for start in range(0, len(x), BATCH):
            chunk = x[start : start + BATCH]
            if self.kind == "lightning":
                p, e = self.model(chunk)
                probs.append(p.numpy())
                embeds.append(e.numpy())
            else:
                assert self.features is not None and self.estimator is not None
                e = self.features(chunk).numpy()
                probs.append(self.estimator.predict_proba(e).astype(np.float32))
                embeds.append(e)
        k = len(self.class_names)
        if not probs:
            return np.zeros((0, k), np.float32), np.zeros((0, self.embed_dim), np.float32)
        return np.concatenate(probs), np.concatenate(embeds)

    @property
    def embed_dim(self) -> int:
        if self.kind == "lightning":
            return int(self.model.net.embed_dim)
        assert self.features is not None
        return self.features.embed_dim

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities (N, K), columns in ``class_names`` order."""
        return self._run(images)[0]

    def predict(self, images: np.ndarray) -> list[str]:
        return [self.class_names[i] for i in self.predict_proba(images).argmax(axis=1)]

    def embed(self, images: np.ndarray) -> np.ndarray:
        """The penultimate-layer features (N, D) (the hand-made features for baselines)."""
        return self._run(images)[1]

    # -- export ----------------------------------------------------------------------------

    def export_onnx(self, path: str | os.PathLike[str]) -> None:
        """Write a single-file ONNX model (input ``image``, outputs ``probs``, ``embedding``)."""
        import onnx

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".onnx-") as tmp:
            part = Path(tmp) / "model.onnx"
            if self.kind == "lightning":
                _export_torch(self.model, self.input_size, part, list(OUTPUT_NAMES))
                model = onnx.load(str(part))
            else:
                assert self.features is not None
                _export_torch(self.features, self.input_size, part, ["embedding"])
                model = _append_sklearn(
                    onnx.load(str(part)), self.estimator, self.features.embed_dim
                )
            onnx.checker.check_model(model)
            out = Path(tmp) / "final.onnx"
            onnx.save(model, str(out))
            out.replace(path)


def _append_sklearn(features: Any, estimator: Any, dim: int) -> Any:
    """Feed the feature graph's ``embedding`` into the estimator converted by skl2onnx."""
    import onnx
    from onnx import compose, helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    opsets = {op.domain or "": op.version for op in features.opset_import}
    with warnings.catch_warnings():
        # skl2onnx 1.20 reads SVC.probA_/probB_, deprecated in scikit-learn 1.9 (and unused
        # here: probabilities come from CalibratedClassifierCV, which it converts correctly).
        warnings.filterwarnings("ignore", r"Attribute `prob[AB]_` was deprecated", FutureWarning)
        ml = convert_sklearn(
            estimator,
            initial_types=[("embedding", FloatTensorType([None, dim]))],
            options={"zipmap": False},
            target_opset={"": opsets[""], "ai.onnx.ml": 3},
        )
    ml.ir_version = features.ir_version
    merged = compose.merge_models(
        features,
        ml,
        io_map=[("embedding", "embedding")],  # names before prefixing
        prefix2="skl_",
        outputs=["skl_probabilities", "embedding"],
    )
    graph = merged.graph
    graph.node.append(helper.make_node("Identity", ["skl_probabilities"], ["probs"]))
    old = {o.name: o for o in graph.output}
    probs = onnx.ValueInfoProto()
    probs.CopyFrom(old["skl_probabilities"])
    probs.name = "probs"
    del graph.output[:]
    graph.output.extend([probs, old["embedding"]])
    return merged


def load_predictor(ckpt_path: str | os.PathLike[str], *, tta: bool = False) -> CheckpointPredictor:
    """Rebuild the model stored in ``ckpt_path`` (a ``best.ckpt``/``last.ckpt`` of train);
    ``tta``: with dihedral test-time augmentation (``evaluate.tta``)."""
    return CheckpointPredictor(load_checkpoint(ckpt_path), str(ckpt_path), tta=tta)
