"""Fine-tuning from a pretrained Darknet backbone against training from random weights, on synthetic data.

The YOLOv3 recipe in miniature. The YOLOv3 paper starts the detector from a backbone trained on another task
(ImageNet classification, `darknet53.conv.74`); here the other task is a second synthetic data set:

1. source: `--source-images` synthetic images (seed 1) of all 20 synthetic classes (shapes and colours), trained
   for `--source-epochs`; its backbone is written with `yolo_voc.darknet.save_darknet(..., backbone_only=True)`,
   a `darknet53.conv.74` of the narrow model.
2. target: `--images` other synthetic images (seed 0) of the first 10 classes (a subset, as VOC's classes are
   a subset of COCO's), trained twice for `--epochs` with the same seed, learning rate and schedule: once from
   random weights, once with the source backbone loaded by `yolo_voc.darknet.load_darknet` (the neck and the
   heads start from random weights in both).

Both use the library's training path (`yolo_voc.train.YoloModule` + `callbacks.make_trainer`, `yolo_voc.data.VOCDataModule`)
with a narrow YOLOv3 (width 0.25, depth 0.33) at 192 px on the CPU, and are evaluated on the target set's test
split after every epoch (`map50`: the VOC2007 11-point mAP at IoU 0.5 of `yolo_voc.metrics.MeanAveragePrecision`).
The synthetic classes differ by colour, so training uses `SYNTHETIC_AUGMENT` (no hue or channel changes).

    python benchmarks/finetune_compare.py --json     # 544 training steps: 820 s measured on a busy 2-core machine
    python benchmarks/finetune_compare.py --source-epochs 1 --epochs 1 --images 24 --source-images 24  # a smoke run

Prints (with `--json`, as one JSON object): `map50` of both runs after the last epoch, the per-epoch curves
(`curves`), the first epoch at which each run reaches the random run's final mAP50 (`epochs_to_random_final`),
the source task's own mAP50, the backbone file's size, the configuration and the wall times.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch

from yolo_voc.boxes import VOC_CLASSES
from yolo_voc.darknet import load_darknet, save_darknet
from yolo_voc.data import SYNTHETIC_AUGMENT, VOCDataModule, synthetic_dataset
from yolo_voc.train import YoloModule
from yolo_voc.callbacks import make_trainer


def map50_curve(run_dir: Path) -> list[float]:
    "The validation mAP50 of each epoch, from the run's `metrics.csv` (`step,epoch,name,value`)."
    with open(run_dir / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["name"] == "val/map50"]
    return [round(float(r["value"]), 4) for r in sorted(rows, key=lambda r: int(r["epoch"]))]


def train(args, data: Path, class_names: tuple[str, ...], epochs: int, run_dir: Path, backbone: Path | None = None):
    "Train a narrow YoloModule on `data` for `epochs` (from `backbone` when given); return (module, mAP50 per epoch, seconds, load info)."
    pl.seed_everything(args.seed, verbose=False)  # same initial weights, data order and augmentation for both target runs
    dm = VOCDataModule(str(data), image_size=args.image_size, batch_size=args.batch_size, num_workers=args.workers,
                       class_names=class_names, seed=args.seed, train_split="trainval", val_split="test",
                       augment=dict(SYNTHETIC_AUGMENT))
    module = YoloModule(num_classes=len(class_names), class_names=list(class_names), width_mult=args.width_mult,
                        depth_mult=args.depth_mult, image_size=args.image_size, max_lr=args.max_lr, map_every_n_epochs=1)
    info = load_darknet(module.model, backbone) if backbone is not None else None
    trainer = make_trainer(run_dir, max_epochs=epochs, accelerator="cpu", devices=1, precision="32-true",
                           num_sanity_val_steps=0, enable_progress_bar=False, enable_checkpointing=True)
    t0 = time.perf_counter()
    trainer.fit(module, dm)
    return module, map50_curve(run_dir), round(time.perf_counter() - t0, 1), info


def first_epoch_reaching(curve: list[float], level: float) -> int | None:
    "The first epoch (1-based) whose mAP50 is at least `level`, or None."
    return next((i + 1 for i, v in enumerate(curve) if v >= level), None)


def run(args, tmp: Path) -> dict:
    size = (args.synthetic_size, args.synthetic_size * 3 // 4)
    source_classes, target_classes = tuple(VOC_CLASSES), tuple(VOC_CLASSES[:args.target_classes])
    source = synthetic_dataset(args.source_images, size, seed=args.seed + 1, class_names=source_classes)
    target = synthetic_dataset(args.images, size, seed=args.seed, class_names=target_classes)

    t0 = time.perf_counter()
    src_module, src_curve, src_seconds, _ = train(args, source, source_classes, args.source_epochs, tmp / "source")
    backbone = save_darknet(src_module.model, tmp / "source.conv.weights", backbone_only=True)
    scratch_module, scratch, scratch_seconds, _ = train(args, target, target_classes, args.epochs, tmp / "scratch")
    _, tuned, tuned_seconds, info = train(args, target, target_classes, args.epochs, tmp / "finetune", backbone)
    final = scratch[-1]
    return dict(
        map50=dict(random=final, pretrained_backbone=tuned[-1]),
        epochs_to_random_final=dict(random=first_epoch_reaching(scratch, final), pretrained_backbone=first_epoch_reaching(tuned, final)),
        curves=dict(random=scratch, pretrained_backbone=tuned),
        source=dict(map50=src_curve[-1], classes=len(source_classes), images=args.source_images, epochs=args.source_epochs,
                    seconds=src_seconds, backbone_bytes=backbone.stat().st_size, backbone_convs_loaded=len(info.loaded)),
        seconds=dict(random=scratch_seconds, pretrained_backbone=tuned_seconds, total=round(time.perf_counter() - t0, 1)),
        config=dict(width_mult=args.width_mult, depth_mult=args.depth_mult, image_size=args.image_size,
                    batch_size=args.batch_size, max_lr=args.max_lr, epochs=args.epochs, target_classes=len(target_classes),
                    images=args.images, synthetic_image_size=list(size), seed=args.seed, workers=args.workers,
                    threads=torch.get_num_threads(), torch=torch.__version__, lightning=pl.__version__),
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--images", type=int, default=240, help="target synthetic images (60%% train, 20%% val, 20%% test; trains on train+val)")
    p.add_argument("--target-classes", type=int, default=10, help="target classes: the first N synthetic classes")
    p.add_argument("--epochs", type=int, default=6, help="epochs of each target run")
    p.add_argument("--source-images", type=int, default=320, help="source synthetic images (all 20 classes, seed + 1)")
    p.add_argument("--source-epochs", type=int, default=8)
    p.add_argument("--synthetic-size", type=int, default=256, help="width of the synthetic images (height 3/4 of it)")
    p.add_argument("--image-size", type=int, default=192)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--width-mult", type=float, default=0.25)
    p.add_argument("--depth-mult", type=float, default=0.33)
    p.add_argument("--max-lr", type=float, default=2e-3, help="one-cycle peak learning rate, the same for every run")
    p.add_argument("--workers", type=int, default=1, help="data loader worker processes")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steady on a shared machine; 0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = p.parse_args(argv)
    if not 1 <= args.target_classes <= len(VOC_CLASSES): p.error(f"--target-classes must be 1..{len(VOC_CLASSES)}")
    if args.threads: torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="yolo_voc_finetune-"))
    try:
        out = run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        for k, v in out.items(): print(f"{k:>22}: {v}")
    return 0


if __name__ == "__main__":
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sys.exit(main())
