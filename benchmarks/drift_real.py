"""False alarms and detection of ``ihcflow drift`` on real images; per-request OOD flags.

    .venv/bin/python benchmarks/drift_real.py [--draws 200] [--ood] [--json PATH]
    .venv/bin/python benchmarks/drift_real.py --synthetic 240 --draws 5   # generated images

Data (skipped with a message when absent): ``../shared/datasets/pbc-sample`` (800 PBC blood-cell
JPEGs, ~360 px) and ``../shared/datasets/pbc28-trainval.npz`` (the same source at 28 px, made
by centre crop 200 px -> resize 28: MedMNIST's BloodMNIST recipe). Both are measured the way the
pipeline does (:mod:`ihcflow.images.features` at the analysis size 28, the model's input):

- ``pbc28``: the reference is 2,000 training images drawn per draw, a window 50/200/500
  validation images (disjoint: another split of the same data);
- ``pbc-sample``: per draw the 800 images are split at random into a reference of 300, stored
  as the pipeline stores them (centre crop 200 px -> 28 px, PIL bicubic, like pbc28), and a
  window of 50/200/500 others *uploaded as 200 px crops* (the server measures them at 28 px):
  same content at a higher resolution, which must not be drift.

Shifted windows: 10% darker, blurred (Gaussian, sigma 0.7 px at 28 px), hematoxylin x1.3
(colour deconvolution), and for pbc-sample mis-framed: the full 360 px frame instead of the
centre crop. Every alarm on an unshifted window is false, every miss on a shifted one a miss.

Each draw runs :func:`ihcflow.monitoring.drift.compare` with the ``drift`` params (the
per-column K-S tests and the drift-share rule, no model: the embedding test is not part of
this count); the same p-values are then judged by other rules for comparison.

``--ood`` also trains a small CNN (CPU, a few minutes) on the pbc28 training images minus the
800 of pbc-sample, fits :func:`ihcflow.ood.fit_ood` on its training embeddings, calibrates the
threshold on pbc28's validation split (as the register stage does), and measures the share of
pbc-sample images flagged: centre crops (in distribution, never seen) vs full frames
(mis-framed); the drift windows then also report the flagged share.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from omegaconf import OmegaConf
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO)]  # ihcflow, and tests.helpers for generated data
from ihcflow.files import write_json_atomic  # noqa: E402
from ihcflow.images.codec import read_rgb8  # noqa: E402
from ihcflow.images.features import FEATURE_COLUMNS, image_features  # noqa: E402
from ihcflow.images.ops import centre_zoom, resize  # noqa: E402
from ihcflow.monitoring.drift import DriftParams, compare  # noqa: E402
from ihcflow.monitoring.simulate import scale_brightness, scale_stain  # noqa: E402
from ihcflow.monitoring.sources import Table  # noqa: E402
from ihcflow.reporting.format import markdown_table  # noqa: E402

DATASETS = REPO.parent / "shared" / "datasets"
SIZE = 28  # the analysis size: the model's input
CROP = 200  # BloodMNIST's centre crop of the ~360 px originals
WINDOWS = (50, 200, 500)
DETECT_AT = 200
SHIFTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "darker": lambda x: scale_brightness(x, 0.9),
    "blurred": lambda x: cv2.GaussianBlur(x, (0, 0), 0.7 * x.shape[0] / SIZE),
    "hematoxylin x1.3": lambda x: scale_stain(x, "hematoxylin", 1.3),
}
MISFRAMED = "mis-framed"
# other rules judged on the same draws: (label, p-value threshold, drift share)
RULES = (
    ("p < 0.05, share >= 0.5 (Evidently's defaults)", 0.05, 0.5),
    ("p < 0.05, share >= 0.25", 0.05, 0.25),
    ("p < 0.01, share >= 0.25", 0.01, 0.25),
    ("p < 0.01, share >= 0.3", 0.01, 0.3),
    ("any column at p < 0.01 / columns (Bonferroni)", None, 0.0),
)


def centre_crop(rgb: np.ndarray, side: int = CROP) -> np.ndarray:
    h, w = rgb.shape[:2]
    side = min(side, h, w)
    y, x = (h - side) // 2, (w - side) // 2
    return rgb[y : y + side, x : x + side]


def bicubic(rgb: np.ndarray, size: int = SIZE) -> np.ndarray:
    """PIL bicubic, as MedMNIST (and pbc28-trainval.npz) made the 28 px images."""
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BICUBIC))


def feature_rows(images: Sequence[np.ndarray]) -> np.ndarray:
    return np.array([list(image_features(x, SIZE).values()) for x in images])


@dataclass
class Source:
    """A data set: the reference pool and the window pool (features per image, as measured),
    the window pool under each shift, and how many reference rows a draw takes."""

    name: str
    reference: np.ndarray  # (N_ref_pool, F)
    windows: dict[str, np.ndarray]  # "same" and each shift: (N_win_pool, F)
    n_reference: int
    disjoint_pools: bool  # False: one pool, split at random per draw (pbc-sample)
    ood_flags: dict[str, np.ndarray] = field(default_factory=dict)  # per window kind


def pbc_sample(folder: Path) -> tuple[list[Source], dict[str, Any]]:
    files = sorted(folder.glob("*/*.jpg"))
    originals = [read_rgb8(p)[0] for p in files]
    crops = [centre_crop(x) for x in originals]
    stored = [bicubic(c) for c in crops]  # what the pipeline trained on (pbc28's recipe)
    windows = {"same": feature_rows(crops), MISFRAMED: feature_rows(originals)}
    for name, shift in SHIFTS.items():
        windows[name] = feature_rows([shift(c) for c in crops])
    # the reference as the pipeline makes it from the crops (its own resize) ...
    pipeline = Source("pbc-sample", windows["same"], windows, 300, disjoint_pools=False)
    # ... and from pbc28's 28 px images (PIL bicubic, made outside the pipeline)
    offline = Source("pbc-sample, pbc28-made reference", feature_rows(stored), windows, 300, False)
    names = [f"{p.parent.name}/{p.name}" for p in files]
    sample = {"crops": crops, "originals": originals, "names": names}
    return [pipeline, offline], sample


def pbc28(path: Path, n_reference: int = 2000) -> tuple[Source, dict[str, Any]]:
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    train, val = list(arrays["train_images"]), list(arrays["val_images"])
    windows = {"same": feature_rows(val)}
    for name, shift in SHIFTS.items():
        windows[name] = feature_rows([shift(x) for x in val])
    return Source("pbc28", feature_rows(train), windows, n_reference, disjoint_pools=True), arrays


def synthetic(n: int) -> Source:
    """Generated blood-cell-like images (tests): a disjoint reference and window pool."""
    from tests.helpers.data import toy_image

    rng = np.random.default_rng(0)
    images = [cv2.resize(toy_image(i % 4, 4, 64, rng), (96, 96)) for i in range(n)]
    half = n // 2
    windows = {"same": feature_rows(images[half:])}
    for name, shift in SHIFTS.items():
        windows[name] = feature_rows([shift(x) for x in images[half:]])
    windows[MISFRAMED] = feature_rows([x[16:80, 16:80] for x in images[half:]])
    return Source("synthetic", feature_rows(images[:half]), windows, half, disjoint_pools=True)


# ------------------------------------------------------------------------------ the draws


def draw(source: Source, kind: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """(reference rows, window rows) indices for one draw."""
    if source.disjoint_pools:
        ref = rng.choice(len(source.reference), source.n_reference, replace=False)
        cur = rng.choice(len(source.windows[kind]), n, replace=False)
        return ref, cur
    order = rng.permutation(len(source.reference))
    return order[: source.n_reference], order[source.n_reference : source.n_reference + n]


def run_cell(source: Source, kind: str, n: int, draws: int, params: DriftParams, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    flagged, others, columns = 0, np.zeros(len(RULES), int), pd.Series(0, index=FEATURE_COLUMNS)
    ood_shares = []
    for _ in range(draws):
        ref_rows, cur_rows = draw(source, kind, n, rng)
        reference = Table(
            pd.DataFrame(source.reference[ref_rows], columns=FEATURE_COLUMNS), None, "ref", "r"
        )
        current = Table(
            pd.DataFrame(source.windows[kind][cur_rows], columns=FEATURE_COLUMNS), None, "cur", "c"
        )
        result = compare(reference, current, params)
        flagged += result.status == "drift"
        p = np.array([c.score if c.score is not None else 1.0 for c in result.columns])
        for i, (_, alpha, share) in enumerate(RULES):
            if alpha is None:
                others[i] += bool((p < params.p_value / len(p)).any())
            else:
                others[i] += (p < alpha).mean() >= share
        for c in result.drifted_columns:
            columns[c] += 1
        if kind in source.ood_flags:
            ood_shares.append(float(source.ood_flags[kind][cur_rows].mean()))
    top = columns[columns > 0].sort_values(ascending=False).head(4)
    return {
        "source": source.name,
        "window": kind,
        "rows": n,
        "reference_rows": source.n_reference,
        "draws": draws,
        "flagged": flagged / draws,
        "rules": {label: int(k) / draws for (label, _, _), k in zip(RULES, others, strict=True)},
        "columns_most_drifted": {str(k): int(v) / draws for k, v in top.items()},
        "ood_flagged_mean": float(np.mean(ood_shares)) if ood_shares else None,
    }


def evaluate(sources: Sequence[Source], draws: int, params: DriftParams) -> list[dict]:
    cells = []
    for source in sources:
        pool = len(source.reference) if not source.disjoint_pools else None
        for kind in source.windows:
            for n in WINDOWS:
                available = len(source.windows[kind]) if pool is None else pool - source.n_reference
                if n > available:
                    continue
                start = time.perf_counter()
                seed = zlib.crc32(f"{source.name}/{kind}/{n}".encode())  # the same every run
                cell = run_cell(source, kind, n, draws, params, seed=seed)
                cell["seconds"] = round(time.perf_counter() - start, 1)
                cells.append(cell)
                print(
                    f"  {source.name:<10} {kind:<17} {n:>4} rows: flagged {cell['flagged']:.3f} "
                    f"({cell['seconds']} s)",
                    flush=True,
                )
    return cells


def verdicts(cells: Sequence[dict]) -> list[str]:
    """The goals: <= 5% false alarms at every size; >= 95% detection of each shift at 200."""
    out = []
    for c in cells:
        if c["window"] == "same" and c["flagged"] > 0.05:
            out.append(f"{c['source']} {c['rows']} rows: {c['flagged']:.1%} false alarms > 5%")
        if c["window"] != "same" and c["rows"] == DETECT_AT and c["flagged"] < 0.95:
            out.append(f"{c['source']} {c['window']} at {DETECT_AT}: {c['flagged']:.1%} < 95%")
    return out


def table(cells: Sequence[dict]) -> str:
    labels = [label for label, _, _ in RULES]
    rows = [
        [
            c["source"],
            "same distribution" if c["window"] == "same" else c["window"],
            c["rows"],
            f"{c['flagged']:.2f}",
            *[f"{c['rules'][label]:.2f}" for label in labels],
            "n/a" if c["ood_flagged_mean"] is None else f"{c['ood_flagged_mean']:.2f}",
            ", ".join(c["columns_most_drifted"]),
        ]
        for c in cells
    ]
    head = ["data", "window", "rows", "flagged (p < 0.01, share >= 0.2)"]
    head += labels + ["OOD flagged (mean)", "columns drifted most often"]
    align = "llr" + "r" * (len(labels) + 2) + "l"
    return "\n".join(markdown_table(head, [[str(v) for v in r] for r in rows], align))


# ------------------------------------------------------------------------------------- OOD


# Bump when train_cnn learns otherwise: a --weights cache records it and is retrained on change.
CNN_RECIPE = "one-cycle 4e-3, batch 128, flips + quarter turns"


def train_cnn(images: np.ndarray, labels: np.ndarray, epochs: int, seed: int = 0) -> Any:
    """A CompactCNN (the pipeline's cnn) trained on CPU with the pipeline's flips and quarter
    turns (no Lightning, no stain jitter, no label smoothing); returns it in eval mode."""
    import torch
    from torch import nn

    from ihcflow.training.networks import CompactCNN

    torch.manual_seed(seed)
    net = CompactCNN(num_classes=int(labels.max()) + 1, input_size=images.shape[1])
    x = torch.from_numpy(to_input(images))
    y = torch.from_numpy(labels.astype(np.int64))
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * ((len(x) + 127) // 128)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 4e-3, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    net.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for i in range(0, len(x), 128):
            batch = order[i : i + 128]
            xb = x[batch]
            # the pipeline's geometric augmentation: flips and quarter turns (a cell has no
            # orientation); one draw per batch for the turn, per image for the flips
            for dim in (-1, -2):
                flip = torch.rand(len(xb), generator=generator) < 0.5
                xb = torch.where(flip[:, None, None, None], xb.flip(dim), xb)
            turns = int(torch.randint(4, (1,), generator=generator))
            xb = torch.rot90(xb, turns, dims=(-2, -1))
            optimizer.zero_grad()
            loss = loss_fn(net(xb), y[batch])
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(batch)
        print(f"    epoch {epoch + 1}/{epochs}: loss {total / len(x):.3f}", flush=True)
    return net.eval()


def to_input(images: np.ndarray) -> np.ndarray:
    return (np.asarray(images, np.float32).transpose(0, 3, 1, 2) / 255.0 - 0.5) / 0.25


def embed(net: Any, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, predicted class) in batches."""
    import torch

    embs, preds = [], []
    with torch.no_grad():
        for i in range(0, len(images), 512):
            x = torch.from_numpy(to_input(images[i : i + 512]))
            e = net.features(x)
            embs.append(e.numpy())
            preds.append(net.head(e).argmax(1).numpy())
    return np.concatenate(embs), np.concatenate(preds)


GATE = OmegaConf.load(REPO / "conf" / "gate" / "default.yaml")  # the register stage's defaults
GRID_COMPONENTS = (16, 32, 64, 128)
GRID_QUANTILES = (0.95, 0.97, 0.98, 0.99)


def ood_benchmark(
    arrays: dict[str, Any],
    sample: dict[str, Any],
    epochs: int,
    quantile: float,
    components: int,
    zoom: float,
    weights: Path | None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Train (or load ``weights``), fit and calibrate the OOD scorer as the register stage
    does (with the framing check at ``zoom``), and measure the flagged shares; also, distance
    check only, over a grid of quantiles and components."""
    import torch

    from ihcflow.ood import fit_ood

    held_out = set(sample["names"])  # never trained or calibrated on
    keep_train = np.array([str(n) not in held_out for n in arrays["train_filenames"]])
    keep_val = np.array([str(n) not in held_out for n in arrays["val_filenames"]])
    train_x, train_y = arrays["train_images"][keep_train], arrays["train_labels"][keep_train, 0]
    val_x, val_y = arrays["val_images"][keep_val], arrays["val_labels"][keep_val, 0]
    start = time.perf_counter()
    # what the weights depend on: a cache trained otherwise is trained again, not reused
    seed = 0
    key = {"recipe": CNN_RECIPE, "epochs": epochs, "train_images": len(train_x), "seed": seed}
    cached = torch.load(weights, weights_only=True) if weights and weights.is_file() else None
    if isinstance(cached, dict) and cached.get("key") == key:
        from ihcflow.training.networks import CompactCNN

        net = CompactCNN(num_classes=int(train_y.max()) + 1, input_size=SIZE)
        net.load_state_dict(cached["state_dict"])
        net.eval()
        print(f"  loaded {weights}")
    else:
        if cached is not None:
            found = cached.get("key") if isinstance(cached, dict) else None
            print(f"  {weights}: trained otherwise ({found or 'no settings recorded'})")
        print(f"  training a CompactCNN on {len(train_x)} pbc28 images ({epochs} epochs, CPU)")
        net = train_cnn(train_x, train_y, epochs, seed)
        if weights is not None:
            weights.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"key": key, "state_dict": net.state_dict()}, weights)
    seconds = time.perf_counter() - start
    train_e, _ = embed(net, train_x)
    val_e, val_pred = embed(net, val_x)
    classes = [str(c) for c in arrays["class_names"]]
    # uploads as the server prepares them: decoded, resized to 28 px (area)
    labels = np.array([classes.index(n.split("/")[0]) for n in sample["names"]])
    uploads = {"centre crops": sample["crops"], "full frames": sample["originals"]}
    uploads.update({n: [shift(c) for c in sample["crops"]] for n, shift in SHIFTS.items()})

    def shrunk(images: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack([resize(x, SIZE, "area") for x in images])

    embedded = {name: embed(net, shrunk(images)) for name, images in uploads.items()}
    # the framing check's second view: the centre of the upload (full resolution), as the
    # server prepares it; of the 28 px validation images, resized back up (register stage)
    zoomed_e = {
        name: embed(net, shrunk([centre_zoom(x, zoom) for x in images]))[0]
        for name, images in uploads.items()
    }
    val_zoomed, _ = embed(
        net, np.stack([resize(centre_zoom(x, zoom), SIZE, "linear") for x in val_x])
    )
    grid = []
    for k in GRID_COMPONENTS:
        fitted = fit_ood(train_e, train_y, len(classes), k)
        for q in GRID_QUANTILES:
            scorer = fitted.calibrated(val_e, q)
            shares = {
                n: float(scorer.flags(scorer.scores(e)).mean()) for n, (e, _) in embedded.items()
            }
            grid.append({"components": k, "quantile": q, **shares})
    fitted = fit_ood(train_e, train_y, len(classes), components)
    distance_only = fitted.calibrated(val_e, quantile)
    scorer = fitted.calibrated(val_e, quantile, val_zoomed, zoom)
    out: dict[str, Any] = {
        "train_images": int(len(train_x)),
        "train_seconds": round(seconds, 1),
        "epochs": epochs,
        "quantile": quantile,
        "components": components,
        "threshold": scorer.threshold,
        "framing zoom": zoom,
        "framing threshold": scorer.zoom_threshold,
        "val flagged": float(scorer.assess(val_e, val_zoomed).flags.mean()),
        "val_images": int(len(val_x)),
        "val_accuracy": float((val_pred == val_y).mean()),
        "grid": grid,
    }
    out["content features (experiment)"] = content_check(
        distance_only, (train_x, train_y), (val_x, val_e, val_pred), sample, embedded, len(classes)
    )
    out["uploads resized otherwise (experiment)"] = other_resizes(
        net, distance_only, sample, labels
    )
    flags: dict[str, np.ndarray] = {}
    for name, (emb, pred) in embedded.items():
        judged = scorer.assess(emb, zoomed_e[name])
        flags[name] = judged.flags
        out[name] = {
            "images": len(emb),
            "flagged": float(judged.flags.mean()),
            "misframed": float(np.mean(judged.misframed)),
            "flagged without the framing check": float(
                distance_only.flags(distance_only.scores(emb)).mean()
            ),
        }
        if name in ("centre crops", "full frames"):
            out[name]["accuracy"] = float((pred == labels).mean())
    return out, flags


def other_resizes(net: Any, scorer: Any, sample: dict, labels: np.ndarray) -> dict[str, Any]:
    """Not in the server: the uploads resized to 28 px by PIL bicubic (as pbc28's training
    images were made) and by OpenCV's one-step INTER_AREA instead of
    :func:`ihcflow.images.ops.resize`: crop accuracy and flagged shares."""
    resizers: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "PIL bicubic": bicubic,
        "cv2 INTER_AREA": lambda x: cv2.resize(x, (SIZE, SIZE), interpolation=cv2.INTER_AREA),
    }
    out: dict[str, Any] = {}
    for method, fn in resizers.items():
        crops, predicted = embed(net, np.stack([fn(x) for x in sample["crops"]]))
        frames, _ = embed(net, np.stack([fn(x) for x in sample["originals"]]))
        out[method] = {
            "centre crops accuracy": float((predicted == labels).mean()),
            "centre crops": float(scorer.flags(scorer.scores(crops)).mean()),
            "full frames": float(scorer.flags(scorer.scores(frames)).mean()),
        }
    return out


def content_check(
    scorer: Any,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray, np.ndarray],
    sample: dict,
    embedded: dict,
    n_classes: int,
) -> dict[str, dict[str, float]]:
    """Not in the server: a second score on the content features the server already measures
    per upload (:func:`~ihcflow.images.features.image_features` at 28 px; sharpness as
    log(1 + x)), standardised on the training images: pooled Mahalanobis, nearest class
    (:func:`ihcflow.ood.fit_ood`, full covariance) and the predicted class's. Each alone
    (threshold at the 0.95 quantile of the validation images) and OR-combined with the
    embedding score, both thresholds at one validation quantile q, the largest that keeps the
    validation flag rate <= 5%."""
    from ihcflow.ood import fit_ood

    (train_x, train_y), (val_x, val_e, val_pred) = train, val

    def rows(images: Sequence[np.ndarray]) -> np.ndarray:
        x = feature_rows(images)
        x[:, FEATURE_COLUMNS.index("sharpness")] = np.log1p(
            x[:, FEATURE_COLUMNS.index("sharpness")]
        )
        return x

    feats = {"val": rows(list(val_x))}
    feats["centre crops"], feats["full frames"] = rows(sample["crops"]), rows(sample["originals"])
    reference = rows(list(train_x))
    mean, std = reference.mean(axis=0), reference.std(axis=0)
    z = {k: (v - mean) / std for k, v in feats.items()}
    inverse = np.linalg.pinv(np.cov(((reference - mean) / std).T))
    per_class = fit_ood((reference - mean) / std, train_y, n_classes, len(FEATURE_COLUMNS))
    preds = {"val": val_pred, **{k: embedded[k][1] for k in ("centre crops", "full frames")}}

    def predicted_class(name: str) -> np.ndarray:
        out = np.empty(len(z[name]))
        for k in range(n_classes):
            rows_k = preds[name] == k
            if rows_k.any():
                one = type(per_class)(
                    *(
                        a[k : k + 1]
                        for a in (
                            per_class.means,
                            per_class.bases,
                            per_class.variances,
                            per_class.residuals,
                        )
                    )
                )
                out[rows_k] = one.scores(z[name][rows_k])
        return out

    methods: dict[str, Callable[[str], np.ndarray]] = {
        "pooled": lambda n: np.sqrt(np.einsum("ij,jk,ik->i", z[n], inverse, z[n])),
        "nearest class": lambda n: per_class.scores(z[n]),
        "predicted class": predicted_class,
    }
    embedding = {"val": scorer.scores(val_e)}
    embedding.update({k: scorer.scores(embedded[k][0]) for k in ("centre crops", "full frames")})
    out = {}
    for method, score in methods.items():
        content = {k: score(k) for k in feats}
        alone = np.quantile(content["val"], 0.95, method="higher")
        for q in np.linspace(0.95, 0.9999, 800):
            t_emb, t_con = np.quantile(embedding["val"], q), np.quantile(content["val"], q)
            if np.mean((embedding["val"] > t_emb) | (content["val"] > t_con)) <= 0.05:
                break
        out[method] = {"combined quantile": float(q)}
        for k in ("val", "centre crops", "full frames"):
            out[method][f"{k} alone"] = float((content[k] > alone).mean())
            out[method][f"{k} combined"] = float(
                ((embedding[k] > t_emb) | (content[k] > t_con)).mean()
            )
    return out


def ood_table(ood: dict[str, Any]) -> str:
    names = [k for k in ood["grid"][0] if k not in ("components", "quantile")]
    rows = [
        [str(g["components"]), f"{g['quantile']:g}", *[f"{g[n]:.3f}" for n in names]]
        for g in ood["grid"]
    ]
    head = ["components", "quantile", *[f"flagged (distance only): {n}" for n in names]]
    return "\n".join(markdown_table(head, rows, "rr" + "r" * len(names)))


# ------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=200, help="windows per cell")
    parser.add_argument("--datasets", type=Path, default=DATASETS)
    parser.add_argument("--synthetic", type=int, default=0, help="use N generated images instead")
    parser.add_argument("--ood", action="store_true", help="train a small CNN, measure OOD flags")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument(
        "--quantile", type=float, default=GATE.ood_quantile, help="default: gate.ood_quantile"
    )
    parser.add_argument("--components", type=int, default=16, help="OOD covariance axes")
    parser.add_argument(
        "--framing-zoom",
        type=float,
        default=GATE.ood_framing_zoom,
        help="default: gate.ood_framing_zoom",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument(
        "--weights", type=Path, default=None, help="the CNN's weights: loaded if there, else saved"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    params = DriftParams()
    start = time.perf_counter()
    results: dict[str, Any] = {
        "params": {"p_value": params.p_value, "drift_share": params.drift_share},
        "analysis_size": SIZE,
    }
    sources = []
    if args.synthetic:
        sources.append(synthetic(args.synthetic))
    else:
        sample_dir, npz = args.datasets / "pbc-sample", args.datasets / "pbc28-trainval.npz"
        if not sample_dir.is_dir() or not npz.is_file():
            print(f"skipped: needs {sample_dir} and {npz} (the shared real data sets)")
            return 0
        print("measuring the images ...", flush=True)
        sample_sources, sample = pbc_sample(sample_dir)
        pbc28_source, arrays = pbc28(npz)
        sources += [pbc28_source, *sample_sources]
        if args.ood:
            print("OOD:", flush=True)
            ood, flags = ood_benchmark(
                arrays,
                sample,
                args.epochs,
                args.quantile,
                args.components,
                args.framing_zoom,
                args.weights,
            )
            results["ood"] = ood
            for source in sample_sources:
                source.ood_flags = {"same": flags["centre crops"], MISFRAMED: flags["full frames"]}
                source.ood_flags.update({k: flags[k] for k in SHIFTS})
            print(json.dumps({k: v for k, v in ood.items() if k != "grid"}, indent=1))
            print(ood_table(ood))
    print(f"drift windows ({args.draws} draws per cell):", flush=True)
    cells = evaluate(sources, args.draws, params)
    results["cells"] = cells
    results["goals_missed"] = verdicts(cells)
    results["seconds"] = round(time.perf_counter() - start, 1)
    print()
    print(table(cells))
    print()
    if results["goals_missed"]:
        print("goals missed: " + "; ".join(results["goals_missed"]))
    else:
        print("goals met: <= 5% false alarms at every window size, >= 95% detection at 200 rows")
    if args.json:
        write_json_atomic(args.json, results)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
