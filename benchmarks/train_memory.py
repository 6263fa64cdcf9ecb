"""Resident memory over a long Lightning training run of a tiny model: does it grow after warm-up?

Trains a tiny `YoloModule` (width 0.125, depth 0.33, 96 px, batch 4, 20 classes) on a small synthetic VOC dataset
(`--images` 160 x 120 JPEGs made in a temporary folder; 80% train, 20% validation) through the project's own
Lightning `Trainer` (`yolo_voc.callbacks.make_trainer`: run logger, LR file, last/best checkpoints) for `--steps`
optimizer steps (`max_steps`), with `num_workers=0` so that all the work is in this process, validation with
mAP every `--val-every` epochs. The resident set size (RSS; psutil when it is installed, else /proc/self/statm)
is sampled after a `gc.collect()` at the end of warm-up (`--warmup`, step 200), every `--every` (250) steps and
at the last step. A leak of a tensor, a logged value or a metric state per step shows as steady growth.

    nice python benchmarks/train_memory.py --json --save-results  # 2,000 steps, a few minutes on 2 CPU cores
    python benchmarks/train_memory.py --steps 30 --json           # a smoke run

Prints (with `--json`, as one JSON object): `rss_start_mb` (at the end of warm-up), `rss_end_mb`, `growth_mb`
(end - start), `growth_mb_per_1000_steps` (least-squares slope over the samples after warm-up), `samples`
(step, RSS, seconds since the start of training), `rss_peak_mb` (the process's maximum RSS), the configuration
and the wall time, and `conditions`: the machine's state and load around the run (see `benchmarks/conditions.py`;
memory is the figure here, so only the load is checked, no spread of timings). With `--max-growth-mb X` the exit
status is 1 when `growth_mb` > X.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import resource
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from conditions import Conditions, add_arguments, describe, save_results
from yolo_voc.data import VOCDataModule
from yolo_voc.train import YoloModule
from yolo_voc.callbacks import make_trainer
from yolo_voc.synthetic import make_synthetic_voc


def rss_source() -> str:
    try:
        import psutil  # noqa: F401
        return "psutil"
    except ImportError:
        return "/proc/self/statm"


def rss_mb() -> float:
    "Resident set size of this process in MiB."
    try:
        import psutil
        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        with open("/proc/self/statm") as f:  # fields in pages: size resident shared ...
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    "Maximum resident set size this process has had, in MiB (Linux reports KiB)."
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


class RSSMonitor(Callback):
    "Samples RSS (after `gc.collect()`) when the optimizer step count reaches `warmup`, every `every` steps, and at `last`."
    def __init__(self, warmup: int, every: int, last: int):
        self.warmup, self.every, self.last = warmup, every, last
        self.samples: list[dict] = []
        self.t0 = None

    def on_train_start(self, trainer, pl_module): self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step  # optimizer steps done
        if step == self.warmup or step == self.last or (step > self.warmup and step % self.every == 0):
            if self.samples and self.samples[-1]["step"] == step: return
            gc.collect()
            self.samples.append(dict(step=step, rss_mb=round(rss_mb(), 2), seconds=round(time.perf_counter() - self.t0, 2)))


def slope_per_1000(samples: list[dict]) -> float | None:
    "Least-squares slope of RSS (MiB) against steps, per 1000 steps."
    if len(samples) < 2: return None
    xs, ys = [s["step"] for s in samples], [s["rss_mb"] for s in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 1000 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else None


def measure(args, tmp: Path) -> int:
    "Train, sample RSS, print the result; the dataset and the run's files go into the folder `tmp`."
    warmup = max(1, min(args.warmup, args.steps // 2))
    root = make_synthetic_voc(tmp / "data", n_images=args.images, image_size=(160, 120), seed=args.seed,
                              split_fractions=(0.8, 0.0, 0.2))
    dm = VOCDataModule(str(root), image_size=args.image_size, batch_size=args.batch_size, num_workers=0,
                       train_split="train", val_split="test", seed=args.seed)
    module = YoloModule(num_classes=dm.num_classes, width_mult=args.width_mult, depth_mult=args.depth_mult,
                        image_size=args.image_size, max_lr=1e-3)
    monitor = RSSMonitor(warmup, args.every, args.steps)
    trainer = make_trainer(tmp / "run", callbacks=[monitor], max_steps=args.steps, max_epochs=-1,
                           accelerator=args.accelerator, devices=1, check_val_every_n_epoch=args.val_every,
                           num_sanity_val_steps=0, enable_progress_bar=False)
    cond = Conditions.from_args(args, "train_memory", own_threads=torch.get_num_threads()).start()
    rss_before = rss_mb()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the run's own report goes to stderr: stdout is the JSON
        trainer.fit(module, dm)
    seconds = time.perf_counter() - t0

    samples = monitor.samples
    start, end = samples[0], samples[-1]
    out = dict(rss_start_mb=start["rss_mb"], rss_end_mb=end["rss_mb"], growth_mb=round(end["rss_mb"] - start["rss_mb"], 2),
               growth_mb_per_1000_steps=None if (s := slope_per_1000(samples)) is None else round(s, 3),
               start_step=start["step"], end_step=end["step"], samples=samples,
               rss_before_training_mb=round(rss_before, 2), rss_peak_mb=round(peak_rss_mb(), 2), rss_source=rss_source(),
               steps=trainer.global_step, epochs=trainer.current_epoch, seconds=round(seconds, 1),
               config=dict(width_mult=args.width_mult, depth_mult=args.depth_mult, image_size=args.image_size,
                           batch_size=args.batch_size, images=args.images, train_images=len(dm.train_dataset),
                           num_workers=0, val_every_epochs=args.val_every, device=str(module.device),
                           precision=str(trainer.precision), torch=torch.__version__, lightning=pl.__version__,
                           threads=torch.get_num_threads()))
    out["conditions"] = cond.finish()
    if args.save_results: save_results("train_memory", out, args)
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        for k, v in out.items():
            if k != "conditions": print(f"{k:>26}: {v}")
        print(f"{'conditions':>26}: {describe(out['conditions'])}")
    if args.max_growth_mb is not None and out["growth_mb"] > args.max_growth_mb:
        print(f"train_memory.py: RSS grew {out['growth_mb']} MiB after warm-up, more than --max-growth-mb "
              f"{args.max_growth_mb}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps (Trainer max_steps)")
    p.add_argument("--warmup", type=int, default=200, help="step of the first (start) sample; at most steps / 2")
    p.add_argument("--every", type=int, default=250, help="sample every this many steps after warm-up")
    p.add_argument("--images", type=int, default=160, help="synthetic 160x120 images (80%% train, 20%% validation)")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--width-mult", type=float, default=0.125)
    p.add_argument("--depth-mult", type=float, default=0.33)
    p.add_argument("--val-every", type=int, default=5, help="validate (loss, accuracy, mAP) every this many epochs")
    p.add_argument("--accelerator", default="auto", help="Lightning accelerator (auto: the GPU when there is one)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steady on a shared machine)")
    p.add_argument("--max-growth-mb", type=float, default=None, help="exit with status 1 when growth_mb exceeds this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    add_arguments(p)
    args = p.parse_args(argv)
    if args.threads: torch.set_num_threads(args.threads)
    pl.seed_everything(args.seed, verbose=False)
    tmp = Path(tempfile.mkdtemp(prefix="yolo_voc_train_memory-"))
    try:
        return measure(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sys.exit(main())
