"""Benchmark nuclei segmentation on CPU: training speed, inference per megapixel, memory.

    .venv/bin/python benchmarks/segmentation.py [--cpus 2] [--tiles 8] [--patches 960]
                                                [--image 2000] [--big 4000] [--repeats 3]

Uses the pipeline's own code and config (``conf/segmentation``, ``params.yaml``):

1. training: ``fit_segmentation`` on generated nuclei tiles (the built-in sample's renderer)
   for ``--patches`` random patches of ``segmentation.train.patch`` px, timed by the train
   summary: patches/s and megapixels/s of training;
2. inference: the trained network exported with the pipeline's ``export_onnx``, run over an
   ``--image`` x ``--image`` tile by the sliding window (``segmentation.tiling``) through torch
   eager (``inference_mode``) and through ONNX Runtime, both with ``--cpus`` threads, taking
   turns ``--repeats`` times: seconds per megapixel (median), and the post-processing's share;
3. memory: a fresh process segments a ``--big`` x ``--big`` image end to end with ONNX Runtime
   (decode excluded: the image is generated in it) and reports its peak resident memory, beside
   one for a 1000 x 1000 image and one that only loads the model: what tiling bounds is the
   network's share (the window batch), so the growth with image size is the per-pixel
   probability maps, labels and the image itself. ``--memory-only MODEL`` runs this part alone
   with a registered model.

Everything runs on ``--cpus`` cores (this process's affinity, inherited by its children).
Figures come from a shared machine: rerun before comparing. Also writes
``benchmarks/out/segmentation.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]  # ihcflow, and tests.helpers for generated data


def _params(overrides: list[str]) -> Any:
    from omegaconf import OmegaConf

    from ihcflow.config import load_params

    params = load_params(ROOT / "params.yaml")
    return OmegaConf.merge(params, OmegaConf.from_dotlist(overrides))


def big_image(size: int, seed: int = 0) -> np.ndarray:
    """A ``size`` px square of generated nuclei tiles (448 px each, mirrored to fill)."""
    from ihcflow.data.synth import render_image

    tile = render_image("Ki-67", seed, patients=10, size=448)  # the nuclei sample's tiles
    reps = -(-size // 448)
    row = np.concatenate([tile, tile[:, ::-1]] * (reps // 2 + 1), axis=1)
    grid = np.concatenate([row, row[::-1]] * (reps // 2 + 1), axis=0)
    return np.ascontiguousarray(grid[:size, :size])


def train(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from ihcflow.segmentation.fit import fit_segmentation
    from tests.helpers.data import write_nuclei_split

    write_nuclei_split(work, images=args.tiles, patients=max(2, args.tiles // 2), size=448)
    params = _params(
        [
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            "segmentation.train.epochs=1",
            f"segmentation.train.patches_per_epoch={args.patches}",
            "segmentation.train.val_patches=4",
        ]
    )
    summary = fit_segmentation(
        params,
        split_csv=work / "split.csv",
        root=work / "nuclei",
        ckpt_dir=work / "ckpt",
        live_dir=work / "live",
    )
    patch = int(summary["patch"])
    per_s = float(summary["train_images_per_s"])
    return {
        "patch": patch,
        "batch_size": int(params.segmentation.train.batch_size),
        "patches": args.patches,
        "train_time_s": summary["train_time_s"],
        "patches_per_s": per_s,
        "megapixels_per_s": round(per_s * patch * patch / 1e6, 4),
        "data_wait_share": summary["data_wait_share"],
    }


def _onnx_runner(path: Path, threads: int) -> Any:
    """The server's session (``model_format.onnx_session``) behind the tiling's runner."""
    from ihcflow.model_format import onnx_session
    from ihcflow.segmentation.inference import OnnxSessionRunner

    return OnnxSessionRunner(onnx_session(path, threads=threads))


def inference(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from ihcflow.segmentation.instances import to_annotation
    from ihcflow.segmentation.params import postprocess_params, tiling_params
    from ihcflow.segmentation.predictor import load_seg_predictor
    from ihcflow.segmentation.tiling import predict_tiled

    torch.set_num_threads(args.cpus)
    params = _params([])
    tiling, post = tiling_params(params), postprocess_params(params)
    predictor = load_seg_predictor(work / "ckpt" / "best.ckpt")
    predictor.export_onnx(work / "model.onnx")
    runners = {"torch": predictor.runner(), "onnx": _onnx_runner(work / "model.onnx", args.cpus)}
    image = big_image(args.image)
    mp = image.shape[0] * image.shape[1] / 1e6
    times: dict[str, list[float]] = {name: [] for name in runners}
    post_times: list[float] = []
    kwargs = {"roi": tiling.roi, "overlap": tiling.overlap, "batch": tiling.batch}
    for runner in runners.values():  # warm-up
        predict_tiled(image[: tiling.roi, : tiling.roi], runner, **kwargs)
    for _ in range(args.repeats):
        for name, runner in runners.items():
            t0 = time.perf_counter()
            probs = predict_tiled(image, runner, mode=tiling.blend, **kwargs)
            times[name].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ann = to_annotation(probs, post)
        post_times.append(time.perf_counter() - t0)
    out = {f"{name}_s_per_mp": round(statistics.median(t) / mp, 3) for name, t in times.items()}
    out["onnx_over_torch"] = round(out["onnx_s_per_mp"] / out["torch_s_per_mp"], 3)
    out["postprocess_s_per_mp"] = round(statistics.median(post_times) / mp, 3)
    out["image_px"] = args.image
    out["nuclei_found"] = ann.count
    out["roi"], out["overlap"], out["window_batch"] = tiling.roi, tiling.overlap, tiling.batch
    return out


def _peak_child(work: Path, size: int, cpus: int) -> dict[str, float]:
    """Peak RSS (MiB) of a fresh process segmenting a ``size`` px image (0: load only)."""
    cmd = [sys.executable, __file__, "--child", str(size), "--work", str(work), "--cpus", str(cpus)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM). Not ``ru_maxrss``: Linux keeps that across
    exec, so a child started by this (torch-loaded) process would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def child(work: Path, size: int, cpus: int) -> None:
    from ihcflow.config import load_params
    from ihcflow.segmentation.inference import segment
    from ihcflow.segmentation.params import postprocess_params, tiling_params

    params = load_params(ROOT / "params.yaml")
    tiling, post = tiling_params(params), postprocess_params(params)
    runner = _onnx_runner(work / "model.onnx", cpus)
    result: dict[str, float] = {}
    if size:
        image = big_image(size)
        t0 = time.perf_counter()
        seg = segment(image, runner, tiling, post)
        result["seconds"] = round(time.perf_counter() - t0, 2)
        result["nuclei"] = seg.annotation.count
    result["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(result))


def memory(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    base = _peak_child(work, 0, args.cpus)
    small = _peak_child(work, 1000, args.cpus)
    big = _peak_child(work, args.big, args.cpus)
    grown = big["peak_rss_mib"] - small["peak_rss_mib"]
    extra_px = args.big**2 - 1000**2
    return {
        "model_loaded_mib": base["peak_rss_mib"],
        "peak_1000px_mib": small["peak_rss_mib"],
        f"peak_{args.big}px_mib": big["peak_rss_mib"],
        f"seconds_{args.big}px": big["seconds"],
        "bytes_per_extra_pixel": round(grown * 2**20 / extra_px, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--tiles", type=int, default=8, help="generated training tiles (448 px)")
    parser.add_argument("--patches", type=int, default=960, help="training patches timed")
    parser.add_argument("--image", type=int, default=2000, help="inference tile side (px)")
    parser.add_argument("--big", type=int, default=4000, help="memory test image side (px)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/out/segmentation.json")
    parser.add_argument(
        "--memory-only",
        type=Path,
        help="only the memory test, with this model.onnx (e.g. models/segmentation/model.onnx)",
    )
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", r".*LeafSpec.*", FutureWarning)
    warnings.filterwarnings("ignore", r"`torch\.jit\.interface` is deprecated")
    if hasattr(os, "sched_setaffinity"):
        cores = sorted(os.sched_getaffinity(0))[: args.cpus]
        os.sched_setaffinity(0, cores)
    if args.child is not None:
        child(args.work, args.child, args.cpus)
        return
    report: dict[str, Any] = {"cpus": args.cpus}
    if args.memory_only is not None:
        with tempfile.TemporaryDirectory(prefix="seg-bench-") as tmp:
            shutil.copyfile(args.memory_only, Path(tmp) / "model.onnx")
            report["memory"] = memory(Path(tmp), args)
        print(f"memory: {json.dumps(report['memory'])}", flush=True)
        return
    with tempfile.TemporaryDirectory(prefix="seg-bench-") as tmp:
        work = Path(tmp)
        report["train"] = train(work, args)
        print(f"training: {json.dumps(report['train'])}", flush=True)
        report["inference"] = inference(work, args)
        print(f"inference: {json.dumps(report['inference'])}", flush=True)
        report["memory"] = memory(work, args)
        print(f"memory: {json.dumps(report['memory'])}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
