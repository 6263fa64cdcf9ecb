"""Inference latency per image of YOLOv3 at 416 on the CPU, side by side in one run: eager PyTorch, ONNX Runtime fp32
and ONNX Runtime int8 (static QDQ quantisation, as `yolo-voc export --format onnx --int8` writes it), at batch 1 with
2 threads by default; when CUDA is there, eager PyTorch on the GPU too (fp32 and bf16 autocast).

    python benchmarks/infer_speed.py                       # full model (width 1.0), batch 1, 2 threads
    python benchmarks/infer_speed.py --width-mult 0.25 --depth-mult 0.33 --repeats 5   # a quick run
    python benchmarks/infer_speed.py --json --save-results --wait-idle 300              # the README's figure

The CPU engines are timed in interleaved rounds (one call of each per round), so that a change in the machine's
load hits all of them alike; each figure is the median over the rounds after `--warmup` rounds, and `ratios` are
the medians' ratios to eager PyTorch (goals: ONNX fp32 at most 0.7, int8 at most 0.4). Raw head outputs (the
network only); `Detector.predict` at batch 1 (letterbox, network, NMS, boxes mapped back) is timed with the eager
network and with the int8 ONNX file. The result records the machine's state and load (`conditions`, see
`benchmarks/conditions.py`).

Weights are random (latency doesn't depend on them), with BatchNorm statistics calibrated on random images so that
no activation is a subnormal float (see `calibrate_batchnorm`); int8 is calibrated on a few synthetic images.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from conditions import Conditions, add_arguments, describe, save_results
from yolo_voc.export import export_onnx, load_onnx_detector, onnx_session, quantize_int8
from yolo_voc.model import YOLOv3
from yolo_voc.predict import Detector
from yolo_voc.synthetic import make_synthetic_voc

GOALS = {"onnx_fp32": 0.7, "onnx_int8": 0.4}  # per-image time as a fraction of eager PyTorch's, at most


def timeit(fn, warmup: int, repeats: int, max_seconds: float, sync=lambda: None) -> list[float]:
    "Seconds per call of `fn` for up to `repeats` calls after `warmup` calls (fewer when `max_seconds` runs out)."
    for _ in range(warmup): fn()
    sync()
    times, start = [], time.perf_counter()
    for _ in range(repeats):
        t = time.perf_counter(); fn(); sync(); times.append(time.perf_counter() - t)
        if time.perf_counter() - start > max_seconds: break
    return times


def timeit_interleaved(fns: dict, warmup: int, repeats: int, max_seconds: float) -> dict[str, list[float]]:
    "Seconds per call of each of `fns`, timed in rounds of one call each (after `warmup` rounds)."
    for _ in range(warmup):
        for fn in fns.values(): fn()
    times, start = {k: [] for k in fns}, time.perf_counter()
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter(); fn(); times[k].append(time.perf_counter() - t)
        if time.perf_counter() - start > max_seconds: break
    return times


def calibrate_batchnorm(model: torch.nn.Module, size: int, steps: int = 2) -> torch.nn.Module:
    """Set BatchNorm running statistics from a few random batches, so that activations have the scale of a trained
    network. With the initial statistics (mean 0, variance 1) activations shrink layer after layer until they are
    subnormal floats, which CPUs process many times slower: the timings would measure that, not the network."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats(); m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for _ in range(steps): model(torch.rand(2, 3, size, size))
    return model.eval()


def row(engine: str, device: str, batch: int, times: list[float]) -> dict:
    med = statistics.median(times)
    return dict(engine=engine, device=device, batch=batch, runs=len(times), batch_ms=round(med * 1e3, 2),
                per_image_ms=round(med * 1e3 / batch, 2), images_per_s=round(batch / med, 2))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width-mult", type=float, default=1.0)
    p.add_argument("--depth-mult", type=float, default=1.0)
    p.add_argument("--num-classes", type=int, default=20)
    p.add_argument("--size", type=int, default=416)
    p.add_argument("--batches", type=int, nargs="+", default=[1])
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--max-seconds", type=float, default=120.0, help="time budget per batch size (all CPU engines)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch and ONNX Runtime (default 2)")
    p.add_argument("--calib-images", type=int, default=8, help="synthetic images that calibrate int8 (default 8)")
    p.add_argument("--no-onnx", action="store_true", help="eager PyTorch only")
    p.add_argument("--no-cuda", action="store_true")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    add_arguments(p)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    cond = Conditions.from_args(args, "infer_speed", own_threads=args.threads).start()
    torch.manual_seed(0)
    model = calibrate_batchnorm(YOLOv3(args.num_classes, args.width_mult, args.depth_mult), args.size)
    names = [f"class{i}" for i in range(args.num_classes)]
    det = Detector(model, names, image_size=args.size)
    n_params = sum(p.numel() for p in model.parameters())
    rows, ratios = [], {}
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else (lambda *a: print(*a, flush=True))
    log(f"YOLOv3 width {args.width_mult} depth {args.depth_mult}: {n_params:,} parameters, input {args.size}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    image = np.random.default_rng(0).integers(0, 255, (375, 500, 3), dtype=np.uint8)

    with tempfile.TemporaryDirectory() as d:
        engines, sessions = {}, {}
        if not args.no_onnx:
            try:
                import onnxruntime as ort
            except ImportError:
                log('onnxruntime is not installed (pip install "yolo_voc[export]"): eager PyTorch only')
            else:
                voc = make_synthetic_voc(Path(d) / "calib", n_images=max(3, args.calib_images), class_names=names[:min(20, len(names))])
                calib = sorted((voc / "JPEGImages").glob("*.jpg"))[:args.calib_images]
                paths = {"onnx_fp32": export_onnx(det, Path(d) / "fp32.onnx"),
                         "onnx_int8": quantize_int8(det, Path(d) / "int8.onnx", calib)}
                sessions = {k: onnx_session(v, args.threads) for k, v in paths.items()}  # created once, reused
                engines = {"onnx_fp32": f"onnxruntime {ort.__version__} fp32",
                           "onnx_int8": f"onnxruntime {ort.__version__} int8 (QDQ, per-channel)"}
        for b in args.batches:
            x = torch.rand(b, 3, args.size, args.size)
            xn = x.numpy()
            fns = {"eager": lambda: model(x)}
            fns.update({k: (lambda s=s: s.run(None, {"images": xn})) for k, s in sessions.items()})
            with torch.inference_mode():
                times = timeit_interleaved(fns, args.warmup, args.repeats, args.max_seconds)
            for k, ts in times.items():
                rows.append(row(engines.get(k, "torch eager"), "cpu", b, ts)); log(rows[-1])
                cond.add_timings(f"{k}_batch{b}", ts)
            eager = statistics.median(times["eager"])
            for k in sessions:
                ratios[f"{k}_vs_eager_batch{b}"] = round(statistics.median(times[k]) / eager, 3)
        predict = {"Detector.predict eager (letterbox+model+NMS)": det}
        if sessions: predict["Detector.predict onnx int8 (letterbox+model+NMS)"] = load_onnx_detector(paths["onnx_int8"], threads=args.threads)
        times = timeit_interleaved({k: (lambda v=v: v.predict(image, conf=0.25)) for k, v in predict.items()},
                                   args.warmup, args.repeats, args.max_seconds)
        for k, ts in times.items():
            rows.append(row(k, "cpu", 1, ts)); log(rows[-1])
            cond.add_timings(k, ts)

    if torch.cuda.is_available() and not args.no_cuda:
        gpu = torch.cuda.get_device_name(0)
        m = model.to("cuda")
        tw = dict(warmup=args.warmup, repeats=args.repeats, max_seconds=args.max_seconds)
        for b in args.batches:
            x = torch.rand(b, 3, args.size, args.size, device="cuda")
            with torch.inference_mode():
                rows.append(row("torch eager fp32", gpu, b, timeit(lambda: m(x), sync=torch.cuda.synchronize, **tw)))
                log(rows[-1])
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    rows.append(row("torch eager bf16 autocast", gpu, b, timeit(lambda: m(x), sync=torch.cuda.synchronize, **tw)))
                log(rows[-1])

    goals = {k: dict(ratio=v, goal=GOALS[k.split("_vs_")[0]], met=v <= GOALS[k.split("_vs_")[0]]) for k, v in ratios.items()}
    result = dict(model=dict(width_mult=args.width_mult, depth_mult=args.depth_mult, num_classes=args.num_classes,
                             parameters=n_params), size=args.size, cpu=platform.processor() or platform.machine(),
                  cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(), torch=torch.__version__,
                  results=rows, ratios=ratios, goals=goals)
    result["conditions"] = cond.finish()
    if args.save_results: save_results("infer_speed", result, args)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"\n{'engine':50} {'device':28} {'batch':>5} {'runs':>4} {'ms/batch':>10} {'ms/image':>9} {'img/s':>8}")
        for r in rows:
            print(f"{r['engine']:50} {r['device']:28} {r['batch']:>5} {r['runs']:>4} {r['batch_ms']:>10} "
                  f"{r['per_image_ms']:>9} {r['images_per_s']:>8}")
        for k, g in goals.items():
            print(f"{k}: {g['ratio']:.3f} (goal at most {g['goal']}: {'met' if g['met'] else 'NOT met'})")
        print(f"conditions: {describe(result['conditions'])}")
    return 0


if __name__ == "__main__":
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        sys.exit(main())
