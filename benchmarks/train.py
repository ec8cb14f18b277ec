"""Benchmark: a Lightning training epoch vs. a plain PyTorch loop, same model, data and batch.

Both run the train stage's own pieces (ImageDataModule, its on-device augmentation, the
ImageClassifier network and loss, AdamW + one-cycle); the plain loop just calls them without
Lightning. The two alternate: after each Lightning epoch a hook runs one plain epoch, so
background load hits both alike; after a warm-up epoch the median epoch is reported. Also
reported: the share of step time spent waiting for the next batch (fetch + transfer +
augmentation). Goals: Lightning <= 1.10x the plain loop's time per epoch, and data loading
does not starve the model (a small wait share).

Then the plain loop's training images/s under CPU options, interleaved in rounds of
``--variant-steps`` steps (median of ``--rounds``): as configured (channels-last on), without
channels-last, ``torch.compile`` of the network, and bf16 autocast (Lightning's
``precision=bf16-mixed``) where the CPU has native bf16 (``avx512_bf16``/``amx_bf16`` in
/proc/cpuinfo; elsewhere oneDNN emulates it, much slower, so it is skipped and said so).

    python benchmarks/train.py                       # 12,000 generated 28 px images, 8 classes
    python benchmarks/train.py --n-train 2000 --epochs 2 --override model=resnet
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from pytorch_lightning.callbacks import Callback

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO)]  # ihcflow, and tests.helpers for generated data

from ihcflow.training.datamodule import ImageDataModule  # noqa: E402
from ihcflow.training.fit import build_datamodule, build_module  # noqa: E402
from ihcflow.training.lightning import StepTimer  # noqa: E402
from ihcflow.training.module import ImageClassifier  # noqa: E402
from ihcflow.training.params import TrainRun  # noqa: E402
from tests.helpers.data import write_toy_split  # noqa: E402


def plain_epoch(module: ImageClassifier, dm: ImageDataModule, opt, sched, epoch: int) -> dict:
    """One epoch with a hand-written loop: what Lightning does for us, minus Lightning."""
    t0 = time.perf_counter()
    module.train()
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
    wait = busy = 0.0
    images = 0
    mark = time.perf_counter()
    for i, batch in enumerate(loader):
        x, y = dm.prepare_batch(batch, train=True, epoch=epoch)
        start = time.perf_counter()
        wait += start - mark
        torch.manual_seed(epoch * 100_003 + i)  # as the module's per-step dropout reseed
        loss = module.training_step((x, y), i)  # same step: forward, loss, metric updates
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        images += len(y)
        mark = time.perf_counter()
        busy += mark - start
    module.train_metrics.compute()
    module.train_loss.compute()
    module.train_metrics.reset()
    module.train_loss.reset()
    return {"images": images, "wait": wait, "busy": busy, "epoch_s": time.perf_counter() - t0}


class Interleave(Callback):
    """Times each Lightning epoch, then runs one plain epoch right after it (same load)."""

    def __init__(self, plain: Callable[[int], dict]) -> None:
        self.plain = plain
        self.timer = StepTimer()
        self.lightning: list[dict] = []
        self.plain_runs: list[dict] = []
        self._t0 = 0.0
        self._before = (0, 0.0, 0.0)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.timer.on_train_epoch_start(trainer, pl_module)
        self._before = (self.timer.images, self.timer.wait, self.timer.busy)
        self._t0 = time.perf_counter()

    def on_train_batch_start(self, *args: Any) -> None:
        self.timer.on_train_batch_start(*args)

    def on_train_batch_end(self, *args: Any) -> None:
        self.timer.on_train_batch_end(*args)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch_s = time.perf_counter() - self._t0
        images, wait, busy = (
            now - before
            for now, before in zip(
                (self.timer.images, self.timer.wait, self.timer.busy), self._before, strict=True
            )
        )
        self.lightning.append({"images": images, "wait": wait, "busy": busy, "epoch_s": epoch_s})
        self.plain_runs.append(self.plain(trainer.current_epoch))
        print(
            f"epoch {trainer.current_epoch}: lightning {epoch_s:.2f} s, "
            f"plain {self.plain_runs[-1]['epoch_s']:.2f} s",
            flush=True,
        )


def cpu_bf16() -> tuple[bool, str]:
    """Whether this CPU computes bf16 natively, and what says so."""
    capability = torch.backends.cpu.get_cpu_capability()
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    native = sorted(flags & {"avx512_bf16", "amx_bf16"})
    return bool(native), f"torch CPU capability {capability}; cpuinfo {native or 'no bf16 flags'}"


def variant_rates(
    template: ImageClassifier, dm: ImageDataModule, names: list[str], steps: int, rounds: int
) -> dict[str, dict[str, float]]:
    """Training images/s of the plain loop for each CPU option in ``names``, interleaved."""
    built = {}
    for name in names:
        module = copy.deepcopy(template)
        if name == "no channels-last":
            module.channels_last = False
            module.net = module.net.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
        if name == "torch.compile":
            module.net = torch.compile(module.net)
        opt = module.optimizer_factory(params=module.parameters())
        built[name] = (module.train(), opt, name == "bf16 autocast")

    def run(name: str, epoch: int, n: int) -> float:
        module, opt, bf16 = built[name]
        loader = iter(dm.train_dataloader())
        images, t0 = 0, time.perf_counter()
        for _ in range(n):
            batch = next(loader, None)
            if batch is None:  # more steps than one epoch has: start another pass
                loader = iter(dm.train_dataloader())
                batch = next(loader)
            x, y = dm.prepare_batch(batch, train=True, epoch=epoch)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = module._loss(module(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            images += len(y)
        return images / (time.perf_counter() - t0)

    for name in names:  # warm-up, compilation included, outside the timing
        run(name, 0, 3)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names:
            rates[name].append(run(name, r + 1, steps))
    base = statistics.median(rates[names[0]])
    return {
        name: {
            "images_per_s": round(statistics.median(x), 1),
            "relative": round(statistics.median(x) / base, 3),
        }
        for name, x in rates.items()
    }


def summarise(runs: list[dict]) -> dict[str, float]:
    times = [r["epoch_s"] for r in runs]
    t = statistics.median(times)
    return {
        "epoch_s": round(t, 3),
        "epoch_s_all": [round(x, 2) for x in times],
        "images_per_s": round(runs[0]["images"] / t, 1),
        "data_wait_share": round(
            sum(r["wait"] for r in runs) / sum(r["wait"] + r["busy"] for r in runs), 4
        ),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=12_000)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3, help="measured epochs per side")
    parser.add_argument("--data", type=Path, default=None, help="cache folder for the images")
    parser.add_argument(
        "--override", action="append", default=[], help="Hydra override, e.g. model=resnet"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--rounds", type=int, default=3, help="CPU-option rounds (0: skip)")
    parser.add_argument("--variant-steps", type=int, default=20, help="steps per round")
    args = parser.parse_args(argv)

    data = args.data or Path(tempfile.gettempdir()) / (
        f"ihcflow-bench-train-{args.n_train}-{args.size}-{args.classes}"
    )
    split_csv = data / "processed" / "split.csv"
    if not split_csv.is_file():
        print(f"generating {args.n_train} images of {args.size} px in {data} ...", flush=True)
        n_val = max(args.classes * 2, args.n_train // 7)
        write_toy_split(
            data, {"train": args.n_train, "val": n_val}, n_classes=args.classes, size=args.size
        )
    overrides = ["experiment=pbc28", f"preprocess.size={args.size}", *args.override]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    run = TrainRun.from_params(cfg)
    torch.manual_seed(run.seed)
    dm = build_datamodule(run, split_csv, data)
    t0 = time.perf_counter()
    dm.setup("fit")
    load_s = time.perf_counter() - t0
    template = build_module(run, dm, {})
    trainer_cfg = run.trainer

    # Lightning trains one copy of the model; after each of its epochs (hook), the plain loop
    # trains another copy of the same initial model for one epoch. Epoch 0 is a warm-up.
    plain = copy.deepcopy(template)
    opt = plain.optimizer_factory(params=plain.parameters())
    steps = len(dm.train_dataloader()) * (args.epochs + 1)
    lr = opt.param_groups[0]["lr"]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 10))
    interleave = Interleave(lambda epoch: plain_epoch(plain, dm, opt, sched, epoch))
    trainer = pl.Trainer(
        accelerator=trainer_cfg.get("accelerator", "cpu"),
        devices=1,
        precision=trainer_cfg.get("precision", "32-true"),
        deterministic=trainer_cfg.get("deterministic", False),
        max_epochs=args.epochs + 1,
        limit_val_batches=0,  # training only: the plain loop does not validate either
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[interleave],
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"The '\w+' does not have many workers")
        warnings.filterwarnings("ignore", r".*isinstance\(treespec, LeafSpec\).*", FutureWarning)
        trainer.fit(copy.deepcopy(template), datamodule=dm)

    report = {
        "config": {
            "model": run.model.name,
            "n_train": len(dm.sets["train"]),
            "size": args.size,
            "batch_size": dm.batch_size,
            "in_memory": dm.in_memory,
            "load_s": round(load_s, 2),
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "load_avg_1min": round(os.getloadavg()[0], 2),
            "epochs_measured": args.epochs,
            "overrides": overrides,
        },
        "plain": summarise(interleave.plain_runs[1:]),
        "lightning": summarise(interleave.lightning[1:]),
    }
    ratio = report["lightning"]["epoch_s"] / report["plain"]["epoch_s"]
    report["lightning_over_plain"] = round(ratio, 3)
    report["goal_met"] = ratio <= 1.10
    bf16, why = cpu_bf16()
    names = ["as configured", "no channels-last", "torch.compile"]
    names += ["bf16 autocast"] if bf16 else []
    if args.rounds:
        report["cpu_options"] = variant_rates(template, dm, names, args.variant_steps, args.rounds)
        report["cpu_options_note"] = why + ("" if bf16 else ": bf16 autocast skipped")
    print(json.dumps(report, indent=2))
    lightning, plain_rate = report["lightning"], report["plain"]
    print(
        f"\ntraining: Lightning {lightning['images_per_s']:,.0f} images/s, plain PyTorch loop "
        f"{plain_rate['images_per_s']:,.0f} images/s: Lightning takes {ratio:.2f}x the plain "
        f"loop's time per epoch (goal <= 1.10: {'met' if ratio <= 1.10 else 'NOT met'}), "
        f"{torch.get_num_threads()} torch threads, load {os.getloadavg()[0]:.1f}"
    )
    for name, row in report.get("cpu_options", {}).items():
        print(
            f"  plain loop, {name:<18} {row['images_per_s']:8,.0f} images/s  {row['relative']:.2f}x"
        )
    if args.rounds:
        print(f"  ({report['cpu_options_note']})")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
