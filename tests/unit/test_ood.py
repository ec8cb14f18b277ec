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


def test_each_class_has_its_own_covariance() -> None:
    """A point typical of class 0's spread but in class 1's place is out of distribution when
    class 1 does not vary that way (one shared covariance would call it normal)."""
    rng = np.random.default_rng(0)
    wide = rng.normal(size=(500, 2)) * [3.0, 0.1]  # class 0 varies along x
    tall = rng.normal(size=(500, 2)) * [0.1, 3.0] + [20.0, 0.0]  # class 1 along y
    train = np.vstack([wide, tall])
    scorer = fit_ood(train, np.repeat([0, 1], 500), 2, components=2)
    scorer = scorer.calibrated(np.vstack([wide[:50], tall[:50]]), 0.99)
    assert not scorer.flags(scorer.scores(np.array([[5.0, 0.0], [20.0, 5.0]]))).any()
    assert scorer.flags(scorer.scores(np.array([[20.0 + 5.0, 0.0], [0.0, 5.0]]))).all()


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
    with pytest.raises(OodError, match="ood.bases: not an encoded float32 array"):
        OodScorer.from_info({**info, "bases": {"shape": [3, 16, 4], "base64": "!!"}})
    with pytest.raises(OodError, match="do not fit together"):
        OodScorer.from_info({**info, "residuals": info["variances"]})
    with pytest.raises(OodError, match=r"embedding shape \(2, 5\), expected \(N, 16\)"):
        scorer.scores(np.zeros((2, 5)))
    with pytest.raises(OodError, match="fewer than 2 classes"):
        fit_ood(train, np.zeros(len(train), int), 3, components=4)


def test_framing_check_flags_images_whose_zoomed_centre_is_closer_to_the_classes() -> None:
    """A wide view (a full field instead of one cell) is moderately far; its centre zoomed in
    lies on a class. A well-framed image's zoomed centre lies farther (its objects too big)."""
    train, labels = clusters(3000, 0)
    val = clusters(1000, 1)[0]
    rng = np.random.default_rng(5)
    too_big = val * 1.4 + rng.normal(size=val.shape)  # zooming a framed image: farther
    scorer = fit_ood(train, labels, 3, components=16)
    framed = scorer.calibrated(val, 0.95, too_big, zoom=0.55)
    alone = scorer.calibrated(val, 0.95)
    both = framed.assess(val, too_big)
    assert both.flags.mean() <= 0.05  # both checks together flag the calibrated share
    assert framed.threshold >= alone.threshold  # ... so each is stricter than alone
    test = clusters(2000, 2)[0]
    zoomed_test = test * 1.4 + rng.normal(size=test.shape)
    assert 0.02 < framed.assess(test, zoomed_test).flags.mean() < 0.08
    # wide views: moderately off (often under the distance threshold), centres on a class
    centres = clusters(300, 3)[0]
    wide = centres + rng.normal(size=centres.shape) * np.linspace(2.0, 0.1, 16) * 0.9
    judged = framed.assess(wide, centres)
    assert judged.misframed is not None and judged.misframed.mean() > 0.9
    assert alone.flags(alone.scores(wide)).mean() < judged.flags.mean()
    # a shifted image whose centre is as far: out of distribution, but not mis-framed
    odd = test.copy()
    odd[:, -1] += 2.0
    judged = framed.assess(odd, odd)
    assert judged.flags.mean() > 0.9 and judged.misframed is not None
    assert not judged.misframed.any()
    rows = judged.records()
    assert set(rows[0]) == {"score", "flag", "zoom_gain", "misframed"}
    assert rows[0]["zoom_gain"] == 0.0 and rows[0]["misframed"] is False


def test_framing_section_round_trips_and_is_checked() -> None:
    train, labels = clusters(600, 0)
    val = clusters(100, 1)[0]
    scorer = fit_ood(train, labels, 3, components=4).calibrated(val, 0.95, val * 1.3, zoom=0.5)
    info = json.loads(json.dumps(scorer.to_info()))
    assert info["framing"] == {"zoom": 0.5, "threshold": scorer.zoom_threshold}
    again = OodScorer.from_info(info)
    test = clusters(50, 5)[0]
    np.testing.assert_array_equal(
        again.assess(test, test * 1.2).flags, scorer.assess(test, test * 1.2).flags
    )
    assert OodScorer.from_info({**info, "framing": None}).zoom is None
    with pytest.raises(OodError, match=r"ood.framing.zoom 1.5 outside \[0.2, 0.9\]"):
        OodScorer.from_info({**info, "framing": {"zoom": 1.5, "threshold": 1.0}})
    with pytest.raises(OodError, match="ood.framing: needs numeric zoom and threshold"):
        OodScorer.from_info({**info, "framing": {"zoom": 0.5}})
    with pytest.raises(OodError, match="needs the zoomed centre of every image"):
        again.assess(test)
    with pytest.raises(OodError, match=r"framing zoom must be in \[0.2, 0.9\], got 0.05"):
        fit_ood(train, labels, 3, components=4).calibrated(val, 0.95, val, zoom=0.05)
