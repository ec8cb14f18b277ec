"""Drift tests with Evidently 0.7: per column, on the embedding, per time window.

Columns: every image feature (numerical) and the predicted class (categorical). Each column gets
one test; which one depends on the sample sizes, because a p-value and an effect size fail in
opposite ways:

- while either side has fewer than ``large_sample`` rows: Kolmogorov-Smirnov (numerical) and
  chi-square (classes), drift when p < ``p_value`` (0.01). A p-value is calibrated at any size,
  so a small window is judged fairly;
- when both sides are large: normed Wasserstein distance and Jensen-Shannon distance, drift when
  >= ``distance`` (0.1, Evidently's default). With 10^4+ rows a p-value flags differences too
  small to matter; a distance threshold asks for a difference of a set size, and the sampling
  noise of the distance is far below the threshold at that size.

The dataset drifts when the share of drifted columns reaches ``drift_share`` (Evidently's
``DriftedColumnsCount`` share) or when the embedding drifts. The image features are strongly
correlated (exposure moves brightness, percentiles, channel means and stain amounts together),
so one chance fluctuation drifts several columns at once: with Evidently's p < 0.05 and a
share of 0.25, 5-6% of same-distribution windows raised an alarm. p < 0.01 with a share of 0.2
(3 of 15 columns) brings that to 1-2% and still catches a 10% exposure change in every window
of 30 rows (docs/monitoring.md has the measurements).

Embedding: Evidently's classifier test (``ModelDriftMethod``): a linear classifier learns to
tell reference from current embeddings (standardised and reduced to ``embedding_pca`` principal
components, fitted on both sides pooled) on one half and is scored by ROC AUC on the other.
With no drift the AUC is that of random scores, whose spread is known (Mann-Whitney): the
threshold is that null's 1 - ``embedding_alpha`` quantile for the rows scored, and never below
``embedding_min_auc`` (Evidently's 0.55), so small windows do not raise false alarms and large
ones need a real effect.
"""

from __future__ import annotations

import contextlib
import math
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd

from ihcflow.images.features import FEATURE_COLUMNS
from ihcflow.monitoring.sources import DriftInputError, Table, finite

PREDICTED = "predicted"
EMBEDDING = "embedding"
WINDOWS = ("none", "day", "week")
NUMERICAL, CATEGORICAL = "numerical", "categorical"
# Warnings Evidently 0.7.23 triggers on import with numpy 2.4 / litestar 2.23 (harmless; the
# same filters are in pyproject's pytest filterwarnings).
EVIDENTLY_IMPORT_WARNINGS = (
    ("numpy.core is deprecated", "evidently"),
    ("Call to deprecated function 'Dependency'", "litestar"),
    ("Use of deprecated class 'DependencyKwarg'", "litestar"),
)


@contextlib.contextmanager
def quiet_evidently() -> Iterator[None]:
    """Silence exactly the deprecation warnings Evidently triggers, nothing else."""
    with warnings.catch_warnings():
        for message, module in EVIDENTLY_IMPORT_WARNINGS:
            warnings.filterwarnings(
                "ignore", message=re.escape(message), category=DeprecationWarning, module=module
            )
        yield


def _evidently() -> Any:
    with quiet_evidently():
        import evidently

    return evidently


# ------------------------------------------------------------------------------------ params


@dataclass(frozen=True)
class DriftParams:
    """The ``drift`` params section (conf/drift/default.yaml explains each value)."""

    drift_share: float = 0.2
    min_rows: int = 30
    large_sample: int = 1000
    p_value: float = 0.01
    distance: float = 0.1
    num_method: str | None = None
    cat_method: str | None = None
    num_threshold: float | None = None
    cat_threshold: float | None = None
    embedding_alpha: float = 0.01
    embedding_min_auc: float = 0.55
    embedding_pca: int = 16
    embedding_plot_sample: int = 500
    quality_share: float = 0.05
    features: tuple[str, ...] = tuple(FEATURE_COLUMNS)

    def __post_init__(self) -> None:
        checks = (
            ("drift_share", 0.0 < self.drift_share <= 1.0, "in (0, 1]"),
            ("p_value", 0.0 < self.p_value < 1.0, "in (0, 1)"),
            ("distance", self.distance > 0.0, "> 0"),
            ("min_rows", self.min_rows >= 2, ">= 2"),
            ("large_sample", self.large_sample >= 2, ">= 2"),
            ("embedding_alpha", 0.0 < self.embedding_alpha < 0.5, "in (0, 0.5)"),
            ("embedding_min_auc", 0.5 <= self.embedding_min_auc < 1.0, "in [0.5, 1)"),
            ("embedding_pca", self.embedding_pca >= 1, ">= 1"),
            ("embedding_plot_sample", self.embedding_plot_sample >= 50, ">= 50"),
            ("quality_share", 0.0 <= self.quality_share < 1.0, "in [0, 1)"),
        )
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"drift.{name} must be {rule}, got {getattr(self, name)!r}")
        unknown = [c for c in self.features if c not in FEATURE_COLUMNS]
        if unknown or not self.features:
            raise ValueError(
                f"drift.features must be a non-empty subset of {FEATURE_COLUMNS}, got unknown "
                f"{unknown}"
            )

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> DriftParams:
        """From the ``drift`` params section; unknown keys are an error (a typo must show)."""
        cfg = dict(cfg or {})
        for key in ("cache_dir", "window", "since"):  # used by the command, not by the tests
            cfg.pop(key, None)
        emb = cfg.pop("embedding", None) or {}
        flat = {**cfg, **{f"embedding_{k}": v for k, v in dict(emb).items()}}
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(flat) - names)
        if unknown:
            raise ValueError(f"drift params: unknown key(s) {unknown} (known: {sorted(names)})")
        if "features" in flat:
            flat["features"] = tuple(flat["features"])
        return cls(**flat)


# ----------------------------------------------------------------------------------- results


@dataclass
class ColumnResult:
    column: str
    kind: str
    method: str
    threshold: float
    score: float | None
    drifted: bool


@dataclass
class EmbeddingResult:
    method: str
    score: float
    threshold: float
    drifted: bool
    dim: int
    components: int | None


@dataclass
class Comparison:
    """One reference-vs-current comparison (the whole selection or one window)."""

    n_reference: int
    n_current: int
    status: str  # "drift", "no_drift" or "not_enough_data"
    drift_share: float  # the threshold
    columns: list[ColumnResult] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    n_drifted: int = 0
    share: float | None = None
    embedding: EmbeddingResult | None = None
    embedding_note: str = ""
    reason: str = ""
    ood_scored: int = 0  # current rows the server gave an out-of-distribution score
    ood_flagged: int = 0  # ... and flagged
    ood_misframed: int = 0  # ... flagged as misframed by the framing check (ihcflow.ood)
    snapshot: Any = None  # the Evidently Snapshot (whole-selection comparison only)

    @property
    def ood_share(self) -> float | None:
        return self.ood_flagged / self.ood_scored if self.ood_scored else None

    @property
    def dataset_drift(self) -> bool | None:
        return None if self.status == "not_enough_data" else self.status == "drift"

    @property
    def drifted_columns(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]

    def to_dict(self) -> dict[str, Any]:
        columns = sorted(self.columns, key=lambda c: (not c.drifted, c.column))
        return {
            "status": self.status,
            "dataset_drift": self.dataset_drift,
            "reason": self.reason or None,
            "n_reference": self.n_reference,
            "n_current": self.n_current,
            "n_columns": len(self.columns),
            "n_drifted": self.n_drifted,
            "share": self.share,
            "drift_share": self.drift_share,
            "drifted_columns": self.drifted_columns,
            "columns": [{**asdict(c), "score": finite(c.score)} for c in columns],
            "skipped_columns": self.skipped,
            "embedding": None if self.embedding is None else asdict(self.embedding),
            "embedding_note": self.embedding_note or None,
            "ood": {
                "scored": self.ood_scored,
                "flagged": self.ood_flagged,
                "share": self.ood_share,
                "misframed": self.ood_misframed,
            },
        }


# ------------------------------------------------------------------------------ the tests


def column_methods(n_reference: int, n_current: int, params: DriftParams) -> tuple[str, str]:
    """(numerical, categorical) Evidently stattest names for these sample sizes."""
    large = min(n_reference, n_current) >= params.large_sample
    num = params.num_method or ("wasserstein" if large else "ks")
    cat = params.cat_method or ("jensenshannon" if large else "chisquare")
    return num, cat


def column_thresholds(
    n_reference: int, n_current: int, params: DriftParams
) -> tuple[float | None, float | None]:
    """(numerical, categorical) thresholds: ``p_value`` or ``distance`` for the methods picked
    by size, ``num_threshold``/``cat_threshold`` for forced ones (None: the method's default)."""
    large = min(n_reference, n_current) >= params.large_sample
    auto = params.distance if large else params.p_value
    num = params.num_threshold if params.num_method else auto
    cat = params.cat_threshold if params.cat_method else auto
    return num, cat


def embedding_threshold(n_reference: int, n_current: int, params: DriftParams) -> float:
    """The ROC AUC above which the embedding drifts: the 1 - alpha quantile of the AUC of scores
    that know nothing (Mann-Whitney null, normal approximation) for the rows Evidently's
    classifier is scored on, at least ``embedding_min_auc``. ``ModelDriftMethod`` holds out
    half of the stacked [reference; current] rows with a fixed shuffle (random_state=42), so
    how many of each side it scores on is computed exactly, not assumed to be half."""
    from scipy.stats import norm
    from sklearn.model_selection import train_test_split

    rows = np.arange(n_reference + n_current)
    _, held_out = train_test_split(rows, test_size=0.5, random_state=42, shuffle=True)
    n1 = max(1, int((held_out < n_reference).sum()))
    n2 = max(1, len(held_out) - n1)
    sd = math.sqrt((n1 + n2 + 1) / (12.0 * n1 * n2))
    return max(params.embedding_min_auc, 0.5 + float(norm.isf(params.embedding_alpha)) * sd)


def _embedding_frames(
    ref: np.ndarray, cur: np.ndarray, params: DriftParams
) -> tuple[pd.DataFrame, pd.DataFrame, int | None]:
    """Both sides standardised and reduced to ``embedding_pca`` principal components, all fitted
    on the pooled rows. A transform fitted on the reference alone (Evidently's own PCA option)
    centres it exactly, which ties the classifier's training half to its held-out half: the AUC
    then spreads wider than chance allows and the false-alarm rate doubles. A pooled fit treats
    both sides alike, so with no drift the held-out AUC is exactly that of chance."""
    pooled = np.vstack([ref, cur]).astype(np.float64)
    mean, std = pooled.mean(axis=0), pooled.std(axis=0)
    std[std < 1e-12] = 1.0  # a constant dimension carries no information either way
    pooled = (pooled - mean) / std
    components = None
    if pooled.shape[1] > params.embedding_pca:
        from sklearn.decomposition import PCA

        components = min(params.embedding_pca, len(pooled))
        pca = PCA(n_components=components, svd_solver="covariance_eigh")  # tall, skinny: fast
        pooled = pca.fit_transform(pooled)
    names = [f"{EMBEDDING}_{i}" for i in range(pooled.shape[1])]
    return (
        pd.DataFrame(pooled[: len(ref)], columns=names),
        pd.DataFrame(pooled[len(ref) :], columns=names),
        components,
    )


def _drift_method(threshold: float) -> Any:
    from evidently.metrics.embeddings import ModelDriftMethod

    return ModelDriftMethod(threshold=threshold, bootstrap=False, pca_components=None)


@contextlib.contextmanager
def _plot_sample(n: int) -> Iterator[None]:
    """Evidently draws its embedding t-SNE plot on up to SAMPLE_CONSTANT rows per side; t-SNE
    costs seconds per thousand points, so the report uses ``embedding_plot_sample``."""
    from evidently.legacy.metrics.data_drift import embeddings_drift

    before = embeddings_drift.SAMPLE_CONSTANT
    embeddings_drift.SAMPLE_CONSTANT = n
    try:
        yield
    finally:
        embeddings_drift.SAMPLE_CONSTANT = before


def _tested_columns(
    reference: Table, current: Table, params: DriftParams
) -> tuple[list[tuple[str, str]], dict[str, str]]:
    columns = [(c, NUMERICAL) for c in params.features]
    for side in (reference, current):
        missing = [c for c, _ in columns if c not in side.frame.columns]
        if missing:
            raise DriftInputError(f"{side.source}: lacks feature column(s) {missing}")
    if PREDICTED in reference.frame and PREDICTED in current.frame:
        columns.append((PREDICTED, CATEGORICAL))
    tested, skipped = [], {}
    for name, kind in columns:
        ref, cur = reference.frame[name], current.frame[name]
        if ref.nunique() != 1:
            tested.append((name, kind))
            continue
        # No spread to compare with: K-S is degenerate and the normed Wasserstein distance
        # divides by a zero spread (scores of 1e5). Listed, not tested, never counted.
        value = ref.iloc[0]
        differ = int((cur != value).sum())
        if differ == 0:
            skipped[name] = f"constant: {value} in every row of both"
        else:
            skipped[name] = (
                f"constant in the reference ({value}), so not tested: {differ} of {len(cur)} "
                "current rows differ"
            )
    return tested, skipped


def compare(
    reference: Table, current: Table, params: DriftParams, *, html: bool = False
) -> Comparison:
    """Test every column (and the embedding, when both sides have one) for drift.

    ``html`` runs the full :class:`DataDriftPreset` and ``EmbeddingsDrift`` (with plots) and
    keeps the Evidently snapshot for the report; without it only the tests run (windows).
    BLAS and OpenMP run on one thread here: the matrices are small (256 x 256 at most), and on
    a busy machine their spinning worker threads made the tests and t-SNE 10x slower.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return _compare(reference, current, params, html)


def _compare(reference: Table, current: Table, params: DriftParams, html: bool) -> Comparison:
    result = Comparison(len(reference), len(current), "no_drift", params.drift_share)
    if "ood_flag" in current.frame:
        flags = current.frame["ood_flag"].dropna()
        result.ood_scored, result.ood_flagged = len(flags), int(flags.astype(bool).sum())
        if "ood_misframed" in current.frame:
            result.ood_misframed = int(current.frame["ood_misframed"].dropna().astype(bool).sum())
    if len(current) < params.min_rows:
        result.status = "not_enough_data"
        result.reason = f"{len(current)} current rows < min_rows {params.min_rows}"
        return result
    if len(reference) < params.min_rows:
        raise DriftInputError(
            f"{reference.source}: only {len(reference)} reference rows (< min_rows "
            f"{params.min_rows}): too few to tell drift from chance"
        )
    plan = _plan(reference, current, params, result)
    if not html:
        _run_tests(plan, params, result)
    elif plan.names or plan.embeddings:
        _run_report(plan, params, result)
    drifted = result.share is not None and result.share >= params.drift_share
    if drifted or (result.embedding is not None and result.embedding.drifted):
        result.status = "drift"
    return result


@dataclass
class _Plan:
    """What one comparison tests: the columns (with their method and threshold) and, when
    both sides have comparable embeddings, their principal components."""

    tested: list[tuple[str, str]]
    methods: dict[str, str]
    thresholds: dict[str, float]
    ref_frame: pd.DataFrame
    cur_frame: pd.DataFrame
    ref_emb: np.ndarray | None = None
    ref_z: pd.DataFrame | None = None
    cur_z: pd.DataFrame | None = None
    components: int | None = None
    emb_threshold: float = 0.0

    @property
    def names(self) -> list[str]:
        return [c for c, _ in self.tested]

    @property
    def embeddings(self) -> bool:
        return self.ref_z is not None


def _plan(reference: Table, current: Table, params: DriftParams, result: Comparison) -> _Plan:
    tested, result.skipped = _tested_columns(reference, current, params)
    num_method, cat_method = column_methods(len(reference), len(current), params)
    num_threshold, cat_threshold = column_thresholds(len(reference), len(current), params)
    names = [c for c, _ in tested]
    plan = _Plan(
        tested,
        {c: num_method if k == NUMERICAL else cat_method for c, k in tested},
        {
            c: t
            for c, k in tested
            if (t := num_threshold if k == NUMERICAL else cat_threshold) is not None
        },
        reference.frame[names].reset_index(drop=True),
        current.frame[names].reset_index(drop=True),
    )
    ref_emb, cur_emb, result.embedding_note = _comparable_embeddings(reference, current)
    if ref_emb is not None and cur_emb is not None:
        plan.ref_emb = ref_emb
        plan.ref_z, plan.cur_z, plan.components = _embedding_frames(ref_emb, cur_emb, params)
        plan.emb_threshold = embedding_threshold(len(reference), len(current), params)
    return plan


def _comparable_embeddings(
    reference: Table, current: Table
) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """Both sides' embeddings, or (None, None, why they are not compared)."""
    ref_emb, cur_emb = reference.embeddings, current.embeddings
    if ref_emb is None or cur_emb is None:
        lacking = []
        if ref_emb is None:
            lacking.append("the reference (needs the model or a reference embeddings file)")
        if cur_emb is None:
            lacking.append(f"the current {current.kind}")
        return None, None, f"embeddings not compared: none for {' and '.join(lacking)}"
    if ref_emb.shape[1] != cur_emb.shape[1]:
        return (
            None,
            None,
            (
                f"embeddings not compared: reference has {ref_emb.shape[1]} dimensions, current "
                f"{cur_emb.shape[1]} (another model?)"
            ),
        )
    return ref_emb, cur_emb, ""


def _run_tests(plan: _Plan, params: DriftParams, result: Comparison) -> None:
    """The column tests and the embedding test, without the HTML report (windows)."""
    _evidently()  # imported quietly
    if plan.embeddings:
        assert plan.ref_z is not None and plan.cur_z is not None and plan.ref_emb is not None
        method = _drift_method(plan.emb_threshold)
        with _computing():
            score, _, _ = method(plan.cur_z.copy(), plan.ref_z.copy())
        result.embedding = _embedding_result(
            score, plan.emb_threshold, plan.ref_emb, plan.components
        )
    with _computing():
        result.columns = _column_tests(
            plan.ref_frame, plan.cur_frame, plan.tested, plan.methods, plan.thresholds
        )
    result.n_drifted = sum(c.drifted for c in result.columns)
    result.share = result.n_drifted / len(plan.tested) if plan.tested else 0.0


def _run_report(plan: _Plan, params: DriftParams, result: Comparison) -> None:
    """Evidently's DataDriftPreset (and EmbeddingsDrift, with its t-SNE plot when there are
    enough rows) as one report: the snapshot is kept for drift.html."""
    evidently = _evidently()
    from evidently.metrics import EmbeddingsDrift
    from evidently.presets import DataDriftPreset

    ref_frame, cur_frame = plan.ref_frame, plan.cur_frame
    embeddings: dict[str, list[str]] | None = None
    in_report = False
    if plan.embeddings:
        assert plan.ref_z is not None and plan.cur_z is not None and plan.ref_emb is not None
        plot_rows = min(len(plan.ref_z), params.embedding_plot_sample) + min(
            len(plan.cur_z), params.embedding_plot_sample
        )
        in_report = plot_rows > 100  # t-SNE needs rows well above its perplexity (30)
        if in_report:
            ref_frame = pd.concat([ref_frame, plan.ref_z], axis=1)
            cur_frame = pd.concat([cur_frame, plan.cur_z], axis=1)
            embeddings = {EMBEDDING: list(plan.ref_z.columns)}
        else:
            method = _drift_method(plan.emb_threshold)
            with _computing():
                score, _, _ = method(plan.cur_z.copy(), plan.ref_z.copy())
            result.embedding = _embedding_result(
                score, plan.emb_threshold, plan.ref_emb, plan.components
            )
    definition = evidently.DataDefinition(
        numerical_columns=[c for c, k in plan.tested if k == NUMERICAL],
        categorical_columns=[c for c, k in plan.tested if k == CATEGORICAL],
        datetime_columns=[],
        text_columns=[],
        unknown_columns=[],
        list_columns=[],
        embeddings=embeddings,
    )
    metrics: list[Any] = []
    if plan.names:
        metrics.append(
            DataDriftPreset(
                columns=plan.names,
                drift_share=params.drift_share,
                per_column_method=plan.methods,
                per_column_threshold=plan.thresholds or None,
            )
        )
    if embeddings:
        drift_method = _drift_method(plan.emb_threshold)
        metrics.append(EmbeddingsDrift(embeddings_name=EMBEDDING, drift_method=drift_method))
    with _computing(), _plot_sample(params.embedding_plot_sample):
        snapshot = evidently.Report(metrics, include_tests=True).run(
            evidently.Dataset.from_pandas(cur_frame, data_definition=definition),
            evidently.Dataset.from_pandas(ref_frame, data_definition=definition),
        )
    report = snapshot.dict()
    _read_snapshot(report, result, plan.tested, plan.methods, plan.thresholds)
    if in_report:
        assert plan.ref_emb is not None
        score = _embedding_score(report)
        result.embedding = _embedding_result(
            score, plan.emb_threshold, plan.ref_emb, plan.components
        )
    result.snapshot = snapshot


def _column_tests(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    tested: Sequence[tuple[str, str]],
    methods: Mapping[str, str],
    thresholds: Mapping[str, float],
) -> list[ColumnResult]:
    """Evidently's stattests called directly: the same tests and verdicts as the report's
    ``ValueDrift`` metrics, without building a plot per column (windows need no HTML)."""
    from evidently.legacy.calculations.stattests.registry import get_stattest

    results = []
    for name, kind in tested:
        ctype = _column_type(kind)
        ref, cur = reference[name], current[name]
        test = get_stattest(ref, cur, ctype, methods[name])
        outcome = test(ref, cur, ctype, thresholds.get(name))
        results.append(
            ColumnResult(
                column=name,
                kind=kind,
                method=test.display_name,
                threshold=float(outcome.actual_threshold),
                score=finite(outcome.drift_score),
                drifted=bool(outcome.drifted),
            )
        )
    return results


def _column_type(kind: str) -> Any:
    from evidently.legacy.core import ColumnType

    return ColumnType.Numerical if kind == NUMERICAL else ColumnType.Categorical


@contextlib.contextmanager
def _computing() -> Iterator[None]:
    """A class predicted now but never in the reference makes chi-square's expected count 0:
    the statistic is infinite (p = 0, drift), which is right; numpy's divide warning is not."""
    with quiet_evidently(), np.errstate(divide="ignore", invalid="ignore"):
        yield


def _embedding_result(
    score: float, threshold: float, ref: np.ndarray, components: int | None
) -> EmbeddingResult:
    return EmbeddingResult(
        method="classifier ROC AUC (Evidently ModelDriftMethod)",
        score=float(score),
        threshold=float(threshold),
        drifted=bool(score > threshold),
        dim=int(ref.shape[1]),
        components=components,
    )


def _embedding_score(report: Mapping[str, Any]) -> float:
    for metric in report["metrics"]:
        if metric["config"]["type"].endswith(":EmbeddingsDrift"):
            return float(metric["value"])
    raise RuntimeError("the Evidently report has no EmbeddingsDrift result")


def _read_snapshot(
    report: Mapping[str, Any],
    result: Comparison,
    tested: Sequence[tuple[str, str]],
    methods: Mapping[str, str],
    thresholds: Mapping[str, float],
) -> None:
    """Column scores and verdicts from the snapshot's metrics and tests (Evidently 0.7 has no
    dataset-drift flag: the share of ``DriftedColumnsCount`` is compared with drift_share)."""
    from evidently.legacy.calculations.stattests.registry import get_registered_stattest

    scores: dict[str, float] = {}
    ids: dict[str, str] = {}
    for metric in report["metrics"]:
        kind = metric["config"]["type"].rsplit(":", 1)[-1]
        if kind == "ValueDrift":
            scores[metric["config"]["column"]] = metric["value"]
            ids[metric["id"]] = metric["config"]["column"]
        elif kind == "DriftedColumnsCount":
            result.n_drifted = int(metric["value"]["count"])
            result.share = float(metric["value"]["share"])
    status = {
        ids[t["metric_config"]["metric_id"]]: t["status"]
        for t in report["tests"]
        if t["metric_config"]["metric_id"] in ids
    }
    for name, kind in tested:
        stattest = get_registered_stattest(methods[name], _column_type(kind))
        result.columns.append(
            ColumnResult(
                column=name,
                kind=kind,
                method=stattest.display_name,
                threshold=float(thresholds.get(name, stattest.default_threshold)),
                score=finite(scores.get(name)),
                drifted=status.get(name) == "FAIL",
            )
        )
    if not tested:
        result.n_drifted, result.share = 0, 0.0
    elif sum(c.drifted for c in result.columns) != result.n_drifted:
        raise RuntimeError(
            f"Evidently's DriftedColumnsCount ({result.n_drifted}) disagrees with its column "
            f"tests ({result.drifted_columns})"
        )


# ---------------------------------------------------------------------------------- windows


@dataclass
class Window:
    start: pd.Timestamp
    end: pd.Timestamp
    comparison: Comparison

    def to_dict(self) -> dict[str, Any]:
        c = self.comparison
        return {
            "start": self.start.isoformat().replace("+00:00", "Z"),
            "end": self.end.isoformat().replace("+00:00", "Z"),
            "rows": c.n_current,
            "status": c.status,
            "dataset_drift": c.dataset_drift,
            "share": c.share,
            "n_drifted": c.n_drifted,
            "n_columns": len(c.columns),
            "drifted_columns": c.drifted_columns,
            "embedding_auc": None if c.embedding is None else c.embedding.score,
            "embedding_drift": None if c.embedding is None else c.embedding.drifted,
            "ood_flagged_share": c.ood_share,
            "reason": c.reason or None,
        }


def window_bounds(
    freq: str, first: pd.Timestamp, last: pd.Timestamp
) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """Consecutive UTC days (or ISO weeks, from Monday) covering ``first`` .. ``last``."""
    if freq not in ("day", "week"):
        raise ValueError(f"window must be one of {WINDOWS}, got {freq!r}")
    start = first.tz_convert("UTC").normalize()
    step = pd.Timedelta(days=1)
    if freq == "week":
        start -= pd.Timedelta(days=start.weekday())
        step = pd.Timedelta(days=7)
    bounds = []
    while start <= last:
        bounds.append((start, start + step))
        start += step
    return bounds


def compare_windows(
    reference: Table,
    current: Table,
    params: DriftParams,
    freq: str,
    *,
    since: pd.Timestamp | None = None,
    until: pd.Timestamp | None = None,
) -> list[Window]:
    """One comparison per day/week of ``current`` (logs), empty windows included; a window
    with fewer than ``min_rows`` rows is marked "not enough data" instead of tested."""
    if "ts" not in current.frame:
        raise DriftInputError(f"{current.source}: --window needs prediction logs (with times)")
    ts = current.frame["ts"]
    first = since if since is not None else ts.min()
    last = (until - pd.Timedelta(microseconds=1)) if until is not None else ts.max()
    windows = []
    for start, end in window_bounds(freq, first, last):
        mask = ((ts >= start) & (ts < end)).to_numpy()
        windows.append(Window(start, end, compare(reference, current.subset(mask), params)))
    return windows
