"""Drift tests on synthetic IHC images: no alarm on same-distribution data, brightness and stain
shifts detected and named, the embedding test, constant and missing columns."""

from __future__ import annotations

import numpy as np
import pytest

from ihcflow.images.features import FEATURE_COLUMNS
from ihcflow.monitoring.drift import (
    DriftParams,
    column_methods,
    column_thresholds,
    compare,
    embedding_threshold,
)
from ihcflow.monitoring.simulate import scale_brightness, scale_stain
from ihcflow.monitoring.sources import DriftInputError
from tests.helpers.data import draw

PARAMS = DriftParams()


def test_same_distribution_false_alarm_rate_is_low() -> None:
    alarms, drifted_counts, p_values = 0, [], []
    for n_current in (40, 100):
        for seed in range(12):
            result = compare(*draw(seed, n_current), PARAMS)
            assert result.status in ("drift", "no_drift")
            alarms += result.status == "drift"
            drifted_counts.append(result.n_drifted)
            p_values += [c.score for c in result.columns]
    # Chance differences are there (Evidently's default p < 0.05 flags some columns) ...
    assert np.mean(np.array(p_values) < 0.05) > 0.02
    # ... but the dataset verdict stays quiet.
    assert alarms <= 1, f"{alarms}/24 false alarms, drifted columns per draw {drifted_counts}"


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_brightness_shift_is_detected_and_named(factor: float) -> None:
    for seed in range(3):
        result = compare(*draw(seed, 40, lambda x: scale_brightness(x, factor)), PARAMS)
        assert result.status == "drift"
        drifted = set(result.drifted_columns)
        assert {"brightness", "mean_r", "mean_g", "mean_b"} <= drifted
        assert "predicted" not in drifted  # same classes, only the exposure changed


def test_dab_stain_boost_is_detected_and_named() -> None:
    for seed in range(3):
        result = compare(*draw(seed, 80, lambda x: scale_stain(x, "dab", 1.8)), PARAMS)
        assert result.status == "drift"
        assert {"dab_mean", "dab_std"} <= set(result.drifted_columns)
        strongest = sorted(result.columns, key=lambda c: c.score)[:2]  # smallest p-values
        assert {c.column for c in strongest} & {"dab_mean", "dab_std"}


def test_report_and_window_paths_give_the_same_verdicts() -> None:
    reference, current = draw(5, 60, lambda x: scale_stain(x, "dab", 1.5))
    fast = compare(reference, current, PARAMS)
    full = compare(reference, current, PARAMS, html=True)
    assert full.snapshot is not None and fast.snapshot is None
    assert [(c.column, c.method, c.drifted) for c in fast.columns] == [
        (c.column, c.method, c.drifted) for c in full.columns
    ]
    np.testing.assert_allclose([c.score for c in fast.columns], [c.score for c in full.columns])
    assert (fast.n_drifted, fast.share, fast.status) == (full.n_drifted, full.share, full.status)


def _embeddings(rng: np.random.Generator, n: int, shift: float) -> np.ndarray:
    base = rng.normal(size=(n, 64)).astype(np.float32)
    base[:, :8] += shift  # a change in a few directions of a 64-d embedding
    return base


def test_embedding_drift_is_detected_and_quiet_without_change() -> None:
    reference, current = draw(0, 60)
    rng = np.random.default_rng(0)
    verdicts = []
    for _ in range(10):
        reference.embeddings = _embeddings(rng, len(reference), 0.0)
        current.embeddings = _embeddings(rng, len(current), 0.0)
        result = compare(reference, current, PARAMS).embedding
        assert result is not None and result.components == PARAMS.embedding_pca
        verdicts.append(result.drifted)
    assert sum(verdicts) <= 1
    current.embeddings = _embeddings(rng, len(current), 1.0)
    result = compare(reference, current, PARAMS)
    assert result.embedding is not None and result.embedding.drifted
    assert result.embedding.score > result.embedding.threshold
    assert result.status == "drift"  # the embedding alone decides it; the features did not move
    assert result.share is not None and result.share < PARAMS.drift_share


def test_embedding_of_another_size_is_not_compared() -> None:
    reference, current = draw(0, 40)
    reference.embeddings = np.zeros((len(reference), 8), np.float32)
    current.embeddings = np.zeros((len(current), 16), np.float32)
    result = compare(reference, current, PARAMS)
    assert result.embedding is None and "8 dimensions, current 16" in result.embedding_note


def test_embedding_threshold_follows_the_sample_size() -> None:
    small = embedding_threshold(250, 30, PARAMS)
    large = embedding_threshold(250, 5000, PARAMS)
    assert PARAMS.embedding_min_auc < large < small < 0.75
    assert embedding_threshold(10**6, 10**6, PARAMS) == PARAMS.embedding_min_auc


def test_large_samples_use_distances_small_ones_p_values() -> None:
    assert column_methods(250, 10**5, PARAMS) == ("ks", "chisquare")
    assert column_thresholds(250, 10**5, PARAMS) == (PARAMS.p_value, PARAMS.p_value)
    assert column_methods(5000, 10**5, PARAMS) == ("wasserstein", "jensenshannon")
    assert column_thresholds(5000, 10**5, PARAMS) == (PARAMS.distance, PARAMS.distance)
    forced = DriftParams(num_method="psi")
    assert column_methods(250, 40, forced) == ("psi", "chisquare")
    assert column_thresholds(250, 40, forced) == (None, PARAMS.p_value)  # psi's own default


def test_large_samples_are_tested_with_distances() -> None:
    reference, current = draw(0, 100)
    big = DriftParams(large_sample=50)  # both sides count as large here
    result = compare(reference, current, big)
    assert {c.method for c in result.columns} == {
        "Wasserstein distance (normed)",
        "Jensen-Shannon distance",
    }
    assert {c.threshold for c in result.columns} == {big.distance}


def test_too_few_current_rows_is_not_enough_data() -> None:
    reference, current = draw(0, PARAMS.min_rows - 1, lambda x: scale_brightness(x, 0.5))
    result = compare(reference, current, PARAMS)
    assert result.status == "not_enough_data" and result.dataset_drift is None
    assert f"{PARAMS.min_rows - 1} current rows < min_rows {PARAMS.min_rows}" in result.reason
    assert result.columns == []


def test_a_column_constant_in_the_reference_is_listed_not_tested() -> None:
    reference, current = draw(1, 60)
    reference.frame["sharpness"] = current.frame["sharpness"] = 0.0  # flat images on both sides
    result = compare(reference, current, PARAMS)
    assert result.skipped == {"sharpness": "constant: 0.0 in every row of both"}
    assert len(result.columns) == len(FEATURE_COLUMNS) - 1 + 1  # + predicted
    current.frame.loc[:9, "sharpness"] = 5.0  # no spread to test against: said, not scored
    result = compare(reference, current, PARAMS)
    assert "sharpness" not in [c.column for c in result.columns]
    assert result.skipped["sharpness"] == (
        "constant in the reference (0.0), so not tested: 10 of 60 current rows differ"
    )


def test_a_class_never_predicted_before_is_drift() -> None:
    reference, current = draw(2, 60)
    reference.frame = reference.frame[reference.frame["predicted"] != "Ki-67"]
    reference.frame = reference.frame.reset_index(drop=True)
    result = compare(reference, current, PARAMS)
    [predicted] = [c for c in result.columns if c.column == "predicted"]
    assert predicted.drifted and predicted.score == 0.0  # infinite chi-square, no warning


def test_a_missing_feature_column_is_an_error_naming_the_source() -> None:
    reference, current = draw(0, 40)
    current.frame = current.frame.drop(columns=["dab_mean"])
    with pytest.raises(DriftInputError, match=r"cur: lacks feature column\(s\) \['dab_mean'\]"):
        compare(reference, current, PARAMS)


def test_params_reject_unknown_keys_and_bad_values() -> None:
    params = DriftParams.from_mapping(
        {"drift_share": 0.3, "embedding": {"pca": 8}, "cache_dir": ".cache/drift"}
    )
    assert (params.drift_share, params.embedding_pca) == (0.3, 8)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['drift_shares'\]"):
        DriftParams.from_mapping({"drift_shares": 0.3})
    with pytest.raises(ValueError, match="drift.drift_share must be in"):
        DriftParams(drift_share=0.0)
    with pytest.raises(ValueError, match="drift.features"):
        DriftParams(features=("brightness", "colourfulness"))
