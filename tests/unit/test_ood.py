"""The out-of-distribution score on embeddings with known structure."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ihcflow.ood import MIN_CALIBRATION, OodError, OodScorer, fit_ood


def clusters(n: int, seed: int, shift: float = 0.0, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Three classes in ``dim`` dimensions with a shared, anisotropic covariance."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    centres = np.eye(3, dim) * 6.0
    scale = np.linspace(2.0, 0.1, dim)  # some directions hardly vary: shifts there are odd
    return centres[labels] + rng.normal(size=(n, dim)) * scale + shift, labels


def test_in_distribution_is_flagged_at_the_calibrated_rate_and_outliers_always() -> None:
    train, labels = clusters(3000, 0)
    scorer = fit_ood(train, labels, 3, components=16).calibrated(clusters(1000, 1)[0], 0.95)
    test = scorer.flags(scorer.scores(clusters(2000, 2)[0])).mean()
    assert 0.02 < test < 0.08  # ~5%: the quantile
    # a shift along a direction the classes never vary in (0.1 sd) is far, although small
    odd = clusters(200, 3)[0]
    odd[:, -1] += 2.0
    assert scorer.flags(scorer.scores(odd)).mean() > 0.95
    # far along a direction the classes do vary in
    far = clusters(50, 4)[0]
    far[:, 3] += 30.0
    assert scorer.flags(scorer.scores(far)).all()


def test_model_json_round_trip_scores_exactly_the_same() -> None:
    train, labels = clusters(600, 0)
    scorer = fit_ood(train, labels, 3, components=4).calibrated(clusters(100, 1)[0], 0.99)
    info = json.loads(json.dumps(scorer.to_info(calibrated_on=100)))
    assert info["method"] == "mahalanobis_nearest_class" and info["calibrated_on"] == 100
    assert len(json.dumps(info)) < 4000  # the matrices are base64 float32, not JSON lists
    again = OodScorer.from_info(info)
    test = clusters(50, 5)[0]
    np.testing.assert_array_equal(again.scores(test), scorer.scores(test))
    assert again.threshold == scorer.threshold and again.quantile == 0.99


def test_bad_sections_and_too_little_calibration_data_are_named() -> None:
    train, labels = clusters(300, 0)
    scorer = fit_ood(train, labels, 3, components=4)
    with pytest.raises(OodError, match=f"at least {MIN_CALIBRATION} are needed"):
        scorer.calibrated(train[: MIN_CALIBRATION - 1], 0.99)
    info = scorer.calibrated(train[:50], 0.99).to_info()
    with pytest.raises(OodError, match="ood.method 'energy' unknown"):
        OodScorer.from_info({**info, "method": "energy"})
    with pytest.raises(OodError, match="ood.basis: not an encoded float32 array"):
        OodScorer.from_info({**info, "basis": {"shape": [16, 4], "base64": "!!"}})
    with pytest.raises(OodError, match=r"embedding shape \(2, 5\), expected \(N, 16\)"):
        scorer.scores(np.zeros((2, 5)))
    with pytest.raises(OodError, match="fewer than 2 classes"):
        fit_ood(train, np.zeros(len(train), int), 3, components=4)
