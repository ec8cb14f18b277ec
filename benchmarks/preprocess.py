"""Benchmark the preprocess stage against plain decoding, incremental runs and memory.

    .venv/bin/python benchmarks/preprocess.py [--n 2000] [--src DIR] [--workers W]
    .venv/bin/python benchmarks/preprocess.py --src ../shared/datasets/pbc-sample --experiment pbc28

Without ``--src`` it generates ``n`` (and later ``4 n``) realistic ~512x512 H-DAB images
(70% JPEG, 30% PNG) in a temporary folder; ``--src ../shared/datasets/pbc-sample`` uses real
JPEGs instead (cycled, each copy made distinct by a few trailing bytes). It prints:

- decode-only rate: read + ``cv2.imdecode`` of the same files, 1 process and W processes
  (warm pool: start-up is reported but not counted);
- full preprocess rate (cold cache, W workers, starting them included) and its ratio to the
  W-process decode rate (goal >= 0.9). The stage's workers fork from the server the decode
  pool started (one forkserver per process), so the stage pays for its workers, not that;
- how far the output is from the same steps on a full-size decode (without denoising, the
  stage decodes a JPEG at 1/2, 1/4 or 1/8 scale when that keeps >= 4x the model size): the
  model-input pixels and the drift features;
- a warm re-run and an incremental run with +1% new images, as a share of the full run
  (goal <= 0.05);
- peak RSS of the main process plus all its children at N and 4N images (should be flat);
- where the time goes: CPU ms per image for each step, one thread (robust on a busy machine).

Every process involved (this one, decode and stage workers) gets the same allocator setting
as the stage (:func:`ihcflow.images.prepare.tune_malloc`), so the comparison is like for like.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import psutil
from omegaconf import OmegaConf

from ihcflow.files import sha256_bytes
from ihcflow.images.codec import decode_rgb8, encode_png, jpeg_reduction
from ihcflow.images.features import FEATURE_COLUMNS, image_features
from ihcflow.images.ops import resize
from ihcflow.images.prepare import (
    decode_min_side,
    prepare_image,
    preprocess_image,
    tune_malloc,
)
from ihcflow.images.worker import PNG_LEVEL, publish
from ihcflow.preprocess import PreprocessParams, preprocess_dataset
from ihcflow.validation import validate_dataset

ROOT = Path(__file__).resolve().parents[1]
# Equivalence of the reduced-scale decode with a full-size one: JPEG quality 90 itself moves
# pixels by ~1-2 grey levels, a feature shift of 0.1 std is far inside the drift tests' reach.
PIXEL_TOLERANCE = 2.0
FEATURE_TOLERANCE = 0.1
CLASSES = ("Er", "Her2neu", "Pr", "Ki-67", "Histology")


# ---------------------------------------------------------------- test images
def _field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    f = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), sigma)
    return (f - f.min()) / (f.max() - f.min())


def _canvas(rng: np.random.Generator, side: int) -> np.ndarray:
    """A large H-DAB 'slide': nuclei (hematoxylin blobs), DAB-positive regions, stroma."""
    from skimage.color import hed2rgb  # here, so worker processes need not import skimage

    shape = (side, side)
    nuclei = np.zeros(shape, np.float32)
    for _ in range(side * side // 900):
        y, x = rng.integers(0, side, 2)
        axes = (int(rng.integers(4, 9)), int(rng.integers(4, 9)))
        cv2.ellipse(nuclei, (int(x), int(y)), axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
    nuclei = cv2.GaussianBlur(nuclei, (0, 0), 1.2)
    stroma = _field(rng, shape, 6)
    dab = np.clip(_field(rng, shape, 25) - 0.45, 0, None) * (0.5 + _field(rng, shape, 2))
    grain = rng.normal(0, 0.004, (*shape, 3)).astype(np.float32)
    stains = np.stack([0.12 * nuclei + 0.02 * stroma, 0.01 * stroma, 0.12 * dab], -1) + grain
    return (hed2rgb(np.clip(stains, 0, None)) * 255 + 0.5).astype(np.uint8)


def generate(folder: Path, n: int, seed: int, side: int = 512) -> list[Path]:
    """``n`` distinct ~side x side images cut from a few canvases, with scanner-like jitter."""
    rng = np.random.default_rng(seed)
    canvases = [_canvas(rng, 4 * side) for _ in range(3)]
    paths = []
    for i in range(n):
        canvas = canvases[i % len(canvases)]
        h, w = side + int(rng.integers(-16, 17)), side + int(rng.integers(-16, 17))
        y, x = rng.integers(0, canvas.shape[0] - h), rng.integers(0, canvas.shape[1] - w)
        crop = canvas[y : y + h, x : x + w]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        gain = rng.uniform(0.75, 1.1)  # brightness varies by scanner: some get corrected
        bgr = cv2.cvtColor(np.clip(crop * gain, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
        jpeg = rng.random() < 0.7
        path = folder / CLASSES[i % len(CLASSES)] / f"s{seed}_{i:06d}.{'jpg' if jpeg else 'png'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        params = [cv2.IMWRITE_JPEG_QUALITY, 90] if jpeg else [cv2.IMWRITE_PNG_COMPRESSION, 3]
        ok, buf = cv2.imencode(path.suffix, bgr, params)
        assert ok
        path.write_bytes(buf.tobytes())
        paths.append(path)
    return paths


def copy_real(src: Path, folder: Path, n: int, tag: str) -> list[Path]:
    """``n`` files from ``src`` (cycled), each made distinct by a few trailing bytes."""
    files = sorted(p for p in src.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if not files:
        raise SystemExit(f"{src}: no .jpg/.png images found")
    paths = []
    for i in range(n):
        source = files[i % len(files)]
        path = folder / source.parent.name / f"{tag}_{i:06d}{source.suffix.lower()}"
        path.parent.mkdir(parents=True, exist_ok=True)
        # bytes after the end of the image make every copy distinct (decoders ignore them)
        path.write_bytes(source.read_bytes() + f"copy {tag} {i}".encode())
        paths.append(path)
    return paths


# ---------------------------------------------------------------- measurements
class PeakRSS:
    """Samples the RSS of this process plus all its descendants (the workers)."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):  # a worker that just exited
                    total += proc.memory_info().rss
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _decode_chunk(paths: Sequence[str]) -> int:
    for path in paths:
        if cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR) is None:
            raise ValueError(f"{path}: cv2 cannot decode")
    return len(paths)


def _init_decoder() -> None:
    cv2.setNumThreads(1)  # as the stage's workers
    tune_malloc()


def _ready(_: int) -> int:
    time.sleep(0.05)  # long enough that every worker gets one
    return os.getpid()


def decode_rate(paths: Sequence[Path], workers: int) -> tuple[float, float]:
    """Images/s for read + cv2.imdecode, and the seconds it took to start the pool.

    With ``workers > 1`` the pool (same start method and chunking as the stage) is started and
    every worker has answered before the clock starts: the steady-state decode rate, which
    makes the preprocess/decode ratio conservative (the stage's own rate includes start-up).
    """
    names = [str(p) for p in paths]
    if workers <= 1:
        start = time.perf_counter()
        _decode_chunk(names)
        return len(names) / (time.perf_counter() - start), 0.0
    ctx = multiprocessing.get_context("forkserver")
    chunk = max(1, min(32, len(names) // (4 * workers)))
    t0 = time.perf_counter()
    with ProcessPoolExecutor(workers, ctx, initializer=_init_decoder) as pool:
        while len(set(pool.map(_ready, range(8 * workers)))) < workers:
            pass
        startup = time.perf_counter() - t0
        start = time.perf_counter()
        parts = [names[i : i + chunk] for i in range(0, len(names), chunk)]
        assert sum(pool.map(_decode_chunk, parts)) == len(names)
        rate = len(names) / (time.perf_counter() - start)
    return rate, startup


def run_stage(data: Path, out: Path, cache: Path, cfg, workers: int) -> tuple[dict, int]:
    manifest = validate_dataset(data).manifest  # the stage's real input
    with PeakRSS() as rss:
        _, stats = preprocess_dataset(manifest, data, out, cfg, cache_dir=cache, workers=workers)
    return stats, rss.peak


def profile(paths: Sequence[Path], cfg, out: Path, limit: int = 200) -> dict[str, float]:
    """CPU milliseconds per image for each step of the stage, one thread (robust to a busy
    machine), and a plain full-resolution ``cv2.imdecode`` of the same bytes. The output
    files go to a new folder ``out`` (kernel time: creating files costs 0.03-2 ms each on
    the development machine's ext4, depending on where the new folder lands)."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # as in a worker
    steps = ["plain cv2.imdecode, full size", "read + sha256", "decode_rgb8 (as the stage)"]
    steps += ["resize + image_features", "preprocess_image", "encode_png + sha256"]
    steps += ["write the PNG + link it into the cache"]
    totals = dict.fromkeys(steps, 0.0)
    sample = list(paths[:limit])
    min_side = decode_min_side(cfg)
    for i, path in enumerate(sample):
        t0 = time.process_time()
        data = path.read_bytes()
        sha256_bytes(data)
        t1 = time.process_time()
        rgb, info = decode_rgb8(data, str(path), strict=False, min_side=min_side)
        t2 = time.process_time()
        geometry = {"scale": jpeg_reduction(info, min_side), "source_hw": (info.height, info.width)}
        small = resize(rgb, cfg.size, cfg.interpolation, **geometry)  # type: ignore[arg-type]
        image_features(small, cfg.size, cfg.interpolation)
        t3 = time.process_time()
        image, _ = preprocess_image(rgb, cfg, resized=small, **geometry)  # type: ignore[arg-type]
        t4 = time.process_time()
        png = encode_png(image, PNG_LEVEL, fast=True)
        sha = sha256_bytes(png)
        t5 = time.process_time()
        cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        t6 = time.process_time()
        target = out / "images" / f"{sha}-{i}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "xb") as fh:
            fh.write(png)
        publish(str(target), str(out / "cache" / sha[:2] / f"{sha}-{i}.png"))
        t7 = time.process_time()
        for name, dt in zip(
            steps, (t6 - t5, t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t7 - t6), strict=True
        ):
            totals[name] += dt
    cv2.setNumThreads(threads)
    return {name: 1000 * total / len(sample) for name, total in totals.items()}


def equivalence(paths: Sequence[Path], cfg, limit: int = 300) -> dict[str, float]:
    """How far the stage's output (JPEGs decoded at reduced scale) is from the same steps on a
    full-size decode: |difference| of the model-input pixels (grey levels of 255: mean, 99.9th
    percentile, max) and of each content feature (largest, relative to that feature's spread
    over the images)."""
    pixels, feats = [], {True: [], False: []}
    for path in paths[:limit]:
        data = path.read_bytes()
        fast, full = (prepare_image(data, str(path), cfg, full_decode=f) for f in (False, True))
        pixels.append(np.abs(fast.image.astype(np.int16) - full.image.astype(np.int16)).ravel())
        for f, prepared in ((False, fast), (True, full)):
            feats[f].append([prepared.features[c] for c in FEATURE_COLUMNS])
    diff = np.concatenate(pixels)
    fast_f, full_f = np.array(feats[False]), np.array(feats[True])
    spread = np.maximum(full_f.std(axis=0), 1e-12)
    feature_shift = np.abs(fast_f - full_f).mean(axis=0) / spread
    worst = int(np.argmax(feature_shift))
    return {
        "mean": float(diff.mean()),
        "p999": float(np.percentile(diff, 99.9)),
        "max": float(diff.max()),
        "feature_shift": float(feature_shift[worst]),
        "feature": FEATURE_COLUMNS[worst],
    }


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="images in the base set")
    parser.add_argument("--src", type=Path, default=None, help="take images from this folder")
    parser.add_argument("--workers", type=int, default=0, help="0 = all cores, as the stage")
    parser.add_argument("--params", type=Path, default=ROOT / "conf/preprocess/default.yaml")
    parser.add_argument(
        "--experiment", help="apply conf/experiment/NAME.yaml's preprocess values (e.g. pbc28)"
    )
    parser.add_argument("--no-4n", action="store_true", help="skip the 4N memory run")
    args = parser.parse_args(argv)
    workers = args.workers or os.cpu_count() or 1
    tune_malloc()  # as the stage's main() does: the same allocator setting everywhere
    loaded = OmegaConf.load(args.params)
    section = loaded.preprocess if "preprocess" in loaded else loaded
    if args.experiment:
        preset = OmegaConf.load(ROOT / "conf/experiment" / f"{args.experiment}.yaml")
        section = OmegaConf.merge(section, preset.get("preprocess", {}))
    cfg = PreprocessParams.from_section(section)
    n, extra = args.n, max(1, args.n // 100)

    work = Path(tempfile.mkdtemp(prefix="ihcflow-bench-"))
    try:
        data = work / "data"

        def make(count: int, tag: int) -> list[Path]:
            if args.src is not None:
                return copy_real(args.src, data, count, f"b{tag}")
            return generate(data, count, seed=tag)

        t = time.perf_counter()
        paths = make(n, 1)
        mb = sum(p.stat().st_size for p in paths) / 2**20
        print(
            f"{n} images ({mb:.0f} MiB) in {work} made in {time.perf_counter() - t:.1f} s; "
            f"{workers} workers, {os.cpu_count()} cores, params {args.params}"
        )

        # workers start from a server that already imported the library (as the stage does)
        multiprocessing.get_context("forkserver").set_forkserver_preload(["ihcflow.images.worker"])
        dec1, _ = decode_rate(paths, 1)
        decw, startup = decode_rate(paths, workers)
        full, rss_n = run_stage(data, work / "out", work / "cache", cfg, workers)
        warm, _ = run_stage(data, work / "out", work / "cache", cfg, workers)
        make(extra, 2)
        inc, _ = run_stage(data, work / "out", work / "cache", cfg, workers)
        assert (inc["n_processed"], inc["n_cached"]) == (extra, n), inc
        prof = profile(paths, cfg, work / "profile")
        same = equivalence(paths, cfg)

        rss_4n = None
        if not args.no_4n:
            shutil.rmtree(data)
            make(4 * n, 3)
            big, rss_4n = run_stage(data, work / "out4", work / "cache4", cfg, workers)
            assert big["n_processed"] == 4 * n

        ratio = full["images_per_s"] / decw
        rows = [
            ("decode only, 1 process (read + cv2.imdecode)", f"{dec1:,.0f} images/s", ""),
            (
                f"decode only, {workers} processes (warm pool)",
                f"{decw:,.0f} images/s",
                f"pool start-up {startup:.2f} s, not counted",
            ),
            (
                f"preprocess, cold cache, {workers} workers",
                f"{full['images_per_s']:,.0f} images/s",
                f"{full['seconds']:.2f} s",
            ),
            (
                f"ratio preprocess / decode ({workers} processes each)",
                f"{ratio:.2f}",
                "goal >= 0.90 " + ("met" if ratio >= 0.9 else "NOT met"),
            ),
            (
                "output vs full-size decode: |pixel diff| mean / p99.9 / max",
                f"{same['mean']:.2f} / {same['p999']:.0f} / {same['max']:.0f}",
                f"grey levels of 255, {cfg.size} px; tolerance mean <= {PIXEL_TOLERANCE} "
                + ("met" if same["mean"] <= PIXEL_TOLERANCE else "NOT met"),
            ),
            (
                "features vs full-size decode: largest mean shift",
                f"{same['feature_shift']:.3f}",
                f"{same['feature']}, in its spread (std) over the images; tolerance "
                f"<= {FEATURE_TOLERANCE} "
                + ("met" if same["feature_shift"] <= FEATURE_TOLERANCE else "NOT met"),
            ),
            (
                "re-run, all cached",
                f"{warm['seconds']:.3f} s",
                f"{warm['seconds'] / full['seconds']:.3f} of full",
            ),
            (
                f"incremental, +{extra} new images (+1%)",
                f"{inc['seconds']:.3f} s",
                f"{inc['seconds'] / full['seconds']:.3f} of full, goal <= 0.05 "
                + ("met" if inc["seconds"] / full["seconds"] <= 0.05 else "NOT met"),
            ),
            (f"peak RSS main + workers, N = {n}", f"{rss_n / 2**20:,.0f} MiB", ""),
        ]
        if rss_4n is not None:
            rows.append(
                (
                    f"peak RSS main + workers, 4N = {4 * n}",
                    f"{rss_4n / 2**20:,.0f} MiB",
                    f"{big['images_per_s']:,.0f} images/s",
                )
            )
        plain = "plain cv2.imdecode, full size"
        stage_ms = sum(v for k, v in prof.items() if k != plain)
        rows += [(f"  CPU per image, 1 thread: {k}", f"{v:.2f} ms", "") for k, v in prof.items()]
        rows.append(
            (
                "  CPU per image: all stage steps above",
                f"{stage_ms:.2f} ms",
                f"plain decode / stage = {prof[plain] / stage_ms:.2f}",
            )
        )
        width = max(len(r[0]) for r in rows)
        print()
        for name, value, note in rows:
            print(f"{name:<{width}}  {value:>16}  {note}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
