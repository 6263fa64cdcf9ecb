"""Inference latency per image of YOLOv3 at 416: eager PyTorch (CPU), ONNX Runtime (CPU) and, when CUDA is there,
eager PyTorch on the GPU (fp32 and bf16 autocast), at batch 1 and 32. Raw head outputs (the network only); the
end-to-end `Detector.predict` (decode, letterbox, NMS, mapping back) at batch 1 is timed beside it.

    python benchmarks/infer_speed.py                       # full model (width 1.0), batches 1 and 32
    python benchmarks/infer_speed.py --width-mult 0.25 --depth-mult 0.33 --batches 1 4   # a quick run
    python benchmarks/infer_speed.py --json                # machine-readable

Weights are random (latency doesn't depend on them), with BatchNorm statistics calibrated on random images so
that no activation is a subnormal float (see `calibrate_batchnorm`). Each figure is the median over `--repeats` timed runs after
`--warmup` runs; a configuration stops early once it has used `--max-seconds`.
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

from yolo_voc.model import YOLOv3
from yolo_voc.export import export_onnx
from yolo_voc.predict import Detector


def timeit(fn, warmup: int, repeats: int, max_seconds: float, sync=lambda: None) -> list[float]:
    "Seconds per call of `fn` for up to `repeats` calls after `warmup` calls (fewer when `max_seconds` runs out)."
    for _ in range(warmup): fn()
    sync()
    times, start = [], time.perf_counter()
    for _ in range(repeats):
        t = time.perf_counter(); fn(); sync(); times.append(time.perf_counter() - t)
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
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--max-seconds", type=float, default=60.0, help="time budget per configuration")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch and ONNX Runtime (default: all)")
    p.add_argument("--no-onnx", action="store_true")
    p.add_argument("--no-cuda", action="store_true")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = p.parse_args(argv)

    if args.threads: torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = calibrate_batchnorm(YOLOv3(args.num_classes, args.width_mult, args.depth_mult), args.size)
    det = Detector(model, [f"class{i}" for i in range(args.num_classes)], image_size=args.size)
    n_params = sum(p.numel() for p in model.parameters())
    rows, tw = [], dict(warmup=args.warmup, repeats=args.repeats, max_seconds=args.max_seconds)
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else (lambda *a: print(*a, flush=True))
    log(f"YOLOv3 width {args.width_mult} depth {args.depth_mult}: {n_params:,} parameters, input {args.size}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")

    for b in args.batches:
        x = torch.rand(b, 3, args.size, args.size)
        with torch.inference_mode():
            rows.append(row("torch eager", "cpu", b, timeit(lambda: model(x), **tw)))
        log(rows[-1])

    image = np.random.default_rng(0).integers(0, 255, (375, 500, 3), dtype=np.uint8)
    rows.append(row("Detector.predict (letterbox+model+NMS)", "cpu", 1,
                    timeit(lambda: det.predict(image, conf=0.25), **tw)))
    log(rows[-1])

    if not args.no_onnx:
        try:
            import onnxruntime as ort
        except ImportError:
            log("onnxruntime is not installed: skipping ONNX Runtime")
        else:
            with tempfile.TemporaryDirectory() as d:
                path = export_onnx(det, Path(d) / "model.onnx")
                opts = ort.SessionOptions()
                if args.threads: opts.intra_op_num_threads = args.threads
                sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
                for b in args.batches:
                    x = np.random.default_rng(0).random((b, 3, args.size, args.size), dtype=np.float32)
                    rows.append(row(f"onnxruntime {ort.__version__}", "cpu", b, timeit(lambda: sess.run(None, {"images": x}), **tw)))
                    log(rows[-1])

    if torch.cuda.is_available() and not args.no_cuda:
        gpu = torch.cuda.get_device_name(0)
        m = model.to("cuda")
        for b in args.batches:
            x = torch.rand(b, 3, args.size, args.size, device="cuda")
            with torch.inference_mode():
                rows.append(row("torch eager fp32", gpu, b, timeit(lambda: m(x), sync=torch.cuda.synchronize, **tw)))
                log(rows[-1])
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    rows.append(row("torch eager bf16 autocast", gpu, b, timeit(lambda: m(x), sync=torch.cuda.synchronize, **tw)))
                log(rows[-1])

    result = dict(model=dict(width_mult=args.width_mult, depth_mult=args.depth_mult, num_classes=args.num_classes,
                             parameters=n_params), size=args.size, cpu=platform.processor() or platform.machine(),
                  cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(), torch=torch.__version__, results=rows)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"\n{'engine':42} {'device':28} {'batch':>5} {'runs':>4} {'ms/batch':>10} {'ms/image':>9} {'img/s':>8}")
        for r in rows:
            print(f"{r['engine']:42} {r['device']:28} {r['batch']:>5} {r['runs']:>4} {r['batch_ms']:>10} "
                  f"{r['per_image_ms']:>9} {r['images_per_s']:>8}")
    return 0


if __name__ == "__main__":
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        sys.exit(main())
