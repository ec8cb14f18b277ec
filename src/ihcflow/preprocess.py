"""Preprocess a whole data set: parallel, incremental (content-addressed cache), streaming.

For every image of the manifest: :func:`ihcflow.images.prepare.prepare_image` (decode, drift
features on the raw pixels at the model's input size, the file's acquisition properties, the
preprocessing operations), write ``<sha256>.png``. The features go to ``features.csv`` at full
precision (each float's shortest round-trip repr), so drift compares exactly what was measured.

The cache lives in ``<cache_dir>/<key>/``, ``key`` a hash of the params that affect the pixels
(:func:`cache_key`), so a re-run after adding 1% new images only processes that 1%:

- ``<sha[:2]>/<sha>.png``: the preprocessed image. It is published by hard-linking (or
  copying) a fully written file under a temporary name and renaming it, so it never exists
  half-written; cached images are linked into the output folder without decoding.
- ``records.json``: ``sha256 -> record`` (features, what was applied, the PNG's hash and
  size) for all entries; rewritten atomically at the end of a run.
- ``journal-*.jsonl``: each run appends a record line as each image finishes, so a killed run
  keeps its finished work; the next run merges journals into ``records.json``.

An entry counts as cached when it has a record and its PNG has the recorded size. The PNG of
an entry is deterministic, so concurrent runs can at worst compute an entry twice.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import pandas as pd

from ihcflow.config import typed
from ihcflow.files import atomic_dir, atomic_path, params_hash
from ihcflow.images.codec import png_params
from ihcflow.images.features import ACQUISITION_COLUMNS, FEATURE_COLUMNS
from ihcflow.images.prepare import ImageParams, check_params
from ihcflow.images.worker import (  # the per-image work, in the worker processes
    PNG_LEVEL,
    Task,
    image_params,
    init_worker,
    link_or_copy,
    run_chunk,
    run_task,
)
from ihcflow.images.worker import PreprocessError as PreprocessError  # this stage's error
from ihcflow.tables import FEATURE_FLAGS, FEATURES, MANIFEST, image_file

# Bump when an operation's output changes for the same params, so old cache entries miss.
CACHE_VERSION = 5  # 2: features at the input size, full precision, acquisition properties;
# 3: JPEGs decoded at reduced scale (ihcflow.images.prepare.REDUCED_DECODE_MARGIN);
# 4: the area resize in one cv2.resize (an exact box filter)
# 5: reduced-scale JPEG decoding only down to 4x the model size (was 2x)
# Output PNG encoding: zlib level 1, fast filters (ihcflow.images.codec.png_params); the bytes are
# deterministic, so processed_sha256 is reproducible.
PNG_PARAMS = png_params(PNG_LEVEL, fast=True)
MANIFEST_COLUMNS = MANIFEST.columns[:4]  # what this stage reads: path, class, given_split, sha256
OUTPUT_COLUMNS = [*FEATURES.columns, *FEATURE_COLUMNS, *ACQUISITION_COLUMNS, *FEATURE_FLAGS]
RECORDS_NAME = "records.json"
_CHUNK_MAX = 32  # images per task sent to a worker
# Starting worker processes costs about as much as preprocessing ~100 images on one core, so
# small batches (an incremental run with a few new images) run in this process instead.
_MIN_PARALLEL = 64


@dataclass
class PreprocessParams(ImageParams):
    """The ``preprocess`` params section: the pixels (:class:`ImageParams`) and how the stage
    runs (conf/preprocess/default.yaml)."""

    workers: int  # processes; 0 = all cores
    cache_dir: str | None  # keyed by content hash + the pixel params; None: no cache

    @classmethod
    def from_section(cls, node: Any, where: str = "preprocess") -> PreprocessParams:
        return typed(node, cls, where)


def cache_key(params: ImageParams) -> str:
    """Hash of the pixel params and the code/encoding versions: one cache folder per value."""
    return params_hash({"params": asdict(image_params(params)), "version": CACHE_VERSION,
                        "png": list(PNG_PARAMS)})  # fmt: skip


def _chunks(items: Sequence[Task], size: int) -> Iterator[Sequence[Task]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _process(
    tasks: Sequence[Task], params: ImageParams, workers: int
) -> Iterable[tuple[str, dict]]:
    """Yield ``(sha256, record)`` as tasks finish; at most a few chunks are in flight."""
    if not tasks:
        return
    if workers <= 1 or len(tasks) < _MIN_PARALLEL:
        for task in tasks:
            yield task.sha256, run_task(task, params)
        return
    chunk = max(1, min(_CHUNK_MAX, math.ceil(len(tasks) / (4 * workers))))
    # forkserver: workers start from a clean process, not a fork of one holding threads.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["ihcflow.images.worker"])
    pending: set[Future] = set()
    with ProcessPoolExecutor(
        workers, ctx, initializer=init_worker, initargs=(image_params(params),)
    ) as pool:
        try:
            for part in _chunks(tasks, chunk):
                pending.add(pool.submit(run_chunk, part))
                if len(pending) >= 2 * workers:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        yield from future.result()
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield from future.result()
        finally:
            for future in pending:
                future.cancel()


# ---------------------------------------------------------------- cache records
def _read_records(entries: Path) -> tuple[dict[str, dict], list[Path]]:
    """All known records of a cache key: ``records.json`` plus the journals of other runs."""
    records: dict[str, dict] = {}
    with contextlib.suppress(OSError, ValueError):
        loaded = json.loads((entries / RECORDS_NAME).read_bytes())
        if isinstance(loaded, dict):
            records = loaded
    journals = sorted(entries.glob("journal-*.jsonl"))
    for journal in journals:
        with contextlib.suppress(OSError), open(journal, "rb") as fh:
            for line in fh:
                try:
                    record = json.loads(line)
                    records[record.pop("sha256")] = record
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue  # the torn last line of a killed run
    return records, journals


def _is_cached(png: str, record: dict | None) -> bool:
    if not isinstance(record, dict):
        return False
    try:
        return os.stat(png).st_size == record["png_bytes"]  # noqa: PTH116 (hot loop)
    except (OSError, KeyError):
        return False


@contextlib.contextmanager
def _journal(entries: Path | None) -> Iterator[IO[str] | None]:
    """This run's journal (append-only, one JSON line per finished image)."""
    if entries is None:
        yield None
        return
    entries.mkdir(parents=True, exist_ok=True)
    path = entries / f"journal-{os.getpid()}-{secrets.token_hex(4)}.jsonl"
    with open(path, "a", encoding="utf-8") as fh:
        yield fh


# ---------------------------------------------------------------- the data set
def _check_manifest(manifest: pd.DataFrame) -> None:
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise ValueError(
            f"manifest lacks columns {missing} (has {list(manifest.columns)}); "
            "it must come from the validate stage"
        )


def preprocess_dataset(
    manifest: pd.DataFrame,
    data_dir: str | Path,
    out_dir: str | Path,
    params: ImageParams,
    *,
    cache_dir: str | Path | None,
    workers: int = 0,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Preprocess every manifest image into ``out_dir/<sha256>.png`` (rebuilt atomically).

    ``cache_dir=None`` disables the cache.
    ``workers=0`` uses every core; worker processes start with ``forkserver``, so a script
    calling this needs the usual ``if __name__ == "__main__":`` guard. Returns the features
    table (``OUTPUT_COLUMNS``, in manifest order) and run statistics.
    """
    start = time.perf_counter()
    _check_manifest(manifest)
    check_params(params)
    key = cache_key(params)
    workers = int(workers) or os.cpu_count() or 1
    entries = Path(cache_dir) / key if cache_dir is not None else None
    known, journals = _read_records(entries) if entries is not None else ({}, [])
    records: dict[str, dict] = {}
    misses: dict[str, Task] = {}
    with atomic_dir(out_dir) as tmp_out, _journal(entries) as journal:
        tmp_out.chmod(0o755)  # mkdtemp makes it private; the output folder is not
        for rel, sha in zip(manifest["path"], manifest["sha256"], strict=True):
            if sha in records or sha in misses:
                continue
            # plain strings, not Path objects: this loop runs once per image
            out = image_file(tmp_out, sha)
            cached = f"{entries}/{sha[:2]}/{sha}.png" if entries is not None else None
            if cached is not None and _is_cached(cached, known.get(sha)):
                records[sha] = known[sha]
                link_or_copy(cached, out)
            else:
                misses[sha] = Task(f"{data_dir}/{rel}", sha, out, cached)
        for sha, record in _process(list(misses.values()), params, workers):
            records[sha] = record
            if journal is not None:
                journal.write(json.dumps({"sha256": sha, **record}) + "\n")
                journal.flush()
    if entries is not None and journal is not None:
        if misses or journals:  # fold every journal into records.json, then drop them
            with atomic_path(entries / RECORDS_NAME) as tmp:
                tmp.write_text(json.dumps({**known, **records}, separators=(",", ":")))
            for merged in journals:
                merged.unlink(missing_ok=True)
        Path(journal.name).unlink(missing_ok=True)
    features = _features_table(manifest, records)
    seconds = time.perf_counter() - start
    stats = {
        "n": len(features),
        "n_cached": len(records) - len(misses),
        "n_processed": len(misses),
        "seconds": round(seconds, 3),
        "images_per_s": round(len(features) / seconds, 1) if seconds > 0 else None,
        "params_hash": key,
        "workers": workers,
        "n_corrected": int(features["corrected"].sum()),
        "n_stain_normalized": int(features["stain_normalized"].sum()),
    }
    return features, stats


def _features_table(manifest: pd.DataFrame, records: Mapping[str, dict]) -> pd.DataFrame:
    rows = [records[sha] for sha in manifest["sha256"]]
    frame = pd.DataFrame({c: manifest[c].to_numpy() for c in MANIFEST_COLUMNS})
    frame["processed_sha256"] = [r["processed_sha256"] for r in rows]
    # full precision: pandas writes a float64 as its shortest round-trip repr
    features = pd.DataFrame([r["features"] for r in rows], columns=FEATURE_COLUMNS)
    frame[FEATURE_COLUMNS] = features.to_numpy(dtype="float64")
    acquired = pd.DataFrame([r["acquisition"] for r in rows], columns=ACQUISITION_COLUMNS)
    for column in ACQUISITION_COLUMNS:
        frame[column] = acquired[column].to_numpy()
    frame["corrected"] = [int(r["corrected"]) for r in rows]
    frame["stain_normalized"] = [int(r["stain_normalized"]) for r in rows]
    return frame[OUTPUT_COLUMNS]
