"""Evaluation metrics agree with scikit-learn, and evaluate_split scores a real model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.linear_model import LogisticRegression

from ihcflow.evaluation import compute_metrics, evaluate_split, roc_points
from ihcflow.images.codec import encode_png
from tests.helpers.data import CLASSES, SIZE, write_colour_dataset


def approx(expected: object) -> object:
    return pytest.approx(expected, abs=1e-6)  # metrics.json holds 6 decimals


def _noisy_probs(y: np.ndarray, k: int, skill: float, seed: int) -> np.ndarray:
    """Softmax scores that favour the true class by ``skill`` (some errors remain)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(y), k))
    logits[np.arange(len(y)), y] += skill
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_metrics_match_sklearn() -> None:
    y = np.random.default_rng(0).integers(0, 3, size=300)
    probs = _noisy_probs(y, 3, skill=1.2, seed=1)
    pred = probs.argmax(axis=1)
    m = compute_metrics(y, probs, CLASSES)

    assert m["accuracy"] == approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == approx(skm.balanced_accuracy_score(y, pred))
    assert m["f1_macro"] == approx(skm.f1_score(y, pred, average="macro"))
    assert m["auroc_macro"] == approx(
        skm.roc_auc_score(y, probs, multi_class="ovr", average="macro")
    )
    assert m["cohen_kappa"] == approx(skm.cohen_kappa_score(y, pred))
    precision = skm.precision_score(y, pred, average=None)
    recall = skm.recall_score(y, pred, average=None)
    for i, name in enumerate(CLASSES):
        assert m["per_class"][name]["precision"] == approx(precision[i])
        assert m["per_class"][name]["recall"] == approx(recall[i])
        assert m["per_class"][name]["support"] == int((y == i).sum())
    assert m["n_test"] == 300
    assert 0.4 < m["accuracy"] < 0.95  # the fixture really has errors to count


def test_perfect_predictions() -> None:
    y = np.array([0, 1, 2, 2, 1, 0])
    m = compute_metrics(y, np.eye(3)[y], CLASSES)
    for key in ("accuracy", "balanced_accuracy", "f1_macro", "auroc_macro", "cohen_kappa"):
        assert m[key] == approx(1.0)


def test_class_without_test_images_is_left_out_of_macro_averages() -> None:
    y = np.array([0, 0, 0, 1, 1, 1, 1, 0])  # no image of class 2
    probs = _noisy_probs(y, 3, skill=1.0, seed=3)
    probs[0] = [0.1, 0.1, 0.8]  # one image wrongly predicted as the absent class
    pred = probs.argmax(axis=1)
    m = compute_metrics(y, probs, CLASSES)
    present = [0, 1]
    assert m["balanced_accuracy"] == approx(
        skm.recall_score(y, pred, labels=present, average="macro")
    )
    assert m["f1_macro"] == approx(skm.f1_score(y, pred, labels=present, average="macro"))
    aurocs = [skm.roc_auc_score(y == i, probs[:, i]) for i in present]
    assert m["auroc_macro"] == approx(np.mean(aurocs))
    assert m["per_class"]["Mixed"]["support"] == 0
    assert m["per_class"]["Mixed"]["auroc"] is None
    assert m["n_classes_in_test"] == 2


def test_single_class_has_no_auroc_and_metrics_are_strict_json() -> None:
    y = np.zeros(4, dtype=int)
    probs = np.tile([0.7, 0.2, 0.1], (4, 1))
    m = compute_metrics(y, probs, CLASSES)
    assert m["auroc_macro"] is None
    assert m["accuracy"] == 1.0
    json.dumps(m, allow_nan=False)  # DVC must be able to parse metrics.json


@pytest.mark.parametrize(
    ("y", "probs", "message"),
    [
        (np.array([0, 1]), np.full((2, 2), 0.5), r"shape \(2, 2\), expected \(N, 3\)"),
        (np.array([0, 1, 2]), np.full((2, 3), 1 / 3), "3 labels for 2 rows"),
        (np.array([0, 3]), np.full((2, 3), 1 / 3), r"labels must be in 0\.\.2"),
        (np.array([0, 1]), np.full((2, 3), 0.5), "row 0 sum to 1.5"),
        (np.array([], dtype=int), np.empty((0, 3)), "0 samples"),
    ],
)
def test_bad_inputs_are_rejected(y: np.ndarray, probs: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compute_metrics(y, probs, CLASSES)


def test_roc_points_match_sklearn() -> None:
    y = np.random.default_rng(4).integers(0, 3, size=60)
    probs = _noisy_probs(y, 3, skill=1.0, seed=5)
    roc = roc_points(y, probs, CLASSES)
    assert list(roc.columns) == ["class", "fpr", "tpr", "threshold"]
    assert list(roc["class"].unique()) == CLASSES
    for i, name in enumerate(CLASSES):
        curve = roc[roc["class"] == name]
        fpr, tpr, _ = skm.roc_curve(y == i, probs[:, i], drop_intermediate=False)
        np.testing.assert_allclose(curve["fpr"], fpr)
        np.testing.assert_allclose(curve["tpr"], tpr)
        assert np.isfinite(curve["threshold"]).all()  # CSV-safe (sklearn puts inf first)


# --- evaluate_split on generated images with a real scikit-learn model -----------------------


class MeanColourPredictor:
    """A real classifier: logistic regression on the mean RGB of the image."""

    def __init__(self, class_names: list[str], images: np.ndarray, labels: np.ndarray) -> None:
        self.class_names = class_names
        self.input_size = SIZE
        self.model = LogisticRegression(max_iter=500).fit(self._features(images), labels)

    @staticmethod
    def _features(images: np.ndarray) -> np.ndarray:
        return images.reshape(len(images), -1, 3).mean(axis=1) / 255.0

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        assert images.dtype == np.uint8 and images.shape[1:] == (SIZE, SIZE, 3)
        return self.model.predict_proba(self._features(images))


def test_evaluate_split_scores_a_real_model(tmp_path: Path) -> None:
    from ihcflow.dataset import load_images

    frame = write_colour_dataset(tmp_path, per_class=18, noise=25.0)
    train = frame[frame["split"] == "train"]
    predictor = MeanColourPredictor(
        CLASSES,
        load_images(train["image"].tolist(), tmp_path, SIZE),
        train["class"].map(CLASSES.index).to_numpy(),
    )
    metrics, predictions = evaluate_split(
        predictor, tmp_path / "processed/split.csv", tmp_path, batch_size=7
    )
    test = frame[frame["split"] == "test"].reset_index(drop=True)
    assert metrics["n_test"] == len(test) == len(predictions)
    assert list(predictions.columns) == [
        "path",
        "image",
        "class",
        "predicted",
        "prob_DAB",
        "prob_Hematoxylin",
        "prob_Mixed",
    ]
    assert list(predictions["path"]) == list(test["path"])
    expected = predictor.predict_proba(load_images(test["image"].tolist(), tmp_path, SIZE))
    np.testing.assert_allclose(predictions.filter(like="prob_").to_numpy(), expected)
    assert metrics["accuracy"] == approx((predictions["class"] == predictions["predicted"]).mean())
    assert metrics["accuracy"] > 0.6


def test_evaluate_split_errors_name_the_problem(tmp_path: Path) -> None:
    frame = write_colour_dataset(tmp_path, per_class=6, noise=5.0)
    images = np.zeros((3, SIZE, SIZE, 3), np.uint8)
    images[1] += 100
    images[2] += 200
    two_classes = MeanColourPredictor(["DAB", "Hematoxylin"], images[:2], np.array([0, 1]))
    with pytest.raises(ValueError, match=r"class\(es\) \['Mixed'\] are not among the model's"):
        evaluate_split(two_classes, tmp_path / "processed/split.csv", tmp_path)

    predictor = MeanColourPredictor(CLASSES, images, np.array([0, 1, 2]))
    first_test = frame[frame["split"] == "test"]["image"].iloc[0]
    (tmp_path / first_test).write_bytes(encode_png(np.zeros((8, 8, 3), np.uint8)))
    expected = rf"{first_test}: image is 8x8 px, the model expects 12x12"
    with pytest.raises(ValueError, match=expected):
        evaluate_split(predictor, tmp_path / "processed/split.csv", tmp_path)

    with pytest.raises(ValueError, match=r"no rows with split='holdout'"):
        evaluate_split(predictor, tmp_path / "processed/split.csv", tmp_path, split="holdout")
