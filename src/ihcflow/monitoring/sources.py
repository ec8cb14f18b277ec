"""The two sides of a drift comparison, as :class:`Table` s.

Reference: the training split's rows of ``reports/data/features.csv`` (features measured on the
decoded images before correction); with a registered model, also its embedding and predicted
class for every training image (``processed/images``), cached per model and image list.

Current: the server's prediction logs (:mod:`ihcflow.prediction_log`, read one day file per
UTC day, in the log folder and one level down), or a folder of images measured the same way
(and, with a model, prepared exactly as the server does and predicted). Unusable lines, rows
with missing feature values, rows of another model version and unreadable images are left out
and counted; what is left out is reported, never silently dropped.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ihcflow.config import ConfigError
from ihcflow.dataset import load_images, read_split, split_rows
from ihcflow.errors import PipelineError
from ihcflow.files import atomic_path, sha256_bytes, sha256_file
from ihcflow.images.codec import IMAGE_SUFFIXES
from ihcflow.images.features import ACQUISITION_COLUMNS, ACQUISITION_NUMERIC, FEATURE_COLUMNS
from ihcflow.images.prepare import ImageParams, Prepared, check_params, prepare_image
from ihcflow.model_format import OnnxModel, model_files, read_model_info
from ihcflow.prediction_log import LOG_GLOB, log_file_day, log_files, read_records
from ihcflow.tables import FEATURES, read_table

MAX_EXAMPLES = 10  # problems listed by name in the report; the rest are only counted
BATCH = 64  # images per ONNX call


class DriftInputError(PipelineError):
    """Input that cannot be compared; the message names the file and what is wrong."""


@dataclass
class Table:
    """Rows to compare: ``frame`` has the feature columns (float), the acquisition columns
    when known (:data:`ACQUISITION_COLUMNS`, NaN/"" where not), ``predicted`` (str) when known,
    for logs ``ts`` (UTC) and ``model_version``, and ``ood_score``/``ood_flag`` when the
    server scored the images; ``embeddings`` is (N, D) float32 aligned with the rows, or
    None."""

    frame: pd.DataFrame
    embeddings: np.ndarray | None
    source: str
    kind: str  # "reference", "logs" or "images"
    counts: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # examples of what was left out, and why
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.frame)

    def subset(self, mask: np.ndarray | pd.Series) -> Table:
        mask = np.asarray(mask, dtype=bool)
        return Table(
            self.frame.loc[mask].reset_index(drop=True),
            None if self.embeddings is None else self.embeddings[mask],
            self.source,
            self.kind,
            dict(self.counts),
            list(self.problems),
            list(self.notes),
        )


# ---------------------------------------------------------------------------------- the model


@dataclass
class Model:
    """The registered model (``model.onnx`` + ``model.json`` beside it) on ONNX Runtime."""

    path: Path
    name: str
    version: str
    class_names: list[str]
    input_size: int
    preprocess: dict[str, Any]
    sha256: str
    _onnx: OnnxModel | None = None

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, S, S, 3) uint8 RGB -> (probs (N, K), embedding (N, D)), in batches."""
        if self._onnx is None:
            self._onnx = OnnxModel(self.path)
        probs, embedding = self._onnx.predict(images, batch=BATCH)
        return probs, embedding.astype(np.float32)

    def predicted(self, probs: np.ndarray) -> list[str]:
        return [self.class_names[i] for i in np.argmax(probs, axis=1)]


def load_model(path: str | Path) -> Model:
    """``model.onnx`` (or the folder holding it) and the ``model.json`` written beside it."""
    onnx_path, _ = model_files(path)
    info = read_model_info(path)
    return Model(
        onnx_path,
        str(info["name"]),
        str(info["version"]),
        [str(c) for c in info["class_names"]],
        int(info["input_size"]),
        dict(info["preprocess"]),
        sha256_file(onnx_path),
    )


# ------------------------------------------------------------------------------ the reference


def numeric_features(frame: pd.DataFrame, columns: Sequence[str], source: str) -> pd.DataFrame:
    """``columns`` of ``frame`` as float; a missing column is an error naming ``source``."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DriftInputError(
            f"{source}: lacks feature column(s) {missing} (has {list(frame.columns)}); expected "
            "the preprocess stage's features.csv (docs/pipeline.md)"
        )
    return frame[list(columns)].apply(_exact_floats).astype(np.float64)


def _exact_floats(column: pd.Series) -> pd.Series:
    """A column as float64, NaN where a value is not a number. Text is parsed with Python's
    ``float``, which reads a repr back exactly; ``pd.to_numeric``'s fast parser may be off by
    an ulp, and then identical features would differ between the two sides."""
    if column.dtype != object:
        return pd.to_numeric(column, errors="coerce")

    def parse(value: Any) -> float:
        try:
            return float(value)
        except (TypeError, ValueError):
            return math.nan

    return column.map(parse)


def load_reference(
    features_csv: str | Path,
    *,
    split_csv: str | Path | None = None,
    split: str = "train",
    model: Model | None = None,
    embeddings_file: str | Path | None = None,
    root: str | Path = ".",
    cache_dir: str | Path | None = None,
    features: Sequence[str] = FEATURE_COLUMNS,
) -> Table:
    """The training feature table, restricted to ``split`` rows of ``split_csv`` when given.

    Predicted classes: the model's predictions on the training images with ``model``, else the
    labels (``class``). Embeddings: from ``embeddings_file`` (``.npz`` with ``sha256`` and
    ``embedding``), else computed with ``model`` (cached in ``cache_dir``), else none.
    """
    features_csv = Path(features_csv)
    table = read_table(
        features_csv,
        FEATURES,
        columns=(),
        error=DriftInputError,
        absent="reference feature table not found",
    )
    source = str(features_csv)
    notes: list[str] = []
    if split_csv is not None:
        split_csv = Path(split_csv)
        splits = read_split(split_csv, columns=("path", "split", "image"), error=DriftInputError)
        if "path" not in table.columns:
            raise DriftInputError(f"{features_csv}: lacks column(s) ['path']")
        chosen = split_rows(splits, split, split_csv, error=DriftInputError)
        table = chosen[["path", "image"]].merge(
            table.drop(columns=["image"], errors="ignore"), on="path", how="left", indicator=True
        )
        lost = table.loc[table["_merge"] == "left_only", "path"].tolist()
        if lost:
            raise DriftInputError(
                f"{split_csv}: {len(lost)} {split} image(s) not in {features_csv} (e.g. "
                f"{lost[:3]}): the two files are from different pipeline runs (`dvc repro`)"
            )
        source = f"{features_csv} ({split} split of {split_csv})"
    values = numeric_features(table, features, str(features_csv))
    bad = values.isna().any(axis=1)
    if bad.any():
        where = table["path"] if "path" in table else pd.Series(table.index + 2)  # file lines
        raise DriftInputError(
            f"{features_csv}: {int(bad.sum())} row(s) with missing or non-numeric features "
            f"(e.g. {where[bad.to_numpy()].head(3).tolist()})"
        )
    frame = values.reset_index(drop=True)
    _add_acquisition(frame, table.reset_index(drop=True))
    embeddings = None
    if model is not None or embeddings_file is not None:
        keys = table["sha256"].astype(str).tolist() if "sha256" in table else None
        if keys is None:
            raise DriftInputError(f"{features_csv}: lacks column 'sha256' to match embeddings")
        if embeddings_file is not None:
            embeddings, predicted = _embeddings_from_file(Path(embeddings_file), keys)
            notes.append(f"reference embeddings read from {embeddings_file}")
        else:
            assert model is not None
            if "image" not in table.columns:
                raise DriftInputError(
                    "reference embeddings need the preprocessed images: pass the split table "
                    "(processed/split.csv, column 'image')"
                )
            embeddings, predicted = _model_outputs(
                model, table["image"].tolist(), keys, Path(root), cache_dir
            )
            notes.append(
                f"reference embeddings and predictions: model {model.name} {model.version} "
                f"on the {len(keys)} {split} images"
            )
        if predicted is not None:
            frame["predicted"] = predicted
    if "predicted" not in frame and "class" in table.columns:
        frame["predicted"] = table["class"].astype(str).to_numpy()
        notes.append("reference class distribution: the training labels (no model predictions)")
    return Table(frame, embeddings, source, "reference", {"rows": len(frame)}, [], notes)


def _add_acquisition(frame: pd.DataFrame, source: pd.DataFrame) -> None:
    """Copy the acquisition columns ``source`` has into ``frame`` (numbers as float, NaN when
    missing; ``format`` as text): a features.csv from before they were recorded has none."""
    for column in ACQUISITION_COLUMNS:
        if column not in source:
            continue
        if column in ACQUISITION_NUMERIC:
            frame[column] = _exact_floats(source[column]).to_numpy()
        else:
            frame[column] = source[column].fillna("").astype(str).to_numpy()


def _embeddings_from_file(path: Path, keys: list[str]) -> tuple[np.ndarray, list[str] | None]:
    if not path.is_file():
        raise DriftInputError(f"{path}: reference embeddings file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            shas = [str(s) for s in data["sha256"]]
            emb = np.asarray(data["embedding"], dtype=np.float32)
            pred = [str(p) for p in data["predicted"]] if "predicted" in data else None
    except (OSError, KeyError, ValueError) as exc:
        raise DriftInputError(
            f"{path}: expected an .npz with arrays 'sha256' and 'embedding' ({exc})"
        ) from None
    if emb.ndim != 2 or len(emb) != len(shas):
        raise DriftInputError(f"{path}: 'embedding' has shape {emb.shape} for {len(shas)} keys")
    index = {s: i for i, s in enumerate(shas)}
    missing = [k for k in keys if k not in index]
    if missing:
        raise DriftInputError(
            f"{path}: no embedding for {len(missing)} reference image(s) (e.g. {missing[:3]})"
        )
    rows = [index[k] for k in keys]
    return emb[rows], None if pred is None else [pred[i] for i in rows]


def _model_outputs(
    model: Model,
    images: list[str],
    keys: list[str],
    root: Path,
    cache_dir: str | Path | None,
) -> tuple[np.ndarray, list[str]]:
    """The model's embeddings and predictions for the preprocessed training images."""
    key = sha256_bytes(("\n".join([model.sha256, *keys])).encode())[:20]
    cache = Path(cache_dir) / f"reference-{key}.npz" if cache_dir else None
    if cache is not None and cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as data:
                return np.asarray(data["embedding"]), [str(p) for p in data["predicted"]]
        except (OSError, KeyError, ValueError):
            pass  # unreadable cache entry: recompute and overwrite it
    batch = load_images(images, root, model.input_size, error=DriftInputError)
    probs, emb = model.run(batch)
    predicted = model.predicted(probs)
    if cache is not None:
        with atomic_path(cache) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, sha256=np.array(keys), embedding=emb, predicted=np.array(predicted))
    return emb, predicted


# ---------------------------------------------------------------------------- prediction logs


@dataclass
class _Parsed:
    ts: list[str] = field(default_factory=list)
    name: list[str] = field(default_factory=list)
    version: list[str] = field(default_factory=list)
    predicted: list[str] = field(default_factory=list)
    features: list[list[Any]] = field(default_factory=list)
    acquisition: list[dict[str, Any]] = field(default_factory=list)
    ood: list[dict[str, Any]] = field(default_factory=list)
    embedding: list[np.ndarray | None] = field(default_factory=list)
    where: list[str] = field(default_factory=list)


def _parse_lines(files: Sequence[Path], columns: Sequence[str]) -> tuple[_Parsed, Counter, list]:
    out = _Parsed()
    bad: Counter[str] = Counter()
    problems: list[str] = []
    for where, rec, reason in read_records(files):
        if rec is None:
            bad[reason] += 1
            if len(problems) < MAX_EXAMPLES:
                problems.append(f"{where}: {reason}")
            continue
        out.ts.append(str(rec["ts"]))
        out.name.append(str(rec.get("model_name", "")))
        out.version.append(str(rec["model_version"]))
        out.predicted.append(str(rec["predicted"]))
        out.features.append([rec["features"].get(c) for c in columns])
        # older records kept width/height among the features
        given = rec.get("acquisition")
        out.acquisition.append(given if isinstance(given, dict) else rec["features"])
        ood = rec.get("ood")
        out.ood.append(ood if isinstance(ood, dict) else {})
        out.embedding.append(_embedding(rec.get("embedding")))
        out.where.append(where)
    return out, bad, problems


def _embedding(value: Any) -> np.ndarray | None:
    """A record's ``embedding`` as a float32 vector; None when absent or not a flat list."""
    if not isinstance(value, list) or not value:
        return None
    try:
        emb = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        return None
    return emb if emb.ndim == 1 else None


def parse_time(text: str, what: str) -> pd.Timestamp:
    """An ISO 8601 date or time as a UTC timestamp (naive times are UTC)."""
    try:
        ts = pd.Timestamp(text)
    except ValueError:
        raise DriftInputError(f"{what}: {text!r} is not an ISO 8601 date/time") from None
    if ts is pd.NaT:
        raise DriftInputError(f"{what}: {text!r} is not a date/time")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def parse_since(text: str, now: pd.Timestamp) -> pd.Timestamp:
    """``7d``, ``36h``, ``2w`` before ``now``, or an ISO 8601 date/time."""
    match = re.fullmatch(r"\s*(\d+)\s*([hdw])\s*", text)
    if match:
        hours = int(match.group(1)) * {"h": 1, "d": 24, "w": 24 * 7}[match.group(2)]
        return now - pd.Timedelta(hours=hours)
    return parse_time(text, "--since (expected e.g. 7d, 36h, 2w or 2026-05-01)")


def read_logs(
    path: str | Path,
    *,
    since: pd.Timestamp | None = None,
    until: pd.Timestamp | None = None,
    model_version: str | None = None,
    model_name: str | None = None,
    strict_version: bool = False,
    features: Sequence[str] = FEATURE_COLUMNS,
) -> Table:
    """Prediction logs in ``[since, until)`` of one model version.

    The version is ``model_version`` (the reference model's), else the one of the newest
    record; records of other versions (or another ``model_name``) are excluded and counted, or
    an error with ``strict_version``. Lines that are not valid records and rows with missing
    or non-finite features are excluded and counted.
    """
    path = Path(path)
    files, counts = _log_files_in_range(path, since, until)
    parsed, bad, problems = _parse_lines(files, features)
    frame, bad_ts = _records_frame(parsed, features, problems)
    counts["bad_lines"] = sum(bad.values()) + int(bad_ts.sum())
    keep = _in_time_range(frame["ts"], ~bad_ts, since, until, counts)
    if not keep.any():
        raise DriftInputError(
            f"{path}: no usable prediction records{_range_text(since, until)} "
            f"({counts['bad_lines']} unusable line(s) in {len(files)} file(s))"
        )
    if model_version is None:  # the newest record's
        newest = int(np.flatnonzero(keep)[np.argmax(frame["ts"][keep].to_numpy())])
        model_version = str(frame.at[newest, "model_version"])
        model_name = model_name or str(frame.at[newest, "model_name"])
    model = f"{model_name or ''} {model_version}".strip()
    keep &= _of_model(frame, keep, model_name, model_version, counts, strict_version, path)
    keep &= ~_incomplete(frame, keep, features, parsed.where, problems, counts)
    counts["rows_read"] = len(frame)
    table = Table(frame.loc[keep].reset_index(drop=True), None, str(path), "logs", counts, problems)
    table.counts["rows"] = len(table)
    table.counts["model"] = model
    if table.frame.empty:
        raise DriftInputError(
            f"{path}: no complete records of model {model}{_range_text(since, until)} "
            f"(excluded: {_excluded_text(counts)})"
        )
    table.embeddings, note = _stack_embeddings([parsed.embedding[i] for i in np.flatnonzero(keep)])
    if note:
        table.notes.append(note)
    return table


def _log_files_in_range(
    path: Path, since: pd.Timestamp | None, until: pd.Timestamp | None
) -> tuple[list[Path], dict[str, Any]]:
    """The log files under ``path`` whose day can hold records in the range, and the counts."""
    if not path.exists():
        raise DriftInputError(f"{path}: prediction log folder not found")
    files = log_files(path)
    if not files:
        raise DriftInputError(
            f"{path}: no prediction logs ({LOG_GLOB}) in this folder or its sub-folders"
        )
    counts: dict[str, Any] = {"files": len(files)}
    # a file holds one UTC day; one day of margin either side, the rows are filtered later
    first = None if since is None else (since - pd.Timedelta(days=1)).date()
    last = None if until is None else (until + pd.Timedelta(days=1)).date()
    kept = [
        p
        for p in files
        if (day := log_file_day(p)) is None
        or not ((first is not None and day < first) or (last is not None and day > last))
    ]
    counts["files_read"] = len(kept)
    return kept, counts


def _records_frame(
    parsed: _Parsed, features: Sequence[str], problems: list[str]
) -> tuple[pd.DataFrame, np.ndarray]:
    """The records as a frame (features as floats, NaN when missing or not finite) and which
    rows have a ``ts`` that is not a time (listed in ``problems``)."""
    ts = pd.to_datetime(
        pd.Series(parsed.ts, dtype=object), utc=True, errors="coerce", format="ISO8601"
    )
    bad_ts = ts.isna().to_numpy()
    for i in np.flatnonzero(bad_ts)[: MAX_EXAMPLES - len(problems)]:
        problems.append(f"{parsed.where[i]}: ts {parsed.ts[i]!r} is not an ISO 8601 time")
    frame = numeric_features(pd.DataFrame(parsed.features, columns=list(features)), features, "")
    frame = frame.where(np.isfinite(frame.to_numpy()))
    _add_acquisition(frame, pd.DataFrame(parsed.acquisition, columns=ACQUISITION_COLUMNS))
    if any(parsed.ood):
        ood = pd.DataFrame(parsed.ood, columns=["score", "flag", "misframed"])
        frame["ood_score"] = _exact_floats(ood["score"]).to_numpy()
        for key in ("flag", "misframed"):  # misframed: models with the framing check only
            frame[f"ood_{key}"] = ood[key].map(lambda v: v if isinstance(v, bool) else None)
    frame["predicted"] = parsed.predicted
    frame["model_name"] = parsed.name
    frame["model_version"] = parsed.version
    frame["ts"] = ts
    return frame, bad_ts


def _in_time_range(
    ts: pd.Series,
    keep: np.ndarray,
    since: pd.Timestamp | None,
    until: pd.Timestamp | None,
    counts: dict[str, Any],
) -> np.ndarray:
    in_time = keep.copy()
    if since is not None:
        in_time &= (ts >= since).to_numpy()
    if until is not None:
        in_time &= (ts < until).to_numpy()
    counts["outside_time_range"] = int((keep & ~in_time).sum())
    return keep & in_time


def _of_model(
    frame: pd.DataFrame,
    keep: np.ndarray,
    name: str | None,
    version: str,
    counts: dict[str, Any],
    strict: bool,
    path: Path,
) -> np.ndarray:
    """Rows of the model ``name`` ``version``; the others are counted, or an error when
    ``strict``."""
    same = (frame["model_version"] == version).to_numpy()
    if name:
        same &= (frame["model_name"] == name).to_numpy()
    other = keep & ~same
    if other.any():
        found = Counter(
            f"{n} {v}".strip() for n, v in frame.loc[other, ["model_name", "model_version"]].values
        )
        if strict:
            raise DriftInputError(
                f"{path}: {int(other.sum())} record(s) from other model versions "
                f"({dict(found)}); the reference model is {name or ''} {version} "
                "(drop --strict-version to exclude them)"
            )
        counts["other_versions"] = dict(found)
    counts["other_version_rows"] = int(other.sum())
    return same


def _incomplete(
    frame: pd.DataFrame,
    keep: np.ndarray,
    features: Sequence[str],
    where: list[str],
    problems: list[str],
    counts: dict[str, Any],
) -> np.ndarray:
    """Kept rows with a missing or non-numeric feature (examples listed in ``problems``)."""
    incomplete = keep & frame[list(features)].isna().any(axis=1).to_numpy()
    for i in np.flatnonzero(incomplete)[: max(0, MAX_EXAMPLES - len(problems))]:
        gaps = [c for c in features if pd.isna(frame.at[i, c])]
        problems.append(f"{where[i]}: missing or non-numeric features {gaps}")
    counts["incomplete_rows"] = int(incomplete.sum())
    return incomplete


def _range_text(since: pd.Timestamp | None, until: pd.Timestamp | None) -> str:
    if since is None and until is None:
        return ""
    return f" in [{since.isoformat() if since is not None else '...'}, " + (
        f"{until.isoformat() if until is not None else '...'})"
    )


def _excluded_text(counts: Mapping[str, Any]) -> str:
    parts = [
        f"{counts.get(k, 0)} {label}"
        for k, label in (
            ("bad_lines", "unusable lines"),
            ("other_version_rows", "other model versions"),
            ("incomplete_rows", "incomplete"),
            ("outside_time_range", "outside the time range"),
        )
    ]
    return ", ".join(parts)


def _stack_embeddings(embs: list[np.ndarray | None]) -> tuple[np.ndarray | None, str]:
    if not embs:
        return None, ""
    missing = sum(e is None for e in embs)
    if missing:
        return None, (
            f"embeddings not compared: {missing} of {len(embs)} records have none "
            "(embedding logging disabled?)"
        )
    dims = Counter(len(e) for e in embs if e is not None)
    if len(dims) > 1:
        return None, f"embeddings not compared: records have different sizes {dict(dims)}"
    return np.stack(embs), ""  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- image folders


def image_files(folder: str | Path) -> tuple[list[Path], int]:
    """Image files under ``folder`` (recursive, hidden entries skipped) and how many other
    files there are."""
    folder = Path(folder)
    files, others = [], 0
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES:
            files.append(path)
        else:
            others += 1
    return files, others


def _prepared(files: Sequence[Path], params: ImageParams) -> Iterator[tuple[Path, Any]]:
    for path in files:
        try:
            yield path, prepare_image(path.read_bytes(), str(path), params, strict=True)
        except (OSError, ValueError) as exc:  # ImageError is a ValueError
            yield path, exc


def folder_params(model: Model | None, params: ImageParams | None) -> ImageParams:
    """How the images of a folder are measured (and prepared): the model's recorded
    ``preprocess`` params, else ``params`` (the project's ``preprocess`` section, which made
    the reference). Content features depend on the analysis size, so one of them is needed."""
    if model is None:
        if params is None:
            raise DriftInputError(
                "an image folder is measured at the reference's analysis size: pass --model "
                "(its model.json records it) or a params.yaml with the preprocess section"
            )
        return params
    try:
        chosen = ImageParams.from_section(model.preprocess)
        check_params(chosen)
    except ConfigError as exc:
        raise DriftInputError(
            f"{model_files(model.path)[1]}: new images cannot be prepared like the "
            f"training images: {exc}"
        ) from None
    return chosen


def read_image_folder(
    folder: str | Path,
    *,
    model: Model | None = None,
    image_params: ImageParams | None = None,
    features: Sequence[str] = FEATURE_COLUMNS,
) -> Table:
    """Features (and, with ``model``, embedding and predicted class) of every image under
    ``folder``: decoded, measured before correction at the model's input size, and prepared
    exactly like the server's uploads (:func:`folder_params`). Unreadable images are left out
    and listed."""
    folder = Path(folder)
    params = folder_params(model, image_params)
    files, others = image_files(folder)
    if not files:
        raise DriftInputError(
            f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) and no prediction logs "
            f"({LOG_GLOB}) in this folder"
        )
    done: list[Prepared] = []
    names: list[str] = []
    problems: list[str] = []
    unreadable = 0
    for path, result in _prepared(files, params):
        if isinstance(result, Exception):
            unreadable += 1
            if len(problems) < MAX_EXAMPLES:
                problems.append(f"{path}: {result}")
            continue
        done.append(result)
        names.append(str(path.relative_to(folder)))
    counts: dict[str, Any] = {
        "files": len(files),
        "unreadable_images": unreadable,
        "other_files": others,
    }
    if not done:
        raise DriftInputError(
            f"{folder}: none of the {len(files)} image(s) could be read (first: {problems[0]})"
        )
    frame = pd.DataFrame(
        [[p.features[c] for c in features] for p in done], columns=list(features), dtype=np.float64
    )
    _add_acquisition(frame, pd.DataFrame([p.acquisition for p in done]))
    embeddings = None
    notes = [f"features measured at {params.size} px ({params.interpolation})"]
    if model is not None:
        probs, embeddings = model.run(np.stack([p.image for p in done]))
        frame["predicted"] = model.predicted(probs)
        notes.append(f"embeddings and predictions: model {model.name} {model.version}")
    frame["path"] = names
    counts["rows"] = len(frame)
    return Table(frame, embeddings, str(folder), "images", counts, problems, notes)


def is_log_source(path: str | Path) -> bool:
    """Whether ``path`` holds prediction logs (else it is read as an image folder)."""
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() in (".jsonl", ".json")
    return path.is_dir() and bool(log_files(path))


def finite(value: Any) -> float | None:
    """``value`` as a JSON-safe float (None for NaN/inf)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
