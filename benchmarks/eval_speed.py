"""Speed of yolo_voc.metrics.mean_average_precision against pycocotools, on the same random detections.

A VOC-like test set: N images (default 5,000) of 500 x 375 or 375 x 500 pixels with about 3 ground truths each
(20 classes, 10% difficult), about 50 detections per image: jittered copies of the ground truths (mostly of
the right class, higher scores) plus random false positives. Times, on one CPU thread:

- `seconds`: the project's COCO-style mAP (method "coco"), from the per-image lists of tensors to the result;
- `voc07_seconds`, `voc12_seconds`: the VOC devkit methods on the same data;
- `pycocotools_seconds`: pycocotools from the same tensors: building the COCO ground truth and results objects,
  evaluate(), accumulate() and summarize(); `pycocotools_eval_seconds`: evaluate() + accumulate() alone.

Difficult boxes go to pycocotools as iscrowd=1, the project's "coco" semantics. Each time is the best of
`--repeat` runs after one untimed run (pycocotools runs once). The result records the machine's state and load
(`conditions`, see `benchmarks/conditions.py`); the spread of the repeated runs of each method is checked.
Usage: `python benchmarks/eval_speed.py [--images 5000] [--dets 50] [--json] [--save-results]`.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core, before numpy and torch load

import argparse
import contextlib
import io
import json
import platform
import time

import numpy as np
import torch

from conditions import Conditions, add_arguments, describe, save_results
from yolo_voc.metrics import mean_average_precision


def make_data(n_images: int, dets_per_image: int, gts_per_image: float, num_classes: int, seed: int):
    "Per-image preds and targets (lists of dicts of tensors) of a random VOC-like test set."
    rng = np.random.default_rng(seed)
    preds, targets = [], []
    for _ in range(n_images):
        w, h = (500, 375) if rng.random() < 0.7 else (375, 500)
        m = max(1, int(rng.poisson(gts_per_image)))
        wh = np.minimum(rng.lognormal(np.log(120), 0.6, (m, 2)), [w, h])
        xy = rng.uniform(0, 1, (m, 2)) * ([w, h] - wh)
        gt = np.round(np.concatenate([xy, xy + wh], 1))  # whole pixels, as VOC annotations
        glab = rng.integers(0, num_classes, m)
        n = max(0, int(rng.normal(dets_per_image, dets_per_image / 10)))
        n_true = min(n, int(rng.integers(m, 4 * m + 1)))  # jittered copies of the ground truths
        src = rng.integers(0, m, n_true)
        size = np.tile(wh[src], 2)
        jit = gt[src] + rng.normal(0, 1, (n_true, 4)) * size * rng.uniform(0.02, 0.3, (n_true, 1))
        jlab = np.where(rng.random(n_true) < 0.85, glab[src], rng.integers(0, num_classes, n_true))
        fwh = rng.lognormal(np.log(80), 0.8, (n - n_true, 2))
        fxy = rng.uniform(0, 1, (n - n_true, 2)) * [w, h]
        boxes = np.concatenate([jit, np.concatenate([fxy, fxy + fwh], 1)])
        boxes = np.clip(boxes, 0, [w, h, w, h])
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        labels = np.concatenate([jlab, rng.integers(0, num_classes, n - n_true)])
        scores = np.concatenate([rng.beta(4, 2, n_true), rng.beta(1, 4, n - n_true)])
        targets.append(dict(boxes=torch.tensor(gt, dtype=torch.float32), labels=torch.tensor(glab),
                            difficult=torch.tensor(rng.random(m) < 0.1)))
        preds.append(dict(boxes=torch.tensor(boxes, dtype=torch.float32), scores=torch.tensor(scores, dtype=torch.float32),
                          labels=torch.tensor(labels)))
    return preds, targets


def run_pycocotools(preds, targets, num_classes: int) -> tuple[float, float, float]:
    "pycocotools' mAP@[.5:.95] of the same data; (map, total seconds, evaluate + accumulate seconds)."
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    t0 = time.perf_counter()
    images, anns, dets = [], [], []
    for i, (p, t) in enumerate(zip(preds, targets)):
        images.append(dict(id=i + 1, width=500, height=500))
        for box, label, diff in zip(t["boxes"].tolist(), t["labels"].tolist(), t["difficult"].tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            anns.append(dict(id=len(anns) + 1, image_id=i + 1, category_id=label + 1, bbox=[box[0], box[1], w, h],
                             area=w * h, iscrowd=int(diff)))
        for box, score, label in zip(p["boxes"].tolist(), p["scores"].tolist(), p["labels"].tolist()):
            dets.append(dict(image_id=i + 1, category_id=label + 1, score=score,
                             bbox=[box[0], box[1], box[2] - box[0], box[3] - box[1]]))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = dict(images=images, annotations=anns, categories=[dict(id=c + 1, name=str(c)) for c in range(num_classes)])
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        t1 = time.perf_counter()
        ev.evaluate()
        ev.accumulate()
        t2 = time.perf_counter()
        ev.summarize()
    return float(ev.stats[0]), time.perf_counter() - t0, t2 - t1


def best_time(fn, repeat: int, times: list | None = None):
    "(result, best wall time in seconds) of `repeat` calls after one untimed call; each time is appended to `times`."
    out, best = fn(), float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        t = time.perf_counter() - t0
        best = min(best, t)
        if times is not None: times.append(t)
    return out, best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--dets", type=int, default=50, help="detections per image (about)")
    ap.add_argument("--gts", type=float, default=3.0, help="ground truths per image (Poisson mean)")
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="runs of the project's methods (the best counts)")
    ap.add_argument("--no-pycocotools", action="store_true", help="skip the (slow) pycocotools run")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    add_arguments(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cond = Conditions.from_args(args, "eval_speed", own_threads=1).start()

    preds, targets = make_data(args.images, args.dets, args.gts, args.classes, args.seed)
    C = args.classes
    times = dict(seconds=[], voc07_seconds=[], voc12_seconds=[])
    res, seconds = best_time(lambda: mean_average_precision(preds, targets, method="coco", num_classes=C), args.repeat,
                             times["seconds"])
    v07, voc07_seconds = best_time(lambda: mean_average_precision(preds, targets, method="voc07", num_classes=C),
                                   args.repeat, times["voc07_seconds"])
    v12, voc12_seconds = best_time(lambda: mean_average_precision(preds, targets, method="voc12", num_classes=C),
                                   args.repeat, times["voc12_seconds"])
    out = dict(images=args.images, detections=int(sum(len(p["scores"]) for p in preds)),
               ground_truths=int(sum(len(t["labels"]) for t in targets)), classes=C,
               seconds=round(seconds, 4), voc07_seconds=round(voc07_seconds, 4), voc12_seconds=round(voc12_seconds, 4),
               map=res["map"], map50=res["map50"], map50_voc07=v07["map"], map50_voc12=v12["map"])
    if not args.no_pycocotools:
        ref, py_seconds, py_eval = run_pycocotools(preds, targets, C)
        out.update(pycocotools_seconds=round(py_seconds, 3), pycocotools_eval_seconds=round(py_eval, 3),
                   ratio=round(py_seconds / seconds, 1), eval_ratio=round(py_eval / seconds, 1),
                   map_pycocotools=ref, abs_diff=abs(res["map"] - ref))
    out.update(threads=torch.get_num_threads(), cpu=platform.processor() or platform.machine(), numpy=np.__version__)
    for key, ts in times.items(): cond.add_timings(key, ts)
    out["conditions"] = cond.finish()
    if args.save_results: save_results("eval_speed", out, args)
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            if k != "conditions": print(f"{k:>26}: {v}")
        print(f"{'conditions':>26}: {describe(out['conditions'])}")


if __name__ == "__main__":
    main()
