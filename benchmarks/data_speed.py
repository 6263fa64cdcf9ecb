"""Training data pipeline speed per CPU core, against plain JPEG decoding of the same files.

Generates a synthetic VOC dataset of VOC-sized JPEGs (500x375 by default) with `make_synthetic_voc`, then, in one
process with one torch and one OpenCV thread, measures:

- `decode_per_s`: full-resolution `cv2.imread` (+ BGR->RGB, i.e. `yolo_voc.transforms.read_image` given the record's
  EXIF orientation, the decoder the dataset uses) of the training images;
- `samples_per_s`: `VOCDataset(train=True)` samples at `--size` with the default training transforms and
  `--mosaic` mosaic probability (decode, mosaic, Albumentations, float tensor, target), fetched in batches of
  `--batch` through `__getitems__` exactly as a DataLoader worker does (mosaic partners from the batch, each
  image decoded once), in `EpochSampler` order, then `collate`d;
- `samples_per_s_single`: the same samples one `ds[i]` at a time (partners from the whole dataset, 3 extra
  reduced-size decodes per mosaic), for comparison.

The ratio `samples_per_s / decode_per_s` is the figure of merit (target >= 0.2). Both are measured in the same
run, interleaved batch by batch so that all see the same machine load, and the times are summed. The result
records the machine's state and load (`conditions`, see `benchmarks/conditions.py`); the spread checked is that
of the seconds per sample of each of the `--rounds` rounds, for decoding and for the training samples.

    python benchmarks/data_speed.py --json --save-results
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import torch

from conditions import Conditions, add_arguments, describe, save_results
from yolo_voc.data import EpochSampler, VOCDataset, collate
from yolo_voc.transforms import read_image
from yolo_voc.synthetic import make_synthetic_voc
from yolo_voc.voc import load_annotations


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200, help="synthetic images to generate")
    ap.add_argument("--width", type=int, default=500)
    ap.add_argument("--height", type=int, default=375)
    ap.add_argument("--size", type=int, default=416, help="training input size")
    ap.add_argument("--mosaic", type=float, default=0.75, help="mosaic probability")
    ap.add_argument("--samples", type=int, default=400, help="training samples per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16, help="batch size (samples per interleaved chunk)")
    ap.add_argument("--data", type=str, default=None, help="use this dataset folder instead of a synthetic one")
    ap.add_argument("--split", type=str, default="trainval")
    ap.add_argument("--float", action="store_true",
                    help="float32 images from the workers (VOCDataModule's default is uint8, converted on the device)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    add_arguments(ap)
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    cond = Conditions.from_args(args, "data_speed", own_threads=1).start()
    if args.data is None:
        root = Path(tempfile.mkdtemp()) / "synth"
        make_synthetic_voc(root, n_images=args.images, image_size=(args.width, args.height), seed=0)
    else:
        root = Path(args.data)
    anns = load_annotations(root, split=args.split)
    ds = VOCDataset(anns, size=args.size, train=True, mosaic_prob=args.mosaic, seed=0, uint8=not args.float)
    files = [(a.image_path, a.orientation) for a in anns]  # the orientation the check read: no header read again

    sampler = EpochSampler(len(ds), shuffle=True, seed=0)
    order = [it for _ in range(args.rounds * args.samples // len(ds) + 2) for it in sampler]
    for i in range(20): ds[(i % len(ds), 999)]; read_image(*files[i % len(files)])  # warm up
    # interleave one batch of each measurement at a time, so that all see the same machine load; sum the times
    t_dec = t_smp = t_one = 0.0
    n = mosaics = 0
    per_round = [dict(n=0, dec=0.0, smp=0.0) for _ in range(args.rounds)]  # for the spread check
    for start in range(0, args.rounds * args.samples, args.batch):
        items = order[start:start + args.batch]
        t0 = time.perf_counter()
        for i, _ in items: read_image(*files[i])
        t1 = time.perf_counter()
        images, targets, infos = collate(ds.__getitems__(items))
        t2 = time.perf_counter()
        for it in items: ds[it]
        t3 = time.perf_counter()
        t_dec += t1 - t0; t_smp += t2 - t1; t_one += t3 - t2
        n += len(items); mosaics += sum(info["mosaic"] for info in infos)
        r = per_round[min(start // args.samples, args.rounds - 1)]
        r["n"] += len(items); r["dec"] += t1 - t0; r["smp"] += t2 - t1
    samples, decode, single = n / t_smp, n / t_dec, n / t_one
    out = dict(samples_per_s=round(samples, 1), decode_per_s=round(decode, 1),
               ratio=round(samples / decode, 3), mosaic_fraction=round(mosaics / n, 3),
               samples_per_s_single=round(single, 1), ratio_single=round(single / decode, 3), batch=args.batch,
               size=args.size, images=len(files), image_size=[args.width, args.height] if args.data is None else None,
               threads=1, uint8=not args.float)
    cond.add_timings("decode_seconds_per_sample", [r["dec"] / r["n"] for r in per_round if r["n"]])
    cond.add_timings("samples_seconds_per_sample", [r["smp"] / r["n"] for r in per_round if r["n"]])
    out["conditions"] = cond.finish()
    if args.save_results: save_results("data_speed", out, args)
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            if k != "conditions": print(f"{k:>16}: {v}")
        print(f"{'conditions':>16}: {describe(out['conditions'])}")
    return out


if __name__ == "__main__":
    main()
