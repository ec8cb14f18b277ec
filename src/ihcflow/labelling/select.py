"""``ihcflow label select``: choose the new images worth a pathologist's time.

Sources: a folder of images (read recursively, hidden entries skipped), or the uploads the
server keeps (``--from-uploads``): ``<dir>/<YYYY-MM-DD>/<sha256>.<ext>``, one file per distinct
upload under the UTC day it was received (docs/labelling.md, "Uploads kept by the server").

Every image is prepared and predicted exactly as the server does it, then scored:

- ``uncertainty`` in [0, 1]: ``margin`` = 1 - (p1 - p2), the two highest probabilities; or
  ``entropy`` = H(p) / log K.
- ``ood`` in [0, 1], when the training images' embeddings exist (after ``dvc repro``): the
  share of training images that lie closer to their own K_NEIGHBOURS nearest training images
  (cosine distance between embeddings, leaving each one out) than this image lies to its
  nearest training images. 0.99: more isolated than 99 % of the training set.
- ``score`` = uncertainty + ood_weight * max(0, (ood - OOD_FLOOR) / (1 - OOD_FLOOR)): an image
  counts as out of distribution only beyond the OOD_FLOOR quantile of the training images.

The batch takes the highest scores; with class balance (the default) the predicted classes
take turns by the D'Hondt rule with weight 1 / (images of the class in ``data/``): the next
place goes to the class with the largest weight / (places taken + 1), so a class that is rare
in ``data/`` gets more places, and a class without candidates leaves its places to the others.

Left out, and counted in ``batch.json``: images already in ``data/`` (same bytes), already in
another batch beside this one, the same bytes twice in the source (the first is kept), and
files that cannot be read as images (with the reason).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ihcflow.errors import PipelineError
from ihcflow.files import atomic_dir, read_json, sha256_file, write_json_atomic
from ihcflow.images.codec import IMAGE_SUFFIXES
from ihcflow.kept_uploads import day_folders, kept_files, name_sha256
from ihcflow.labelling.model import RegisteredModel, data_hashes, image_files, training_embeddings
from ihcflow.prediction_log import log_files, read_records
from ihcflow.tables import Table, read_table, write_table

UNCERTAINTY = ("margin", "entropy")
K_NEIGHBOURS = 5  # neighbours averaged for the distance to the training set
OOD_FLOOR = 0.9  # below this quantile of the training images' own distances: in distribution
CHUNK = 1024  # rows of a distance matrix computed at once (memory: CHUNK x training images)

IMAGES_DIR = "images"
MANIFEST = "manifest.csv"
BATCH_JSON = "batch.json"
MANIFEST_COLUMNS = [
    "rank",  # 1 = chosen first
    "file",  # the copy in the batch folder, relative to it: images/<sha256[:12]>_<name>
    "source",  # where it came from (relative to the source folder)
    "sha256",  # of the file's bytes (copied unchanged)
    "predicted",
    "confidence",  # the highest probability
    "runner_up",  # the second most probable class
    "margin",  # p1 - p2
    "entropy",  # H(p) / log K
    "uncertainty",  # 1 - margin or entropy, as chosen
    "ood",  # empty when there is no reference
    "score",
    "reason",  # the same in words
    "probs",  # JSON {class: probability}
    "served",  # kept uploads: what the server answered (its prediction log), else empty
]
BATCH_MANIFEST = Table("batch manifest", f"<batch>/{MANIFEST}", "", tuple(MANIFEST_COLUMNS))


class SelectError(PipelineError):
    """Nothing sensible to select from; the message names the folder and the problem."""


@dataclass
class Candidate:
    path: Path
    source: str  # shown in the manifest
    sha256: str


@dataclass
class BatchSummary:
    out: Path
    chosen: pd.DataFrame  # the manifest
    counts: dict[str, int]
    skipped: list[dict[str, str]]
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        per_class = Counter(self.chosen["predicted"])
        left = ", ".join(
            f"{n} {what.replace('_', ' ')}"
            for what, n in self.counts.items()
            if what not in ("images", "chosen") and n
        )
        lines = [
            f"chose {len(self.chosen)} of {self.counts['images']} image(s) into {self.out}"
            + (f" (left out: {left})" if left else ""),
            "predicted: " + ", ".join(f"{c} {n}" for c, n in sorted(per_class.items())),
            *self.notes,
        ]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------ scores


def uncertainty_table(probs: np.ndarray, class_names: Sequence[str]) -> pd.DataFrame:
    """predicted, confidence, runner_up, margin and normalised entropy per row of ``probs``."""
    probs = np.asarray(probs, dtype=np.float64)
    k = probs.shape[1]
    if k < 2:
        raise ValueError(f"uncertainty needs at least 2 classes, the model has {k}")
    order = np.argsort(-probs, axis=1, kind="stable")
    rows = np.arange(len(probs))
    p1, p2 = probs[rows, order[:, 0]], probs[rows, order[:, 1]]
    clipped = np.clip(probs, 1e-12, 1.0)
    entropy = -(probs * np.log(clipped)).sum(axis=1) / math.log(k)
    names = np.asarray(class_names, dtype=object)
    return pd.DataFrame(
        {
            "predicted": names[order[:, 0]],
            "confidence": p1,
            "runner_up": names[order[:, 1]],
            "margin": p1 - p2,
            "entropy": np.clip(entropy, 0.0, 1.0),
        }
    )


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_distance(x: np.ndarray, reference: np.ndarray, k: int, *, leave_out: bool) -> np.ndarray:
    """Mean cosine distance of each row of ``x`` to its ``k`` nearest rows of ``reference``;
    with ``leave_out``, ``x`` is ``reference`` and each row's own entry is not counted."""
    xn, rn = _unit(x), _unit(reference)
    k = min(k, len(rn) - (1 if leave_out else 0))
    if k < 1:
        raise ValueError(f"{len(rn)} reference embedding(s): too few for a nearest-neighbour score")
    out = np.empty(len(xn))
    for start in range(0, len(xn), CHUNK):
        dist = 1.0 - xn[start : start + CHUNK] @ rn.T
        if leave_out:
            rows = np.arange(dist.shape[0])
            dist[rows, start + rows] = np.inf
        out[start : start + CHUNK] = np.partition(dist, k - 1, axis=1)[:, :k].mean(axis=1)
    return out


def ood_scores(embeddings: np.ndarray, reference: np.ndarray, k: int = K_NEIGHBOURS) -> np.ndarray:
    """Per row of ``embeddings``: the share of ``reference`` rows whose own (leave-one-out)
    nearest-neighbour distance is below this row's distance to ``reference``."""
    own = np.sort(knn_distance(reference, reference, k, leave_out=True))
    new = knn_distance(embeddings, reference, k, leave_out=False)
    return np.searchsorted(own, new, side="left") / len(own)


def combined_score(
    uncertainty: np.ndarray, ood: np.ndarray | None, ood_weight: float
) -> np.ndarray:
    if ood is None:
        return np.asarray(uncertainty, dtype=np.float64)
    beyond = np.clip((np.asarray(ood) - OOD_FLOOR) / (1.0 - OOD_FLOOR), 0.0, 1.0)
    return np.asarray(uncertainty, dtype=np.float64) + ood_weight * beyond


def choose(
    scored: pd.DataFrame, n: int, *, balance: bool, class_counts: Mapping[str, int]
) -> pd.DataFrame:
    """The ``n`` rows to label, in the order chosen (columns ``score``, ``predicted``), with
    ``place`` (1-based, within the predicted class) added."""
    if n < 1:
        raise ValueError(f"batch size must be >= 1, got {n}")
    ranked = scored.sort_values("score", ascending=False, kind="stable")
    if not balance:
        picked = ranked.head(n)
        places = picked.groupby("predicted").cumcount() + 1
        return picked.assign(place=places.to_numpy())
    queues = {c: list(g.index) for c, g in ranked.groupby("predicted", sort=True)}
    weight = {c: 1.0 / max(int(class_counts.get(c, 0)), 1) for c in queues}
    taken = dict.fromkeys(queues, 0)
    order: list[Any] = []
    while len(order) < n and any(queues.values()):
        open_classes = [c for c in queues if queues[c]]
        best = max(
            open_classes,
            key=lambda c: (weight[c] / (taken[c] + 1), scored.at[queues[c][0], "score"]),
        )
        order.append(queues[best].pop(0))
        taken[best] += 1
    picked = scored.loc[order]
    return picked.assign(place=(picked.groupby("predicted").cumcount() + 1).to_numpy())


def reason(row: Mapping[str, Any], method: str, *, balance: bool, counts: Mapping[str, int]) -> str:
    """Why this image was chosen, in words (the manifest's ``reason``)."""
    top, second = row["predicted"], row["runner_up"]
    p1, p2 = row["confidence"], row["confidence"] - row["margin"]
    if method == "margin":
        parts = [f"margin {row['margin']:.2f}: {top} {p1:.2f} vs {second} {p2:.2f}"]
    else:
        parts = [f"entropy {row['entropy']:.2f} of the maximum ({top} {p1:.2f})"]
    ood = row.get("ood")
    if ood is not None and not pd.isna(ood):
        if ood >= OOD_FLOOR:
            parts.append(f"unlike the training images: more isolated than {ood:.0%} of them")
        else:
            parts.append(f"like the training images (ood {ood:.2f})")
    if balance:
        parts.append(
            f"class balance: {top} pick {row['place']} ({counts.get(top, 0)} {top} in data/)"
        )
    else:
        parts.append(f"{top} pick {row['place']}")
    return "; ".join(parts)


# ----------------------------------------------------------------------------------- sources


def folder_candidates(folder: Path) -> tuple[list[Candidate], int]:
    """Image files under ``folder`` and how many other files there are."""
    if not folder.is_dir():
        raise SelectError(f"{folder}: not a folder of images")
    files, others = image_files(folder)
    return [Candidate(p, p.relative_to(folder).as_posix(), sha256_file(p)) for p in files], others


def upload_candidates(
    folder: Path, since: dt.date | None = None
) -> tuple[list[Candidate], list[dict[str, str]]]:
    """The uploads the server kept in ``folder`` (:mod:`ihcflow.kept_uploads`), from ``since``
    on; files whose bytes do not hash to their name, or that are not images, are left out."""
    if not folder.is_dir():
        raise SelectError(f"{folder}: uploads folder not found")
    if not day_folders(folder):
        raise SelectError(
            f"{folder}: no day folders (YYYY-MM-DD/<sha256>.<ext>): is this the folder the "
            "server keeps uploads in (`ihcflow serve --log-images DIR`)?"
        )
    files, problems = [], []
    for _, path in kept_files(folder, since):
        rel = path.relative_to(folder).as_posix()
        claimed = name_sha256(path)
        if path.suffix.lower() not in IMAGE_SUFFIXES or claimed is None:
            problems.append({"file": rel, "reason": "not <sha256>.<image suffix>"})
            continue
        digest = sha256_file(path)
        if digest != claimed:
            problems.append(
                {"file": rel, "reason": f"bytes hash to {digest[:12]}..., not to its name"}
            )
            continue
        files.append(Candidate(path, rel, digest))
    return files, problems


def served_predictions(log_dir: Path, wanted: set[str]) -> dict[str, str]:
    """``{image_sha256: what the server answered}`` from the prediction log in ``log_dir``
    (the lines ``--log-images`` gave an ``image_sha256``), for the uploads in ``wanted``: the
    latest answer, its margin, and how often the image was uploaded."""
    latest: dict[str, tuple[str, dict[str, Any]]] = {}
    times: Counter[str] = Counter()
    for _, record, _ in read_records(log_files(log_dir)):
        sha = (record or {}).get("image_sha256")
        if record is None or sha not in wanted:
            continue
        times[sha] += 1
        if sha not in latest or str(record["ts"]) >= latest[sha][0]:
            latest[sha] = (str(record["ts"]), record)
    served = {}
    for sha, (ts, record) in latest.items():
        probs = sorted((float(p) for p in (record.get("probs") or {}).values()), reverse=True)
        margin = f", margin {probs[0] - probs[1]:.2f}" if len(probs) >= 2 else ""
        served[sha] = (
            f"{record['predicted']}{margin} by {record.get('model_name', '?')} "
            f"{record['model_version']} at {ts} ({times[sha]} upload(s))"
        )
    return served


def earlier_batches(out: Path) -> dict[str, str]:
    """``{sha256: batch name}`` of the batches beside ``out`` (so none is sent twice)."""
    seen: dict[str, str] = {}
    if not out.parent.is_dir():
        return seen
    for manifest in sorted(out.parent.glob(f"*/{MANIFEST}")):
        if manifest.parent == out:
            continue
        try:
            frame = pd.read_csv(manifest, dtype=str, usecols=["sha256"])
        except (ValueError, OSError, pd.errors.ParserError) as exc:
            raise SelectError(
                f"{manifest}: cannot read an earlier batch's manifest: {exc}"
            ) from None
        for digest in frame["sha256"]:
            seen.setdefault(digest, manifest.parent.name)
    return seen


# ---------------------------------------------------------------------------------- the batch


def _copy_name(candidate: Candidate) -> str:
    name = candidate.path.name
    return name if candidate.path.stem == candidate.sha256 else f"{candidate.sha256[:12]}_{name}"


def select_batch(
    candidates: Sequence[Candidate],
    model: RegisteredModel,
    out: Path,
    *,
    n: int,
    data_dir: Path,
    root: Path,
    method: str = "margin",
    ood_weight: float = 1.0,
    balance: bool = True,
    source: str,
    skipped: Sequence[dict[str, str]] = (),
    others: int = 0,
    log_dir: Path | None = None,
) -> BatchSummary:
    """Score ``candidates`` with ``model`` and write the batch folder ``out``."""
    if method not in UNCERTAINTY:
        raise ValueError(f"uncertainty must be one of {UNCERTAINTY}, got {method!r}")
    if ood_weight < 0:
        raise ValueError(f"ood weight must be >= 0, got {ood_weight}")
    if out.exists():
        raise FileExistsError(
            f"{out}: already exists; a batch is never overwritten (its tasks may be in Label "
            "Studio): choose another --out"
        )
    layout, known = data_hashes(data_dir)
    counts = Counter(e.label for e in layout.entries)
    earlier = earlier_batches(out)
    left_out = list(skipped)
    tally = Counter({"images": len(candidates) + len(skipped)})
    tally["not_images"] = others
    fresh: list[Candidate] = []
    first: dict[str, str] = {}
    for cand in candidates:
        why = ""
        if cand.sha256 in known:
            why, key = f"already in data/ as {known[cand.sha256]}", "in_data"
        elif cand.sha256 in earlier:
            why, key = f"already in batch {earlier[cand.sha256]}", "in_earlier_batch"
        elif cand.sha256 in first:
            why, key = f"same bytes as {first[cand.sha256]}", "duplicate"
        if why:
            left_out.append({"file": cand.source, "reason": why})
            tally[key] += 1
            continue
        first[cand.sha256] = cand.source
        fresh.append(cand)
    tally["unusable"] += len(skipped)

    by_key = {str(c.path): c for c in fresh}
    predicted = model.predict_files([c.path for c in fresh])
    for key, problem in predicted.problems.items():
        left_out.append({"file": by_key[key].source, "reason": problem})
        tally["unusable"] += 1
    kept = [by_key[k] for k in predicted.keys]
    if not kept:
        raise SelectError(
            f"{source}: no new image to choose from ({dict(tally)}); see the reasons:\n"
            + "\n".join(f"  {s['file']}: {s['reason']}" for s in left_out[:10])
        )

    table = uncertainty_table(predicted.probs, model.class_names)
    table["uncertainty"] = 1.0 - table["margin"] if method == "margin" else table["entropy"]
    notes = []
    reference, note = training_embeddings(model, root)
    notes.append(note)
    ood = None if reference is None else ood_scores(predicted.embeddings, reference)
    table["ood"] = np.nan if ood is None else ood
    table["score"] = combined_score(table["uncertainty"].to_numpy(), ood, ood_weight)
    table["source"] = [c.source for c in kept]
    table["sha256"] = [c.sha256 for c in kept]
    table["file"] = [f"{IMAGES_DIR}/{_copy_name(c)}" for c in kept]
    served = {} if log_dir is None else served_predictions(log_dir, set(table["sha256"]))
    table["served"] = [served.get(sha, "") for sha in table["sha256"]]
    if log_dir is not None:
        notes.append(
            f"{len(served)} of {len(table)} image(s) found in the prediction log in {log_dir}"
        )
    table["probs"] = [
        json.dumps(dict(zip(model.class_names, np.round(p, 6).tolist(), strict=True)))
        for p in predicted.probs
    ]
    picked = choose(table, n, balance=balance, class_counts=counts)
    picked = picked.assign(
        rank=np.arange(1, len(picked) + 1),
        reason=[
            reason(row, method, balance=balance, counts=counts) for row in picked.to_dict("records")
        ],
    )
    manifest = picked[MANIFEST_COLUMNS].reset_index(drop=True)
    tally["chosen"] = len(manifest)
    info = {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "source": source,
        "model": {
            "name": model.name,
            "version": model.version,
            "class_names": model.class_names,
            "onnx_sha256": model.onnx_sha256,
        },
        "options": {"n": n, "uncertainty": method, "ood_weight": ood_weight, "balance": balance},
        "data": {
            "folder": str(data_dir),
            "layout": layout.kind,
            "counts": dict(sorted(counts.items())),
        },
        "counts": dict(tally),
        "notes": notes,
        "skipped": left_out,
    }
    path_of = {c.source: c.path for c in kept}
    with atomic_dir(out) as tmp:
        (tmp / IMAGES_DIR).mkdir()
        for row in manifest.itertuples():
            shutil.copyfile(path_of[str(row.source)], tmp / str(row.file))
        write_table(tmp / MANIFEST, manifest, BATCH_MANIFEST)
        write_json_atomic(tmp / BATCH_JSON, info)
    return BatchSummary(out, manifest, dict(tally), left_out, notes)


def read_batch(batch: Path) -> tuple[dict[str, Any], pd.DataFrame]:
    """``batch.json`` and ``manifest.csv`` of a batch folder (what push and pull read)."""
    info = read_json(batch / BATCH_JSON, f"batch description (is {batch} a batch folder?)")
    manifest = read_table(
        batch / MANIFEST,
        BATCH_MANIFEST,
        error=ValueError,
        absent="batch manifest not found (written by `ihcflow label select`)",
    )
    return info, manifest
