"""Per-request out-of-distribution flags of a *registered* model on real images it never saw:
``pbc-sample`` centre crops (framed as the training images: in distribution) against the same
files' full frames (mis-framed), through the server's own path.

Issue #11's goal: flag >= 90% of the mis-framed images while flagging <= 5% of in-distribution
images. Each upload goes through :meth:`ihcflow.serving.model.ServedModel.prepare` and
:meth:`~ihcflow.serving.model.ServedModel.judge`, the code behind ``/predict``: the full frame
as the original JPEG's bytes, the crop (the centre 200 px of the ~360 px frame, MedMNIST's
BloodMNIST recipe) as a lossless PNG of the decoded pixels.

The model must not have been trained or calibrated on these 800 images, which are part of
``pbc28-trainval.npz``. ``--make-npz OUT`` writes that archive without them, with a stratified
20% test split carved from its training split (MedMNIST format, class names kept); train and
register the ``pbc28`` preset on it, then measure:

    python benchmarks/misframed.py --make-npz pbc28-unseen.npz
    python benchmarks/experiment.py --data pbc28-unseen.npz --keep  # -> CLONE
    python benchmarks/misframed.py --model-dir CLONE/models --project CLONE --json out.json

``--project`` also sends that project's test split (``processed/split.csv``: the preprocessed
28 px images, as PNG) through the same path: in distribution too.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src")]
from ihcflow.files import write_json_atomic  # noqa: E402
from ihcflow.images.codec import encode_png, read_rgb8  # noqa: E402
from ihcflow.images.ops import centre_zoom  # noqa: E402
from ihcflow.reporting.format import markdown_table  # noqa: E402
from ihcflow.serving.model import ServedModel  # noqa: E402

DATASETS = REPO.parent / "shared" / "datasets"
CROP = 200  # px: BloodMNIST's centre crop of the ~360 px originals
MAX_PIXELS = 50_000_000
BATCH = 32


def make_npz(source: Path, sample: Path | None, out: Path, seed: int = 11) -> dict[str, int]:
    """``source`` (pbc28-trainval.npz) without ``sample``'s files (None: all of it), a
    stratified 20% of its training split carved out as the test split."""
    held_out = (
        set() if sample is None else {f"{p.parent.name}/{p.name}" for p in sample.glob("*/*.jpg")}
    )
    with np.load(source, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    parts: dict[str, np.ndarray] = {"class_names": arrays["class_names"]}
    for split in ("train", "val"):
        keep = np.array([str(n) not in held_out for n in arrays[f"{split}_filenames"]])
        parts[f"{split}_images"] = arrays[f"{split}_images"][keep]
        parts[f"{split}_labels"] = arrays[f"{split}_labels"][keep].reshape(-1, 1)
    labels = parts["train_labels"][:, 0]
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), bool)
    for k in np.unique(labels):
        idx = np.flatnonzero(labels == k)
        test[rng.permutation(idx)[: round(0.2 * len(idx))]] = True
    for name in ("images", "labels"):
        train = parts[f"train_{name}"]
        parts[f"test_{name}"], parts[f"train_{name}"] = train[test], train[~test]
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **parts)
    return {s: int(len(parts[f"{s}_labels"])) for s in ("train", "val", "test")}


def uploads(sample: Path) -> tuple[list[str], dict[str, list[bytes]]]:
    """Class per file, and the bytes sent: full frames (the JPEGs) and centre crops (PNG)."""
    files = sorted(sample.glob("*/*.jpg"))
    crops = []
    for path in files:
        rgb = read_rgb8(path)[0]
        crops.append(encode_png(np.ascontiguousarray(centre_zoom(rgb, CROP / min(rgb.shape[:2])))))
    frames = [p.read_bytes() for p in files]
    return [p.parent.name for p in files], {"centre crops": crops, "full frames": frames}


def test_split(project: Path) -> tuple[list[str], list[bytes]]:
    """Class per image and the PNG bytes of ``project``'s test split."""
    split = pd.read_csv(project / "processed" / "split.csv")
    test = split[split["split"] == "test"]
    return test["class"].astype(str).tolist(), [(project / i).read_bytes() for i in test["image"]]


def measure(model: ServedModel, classes: list[str], sent: list[bytes]) -> dict[str, Any]:
    probs, scores, flags, misframed = [], [], [], []
    for i in range(0, len(sent), BATCH):
        prepared = [
            model.prepare(data, f"image {i + j}", max_pixels=MAX_PIXELS)
            for j, data in enumerate(sent[i : i + BATCH])
        ]
        judged = model.judge(prepared)
        if judged.ood is None:
            raise SystemExit(f"model {model.name} {model.version} has no ood section")
        probs.append(judged.probs)
        scores.append(judged.ood.scores)
        flags.append(judged.ood.flags)
        if judged.ood.misframed is not None:
            misframed.append(judged.ood.misframed)
    predicted = [model.class_names[k] for k in np.concatenate(probs).argmax(1)]
    out: dict[str, Any] = {
        "images": len(sent),
        "accuracy": float(np.mean([p == c for p, c in zip(predicted, classes, strict=True)])),
        "flagged": float(np.concatenate(flags).mean()),
        "distance over threshold": float(
            (np.concatenate(scores) > model.ood.threshold).mean()  # type: ignore[union-attr]
        ),
    }
    if misframed:
        out["misframed"] = float(np.concatenate(misframed).mean())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="a registered model (model.json + onnx)")
    parser.add_argument("--sample", type=Path, default=DATASETS / "pbc-sample")
    parser.add_argument("--make-npz", type=Path, help="write pbc28 without the sample's files")
    parser.add_argument("--source", type=Path, default=DATASETS / "pbc28-trainval.npz")
    parser.add_argument(
        "--keep-sample",
        action="store_true",
        help="--make-npz keeps the sample's files: all of pbc28 with a carved test split, for "
        "tuning the preset (not for this measurement)",
    )
    parser.add_argument("--seed", type=int, default=11, help="of the carved test split")
    parser.add_argument("--project", type=Path, help="also its test split (processed/split.csv)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if not args.sample.is_dir():
        print(f"skipped: needs {args.sample} (the shared real images)")
        return 0
    if args.make_npz:
        sample = None if args.keep_sample else args.sample
        counts = make_npz(args.source, sample, args.make_npz, args.seed)
        print(f"wrote {args.make_npz}: {counts}")
        return 0
    if args.model_dir is None:
        parser.error("--model-dir or --make-npz is needed")
    model = ServedModel.load(args.model_dir)
    classes, sent = uploads(args.sample)
    unknown = sorted(set(classes) - set(model.class_names))
    if unknown:
        raise SystemExit(f"the model's classes {model.class_names} lack {unknown}")
    start = time.perf_counter()
    results = {kind: measure(model, classes, data) for kind, data in sent.items()}
    if args.project:
        results["test split"] = measure(model, *test_split(args.project))
    summary = {
        "model": {"name": model.name, "version": model.version, **model.ood_summary()},
        "results": results,
        "seconds": round(time.perf_counter() - start, 1),
    }
    keys = ["images", "accuracy", "flagged", "distance over threshold", "misframed"]
    rows = [
        [kind, str(r["images"]), *(f"{r[k]:.1%}" if k in r else "" for k in keys[1:])]
        for kind, r in results.items()
    ]
    print(f"{model.name} {model.version}, framing check: {model.ood_summary().get('framing')}")
    print("\n".join(markdown_table(["uploads", *keys], rows, "lrrrrr")))
    inside = [r["flagged"] for kind, r in results.items() if kind != "full frames"]
    met = max(inside) <= 0.05 and results["full frames"]["flagged"] >= 0.90
    print(
        "goal (in distribution <= 5%, full frames >= 90% flagged): " + ("met" if met else "missed")
    )
    if args.json:
        write_json_atomic(args.json, summary)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
