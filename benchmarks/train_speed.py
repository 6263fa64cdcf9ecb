"""Training and evaluation speed of YOLOv3 on one device (an H100 is the target; a CPU run is a smoke test).

On synthetic VOC-sized JPEGs (500 x 375, `make_synthetic_voc` into a temporary folder, `--images` of them), one
run measures, in this order:

(a) model-only training speed, on random batches already on the device (random images, about 7 random boxes per
    image, as many as a 75% mosaic batch of VOC has); each step is `encode_targets` + forward + `YoloLoss` +
    backward + optimizer step, the warm-up steps are not timed, the device is synchronized only before and after
    the timed steps (no `.item()` or other host sync in the timed loop):
    - `eager_fp32_images_per_s`: the plain path: fp32, contiguous (NCHW) memory, no `torch.compile`, AdamW with
      `fused=False` (torch's default foreach implementation), `cudnn.benchmark` off;
    - `model_only_images_per_s`: the fast path. On CUDA: bf16 autocast, channels-last memory, `torch.compile(model)`,
      fused AdamW and `cudnn.benchmark`. On CPU: channels-last memory (faster than NCHW for this model with oneDNN)
      and fused AdamW (torch has a fused CPU kernel); no autocast by default (`--amp bf16` turns it on; it only
      pays on CPUs with AMX) and no `torch.compile` by default, because compiling for the CPU takes minutes
      (`--compile` turns it on). `fast_path` in the JSON says what was used.
(b) `end_to_end_images_per_s`: the real input pipeline feeding the same fast step (same model and optimizer):
    `VOCDataModule` with 75% mosaic and the training transforms, `--workers` DataLoader workers, pinned memory
    (CUDA), persistent workers, `uint8` batches copied asynchronously and converted to float on the device.
    `--warmup` steps (worker start-up included) are excluded, then `--e2e-steps` steps run and the rate of their
    second half is reported (`end_to_end_images_per_s_all_steps`: of all of them), so that the `--workers` x 2
    batches the loader prefetched during warm-up don't count as made in the timed window.
(c) `gflop_per_image_fwd_bwd`: FLOPs of one forward + backward of the model, counted with
    `torch.utils.flop_counter.FlopCounterMode` (convolutions and matmuls; the loss and elementwise ops are not
    counted, as usual for MFU). `tflops` = that x the fast model-only rate; `mfu` = tflops / `peak_tflops`.
    The peak comes from `--peak-tflops`; without it, 800 TFLOPS (bf16 dense, a round figure between the H100
    PCIe's 756 and the SXM's 989) when the GPU's name contains "H100" and the fast path uses bf16; otherwise
    no peak is known and `mfu` is null. `tflops_end_to_end` and `mfu_end_to_end`: the same at the end-to-end rate.
(d) `eval_seconds`: one evaluation pass over `--eval-images` images (the generated images cycled; default 4952,
    the size of VOC2007 test, on CUDA, and 32 on CPU): DataLoader with letterbox transforms, batched forward in
    eval mode (bf16 autocast and channels-last on CUDA) under `inference_mode`, `decode.postprocess`,
    `unletterbox_boxes`, and `MeanAveragePrecision` (voc07 + coco) update and compute. The model weights are
    random, so by default the confidence threshold is 0 (`--eval-conf`): every image keeps up to 100 detections,
    about what a trained model gives at the usual 0.01 and the worst case for NMS and mAP.

`projected_40_epoch_minutes` = 40 x (16,551 VOC07+12 trainval images / `end_to_end_images_per_s` + one evaluation
of the 4,952 VOC07 test images at the measured evaluation rate) / 60: a 40-epoch run evaluated every epoch.

Usage:

    python benchmarks/train_speed.py --json                       # defaults for the device (see --help)
    python benchmarks/train_speed.py --json --save-results        # also write benchmarks/results/<machine>-<date>-train_speed.json
    python benchmarks/train_speed.py --json --check-compile       # also compare compiled and eager outputs

Defaults on CUDA: YOLOv3 full size (width 1.0, depth 1.0), batch 64, 416 px, 50 timed steps after 15 warm-up
steps (end to end: 300 timed steps, the rate of the last 150), 1,024 synthetic images, workers = CPU cores - 2
(at most 16). On CPU: a tiny model (width 0.125,
depth 0.33), batch 8, 160 px, 5 steps after 2, 48 images, 1 worker, 1 torch thread: a smoke run of well under a
minute on an idle machine.

The result records the machine's state and load around the run (`conditions`, see `benchmarks/conditions.py`). For
the spread check, each timed measurement synchronizes the device every `max(1, steps // 5)` steps and records the
seconds per image of each such chunk (of the second half only, end to end); the chunks' coefficient of variation
must stay under `--max-cv` for the result to be publishable.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from conditions import Conditions, add_arguments, describe, save_results
from yolo_voc.boxes import ANCHORS, STRIDES, Decoding, unletterbox_boxes
from yolo_voc.decode import postprocess
from yolo_voc.data import VOCDataModule, VOCDataset, collate, images_to_float, worker_init
from yolo_voc.loss import encode_targets
from yolo_voc.loss import YoloLoss
from yolo_voc.metrics import MeanAveragePrecision
from yolo_voc.model import YOLOv3
from yolo_voc.train import param_groups
from yolo_voc.synthetic import make_synthetic_voc
from yolo_voc.voc import load_annotations

VOC0712_TRAINVAL_IMAGES = 16551  # VOC2007 trainval + VOC2012 trainval
VOC07_TEST_IMAGES = 4952
EPOCHS = 40
H100_BF16_DENSE_TFLOPS = 800.0
BOXES_PER_IMAGE = 7  # random model-only batches: about what a 75% mosaic batch of VOC holds per image

CUDA_DEFAULTS = dict(batch_size=64, image_size=416, width_mult=1.0, depth_mult=1.0, steps=50, warmup=15,
                     images=1024, eval_images=VOC07_TEST_IMAGES,
                     workers=max(1, min(16, (os.cpu_count() or 2) - 2)))
CPU_DEFAULTS = dict(batch_size=8, image_size=160, width_mult=0.125, depth_mult=0.33, steps=5, warmup=2,
                    images=48, eval_images=32, workers=1)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--device", default="auto", help="auto (cuda when available), cuda, cuda:N or cpu")
    p.add_argument("--batch-size", type=int, help="training batch (64 on CUDA, 8 on CPU)")
    p.add_argument("--eval-batch-size", type=int, help="evaluation batch (default: the training batch)")
    p.add_argument("--image-size", type=int, help="input side in pixels, a multiple of 32 (416 on CUDA, 160 on CPU)")
    p.add_argument("--width-mult", type=float, help="model width (1.0 on CUDA, 0.125 on CPU)")
    p.add_argument("--depth-mult", type=float, help="model depth (1.0 on CUDA, 0.33 on CPU)")
    p.add_argument("--num-classes", type=int, default=20)
    p.add_argument("--steps", type=int, help="timed steps per measurement (50 on CUDA, 5 on CPU)")
    p.add_argument("--warmup", type=int, help="untimed steps before each measurement (15 on CUDA, 2 on CPU)")
    p.add_argument("--e2e-steps", type=int,
                   help="timed end-to-end steps (300 on CUDA, --steps on CPU); the rate is that of their second half")
    p.add_argument("--workers", type=int, help="DataLoader workers (CPU cores - 2, at most 16, on CUDA; 1 on CPU)")
    p.add_argument("--images", type=int, help="synthetic 500x375 JPEGs to generate (1024 on CUDA, 48 on CPU)")
    p.add_argument("--eval-images", type=int, help="images to evaluate, the generated ones cycled (4952 on CUDA, 32 on CPU)")
    p.add_argument("--eval-conf", type=float, default=0.0, help="confidence threshold of the evaluation (default 0)")
    p.add_argument("--amp", choices=["auto", "bf16", "none"], default="auto",
                   help="autocast of the fast path: auto = bf16 on CUDA (when supported), none on CPU")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels-last memory in the fast path (default on)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model in the fast path (default: on for CUDA, off for CPU)")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune (default: torch's default)")
    p.add_argument("--check-compile", action="store_true",
                   help="also compare the compiled model's outputs with eager ones (fp32, eval and train mode)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="device peak for the fast path's precision, for the MFU (default: 800 on an H100 with bf16)")
    p.add_argument("--skip-eager", action="store_true", help="skip the eager fp32 measurement")
    p.add_argument("--skip-eval", action="store_true", help="skip the evaluation measurement")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads of the main process (default: 1 on CPU, where a shared machine makes "
                        "several threads stall each other; torch's default on CUDA)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (progress goes to stderr)")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON to this file")
    add_arguments(p)
    args = p.parse_args(argv)
    args.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    cuda = args.device.type == "cuda"
    if cuda:
        if not torch.cuda.is_available(): p.error(f"--device {args.device}: CUDA is not available")
        if args.device.index is None: args.device = torch.device("cuda", torch.cuda.current_device())
    for k, v in (CUDA_DEFAULTS if cuda else CPU_DEFAULTS).items():
        if getattr(args, k) is None: setattr(args, k, v)
    args.eval_batch_size = args.eval_batch_size or args.batch_size
    if args.e2e_steps is None: args.e2e_steps = 300 if cuda else args.steps
    if args.compile is None: args.compile = cuda
    if args.threads is None and not cuda: args.threads = 1
    if args.amp == "auto": args.amp = "bf16" if cuda and torch.cuda.is_bf16_supported() else "none"
    if args.image_size % 32: p.error(f"--image-size {args.image_size} is not a multiple of 32")
    if args.steps < 1 or args.warmup < 1 or args.e2e_steps < 2: p.error("--steps and --warmup must be at least 1, --e2e-steps 2")
    return args


# -- the training step -------------------------------------------------------------------------------
def sync_fn(device: torch.device):
    "A function that waits for the device's queued work (a no-op on CPU)."
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def make_step(forward, optimizer, loss_fn, anchors, amp_dtype, channels_last: bool):
    "One training step on device tensors: images `[B, 3, H, W]` float, targets `[N, 6]`; returns the detached loss."
    device_type = anchors.device.type

    def step(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if channels_last: images = images.contiguous(memory_format=torch.channels_last)
        encoded = encode_targets(targets, images.shape[0], tuple(images.shape[-2:]), anchors, STRIDES)  # 3 x [B, 3, S, S, 6]
        with torch.autocast(device_type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            outputs = forward(images)  # 3 x [B, 3, S, S, 5+C]
            loss = loss_fn(outputs, encoded)["loss"]  # YoloLoss computes in float32 itself
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()
    return step


def random_batches(n: int, batch: int, size: int, num_classes: int, device, seed: int) -> list[tuple]:
    "`n` random training batches on `device`: images `[B, 3, S, S]` in [0, 1] and targets `[N, 6]` with boxes inside."
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        images = torch.rand(batch, 3, size, size, generator=g)  # [B, 3, S, S]
        nb = batch * BOXES_PER_IMAGE
        wh = torch.rand(nb, 2, generator=g) * 0.45 + 0.03
        cxy = wh / 2 + torch.rand(nb, 2, generator=g) * (1 - wh)
        img = torch.arange(batch).repeat_interleave(BOXES_PER_IMAGE).float()
        cls = torch.randint(0, num_classes, (nb,), generator=g).float()
        targets = torch.cat([img[:, None], cls[:, None], cxy, wh], 1)  # [N, 6]
        out.append((images.to(device), targets.to(device)))
    return out


def time_steps(step, batches, warmup: int, steps: int, sync, second_half: bool = False) -> dict:
    """Run `warmup` untimed then `steps` timed steps over `batches` (an iterator of (images, targets)); seconds and
    images. With `second_half`, the device is also synchronized after half of the steps and `images_per_s` is the
    rate of the second half (`images_per_s_all`: of all), so that batches the loader prefetched during warm-up
    don't count as produced in the timed window. The device is also synchronized every `max(1, steps // 5)` steps:
    `chunk_seconds_per_image` holds the seconds per image of each such chunk of the timed window, for the spread."""
    t0 = time.perf_counter()
    for _ in range(warmup): step(*next(batches))
    sync()
    t1 = time.perf_counter()
    half = steps // 2 if second_half else 0
    chunk = max(1, steps // 5)
    n = n_half = 0
    t_half = t1
    marks = [(t1, 0)]  # (synchronized time, images so far) at chunk boundaries
    for i in range(steps):
        if second_half and i == half: sync(); t_half, n_half = time.perf_counter(), n; marks = [(t_half, n)]
        elif i and i % chunk == 0: sync(); marks.append((time.perf_counter(), n))
        images, targets = next(batches)
        n += images.shape[0]  # a host-side shape: no sync
        loss = step(images, targets)
    sync()
    t2 = time.perf_counter()
    marks.append((t2, n))
    chunks = [(tb - ta) / (nb - na) for (ta, na), (tb, nb) in zip(marks, marks[1:]) if nb > na]
    return dict(seconds=t2 - t_half, images=n - n_half, images_per_s=(n - n_half) / (t2 - t_half),
                images_per_s_all=n / (t2 - t1), warmup_seconds=t1 - t0, loss=loss, chunk_seconds_per_image=chunks)


def cycle(items):
    while True:
        yield from items


def loader_batches(loader, device: torch.device):
    "Endless (images float `[B, 3, H, W]`, targets `[N, 6]`) on `device` from a loader of `uint8` batches."
    while True:
        for images, targets, _ in loader:  # EpochSampler: each pass is the next epoch
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            yield images_to_float(images), targets  # uint8 -> float / 255 on the device


def count_flops(model: torch.nn.Module, size: int, device: torch.device, batch: int = 2) -> float:
    "FLOPs per image of one forward + backward of `model` (train mode, fp32) at `size`, by `FlopCounterMode`."
    from torch.utils.flop_counter import FlopCounterMode
    model.train()
    x = torch.rand(batch, 3, size, size, device=device)  # [B, 3, S, S]
    with FlopCounterMode(display=False) as counter:
        outputs = model(x)
        sum(o.float().sum() for o in outputs).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def check_compile(model: torch.nn.Module, size: int, device: torch.device, mode: str | None, batch: int = 2) -> dict:
    "Max abs difference between compiled and eager fp32 outputs of a copy of `model`, in eval and train mode."
    m = copy.deepcopy(model).float()
    compiled = torch.compile(m, mode=mode)
    x = torch.rand(batch, 3, size, size, device=device, generator=torch.Generator(device).manual_seed(1))
    out, t0 = {}, time.perf_counter()
    with torch.no_grad():
        for name, train in (("eval", False), ("train", True)):  # eval first: a train forward updates BN statistics
            m.train(train)
            ref = m(x)
            got = compiled(x)
            diff = max(float((a - b).abs().max()) for a, b in zip(ref, got))
            scale = max(float(a.abs().max()) for a in ref)
            out[f"max_abs_diff_{name}"] = diff
            out[f"max_abs_output_{name}"] = scale
    # TF32 convolutions (cudnn's default) make CUDA results differ more than CPU ones
    tol = 1e-2 if device.type == "cuda" else 1e-4
    out["tolerance_relative"] = tol
    out["ok"] = all(out[f"max_abs_diff_{k}"] <= tol * max(1.0, out[f"max_abs_output_{k}"]) for k in ("eval", "train"))
    out["seconds"] = time.perf_counter() - t0
    return out


# -- evaluation --------------------------------------------------------------------------------------
@torch.inference_mode()
def evaluate_speed(model, loader, device, amp_dtype, channels_last: bool, num_classes: int, conf: float) -> dict:
    "One pass over `loader`: forward, postprocess, unletterbox, mAP (voc07 + coco); seconds and counts."
    sync = sync_fn(device)
    model.eval()
    metric = MeanAveragePrecision(num_classes, methods=("voc07", "coco")).to(device)
    sync()
    t0 = time.perf_counter()
    n_images = n_dets = 0
    for images, _, infos in loader:
        images = images_to_float(images.to(device, non_blocking=True))  # [B, 3, S, S]
        if channels_last: images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            outputs = model(images)  # 3 x [B, 3, S, S, 5+C]
        dets = postprocess(outputs, Decoding(), conf_threshold=conf, iou_threshold=0.45, max_detections=100)
        for d, info in zip(dets, infos):  # back to original image pixels
            d["boxes"] = unletterbox_boxes(d["boxes"], info["letterbox"])
            n_dets += len(d["scores"])
        gts = [dict(boxes=i["boxes"], labels=i["labels"], difficult=i["difficult"]) for i in infos]
        metric.update(dets, gts, torch.tensor([i["index"] for i in infos]))
        n_images += len(infos)
    t_fwd = time.perf_counter()
    res = metric.compute()
    sync()
    t1 = time.perf_counter()
    return dict(seconds=t1 - t0, map_seconds=t1 - t_fwd, images=n_images, detections=int(n_dets),
                map50=float(res["map50"]), map=float(res["map"]))


# -- the run -----------------------------------------------------------------------------------------
def gpu_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def default_peak(args, gpu: str) -> float | None:
    if args.peak_tflops is not None: return args.peak_tflops
    if args.device.type == "cuda" and "H100" in gpu and args.amp == "bf16": return H100_BF16_DENSE_TFLOPS
    return None


def run(args, tmp: Path, cond: Conditions | None = None) -> dict:
    "All the measurements (their repeated timings go to `cond`); the synthetic dataset goes into the folder `tmp`."
    cond = cond or Conditions(name="train_speed")
    device, cuda = args.device, args.device.type == "cuda"
    if cuda: torch.cuda.set_device(device)
    if args.threads: torch.set_num_threads(args.threads)
    sync = sync_fn(device)
    gpu = gpu_name(device)
    amp_dtype = torch.bfloat16 if args.amp == "bf16" else None
    torch.manual_seed(args.seed)
    out = dict(gpu=gpu, device=str(device), torch=torch.__version__, batch_size=args.batch_size,
               image_size=args.image_size, width_mult=args.width_mult, depth_mult=args.depth_mult,
               num_classes=args.num_classes, steps=args.steps, warmup=args.warmup, workers=args.workers,
               cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(),
               cpu=platform.processor() or platform.machine())
    log(f"train_speed: {gpu} ({device}), torch {torch.__version__}, batch {args.batch_size}, {args.image_size} px, "
        f"width {args.width_mult}, depth {args.depth_mult}")

    base = YOLOv3(args.num_classes, args.width_mult, args.depth_mult).to(device)  # the same initial weights for both paths
    out["parameters"] = sum(p.numel() for p in base.parameters())
    flops = count_flops(base, args.image_size, device)
    out["gflop_per_image_fwd_bwd"] = flops / 1e9
    log(f"  {out['parameters']:,} parameters, {flops / 1e9:.2f} GFLOP per image forward + backward")
    batches = random_batches(4, args.batch_size, args.image_size, args.num_classes, device, args.seed)
    loss_fn = YoloLoss(ANCHORS).to(device)  # what training uses: its defaults are training's
    anchors = ANCHORS.to(device)
    peak_mem = {}

    # (a) eager fp32 --------------------------------------------------------------------------------
    if not args.skip_eager:
        if cuda: torch.backends.cudnn.benchmark = False; torch.cuda.reset_peak_memory_stats(device)
        model = copy.deepcopy(base).train()
        opt = torch.optim.AdamW(param_groups(model, 5e-4), lr=1e-4, fused=False)
        try:
            r = time_steps(make_step(model, opt, loss_fn, anchors, None, False), cycle(batches), args.warmup, args.steps, sync)
            out["eager_fp32_images_per_s"] = r["images_per_s"]
            out["eager_fp32_loss_finite"] = bool(torch.isfinite(r["loss"]))
            cond.add_timings("eager_fp32_seconds_per_image", r["chunk_seconds_per_image"])
            log(f"  eager fp32: {r['images_per_s']:.1f} images/s")
        except torch.OutOfMemoryError as e:  # fp32 activations are twice bf16's: a batch the fast path fits may not fit here
            out["eager_fp32_images_per_s"] = None
            out["eager_fp32_error"] = f"out of memory at batch {args.batch_size}: {str(e)[:200]}"
            log(f"  eager fp32: {out['eager_fp32_error']}")
            r = None
        if cuda: peak_mem["eager_fp32"] = torch.cuda.max_memory_allocated(device) / 2**30
        del model, opt, r
        if cuda: torch.cuda.empty_cache()

    # (a) fast path ---------------------------------------------------------------------------------
    if cuda: torch.backends.cudnn.benchmark = True; torch.cuda.reset_peak_memory_stats(device)
    model = copy.deepcopy(base).train()
    if args.channels_last: model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(param_groups(model, 5e-4), lr=1e-4, fused=True)
    forward = torch.compile(model, mode=args.compile_mode) if args.compile else model
    out["fast_path"] = dict(amp=args.amp, channels_last=args.channels_last, compile=args.compile,
                            compile_mode=args.compile_mode, fused_adamw=True, cudnn_benchmark=cuda)
    step = make_step(forward, opt, loss_fn, anchors, amp_dtype, args.channels_last)
    data = cycle(batches)
    if args.compile:  # compile on the first call; fall back to eager (and say so) when the compiler fails
        t0 = time.perf_counter()
        try:
            step(*next(data)); sync()
            out["fast_path"]["compile_seconds"] = time.perf_counter() - t0  # the first compiled step
        except Exception as e:  # e.g. no C++ compiler / Triton
            log(f"  torch.compile failed, using eager: {type(e).__name__}: {e}")
            out["fast_path"].update(compile=False, compile_error=f"{type(e).__name__}: {e}"[:500])
            forward = model
            step = make_step(forward, opt, loss_fn, anchors, amp_dtype, args.channels_last)
    r = time_steps(step, data, args.warmup, args.steps, sync)
    out["model_only_images_per_s"] = r["images_per_s"]
    out["model_only_loss_finite"] = bool(torch.isfinite(r["loss"]))
    cond.add_timings("model_only_seconds_per_image", r["chunk_seconds_per_image"])
    if cuda: peak_mem["model_only"] = torch.cuda.max_memory_allocated(device) / 2**30
    log(f"  fast path ({out['fast_path']}): {r['images_per_s']:.1f} images/s")
    if out.get("eager_fp32_images_per_s"):
        out["speedup_vs_eager_fp32"] = out["model_only_images_per_s"] / out["eager_fp32_images_per_s"]

    # (c) FLOP rate and MFU -------------------------------------------------------------------------
    out["tflops"] = flops * out["model_only_images_per_s"] / 1e12
    out["peak_tflops"] = default_peak(args, gpu)
    out["mfu"] = out["tflops"] / out["peak_tflops"] if out["peak_tflops"] else None

    # (b) end to end --------------------------------------------------------------------------------
    t0 = time.perf_counter()
    make_synthetic_voc(tmp, n_images=args.images, image_size=(500, 375), seed=args.seed)
    log(f"  {args.images} synthetic 500x375 images in {time.perf_counter() - t0:.1f} s")
    dm = VOCDataModule(str(tmp), image_size=args.image_size, batch_size=args.batch_size, num_workers=args.workers,
                       mosaic_prob=0.75, train_split="trainval", test_split="test", seed=args.seed,
                       uint8_images=True, pin_memory=cuda, class_names=None)
    dm.setup("fit")
    if len(dm.train_dataset) <= args.batch_size:
        raise SystemExit(f"train_speed.py: {len(dm.train_dataset)} training images (80% of --images {args.images}) "
                         f"do not fill a batch of {args.batch_size}: raise --images")
    if cuda: torch.cuda.reset_peak_memory_stats(device)
    model.train()
    r = time_steps(step, loader_batches(dm.train_dataloader(), device), args.warmup, args.e2e_steps, sync, second_half=True)
    out["end_to_end_images_per_s"] = r["images_per_s"]
    out["end_to_end_images_per_s_all_steps"] = r["images_per_s_all"]
    out["end_to_end_steps"] = args.e2e_steps
    out["prefetched_batches"] = args.workers * 2  # the loader's queue (prefetch_factor 2) at the start of timing
    out["end_to_end_loss_finite"] = bool(torch.isfinite(r["loss"]))
    cond.add_timings("end_to_end_seconds_per_image", r["chunk_seconds_per_image"])
    out["train_images"] = len(dm.train_dataset)
    out["tflops_end_to_end"] = flops * out["end_to_end_images_per_s"] / 1e12
    out["mfu_end_to_end"] = out["tflops_end_to_end"] / out["peak_tflops"] if out["peak_tflops"] else None
    if cuda: peak_mem["end_to_end"] = torch.cuda.max_memory_allocated(device) / 2**30
    log(f"  end to end ({args.workers} workers): {r['images_per_s']:.1f} images/s")

    # (d) evaluation --------------------------------------------------------------------------------
    if not args.skip_eval:
        anns = load_annotations(tmp, split="trainval") + load_annotations(tmp, split="test")
        anns = (anns * math.ceil(args.eval_images / len(anns)))[:args.eval_images]
        ds = VOCDataset(anns, args.image_size, train=False, uint8=True)
        kw = dict(worker_init_fn=worker_init, prefetch_factor=2) if args.workers > 0 else {}
        loader = DataLoader(ds, batch_size=args.eval_batch_size, shuffle=False, num_workers=args.workers,
                            collate_fn=collate, pin_memory=cuda, **kw)
        e = evaluate_speed(model, loader, device, amp_dtype, args.channels_last, args.num_classes, args.eval_conf)
        out.update(eval_seconds=e["seconds"], eval_images=e["images"], eval_batch_size=args.eval_batch_size,
                   eval_images_per_s=e["images"] / e["seconds"], eval_map_seconds=e["map_seconds"],
                   eval_detections=e["detections"], eval_conf=args.eval_conf)
        log(f"  evaluation of {e['images']} images: {e['seconds']:.2f} s ({e['detections']} detections, "
            f"mAP {e['map_seconds']:.2f} s)")

    # projection ------------------------------------------------------------------------------------
    train_s = VOC0712_TRAINVAL_IMAGES / out["end_to_end_images_per_s"]
    eval_s = VOC07_TEST_IMAGES / out["eval_images_per_s"] if "eval_images_per_s" in out else 0.0
    out["projected_40_epoch_minutes"] = EPOCHS * (train_s + eval_s) / 60
    out["projection"] = dict(epochs=EPOCHS, train_images_per_epoch=VOC0712_TRAINVAL_IMAGES,
                             eval_images_per_epoch=VOC07_TEST_IMAGES if eval_s else 0,
                             train_minutes=EPOCHS * train_s / 60, eval_minutes=EPOCHS * eval_s / 60)
    if cuda: out["peak_memory_gb"] = peak_mem

    if args.check_compile:
        out["compile_check"] = check_compile(base, args.image_size, device, args.compile_mode)
        log(f"  compile check: {out['compile_check']}")
    out["date"] = datetime.datetime.now().isoformat(timespec="seconds")
    return out


def rounded(x):
    if isinstance(x, float): return float(f"{x:.4g}")
    if isinstance(x, dict): return {k: rounded(v) for k, v in x.items()}
    return x


def main(argv=None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="yolo_voc_train_speed-"))
    # the run's own busy threads: the main process's torch threads and the DataLoader workers
    cond = Conditions.from_args(args, "train_speed", own_threads=(args.threads or torch.get_num_threads()) + args.workers)
    cond.start()
    try:
        out = rounded(run(args, tmp, cond))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["conditions"] = cond.finish()
    text = json.dumps(out, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        log(f"  wrote {args.out}")
    if args.save_results: save_results("train_speed", out, args)
    if args.json:
        print(text)
    else:
        for k, v in out.items():
            if k != "conditions": print(f"{k:>28}: {v}")
        print(f"{'conditions':>28}: {describe(out['conditions'])}")
    return 0


if __name__ == "__main__":
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        sys.exit(main())
