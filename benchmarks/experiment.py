"""Benchmark: the whole `dvc exp run -S experiment=pbc28`, from import to register, timed.

Issue #3's goal for the 28 px blood-cell preset: training <= 5 min and the whole experiment
(import to register) < 10 min on 2 CPU cores. The real BloodMNIST is not shipped, so this
writes a MedMNIST-format ``bloodmnist.npz`` of generated 28 px images of the same size
(11,959 / 1,712 / 3,421 images, 8 classes, as BloodMNIST), then, in a temporary clone of this
repository's HEAD:

    ihcflow data import bloodmnist.npz --replace   (timed: "import"; it runs `dvc add data`)
    git commit                                     (timed: "version")
    dvc exp run register -S experiment=pbc28 [-S ...] (timed: "exp run", and each stage's own time)

The generated images are learnable but are not blood cells: the accuracy printed says that the
run works, not what the preset reaches on BloodMNIST. The times are what the goal is about.

    python benchmarks/experiment.py
    python benchmarks/experiment.py --scale 0.1 -S model.net.convs_per_block=[1,2,2]
    python benchmarks/experiment.py --data ../shared/datasets/pbc-sample   # real images instead
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO)]  # ihcflow, and tests.helpers for generated data
from tests.helpers.data import toy_image  # noqa: E402

BLOODMNIST = {"train": 11_959, "val": 1_712, "test": 3_421}
N_CLASSES = 8
SIZE = 28
STAGE_LINE = re.compile(r"Running stage '([^']+)'")


def write_npz(path: Path, scale: float, seed: int) -> dict[str, int]:
    """A MedMNIST-format archive: ``{split}_images`` (N, 28, 28, 3), ``{split}_labels`` (N, 1)."""
    rng = np.random.default_rng(seed)
    arrays, counts = {}, {}
    for split, n in BLOODMNIST.items():
        n = max(N_CLASSES, round(n * scale))
        labels = rng.integers(0, N_CLASSES, n)
        arrays[f"{split}_images"] = np.stack(
            [toy_image(int(k), N_CLASSES, SIZE, rng) for k in labels]
        )
        arrays[f"{split}_labels"] = labels.reshape(-1, 1).astype(np.uint8)
        counts[split] = n
    np.savez_compressed(path, **arrays)
    return counts


def timed(
    cmd: list[str],
    cwd: Path,
    env: dict[str, str],
    log: Path,
    marks: list[tuple[str, float]] | None = None,
) -> float:
    """Run ``cmd``, its output appended to ``log``; fail loudly with the log's tail.

    With ``marks``, each of dvc's "Running stage 'X'" lines is recorded with the time it was
    read, so that each stage's wall time can be told (dvc prints no times itself).
    """
    t0 = time.perf_counter()
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        with subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                if marks is not None and (m := STAGE_LINE.match(line)):
                    marks.append((m.group(1), time.perf_counter()))
        if marks is not None:
            marks.append(("end", time.perf_counter()))
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode} (log {log}):\n{tail}")
    return elapsed


def stage_times(marks: list[tuple[str, float]]) -> dict[str, float]:
    """Seconds from each stage's "Running stage" line to the next one (the last: to the end)."""
    return {name: round(b - a, 1) for (name, a), (_, b) in zip(marks, marks[1:], strict=False)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of BloodMNIST's size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, help="import this folder or .npz instead of generating")
    ap.add_argument(
        "-S",
        "--set",
        action="append",
        default=[],
        metavar="OVERRIDE",
        help="extra `dvc exp run -S` overrides",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary clone")
    ap.add_argument("--json", type=Path, help="also write the result as JSON here")
    args = ap.parse_args(argv)

    venv_bin = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}",
        "PYTHONUNBUFFERED": "1",
    }
    work = Path(tempfile.mkdtemp(prefix="ihcflow-exp-bench-"))
    clone, log = work / "repo", work / "run.log"
    try:
        t0 = time.perf_counter()
        if args.data is None:
            source = work / "bloodmnist.npz"
            write_npz(source, args.scale, args.seed)
        else:
            source = args.data.resolve()
        t_npz = time.perf_counter() - t0
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        for cmd in (
            ["git", "config", "user.email", "bench@ihcflow"],
            ["git", "config", "user.name", "benchmark"],
        ):
            subprocess.run(cmd, cwd=clone, check=True)
        times = {
            "import": timed(
                ["ihcflow", "data", "import", str(source), "--replace"],
                clone,
                env,
                log,
            ),
        }
        times["version"] = timed(["git", "commit", "-qam", f"data: {source.name}"], clone, env, log)
        marks: list[tuple[str, float]] = []
        # the classification task only (its register stage and what it needs): the nuclei
        # stages have no data in a clone that was never `ihcflow data get`
        cmd = ["dvc", "exp", "run", "register", "-S", "experiment=pbc28"]
        for override in args.set:
            cmd += ["-S", override]
        times["exp run"] = timed(cmd, clone, env, log, marks)
        metrics = json.loads((clone / "reports" / "metrics.json").read_text())
        summary = json.loads((clone / "reports" / "train" / "summary.json").read_text())
        model = json.loads((clone / "models" / "model.json").read_text())
        split = pd.read_csv(clone / "processed" / "split.csv", usecols=["split"])["split"]
        counts = {k: int(split.eq(k).sum()) for k in ("train", "val", "test")}
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    total = times["import"] + times["version"] + times["exp run"]
    result = {
        "data": str(args.data) if args.data else "generated",
        "images": counts,
        "overrides": ["experiment=pbc28", *args.set],
        "seconds": {k: round(v, 1) for k, v in times.items()} | {"total": round(total, 1)},
        "stages": stage_times(marks),
        "train": {
            k: summary.get(k)
            for k in (
                "epochs_run",
                "train_time_s",
                "train_images_per_s",
                "data_wait_share",
                "torch_threads",
            )
        },
        "test": {k: metrics.get(k) for k in ("accuracy", "balanced_accuracy")},
        "registered": f"{model.get('name')} {model.get('version')}",
        "cpus": os.cpu_count(),
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }
    if args.data is None:
        print(f"generated npz: {t_npz:.1f} s")
    for k, v in result["seconds"].items():
        print(f"{k:>8}: {v:7.1f} s")
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
