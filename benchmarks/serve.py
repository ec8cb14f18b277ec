"""Benchmark the model server: ONNX Runtime vs torch eager on the same model, side by side.

    .venv/bin/python benchmarks/serve.py [--model cnn] [--size 224] [--cpus 2] [--n 300]
                                         [--load 600] [--clients 4] [--src DIR]

Builds the pipeline's network (``conf/model/<model>.yaml``, the train stage's checkpoint
layout, weights as initialised: latency does not depend on their values) for ``size`` px,
exports it with the pipeline's own ``CheckpointPredictor.export_onnx`` and writes a model folder the
server loads. Everything runs on ``--cpus`` cores (affinity of this process and the servers).
It prints, for single ``size`` px images:

1. model only: one image (1, 3, S, S) through torch eager (``inference_mode``) and through
   ONNX Runtime, both with ``cpus`` threads: p50/p99 latency and images/s;
2. over HTTP: the real server (``python -m ihcflow.serving``) with the ONNX model, and the same
   app with the torch module as its runner; one client sends ``n`` single-image JPEG requests
   to each (p50/p99 client-side latency, requests/s);
3. a bounded load run per backend: ``load`` requests from ``clients`` concurrent clients on
   loopback, counting status codes (goal: 0 server errors) and requests/s.

Series 1 and 2 take turns between the backends call by call, so load from other processes on a
shared machine falls on both alike.

Goal: ONNX p99 <= 0.5 x torch eager p99. Client and server share the cores, as they would on a
small VM; figures are from a shared machine, so rerun before comparing across machines.
Results are also written to ``benchmarks/out/serve.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["Er", "Her2neu", "Pr", "Ki-67", "Histology"]


# ---------------------------------------------------------------- the model
def build_model(model: str, size: int, out: Path) -> Any:
    """A trained-layout checkpoint of conf/model/<model>.yaml -> its predictor + model folder."""
    import torch
    from omegaconf import OmegaConf

    from ihcflow.files import sha256_file, write_json_atomic
    from ihcflow.training.module import CKPT_KEY, Normalize
    from ihcflow.training.predictor import CheckpointPredictor, InferenceNet

    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / f"conf/model/{model}.yaml"), resolve=True)
    assert isinstance(cfg, dict)
    if cfg.get("kind") != "lightning":
        raise SystemExit(f"--model {model}: a torch network is needed (kind: lightning)")
    preprocess = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/preprocess/default.yaml"))
    assert isinstance(preprocess, dict)
    preprocess["size"] = size
    mean, std = [0.7, 0.6, 0.7], [0.15, 0.15, 0.15]
    from hydra.utils import instantiate

    torch.manual_seed(0)
    net = instantiate(cfg["net"], num_classes=len(CLASSES), input_size=size)
    module = InferenceNet(Normalize(mean, std), net)
    ckpt = {
        CKPT_KEY: {
            "class_names": CLASSES,
            "input_size": size,
            "config": {"model": cfg, "preprocess": preprocess},
            "kind": "lightning",
            "mean": mean,
            "std": std,
        },
        "state_dict": module.state_dict(),
    }
    predictor = CheckpointPredictor(ckpt, f"benchmark {model}")
    out.mkdir(parents=True, exist_ok=True)
    predictor.export_onnx(out / "model.onnx")
    info = {
        "name": f"benchmark-{model}",
        "version": "0.0.0",
        "class_names": CLASSES,
        "input_size": size,
        "preprocess": preprocess,
        "onnx": {"file": "model.onnx", "sha256": sha256_file(out / "model.onnx")},
    }
    write_json_atomic(out / "model.json", info)
    return predictor


class TorchRunner:
    """The server's runner interface around the torch module (torch eager)."""

    def __init__(self, module: Any) -> None:
        self.module = module.eval()

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.inference_mode():
            probs, embedding = self.module(torch.from_numpy(x))
        return probs.numpy(), embedding.numpy()


def patch_jpeg(size: int, seed: int) -> bytes:
    """A size x size stained-looking patch (nuclei on pink stroma) as a JPEG."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), (225, 190, 200), np.uint8)
    for _ in range(size * size // 600):
        centre = (int(rng.integers(0, size)), int(rng.integers(0, size)))
        colour = (
            int(rng.integers(60, 120)),
            int(rng.integers(40, 90)),
            int(rng.integers(110, 170)),
        )
        cv2.circle(img, centre, int(rng.integers(3, 8)), colour, -1)
    img = cv2.GaussianBlur(img, (3, 3), 0)
    noisy = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(noisy, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90]
    )
    assert ok
    return buf.tobytes()


def real_jpegs(src: Path, size: int, n: int) -> list[bytes]:
    files = sorted(src.rglob("*.jpg"))[:n]
    out = []
    for path in files:
        bgr = cv2.resize(cv2.imread(str(path)), (size, size), interpolation=cv2.INTER_AREA)
        out.append(cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return out


# ---------------------------------------------------------------- timing
def stats(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000.0
    return {
        "n": len(ms),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "per_s": round(1000.0 / float(ms.mean()), 1),
    }


def time_calls(fn: Callable[[], object], n: int, warmup: int = 20) -> dict[str, float]:
    return time_interleaved({"": fn}, n, warmup)[""]


def time_interleaved(
    fns: dict[str, Callable[[], object]], n: int, warmup: int = 20, block: int = 1
) -> dict[str, dict[str, float]]:
    """Time each function ``n`` times, taking turns in blocks of ``block`` calls, so that load
    from other processes on a shared machine falls on all of them alike. In one process, use
    blocks: torch's OpenMP threads keep spinning for a moment after each call."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    cpu = dict.fromkeys(fns, 0.0)
    for done in range(0, n, block):
        for name, fn in fns.items():
            for _ in range(warmup if done == 0 else min(block - 1, 2)):  # a turn starts untimed
                fn()
            for _ in range(min(block, n - done)):
                start, start_cpu = time.perf_counter(), time.process_time()
                fn()
                times[name].append(time.perf_counter() - start)
                cpu[name] += time.process_time() - start_cpu
    # CPU time of this process (all its threads) per call: robust to other load on the machine
    return {
        name: {**stats(t), "cpu_ms": round(cpu[name] / n * 1000.0, 3)} for name, t in times.items()
    }


# ---------------------------------------------------------------- servers
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def server(
    backend: str, model_dir: Path, log_dir: Path, cpus: int, model: str
) -> Iterator[tuple[str, int]]:
    """The ONNX server via the real CLI, or this script's torch-eager server (same app)."""
    import httpx

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IHCFLOW_")}
    env.update(
        PYTHONPATH=str(ROOT / "src"), IHCFLOW_THREADS=str(cpus), IHCFLOW_CONCURRENCY=str(cpus)
    )
    common = ["--model-dir", str(model_dir), "--log-dir", str(log_dir), "--port", str(port)]
    if backend == "onnx":
        cmd = [sys.executable, "-m", "ihcflow.serving", *common, "--log-level", "warning"]
    else:
        cmd = [sys.executable, __file__, "--serve-torch", "--model", model, *common]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                assert proc.stderr is not None
                raise SystemExit(f"{backend} server exited:\n{proc.stderr.read().decode()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"{backend} server not ready after 120 s")
            time.sleep(0.2)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(30)
        if proc.stderr is not None:
            proc.stderr.close()


def serve_torch(args: argparse.Namespace) -> None:
    """Server mode: the app with the torch module as its runner (the eager baseline)."""
    import torch
    import uvicorn

    from ihcflow.serving import ServedModel, Settings, create_app
    from ihcflow.serving.model import read_servable

    settings = Settings.from_env(model_dir=args.model_dir, log_dir=args.log_dir, port=args.port)
    torch.set_num_threads(settings.intra_op_threads)
    with tempfile.TemporaryDirectory() as tmp:  # same seed: the same weights as the ONNX file
        predictor = build_model(args.model, read_servable(args.model_dir)["input_size"], Path(tmp))
    model = ServedModel(read_servable(args.model_dir), TorchRunner(predictor.model))
    app = create_app(settings, model=model)
    uvicorn.run(app, host="127.0.0.1", port=settings.port, log_level="warning", access_log=False)


def sequential(urls: dict[str, str], images: list[bytes], n: int) -> dict[str, dict[str, float]]:
    """``n`` single-image requests to each server, taking turns."""
    import httpx

    clients = {name: httpx.Client(base_url=url, timeout=60) for name, url in urls.items()}
    counter = {name: 0 for name in urls}

    def request(name: str) -> Callable[[], None]:
        def one() -> None:
            data = images[counter[name] % len(images)]
            counter[name] += 1
            files = [("files", ("patch.jpg", data, "image/jpeg"))]
            clients[name].post("/predict", files=files).raise_for_status()

        return one

    try:
        return time_interleaved({name: request(name) for name in urls}, n, warmup=10)
    finally:
        for client in clients.values():
            client.close()


def load_run(url: str, pid: int, images: list[bytes], total: int, clients: int) -> dict[str, Any]:
    """``total`` requests from ``clients`` threads (bounded: each sends its share, then stops).

    Also the server process's CPU time per request, which other load on the machine does not
    change much (unlike latency).
    """
    import httpx
    import psutil

    server_process = psutil.Process(pid)
    cpu_before = sum(server_process.cpu_times()[:2])

    codes: Counter[str] = Counter()
    latencies: list[float] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            for j in range(k, total, clients):
                start = time.perf_counter()
                try:
                    response = client.post(
                        "/predict",
                        files=[("files", ("p.jpg", images[j % len(images)], "image/jpeg"))],
                    )
                    code = str(response.status_code)
                except httpx.HTTPError as exc:
                    code = type(exc).__name__
                with lock:
                    codes[code] += 1
                    latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    server_cpu = sum(server_process.cpu_times()[:2]) - cpu_before
    errors = sum(n for c, n in codes.items() if not c.startswith(("2", "4")))
    return {
        "requests": total,
        "clients": clients,
        "codes": dict(codes),
        "server_errors": errors,
        "req_per_s": round(total / wall, 1),
        "server_cpu_ms_per_request": round(server_cpu / total * 1000.0, 2),
        **{k: v for k, v in stats(latencies).items() if k.endswith("_ms")},
    }


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn", help="conf/model/<name>.yaml (cnn, resnet)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--n", type=int, default=300, help="timed calls/requests per series")
    parser.add_argument("--load", type=int, default=600, help="requests in each load run")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--src", type=Path, help="JPEGs to send (resized), else generated")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/out/serve.json")
    parser.add_argument("--serve-torch", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--log-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))[: args.cpus]
    os.sched_setaffinity(0, cpus)  # inherited by the servers
    if args.serve_torch:
        serve_torch(args)
        return

    import torch

    from ihcflow.model_format import OnnxModel
    from ihcflow.serving.model import ServedModel, read_servable

    torch.set_num_threads(len(cpus))
    results: dict[str, Any] = {"model": args.model, "size": args.size, "cpus": len(cpus)}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "models"
        predictor = build_model(args.model, args.size, model_dir)
        n_params = sum(p.numel() for p in predictor.model.parameters())
        results["parameters"] = n_params
        print(f"model {args.model} at {args.size} px: {n_params / 1e6:.2f} M parameters, "
              f"{len(cpus)} CPUs, torch {torch.__version__}")  # fmt: skip

        # 1. model only
        x = np.random.default_rng(0).random((1, 3, args.size, args.size), dtype=np.float32)
        eager = TorchRunner(predictor.model)
        onnx_run = OnnxModel(model_dir / "model.onnx", threads=len(cpus))
        np.testing.assert_allclose(eager(x)[0], onnx_run(x)[0], atol=1e-4)  # the same model
        results["model_only"] = time_interleaved(
            {"torch_eager": lambda: eager(x), "onnxruntime": lambda: onnx_run(x)}, args.n, block=50
        )
        # per image without HTTP: decode + features + preprocess + model
        images = real_jpegs(args.src, args.size, 64) if args.src else [
            patch_jpeg(args.size, seed) for seed in range(64)
        ]  # fmt: skip
        served = ServedModel(read_servable(model_dir), onnx_run)
        prepared = served.prepare(images[0], "patch.jpg", max_pixels=10**8)
        results["prepare_only"] = time_calls(
            lambda: served.prepare(images[0], "patch.jpg", max_pixels=10**8), args.n
        )
        assert prepared.image.shape == (args.size, args.size, 3)

        # 2. over HTTP: both servers up, requests taking turns; 3. load, one server at a time
        logs = Path(tmp)
        with (
            server("torch", model_dir, logs / "torch", len(cpus), args.model) as torch_server,
            server("onnx", model_dir, logs / "onnx", len(cpus), args.model) as onnx_server,
        ):
            servers = {"torch_eager": torch_server, "onnxruntime": onnx_server}
            urls = {name: url for name, (url, _) in servers.items()}
            results["http_sequential"] = sequential(urls, images, args.n)
            results["http_load"] = {
                name: load_run(url, pid, images, args.load, args.clients)
                for name, (url, pid) in servers.items()
            }
    for section in ("model_only", "http_sequential"):
        t, o = results[section]["torch_eager"], results[section]["onnxruntime"]
        results[section]["p99_ratio_onnx_over_torch"] = round(o["p99_ms"] / t["p99_ms"], 3)
    report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {args.out}")


def report(r: dict[str, Any]) -> None:
    out = io.StringIO()
    out.write(f"\n{'':28}{'torch eager':>24}{'ONNX Runtime':>24}{'p99 ratio':>11}\n")
    out.write(f"{'':28}{'p50 / p99 ms   /s':>24}{'p50 / p99 ms   /s':>24}\n")
    for section, label in (("model_only", "model only, 1 image"),
                           ("http_sequential", "HTTP, 1 image/request")):  # fmt: skip
        row = r[section]
        cells = [
            f"{row[b]['p50_ms']:7.2f} / {row[b]['p99_ms']:7.2f} {row[b]['per_s']:6.1f}"
            for b in ("torch_eager", "onnxruntime")
        ]
        out.write(
            f"{label:28}{cells[0]:>24}{cells[1]:>24}{row['p99_ratio_onnx_over_torch']:>11.2f}\n"
        )
    m = r["model_only"]
    out.write(
        f"{'model only, CPU ms per image':28}{m['torch_eager']['cpu_ms']:>24.2f}"
        f"{m['onnxruntime']['cpu_ms']:>24.2f}\n"
    )
    p = r["prepare_only"]
    cell = f"{p['p50_ms']:7.2f} / {p['p99_ms']:7.2f} {p['per_s']:6.1f}"
    out.write(f"{'decode+features+preprocess':28}{'':>24}{cell:>24}\n")
    for backend in ("torch_eager", "onnxruntime"):
        load = r["http_load"][backend]
        out.write(
            f"load {backend:12}: {load['requests']} requests, {load['clients']} clients: "
            f"{load['req_per_s']} req/s, p50 {load['p50_ms']} ms, p99 {load['p99_ms']} ms, "
            f"server CPU {load['server_cpu_ms_per_request']} ms/request, "
            f"codes {load['codes']}, server errors {load['server_errors']}\n"
        )
    print(out.getvalue(), end="")


if __name__ == "__main__":
    main()
