"""Inference latency per image of YOLOv3 at 416 on the CPU, side by side in one run: eager PyTorch, ONNX Runtime fp32
and int8 (static QDQ quantisation, as `yolo-voc export --format onnx --int8` writes it), and OpenVINO f32, bf16 (where
the CPU has it) and int8 (from the same QDQ graph, as `yolo-voc export --format openvino --int8` writes it, and by
NNCF), at batch 1 and 8 with 2 threads by default; when CUDA is there, eager PyTorch on the GPU too (fp32, bf16).
Each CPU engine's mAP50 on the same validation images is reported against eager fp32 (`accuracy`).

    python benchmarks/infer_speed.py                       # full model (width 1.0), batch 1 and 8, 2 threads
    python benchmarks/infer_speed.py --width-mult 0.25 --depth-mult 0.33 --repeats 5   # a quick run
    python benchmarks/infer_speed.py --json --save-results --wait-idle 300              # the README's figure
    python benchmarks/infer_speed.py --ckpt best.ckpt --data DATA                        # a trained model: true mAP50

Accuracy: with random weights (the default), each engine's mAP50 is computed with eager fp32's own detections
(score above 0.25, on `--val-images` synthetic images) as the ground truth, so eager scores 1 and the others show how
faithfully they reproduce it; the prediction heads are scaled (`calibrate_heads`) so that a few boxes per image are
confident, as in a trained model. With `--ckpt`, also the mAP50 against the validation split's annotations of
`--data` (default: the synthetic set as `yolo-voc fit` makes it), which is what the goal's "within 1 point" means.
The CPU's flags (AVX2, AVX-512, VNNI, bf16, AMX) and OpenVINO's view of them are recorded with the figures.

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
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from conditions import Conditions, add_arguments, cpu_model as cpu_model_name, describe, save_results
from yolo_voc.export import export_onnx, quantize_int8
from yolo_voc.runtime import load_onnx_detector
from yolo_voc.model import YOLOv3
from yolo_voc.predict import Detector
from yolo_voc.synthetic import make_synthetic_voc

GOALS = {"onnx_fp32": 0.7, "onnx_int8": 0.4, "fastest": 0.2}  # per-image time as a fraction of eager PyTorch's, at most
FASTEST_MAP_DROP = 0.01  # the fastest path's mAP50 may be at most 1 point below eager fp32's
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8",
             "amx_tile")


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> dict:
    "The CPU's instruction-set flags that decide int8 and bf16 speed (present or not), from /proc/cpuinfo."
    try:
        line = next((l for l in Path(cpuinfo).read_text().splitlines() if l.split(":")[0].strip() in ("flags", "Features")), "")
    except OSError:
        line = ""
    have = set(line.split(":", 1)[-1].split())
    return {f: f in have for f in CPU_FLAGS}


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


def calibrate_heads(model: torch.nn.Module, images: torch.Tensor) -> torch.nn.Module:
    """Scale the prediction layers so that, on `images`, objectness logits spread as N(-4.5, 1.5) and class logits as
    N(0, 2): a few confident boxes per image, as a trained model gives, so that detections can be compared."""
    heads = [model.head5.pred[1], model.head4.pred[1], model.head3.pred[1]]  # the order of the outputs
    with torch.no_grad():
        for h, out in zip(heads, model(images)):
            mean, std = out.mean((0, 2, 3)), out.std((0, 2, 3)).clamp(min=1e-6)  # [3, 5+C]
            target, spread = torch.zeros_like(mean), torch.ones_like(std)
            target[:, 0], spread[:, 0], spread[:, 5:] = -4.5, 1.5, 2.0
            chan = torch.ones_like(mean, dtype=torch.bool); chan[:, 1:5] = False  # boxes stay near their anchors
            h.scale.copy_(torch.where(chan, spread / std, 1.0).flatten())
            h.shift.copy_(torch.where(chan, target - mean * spread / std, 0.0).flatten())
    return model.eval()


def map50(detections, truth, num_classes: int) -> float:
    "VOC07 mAP50 of `detections` (`Detections`, boxes over 1 px) against `truth` (dicts of boxes, labels, difficult)."
    from yolo_voc.metrics import mean_average_precision
    ok = [(d.boxes[:, 2] - d.boxes[:, 0] > 1) & (d.boxes[:, 3] - d.boxes[:, 1] > 1) for d in detections]  # as `as_truth`
    preds = [dict(boxes=d.boxes[k], scores=d.scores[k], labels=d.labels[k]) for d, k in zip(detections, ok)]
    return round(float(mean_average_precision(preds, truth, method="voc07", num_classes=num_classes)["map"]), 4)


def as_truth(detections) -> list[dict]:
    "Detections as ground truth (boxes wider and taller than 1 px: two zero-width boxes have no IoU)."
    out = []
    for d in detections:
        ok = (d.boxes[:, 2] - d.boxes[:, 0] > 1) & (d.boxes[:, 3] - d.boxes[:, 1] > 1)
        out.append(dict(boxes=d.boxes[ok], labels=d.labels[ok], difficult=np.zeros(int(ok.sum()), bool)))
    return out


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
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--max-seconds", type=float, default=120.0, help="time budget per batch size (all CPU engines)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch, ONNX Runtime and OpenVINO (default 2)")
    p.add_argument("--calib-images", type=int, default=8, help="synthetic images that calibrate int8 (default 8)")
    p.add_argument("--val-images", type=int, default=16, help="validation images for each engine's mAP50 (default 16)")
    p.add_argument("--ckpt", default=None, help="a trained checkpoint instead of random weights (then --data's annotations)")
    p.add_argument("--data", default=None, help="with --ckpt: dataset folder (default: the synthetic set of `yolo-voc fit`)")
    p.add_argument("--no-onnx", action="store_true", help="no ONNX Runtime (and no int8: its QDQ graph comes from it)")
    p.add_argument("--no-openvino", action="store_true", help="no OpenVINO")
    p.add_argument("--no-nncf", action="store_true", help="no OpenVINO int8 by NNCF (the slowest to prepare)")
    p.add_argument("--no-cuda", action="store_true")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    add_arguments(p)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    cond = Conditions.from_args(args, "infer_speed", own_threads=args.threads).start()
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else (lambda *a: print(*a, flush=True))
    d = Path(tempfile.mkdtemp(prefix="infer_speed-"))
    truth_from_data = None
    if args.ckpt:  # a trained model: its classes, size and the dataset's validation annotations
        from yolo_voc.export import Int8Settings, int8_data
        from yolo_voc.runtime import load_detector
        det = load_detector(args.ckpt, "cpu")
        model, names = det.model, det.class_names
        root, calib, val = int8_data(det, Int8Settings(args.data, calib_images=args.calib_images, val_images=args.val_images))
        val_images = [a.image_path for a in val]
        truth_from_data = [dict(boxes=a.boxes, labels=a.labels, difficult=a.difficult) for a in val]
        args.size, args.num_classes = det.image_size, det.num_classes
        # the checkpoint's architecture, not the defaults of --width-mult / --depth-mult (which it ignores)
        args.width_mult = det.model_config.get("width_mult", args.width_mult)
        args.depth_mult = det.model_config.get("depth_mult", args.depth_mult)
    else:
        torch.manual_seed(0)
        names = [f"class{i}" for i in range(args.num_classes)]
        voc = make_synthetic_voc(d / "data", n_images=args.calib_images + args.val_images, class_names=names[:min(20, len(names))])
        jpgs = sorted((voc / "JPEGImages").glob("*.jpg"))
        calib, val_images = jpgs[:args.calib_images], jpgs[args.calib_images:]
        model = calibrate_batchnorm(YOLOv3(args.num_classes, args.width_mult, args.depth_mult), args.size)
        det = Detector(model, names, image_size=args.size)
        calibrate_heads(model, torch.stack([det.preprocess(p)[0] for p in val_images[:8]]))
    n_params = sum(p.numel() for p in model.parameters())
    rows, ratios, detectors, engines, fns = [], {}, {"eager": det}, {"eager": "torch eager fp32"}, {}
    log(f"YOLOv3 width {args.width_mult} depth {args.depth_mult}: {n_params:,} parameters, input {args.size}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    flags = cpu_flags()
    log("CPU flags: " + ", ".join(f for f, on in flags.items() if on))
    image = np.random.default_rng(0).integers(0, 255, (375, 500, 3), dtype=np.uint8)
    paths, ov_caps, ov_version = {}, None, None

    if not args.no_onnx:
        try:
            import onnxruntime as ort
        except ImportError:
            log('onnxruntime is not installed (pip install "yolo_voc[export]"): no ONNX Runtime, no int8')
        else:
            paths = {"fp32": export_onnx(det, d / "fp32.onnx"), "int8": quantize_int8(det, d / "int8.onnx", calib)}
            detectors["onnx_fp32"] = load_onnx_detector(paths["fp32"], threads=args.threads)  # one session, reused
            detectors["onnx_int8"] = load_onnx_detector(paths["int8"], threads=args.threads)
            engines.update(onnx_fp32=f"onnxruntime {ort.__version__} fp32",
                           onnx_int8=f"onnxruntime {ort.__version__} int8 (QDQ, per-channel)")
    if not args.no_openvino:
        try:
            import openvino as ov
        except ImportError:
            log('openvino is not installed (pip install "yolo_voc[openvino]"): no OpenVINO')
        else:
            from yolo_voc.export import export_openvino
            from yolo_voc.runtime import cpu_capabilities, load_openvino_detector
            ov_version, ov_caps = ov.__version__.split("-")[0], cpu_capabilities()
            log(f"OpenVINO {ov_version}, CPU capabilities: {', '.join(ov_caps)}")
            f32 = export_openvino(det, d / "ov_f32.xml")
            load = lambda xml, precision: load_openvino_detector(xml, threads=args.threads, precision=precision, verbose=False)
            detectors["openvino_f32"] = load(f32, "f32"); engines["openvino_f32"] = f"openvino {ov_version} f32"
            if "BF16" in ov_caps:
                detectors["openvino_bf16"] = load(f32, "bf16"); engines["openvino_bf16"] = f"openvino {ov_version} bf16"
            else:
                log("OpenVINO bf16: not available here (the CPU lists no BF16)")
            if "int8" in paths:  # the QDQ graph ONNX Runtime runs, converted: `export --format openvino --int8`
                xml = export_openvino(det, d / "ov_int8.xml", calibration=calib, int8_method="qdq")
                detectors["openvino_int8"] = load(xml, "auto")
                engines["openvino_int8"] = f"openvino {ov_version} int8 (QDQ graph)"
            if not args.no_nncf:
                try:
                    xml = export_openvino(det, d / "ov_nncf.xml", calibration=calib, int8_method="nncf")
                except ImportError as e:
                    log(f"no NNCF int8: {e}")
                else:
                    detectors["openvino_int8_nncf"] = load(xml, "auto")
                    engines["openvino_int8_nncf"] = f"openvino {ov_version} int8 (NNCF)"

    for b in args.batches:
        x = torch.rand(b, 3, args.size, args.size)
        fns = {k: (lambda v=v: v.forward(x)) for k, v in detectors.items()}  # the network only: raw head outputs
        times = timeit_interleaved(fns, args.warmup, args.repeats, args.max_seconds)
        for k, ts in times.items():
            rows.append(dict(key=k, **row(engines[k], "cpu", b, ts))); log(rows[-1])
            cond.add_timings(f"{k}_batch{b}", ts)
        eager = statistics.median(times["eager"])
        for k in detectors:
            if k != "eager": ratios[f"{k}_vs_eager_batch{b}"] = round(statistics.median(times[k]) / eager, 3)
    predict = {"Detector.predict eager (letterbox+model+NMS)": det}
    fast = min((k for k in detectors if k != "eager"), key=lambda k: ratios.get(f"{k}_vs_eager_batch{args.batches[0]}", 9), default=None)
    if fast: predict[f"Detector.predict {fast} (letterbox+model+NMS)"] = detectors[fast]
    times = timeit_interleaved({k: (lambda v=v: v.predict(image, conf=0.25)) for k, v in predict.items()},
                               args.warmup, args.repeats, args.max_seconds)
    for k, ts in times.items():
        rows.append(dict(key=k, **row(k, "cpu", 1, ts))); log(rows[-1])
        cond.add_timings(k, ts)

    # accuracy: every engine on the same validation images
    dets = {k: v.predict(val_images, conf=0.01, batch_size=8) for k, v in detectors.items()}
    reference = as_truth(det.predict(val_images, conf=0.25, batch_size=8))
    accuracy = {k: dict(map50_vs_eager=map50(v, reference, args.num_classes)) for k, v in dets.items()}
    if truth_from_data is not None:
        for k, v in dets.items(): accuracy[k]["map50"] = map50(v, truth_from_data, args.num_classes)
    measure = "map50" if truth_from_data is not None else "map50_vs_eager"
    for k, a in accuracy.items(): a["engine"] = engines[k]; log(f"{k}: {a}")

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

    b1 = args.batches[0]
    goals = {k: dict(ratio=v, goal=GOALS[k.split("_vs_")[0]], met=v <= GOALS[k.split("_vs_")[0]])
             for k, v in ratios.items() if k.split("_vs_")[0] in GOALS}
    ok = [k for k in detectors if k != "eager" and accuracy[k][measure] >= accuracy["eager"][measure] - FASTEST_MAP_DROP]
    best = min(ok, key=lambda k: ratios[f"{k}_vs_eager_batch{b1}"], default=None)
    if best:
        r = ratios[f"{best}_vs_eager_batch{b1}"]
        goals["fastest"] = dict(engine=best, batch=b1, ratio=r, goal=GOALS["fastest"], met=r <= GOALS["fastest"],
                                accuracy=measure, map_drop=round(accuracy["eager"][measure] - accuracy[best][measure], 4))
    result = dict(model=dict(width_mult=args.width_mult, depth_mult=args.depth_mult, num_classes=args.num_classes,
                             parameters=n_params, ckpt=args.ckpt), size=args.size, cpu=cpu_model_name(),
                  cpu_count=os.cpu_count(), cpu_flags=flags, openvino=ov_version, openvino_cpu_capabilities=ov_caps,
                  torch_threads=torch.get_num_threads(), torch=torch.__version__, val_images=len(val_images),
                  results=rows, ratios=ratios, accuracy=accuracy, goals=goals)
    result["conditions"] = cond.finish()
    shutil.rmtree(d, ignore_errors=True)
    # a trained model's run gets a file of its own: on the same day it must not replace the full-model figure
    if args.save_results: save_results("infer_speed", result, args, file_name="infer_speed-trained" if args.ckpt else None)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"\n{'engine':50} {'device':28} {'batch':>5} {'runs':>4} {'ms/batch':>10} {'ms/image':>9} {'img/s':>8}")
        for r in rows:
            print(f"{r['engine']:50} {r['device']:28} {r['batch']:>5} {r['runs']:>4} {r['batch_ms']:>10} "
                  f"{r['per_image_ms']:>9} {r['images_per_s']:>8}")
        for k, a in accuracy.items(): print(f"{a['engine']:50} mAP50 " + ", ".join(f"{m} {v}" for m, v in a.items() if m != "engine"))
        for k, g in goals.items():
            print(f"{k}: {g['ratio']:.3f} (goal at most {g['goal']}: {'met' if g['met'] else 'NOT met'})"
                  + (f" {g['engine']}, mAP50 {g['map_drop'] * 100:+.2f} points below eager" if k == "fastest" else ""))
        print(f"CPU flags: {', '.join(f for f, on in flags.items() if on)}; conditions: {describe(result['conditions'])}")
    return 0


if __name__ == "__main__":
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        sys.exit(main())
