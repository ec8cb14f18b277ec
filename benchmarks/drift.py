"""Benchmark ``ihcflow drift``: time and scaling on 10k/100k log rows; false alarms and detection.

    .venv/bin/python benchmarks/drift.py [--rows 10000 100000] [--dim 256] [--days 7]
    .venv/bin/python benchmarks/drift.py --calibrate [--seeds 20]

The reference is 600 synthetic IHC patches (features as the preprocess stage measures them, a
``dim``-d embedding). The logs are in the server's format (one JSON line per prediction with its
features and embedding, one file per UTC day) and resample patches from the same generator over
``days`` days, the last two from a 10% darker scanner. For each size it prints the time to read
the logs, to build the whole-period Evidently report (per-column tests, embedding test with its
t-SNE plot), to test each day, and to write the report folder (wall clock and CPU time: CPU time
is what to compare on a shared machine); then the ratio of the largest to the smallest size
against the ratio of rows (linear scaling: the time ratio is at most the row ratio; fixed costs
make it smaller). The embedding is a fixed random projection of the 16x16
thumbnail (a stand-in for the CNN's penultimate layer: same size, it moves with the image).

``--calibrate`` measures the statistics instead: for each seed the pool is split at random into
a reference of 300 patches and a current window of 30, 60 or 100 others (same population: every
alarm is false), or the current patches are changed (a 10% darker scanner, a 1.5x or 2x DAB
batch: every miss is a miss). It prints the share of windows flagged as dataset drift, by the
columns alone and with the embedding test.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import psutil

from ihcflow.data.synth import DEFAULT_CLASSES, render_image
from ihcflow.images.features import FEATURE_COLUMNS, image_features
from ihcflow.monitoring.drift import DriftParams, compare, compare_windows
from ihcflow.monitoring.report import DriftRun, write_report
from ihcflow.monitoring.simulate import scale_brightness, scale_stain
from ihcflow.monitoring.sources import Table, read_logs
from ihcflow.prediction_log import PredictionLog, make_record

POOL_PER_CLASS = 120
SIZE = 128


def embed(images: list[np.ndarray], dim: int) -> np.ndarray:
    thumbs = np.stack([cv2.resize(x, (16, 16), interpolation=cv2.INTER_AREA) for x in images])
    flat = thumbs.reshape(len(images), -1).astype(np.float32) / 255.0
    weights = np.random.default_rng(0).normal(size=(flat.shape[1], dim)).astype(np.float32)
    return np.maximum(flat @ weights / np.sqrt(flat.shape[1]), 0.0)


CHANGES = {
    "same": lambda x: x,
    "darker": lambda x: scale_brightness(x, 0.9),
    "dab x1.5": lambda x: scale_stain(x, "dab", 1.5),
    "dab x2": lambda x: scale_stain(x, "dab", 2.0),
}


def make_pool(dim: int, changes: tuple[str, ...] = ("same", "darker")) -> dict:
    """Features and embeddings of the pool: as recorded and with each of ``changes``."""
    images = [
        render_image(name, i, size=SIZE) for name in DEFAULT_CLASSES for i in range(POOL_PER_CLASS)
    ]
    classes = [name for name in DEFAULT_CLASSES for _ in range(POOL_PER_CLASS)]
    out = {}
    for label in changes:
        shown = [CHANGES[label](x) for x in images]
        frame = pd.DataFrame([image_features(x, SIZE) for x in shown])
        frame["predicted"] = classes
        out[label] = (frame, embed(shown, dim))
    return out


def calibrate(dim: int, seeds: int) -> None:
    pool = make_pool(dim, tuple(CHANGES))
    base, base_emb = pool["same"]
    params = DriftParams()
    print(
        f"share of windows flagged ({seeds} seeds; reference 300 patches; columns: share of "
        f"drifted columns >= {params.drift_share}; + embedding: or embedding drift)"
    )
    print(
        f"{'current':<10} {'rows':>5} {'columns':>8} {'+ embedding':>12}  typical drifted columns"
    )
    for label, (frame, emb) in pool.items():
        for n in (30, 60, 100):
            flagged = [0, 0]
            named: Counter[str] = Counter()
            for seed in range(seeds):
                order = np.random.default_rng(seed).permutation(len(base))
                ref, cur = order[:300], order[300 : 300 + n]
                reference = Table(base.iloc[ref].reset_index(drop=True), base_emb[ref], "r", "r")
                current = Table(frame.iloc[cur].reset_index(drop=True), emb[cur], "c", "logs")
                result = compare(reference, current, params)
                flagged[0] += bool(result.share is not None and result.share >= params.drift_share)
                flagged[1] += result.status == "drift"
                named.update(result.drifted_columns)
            top = ", ".join(c for c, k in named.most_common(4) if k >= seeds / 2)
            rates = f"{flagged[0] / seeds:>8.2f} {flagged[1] / seeds:>12.2f}"
            print(f"{label:<10} {n:>5} {rates}  {top}")


def write_log_files(log_dir: Path, pool: dict, rows: int, days: int, seed: int) -> int:
    """``rows`` records spread over ``days`` UTC days, written by the server's own writer;
    returns the bytes written."""
    rng = np.random.default_rng(seed)
    start = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)
    per_day = np.diff(np.linspace(0, rows, days + 1).astype(int))
    log_dir.mkdir(parents=True)
    with PredictionLog(log_dir) as log:
        for day, n in enumerate(per_day):
            frame, emb = pool["darker" if day >= days - 2 else "same"]
            picks = rng.integers(0, len(frame), n)
            seconds = np.sort(rng.integers(0, 86400, n))
            feats = frame[FEATURE_COLUMNS].to_numpy()[picks]
            preds = frame["predicted"].to_numpy()[picks]
            log.write(
                make_record(
                    ts=start + dt.timedelta(days=day, seconds=int(seconds[k])),
                    request_id=f"{day:02d}{k:08d}",
                    model_name="ihc-classifier",
                    model_version="1.0.0",
                    filename=None,
                    predicted=str(preds[k]),
                    probs={str(preds[k]): 0.9},
                    features=dict(zip(FEATURE_COLUMNS, feats[k].tolist(), strict=True)),
                    latency_ms=10.0,
                    embedding=emb[picks[k]].round(6).tolist(),
                )
                for k in range(n)
            )
    return sum(p.stat().st_size for p in log_dir.glob("*.jsonl"))


class Clock:
    """Wall and CPU seconds per phase (CPU time is robust on a shared machine)."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._start = (time.perf_counter(), time.process_time())

    def lap(self, phase: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.wall[phase] = wall - self._start[0]
        self.cpu[phase] = cpu - self._start[1]
        self._start = (wall, cpu)

    def total(self) -> None:
        self.wall["total"], self.cpu["total"] = sum(self.wall.values()), sum(self.cpu.values())


def run_once(reference: Table, log_dir: Path, out: Path, params: DriftParams) -> Clock:
    clock = Clock()
    current = read_logs(log_dir)
    clock.lap("read logs")
    overall = compare(reference, current, params, html=True)
    clock.lap("report (all rows)")
    windows = compare_windows(reference, current, params, "day")
    clock.lap("per-day tests")
    write_report(DriftRun(reference, current, overall, windows, "day", params=params), out)
    clock.lap("write report")
    clock.total()
    assert overall.status == "drift" and windows[-1].comparison.status == "drift"
    assert windows[0].comparison.status == "no_drift", windows[0].comparison.drifted_columns
    return clock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=256, help="embedding size (the CNN's: 256)")
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--calibrate", action="store_true", help="false alarms and detection")
    parser.add_argument("--seeds", type=int, default=20, help="draws per cell with --calibrate")
    args = parser.parse_args(argv)
    if args.days < 3:
        parser.error("--days must be at least 3: the logs' last 2 days are the drifted ones")
    params = DriftParams()
    if args.calibrate:
        calibrate(args.dim, args.seeds)
        return 0

    t0 = time.perf_counter()
    pool = make_pool(args.dim)
    frame, emb = pool["same"]
    reference = Table(frame, emb, "pool", "reference")
    print(f"pool: {len(frame)} patches, {args.dim}-d embedding ({time.perf_counter() - t0:.1f} s)")
    compare(reference, Table(frame.iloc[:100], emb[:100], "warm-up", "logs"), params)

    results: dict[int, Clock] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rows in args.rows:
            log_dir = Path(tmp) / f"logs-{rows}"
            size = write_log_files(log_dir, pool, rows, args.days, seed=rows)
            rss = psutil.Process().memory_info().rss
            clock = results[rows] = run_once(reference, log_dir, Path(tmp) / f"out-{rows}", params)
            grown = (psutil.Process().memory_info().rss - rss) / 2**20
            print(f"{rows:>7} rows ({size / 2**20:.0f} MiB of logs, RSS +{grown:.0f} MiB):")
            for phase in clock.wall:
                print(
                    f"    {phase:<18} {clock.wall[phase]:6.1f} s wall {clock.cpu[phase]:6.1f} s CPU"
                )
    small, large = min(results), max(results)
    if small == large:
        return 0
    print(f"scaling, {large // small}x the rows (linear: {large / small:.0f}x):")
    for phase in results[small].wall:
        wall = results[large].wall[phase] / results[small].wall[phase]
        cpu = results[large].cpu[phase] / results[small].cpu[phase]
        print(f"    {phase:<18} {wall:5.1f}x wall {cpu:5.1f}x CPU")
    ratio = results[large].cpu["total"] / results[small].cpu["total"]
    linear = ratio <= large / small
    print(
        f"total CPU {ratio:.1f}x: {'no worse than linear' if linear else 'WORSE THAN LINEAR'}; "
        f"{1e6 * results[large].cpu['total'] / large:.0f} us CPU per row at {large} rows"
    )
    return 0 if linear else 1


if __name__ == "__main__":
    sys.exit(main())
