"""The paper's future-work baselines: scikit-learn estimators on hand-made image features.

Features come from :class:`~ihcflow.training.networks.ImageFeatures` (torch, so the ONNX
export computes exactly the same ones); the estimator sits behind a StandardScaler.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from sklearn.base import BaseEstimator
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

from ihcflow.training.datamodule import ImageDataModule, ImageSet
from ihcflow.training.module import scale_pixels
from ihcflow.training.networks import ImageFeatures


@torch.inference_mode()
def extract(features: ImageFeatures, data: ImageSet, batch: int = 512) -> np.ndarray:
    """Feature matrix (N, D) float32 of a split, in order."""
    out = []
    for start in range(0, len(data), batch):
        x, _ = data.__getitems__(range(start, min(start + batch, len(data))))
        out.append(features(scale_pixels(x)).numpy())
    return np.concatenate(out) if out else np.zeros((0, features.embed_dim), np.float32)


def build_estimator(spec: Mapping[str, Any], *, seed: int, imbalance: str) -> Pipeline:
    """StandardScaler + the configured estimator, seeded, class-weighted when asked."""
    estimator = instantiate(spec)
    if not isinstance(estimator, BaseEstimator) or not hasattr(estimator, "fit"):
        raise TypeError(f"model.estimator builds {type(estimator).__name__}, not an estimator")
    # Seed and class-weight the estimator and any nested one (e.g. CalibratedClassifierCV's).
    for key, value in estimator.get_params(deep=True).items():
        name = key.rsplit("__", 1)[-1]
        if name == "random_state" and value is None:
            estimator.set_params(**{key: seed})
        if name == "class_weight" and value is None and imbalance != "none":
            # no sampler here: balanced_sampler and class_weights both mean class re-weighting
            estimator.set_params(**{key: "balanced"})
    if not hasattr(estimator, "predict_proba"):
        raise ValueError(
            f"model.estimator {type(estimator).__name__} has no predict_proba; wrap it in "
            "sklearn.calibration.CalibratedClassifierCV"
        )
    return make_pipeline(StandardScaler(), estimator)


def fit_baseline(
    dm: ImageDataModule,
    spec: Mapping[str, Any],
    features_cfg: Mapping[str, Any],
    *,
    seed: int,
    imbalance: str,
) -> tuple[Pipeline, dict[str, float], dict[str, Any]]:
    """Fit on train; return the pipeline, train/val metrics and the checkpoint entries."""
    features = ImageFeatures(**dict(features_cfg)).eval()
    x_train = extract(features, dm.sets["train"])
    y_train = dm.sets["train"].labels.numpy()
    x_val = extract(features, dm.sets["val"])
    y_val = dm.sets["val"].labels.numpy()
    pipe = build_estimator(spec, seed=seed, imbalance=imbalance)
    pipe.fit(x_train, y_train)
    k = len(dm.class_names)
    train_pred = torch.as_tensor(pipe.predict(x_train))
    val_probs = torch.as_tensor(pipe.predict_proba(x_val), dtype=torch.float64)
    target = torch.as_tensor(y_val)
    picked = val_probs[torch.arange(len(target)), target].clamp_min(1e-15)
    metrics = {
        "train/acc": float(
            multiclass_accuracy(train_pred, torch.as_tensor(y_train), k, average="micro")
        ),
        "val/loss": float(-picked.log().mean()),
        "val/acc": float(multiclass_accuracy(val_probs, target, k, average="micro")),
        "val/balanced_acc": float(multiclass_accuracy(val_probs, target, k, average="macro")),
        "val/f1_macro": float(multiclass_f1_score(val_probs, target, k, average="macro")),
    }
    entries = {"estimator": pickle.dumps(pipe), "features": dict(features_cfg)}
    return pipe, metrics, entries
