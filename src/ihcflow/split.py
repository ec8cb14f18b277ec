"""Train/val/test split: stratified by class, group-aware, checked for leakage.

Layout 1 (no given split): :func:`stratified_group_split` puts whole groups (patients, slides)
into train/val/test so that every class comes close to the requested fractions. Layout 2
(given ``train``/``test`` [``val``] folders): the given test (and val) sets are kept and val is
carved from the given train set the same way. Images with identical content (same file bytes or
same preprocessed pixels) always travel together, and :func:`check_leakage` verifies the result.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from ihcflow.errors import PipelineError
from ihcflow.tables import (
    FEATURES,
    GROUPS,
    IMAGES_DIR,
    MANIFEST,
    SPLIT,
    SPLITS,
    image_file,
    read_table,
)


@dataclass
class SplitParams:
    """The ``split`` params section (conf/split/default.yaml)."""

    val: float  # fraction for validation (layout 2: of the given train set)
    test: float  # fraction for test (layout 1 only)
    group_pattern: str | None  # regex on the file name; its first group is the patient/slide
    groups_file: str | None  # path,group table relative to the data folder


class SplitError(PipelineError):
    """The inputs cannot be split as asked (bad groups file, too few groups, stale inputs)."""


class LeakageError(SplitError):
    """Identical content or one group ended up in two splits."""


class GroupAssignment(NamedTuple):
    groups: pd.Series  # group id per manifest row (same index as the manifest)
    source: str  # "file" (groups.csv), "pattern" (regex on the file name) or "none"
    n_ungrouped: int  # rows with no group information: each is its own group (its path)
    unknown_paths: tuple[str, ...] = ()  # groups.csv paths that are not in the manifest


# ----------------------------------------------------------------------------- groups


def _norm_path(path: str) -> str:
    path = path.strip().replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    return path


def read_groups_csv(
    path: str | Path, known_paths: Iterable[str]
) -> tuple[dict[str, str], tuple[str, ...]]:
    """Read ``groups.csv`` (columns ``path,group``) into ``{path: group}``.

    Returns the mapping for the paths in ``known_paths`` and the listed paths that are not
    known. Blank groups count as "not listed". Raises :class:`SplitError` naming the file
    for a missing column, an empty path, a path listed with two different groups, or a file
    none of whose paths is known (usually paths not relative to ``data/``).
    """
    path = Path(path)
    table = read_table(path, GROUPS, error=SplitError)
    table = pd.DataFrame(
        {
            "path": table["path"].map(_norm_path),
            "group": table["group"].str.strip(),
            "line": table.index + 2,  # 1-based, after the header line
        }
    )
    empty = table.loc[table["path"] == "", "line"].tolist()
    if empty:
        raise SplitError(f"{path}: empty path on line(s) {empty[:10]}")
    table = table[table["group"] != ""]
    n_groups = table.groupby("path")["group"].nunique()
    conflicts = n_groups[n_groups > 1].index.tolist()
    if conflicts:
        details = [
            f"'{p}' is "
            + " and ".join(
                f"'{r.group}' (line {r.line})"
                for r in table[table["path"] == p].itertuples(index=False)
            )
            for p in conflicts[:5]
        ]
        more = f" (and {len(conflicts) - 5} more)" if len(conflicts) > 5 else ""
        raise SplitError(
            f"{path}: {len(conflicts)} path(s) listed with different groups: "
            + "; ".join(details)
            + more
        )
    known = set(known_paths)
    listed = dict(zip(table["path"], table["group"], strict=True))
    unknown = tuple(sorted(p for p in listed if p not in known))
    if listed and len(unknown) == len(listed):
        raise SplitError(
            f"{path}: none of its {len(listed)} path(s) is an image in the manifest (e.g. "
            f"'{unknown[0]}'); paths must be relative to the data folder, like "
            f"'{next(iter(sorted(known)), '<class>/<file>')}'"
        )
    return {p: g for p, g in listed.items() if p in known}, unknown


def groups_from_pattern(paths: pd.Series, pattern: str) -> tuple[pd.Series, int]:
    """Group id = first capture group of ``pattern`` searched in the file name (basename).

    Files whose name does not match (or whose capture is empty) become their own group, with
    their path as id; their number is returned too.
    """
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise SplitError(f"split.group_pattern {pattern!r} is not a valid regex: {exc}") from exc
    if regex.groups < 1:
        raise SplitError(
            f"split.group_pattern {pattern!r} has no capture group; put the group id in "
            r"parentheses, e.g. '^(P\d+)_'"
        )
    ids: list[str] = []
    unmatched = 0
    for path in paths:
        match = regex.search(PurePosixPath(path).name)
        gid = match.group(1) if match else None
        if gid:
            ids.append(gid)
        else:
            ids.append(path)
            unmatched += 1
    return pd.Series(ids, index=paths.index, name="group", dtype=object), unmatched


def assign_groups(
    manifest: pd.DataFrame, *, groups_csv: str | Path | None, pattern: str | None
) -> GroupAssignment:
    """One group id per manifest row: from ``groups_csv`` if that file exists, else from
    ``pattern`` on the file name, else every file is its own group."""
    paths = manifest["path"].astype(str)
    if groups_csv is not None and Path(groups_csv).is_file():
        mapping, unknown = read_groups_csv(groups_csv, paths)
        ids = paths.map(mapping)
        ungrouped = ids.isna()
        groups = ids.where(~ungrouped, paths).astype(object).rename("group")
        return GroupAssignment(groups, "file", int(ungrouped.sum()), unknown)
    if pattern:
        groups, unmatched = groups_from_pattern(paths, pattern)
        return GroupAssignment(groups, "pattern", unmatched)
    return GroupAssignment(paths.astype(object).rename("group"), "none", len(paths))


# ----------------------------------------------------------------------------- splitting


def _check_fractions(val: float, test: float) -> None:
    for name, value in (("val", val), ("test", test)):
        if not isinstance(value, int | float) or not 0 <= value < 1:
            raise SplitError(f"split.{name} = {value!r}: expected a fraction in [0, 1)")
    if val + test >= 1:
        raise SplitError(f"split.val + split.test = {val + test:g}: must leave images to train on")


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5 + 1e-9)


def class_targets(n: int, *, val: float, test: float) -> tuple[int, int, int]:
    """Images of a class of ``n`` for (train, val, test): rounded fractions, each non-zero
    fraction getting at least 1 image when the class has 3 or more, train keeping at least 1."""
    want = {"val": _round_half_up(val * n), "test": _round_half_up(test * n)}
    if n >= 3:
        for name, frac in (("val", val), ("test", test)):
            if frac > 0:
                want[name] = max(want[name], 1)
    while want["val"] + want["test"] > max(n - 1, 0):
        name = "val" if want["val"] >= want["test"] else "test"
        want[name] -= 1
    return n - want["val"] - want["test"], want["val"], want["test"]


def _cost(filled: np.ndarray, targets: np.ndarray, weight: np.ndarray) -> float:
    return float((((filled - targets) ** 2) * weight).sum())


def _move_delta(x: np.ndarray, err: np.ndarray, src: int, weight: np.ndarray) -> np.ndarray:
    """Cost change of moving counts ``x`` (K,) or (M, K) from split ``src`` to each split."""
    # sum_c w_c * [(e_b + x)^2 - e_b^2 + (e_a - x)^2 - e_a^2] for every destination b.
    x = np.atleast_2d(x)
    out = 2 * x[:, None, :] * (err[None, :, :] - err[src][None, None, :]) + 2 * x[:, None, :] ** 2
    delta = (out * weight).sum(axis=2)
    delta[:, src] = 0.0
    return delta


def _assign(
    counts: np.ndarray, targets: np.ndarray, active: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Split index per group: greedy, biggest groups first, then local moves and swaps.

    The objective is the squared error between achieved and target counts with each class
    weighted by 1/n_class^2, i.e. the error of the per-class *fractions*.
    """
    n_groups = counts.shape[0]
    weight = 1.0 / np.maximum(counts.sum(axis=0), 1).astype(float) ** 2
    sizes = counts.sum(axis=1)
    order = rng.permutation(n_groups)
    order = order[np.argsort(-sizes[order], kind="stable")]
    splits = np.flatnonzero(active)
    filled = np.zeros_like(targets)
    choice = np.empty(n_groups, dtype=np.int64)
    for gi in order:
        deficit = targets - filled
        gain = (deficit * weight) @ counts[gi]
        fill = (deficit / np.maximum(targets, 1)) @ counts[gi]
        best = max(splits, key=lambda s: (gain[s], fill[s]))
        choice[gi] = best
        filled[best] += counts[gi]

    # Every requested split gets at least one group: take the cheapest group to move from a
    # split that has several.
    for empty in splits:
        if (choice == empty).any():
            continue
        per_split = np.bincount(choice, minlength=len(SPLITS))
        donors = np.flatnonzero(per_split[choice] >= 2)
        err = filled - targets
        deltas = [_move_delta(counts[g], err, choice[g], weight)[0, empty] for g in donors]
        g = donors[int(np.argmin(deltas))]
        filled[choice[g]] -= counts[g]
        filled[empty] += counts[g]
        choice[g] = empty

    _refine(choice, counts, targets, filled, weight, splits, order)
    return choice


def _refine(
    choice: np.ndarray,
    counts: np.ndarray,
    targets: np.ndarray,
    filled: np.ndarray,
    weight: np.ndarray,
    splits: np.ndarray,
    order: np.ndarray,
    *,
    max_passes: int = 20,
    max_swap_groups: int = 3000,
) -> None:
    """Local search in place: move single groups, then swap pairs, while the cost drops."""
    eps = 1e-12
    inactive = np.setdiff1d(np.arange(len(SPLITS)), splits)
    per_split = np.bincount(choice, minlength=len(SPLITS))
    for _ in range(max_passes):
        if _cost(filled, targets, weight) <= eps:
            return
        improved = False
        for g in order:
            src = choice[g]
            if per_split[src] < 2:
                continue  # never empty a split
            delta = _move_delta(counts[g], filled - targets, src, weight)[0]
            delta[inactive] = np.inf
            dst = int(np.argmin(delta))
            if delta[dst] < -eps:
                filled[src] -= counts[g]
                filled[dst] += counts[g]
                per_split[src] -= 1
                per_split[dst] += 1
                choice[g] = dst
                improved = True
        if len(order) <= max_swap_groups:
            for g in order:
                src = choice[g]
                others = np.flatnonzero(choice != src)
                if len(others) == 0:
                    continue
                diff = counts[g][None, :] - counts[others]  # net counts leaving src
                delta_all = _move_delta(diff, filled - targets, src, weight)
                delta = delta_all[np.arange(len(others)), choice[others]]
                j = int(np.argmin(delta))
                if delta[j] < -eps:
                    h = others[j]
                    dst = choice[h]
                    filled[src] += counts[h] - counts[g]
                    filled[dst] += counts[g] - counts[h]
                    choice[g], choice[h] = dst, src
                    improved = True
        if not improved:
            return


def stratified_group_split(
    labels: Iterable[Any], groups: Iterable[Any], *, val: float, test: float, seed: int
) -> np.ndarray:
    """Assign "train"/"val"/"test" to each item, keeping every group in one split.

    Deterministic for a seed. Per class the targets are ``round(val * n)`` and
    ``round(test * n)`` (at least 1 each when the class has 3+ images); with one item per
    group they are met exactly. Groups may span classes: they are placed greedily (biggest
    first, in a seeded random order among equals) where they best reduce the per-class
    deficits, then improved by local moves and swaps. A fraction of 0 leaves that split empty.
    """
    labels = np.asarray(list(labels), dtype=object).astype(str)
    groups = np.asarray(list(groups), dtype=object).astype(str)
    if labels.shape != groups.shape:
        raise ValueError(f"{len(labels)} labels but {len(groups)} groups")
    _check_fractions(val, test)
    if len(labels) == 0:
        raise SplitError("nothing to split: no images")
    _, y = np.unique(labels, return_inverse=True)
    gids, g = np.unique(groups, return_inverse=True)
    counts = np.zeros((len(gids), int(y.max()) + 1), dtype=np.int64)
    np.add.at(counts, (g, y), 1)
    active = np.array([True, val > 0, test > 0])
    needed = [s for s, a in zip(SPLITS, active, strict=True) if a]
    if len(gids) < len(needed):
        raise SplitError(
            f"{len(gids)} group(s) cannot fill {len(needed)} non-empty splits ({'/'.join(needed)}):"
            f" need at least {len(needed)} groups (patients/slides); add data, or make groups "
            "finer (data/groups.csv, split.group_pattern)"
        )
    targets = np.array(
        [class_targets(int(n), val=val, test=test) for n in counts.sum(axis=0)], dtype=np.int64
    ).T
    choice = _assign(counts, targets, active, np.random.default_rng(seed))
    return np.asarray(SPLITS)[choice[g]]


# ----------------------------------------------------------------------------- leakage


_LEAK_KEYS = (
    ("sha256", "identical file"),
    ("processed_sha256", "identical after preprocessing"),
    ("group", "group"),
)


def check_leakage(frame: pd.DataFrame) -> dict[str, Any]:
    """Raise :class:`LeakageError` if identical content (``sha256`` or ``processed_sha256``) or
    a ``group`` appears in two splits, listing the files; return a summary of what was checked."""
    problems: list[str] = []
    checked = []
    for column, what in _LEAK_KEYS:
        if column not in frame.columns:
            continue
        checked.append(column)
        sub = frame.loc[frame[column].astype(str) != "", ["path", "split", column]]
        spread = sub.groupby(column)["split"].nunique()
        for key in spread[spread > 1].index:
            rows = sub[sub[column] == key].sort_values("path")
            where = "; ".join(
                f"{split}: {', '.join(paths)}"
                for split, paths in rows.groupby("split", sort=True)["path"]
            )
            label = f"{what} '{key}'" if column == "group" else f"{what} ({column} {key[:12]})"
            problems.append(f"{label} is in {spread[key]} splits -> {where}")
    if problems:
        shown = problems[:20]
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise LeakageError(
            f"leakage between splits ({len(problems)} case(s)):\n  "
            + "\n  ".join(shown)
            + more
            + "\n(a given train/val/test split must not separate identical images or one "
            "group; fix the folders, data/groups.csv or split.group_pattern)"
        )
    return {"ok": True, "checked": checked, "n_problems": 0}


# ----------------------------------------------------------------------------- the data set


def merge_units(frame: pd.DataFrame) -> pd.Series:
    """Split unit per row: rows sharing a group, a ``sha256`` or a ``processed_sha256`` are
    joined (transitively), so identical content never straddles two splits. The unit id is
    the group of the unit's first row."""
    n = len(frame)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for column in ("group", "sha256", "processed_sha256"):
        if column not in frame.columns:
            continue
        first: dict[str, int] = {}
        for i, value in enumerate(frame[column].astype(str)):
            if value == "":
                continue
            j = first.setdefault(value, i)
            ri, rj = find(i), find(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    groups = frame["group"].astype(str).to_numpy()
    return pd.Series([groups[find(i)] for i in range(n)], index=frame.index, name="unit")


def _layout(given: pd.Series) -> int:
    filled = given != ""
    if not filled.any():
        return 1
    if not filled.all():
        raise SplitError(
            f"given_split is set for {int(filled.sum())} image(s) and empty for "
            f"{int((~filled).sum())}: a manifest is either layout 1 (all empty) or layout 2 "
            "(all set); re-run the validate stage"
        )
    bad = sorted(set(given) - set(SPLITS))
    if bad:
        raise SplitError(f"given_split has unknown value(s) {bad}; expected {list(SPLITS)}")
    return 2


def _fractions(counts: pd.DataFrame, splits: list[str]) -> dict[str, Any]:
    sub = counts.loc[splits]
    total = sub.to_numpy().sum()
    overall = {s: round(float(sub.loc[s].sum() / total), 4) if total else 0.0 for s in splits}
    per_class = {
        str(c): {
            s: round(float(sub.loc[s, c] / sub[c].sum()), 4) if sub[c].sum() else 0.0
            for s in splits
        }
        for c in sub.columns
    }
    return {"achieved": overall, "achieved_per_class": per_class}


def split_dataset(
    frame: pd.DataFrame,
    groups: GroupAssignment,
    *,
    val: float,
    test: float,
    seed: int,
    images_dir: str | Path = IMAGES_DIR,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Split a manifest joined with its features (``path``, ``class``, ``given_split``,
    ``sha256``, ``processed_sha256``) and return ``processed/split.csv`` and the report.
    ``images_dir``: where the preprocess stage put the images (the ``image`` column)."""
    frame = frame.assign(group=groups.groups.astype(str)).sort_values("path").reset_index(drop=True)
    layout = _layout(frame["given_split"].astype(str))
    units = merge_units(frame)
    n_groups = int(frame["group"].nunique())
    warns: list[str] = []
    if layout == 1:
        if val <= 0 or test <= 0:
            raise SplitError(f"split.val={val} and split.test={test}: layout 1 needs both > 0")
        split = stratified_group_split(frame["class"], units, val=val, test=test, seed=seed)
        frame["split"] = split
        requested = {"train": round(1 - val - test, 4), "val": val, "test": test}
        basis, val_source = "whole data set", "split"
    else:
        frame["split"] = frame["given_split"].astype(str)
        if not (frame["split"] == "test").any():
            raise SplitError("layout 2: the given test set is empty (no valid image in data/test)")
        if (frame["split"] == "val").any():
            val_source = "given"
            requested = {}
            basis = "whole data set (train/val/test as given)"
        else:
            val_source = "carved from given train"
            _check_fractions(val, 0.0)
            if val <= 0:
                raise SplitError("layout 2 without data/val needs split.val > 0 to carve val")
            train = frame["split"] == "train"
            if not train.any():
                raise SplitError("layout 2: the given train set is empty")
            frame.loc[train, "split"] = stratified_group_split(
                frame.loc[train, "class"], units[train], val=val, test=0.0, seed=seed
            )
            requested = {"train": round(1 - val, 4), "val": val}
            basis = "given train set (val carved from it; test as given)"

    leakage = check_leakage(frame)

    classes = sorted(frame["class"].unique())
    counts = (
        pd.crosstab(frame["split"], frame["class"])
        .reindex(index=list(SPLITS), columns=classes, fill_value=0)
        .astype(int)
    )
    for s in SPLITS:
        for c in classes:
            if counts.loc[s, c] == 0:
                warns.append(
                    f"{s} has no image of class '{c}' ({int(counts[c].sum())} image(s) in all)"
                )
    if layout == 1 or val_source == "given":
        fractions = _fractions(counts, list(SPLITS))
    else:
        fractions = _fractions(counts, ["train", "val"])
        fractions["test_of_whole"] = round(float(counts.loc["test"].sum() / len(frame)), 4)

    if groups.unknown_paths:
        warns.append(
            f"groups file lists {len(groups.unknown_paths)} path(s) not in the manifest "
            f"(ignored), e.g. {list(groups.unknown_paths[:3])}"
        )
    if groups.source == "pattern" and groups.n_ungrouped == len(frame):
        warns.append("group_pattern matched no file name: every image is its own group")
    elif groups.source in ("pattern", "file") and groups.n_ungrouped:
        warns.append(f"{groups.n_ungrouped} image(s) have no group: each is its own group")
    n_units = int(units.nunique())
    if n_units < n_groups:
        warns.append(
            f"{n_groups - n_units} group(s) joined others because they share identical images "
            "(same file or same preprocessed pixels); they stay in one split"
        )

    images = frame["sha256"].map(lambda sha: image_file(images_dir, sha))
    out = frame.assign(image=images)[list(SPLIT.columns)]
    report: dict[str, Any] = {
        "layout": layout,
        "seed": seed,
        "n_images": len(frame),
        "counts": {s: {str(c): int(counts.loc[s, c]) for c in classes} for s in SPLITS},
        "totals": {s: int(counts.loc[s].sum()) for s in SPLITS},
        "fractions": {
            "basis": basis,
            "val_source": val_source,
            "requested": requested,
            **fractions,
        },
        "groups": {
            "source": groups.source,
            "n_groups": n_groups,
            "n_ungrouped": groups.n_ungrouped,
            "n_unknown_paths": len(groups.unknown_paths),
            "unknown_paths": list(groups.unknown_paths[:20]),
            "n_split_units": n_units,
        },
        "leakage": leakage,
        "warnings": warns,
    }
    return out, report


def read_split_inputs(manifest: str | Path, features: str | Path) -> pd.DataFrame:
    """Join ``processed/manifest.csv`` with the content hashes of ``reports/data/features.csv``,
    checking that both describe the same images."""
    tables = []
    for path, spec, columns in (
        (Path(manifest), MANIFEST, ["path", "class", "given_split", "sha256"]),
        (Path(features), FEATURES, ["path", "sha256", "processed_sha256"]),
    ):
        table = read_table(
            path,
            spec,
            columns=columns,
            error=SplitError,
            absent="not found (run the validate and preprocess stages first)",
        )
        if table.empty:
            raise SplitError(f"{path}: no images")
        dup = table.loc[table["path"].duplicated(), "path"].tolist()
        if dup:
            raise SplitError(f"{path}: duplicate path(s) {dup[:5]}")
        tables.append(table[columns])
    man, feat = tables
    merged = man.merge(feat, on="path", how="outer", suffixes=("", "_f"), indicator=True)
    for side, where, missing_from in (
        ("left_only", manifest, features),
        ("right_only", features, manifest),
    ):
        stray = merged.loc[merged["_merge"] == side, "path"].tolist()
        if stray:
            raise SplitError(
                f"{missing_from}: lacks {len(stray)} image(s) listed in {where}, e.g. {stray[:3]}"
                " (stale outputs: re-run preprocess)"
            )
    stale = merged.loc[merged["sha256"] != merged["sha256_f"], "path"].tolist()
    if stale:
        raise SplitError(
            f"{features}: sha256 differs from {manifest} for {len(stale)} image(s), e.g. "
            f"{stale[:3]} (stale outputs: re-run preprocess)"
        )
    return merged.drop(columns=["sha256_f", "_merge"]).sort_values("path").reset_index(drop=True)
