"""This library's reading of Darknet files against an implementation it did not write: OpenCV 4's Darknet importer.

A YOLOv3 of this library is written as a Darknet pair, `yolo_voc.darknet.save_darknet` (the `.weights`) and
`yolo_voc.darknet.darknet_cfg` (the `yolov3.cfg`), and run twice on the same letterboxed images:

- by OpenCV 4.x, `cv2.dnn.readNetFromDarknet(cfg, weights)`: its own cfg parser, weight reader, network and
  `[yolo]` layer (OpenCV 5 dropped the importer, so it runs in another Python: a small venv with
  `opencv-python-headless<5` and numpy, found by `opencv4_python`);
- by this library as a user gets it: `yolo_voc.runtime.load_detector("model.weights", image_size=S)`, its
  network, then `decode.decode_outputs` with the detector's decoding.

For every anchor of every cell both give the box (centre and size, in input pixels), the objectness and the 80
(or C) class scores, objectness x class probability; the script reports the largest differences. Each `[yolo]`
section gets `thresh=0` so that OpenCV outputs every score (its default zeroes those below 0.2); nothing else in
the cfg differs from `darknet_cfg`'s.

The model has random weights, made to behave like trained ones where it matters (`calibrated_model`): He-normal
convolutions, BatchNorm statistics measured on synthetic VOC photos letterboxed to 416, every BatchNorm input
scaled by 8 (the same function; variances like those of real Darknet weights, so that BatchNorm's epsilon, 1e-5 on
the variance in PyTorch and 1e-6 in Darknet and OpenCV, does not matter), and prediction layers scaled so that
objectness and class logits spread over about (-5, 3): scores cover (0, 1) instead of sitting near 0.

    python benchmarks/darknet_opencv.py --json                                   # full width, 80 classes, 416 and 608
    python benchmarks/darknet_opencv.py --json --work /tmp/dk                    # ... keeping the files in /tmp/dk
    PYTHONPATH=OLD python benchmarks/darknet_opencv.py --json --decode-only /tmp/dk  # decode those files with another yolo_voc
    python benchmarks/darknet_opencv.py --json --classes 3 --width 0.125 --depth 0.33  # the narrow model of the CI test

`--decode-only` reads the files of an earlier run and decodes them with whatever `yolo_voc` is importable, also a
release from before `boxes.Decoding` (it then decodes as that release did: `decode_outputs(outs, det.anchors)`).
`YOLO_VOC_OPENCV4_PYTHON` names the OpenCV 4 Python; without it a venv is made in `~/.cache/yolo_voc/opencv4-venv`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

OPENCV_REQUIREMENT = "opencv-python-headless<5"
VENV = Path.home() / ".cache" / "yolo_voc" / "opencv4-venv"

#: run by the OpenCV 4 Python: argv = cfg weights blobs.npz out.npz; one forward pass per image, outputs coarsest first
OPENCV_FORWARD = r"""
import sys
import cv2, numpy as np
cfg, weights, blobs, out = sys.argv[1:5]
net = cv2.dnn.readNetFromDarknet(cfg, weights)
net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
x = np.load(blobs)["images"]
rows = []
for image in x:  # [3, S, S]: one image at a time, so that each output is [cells * anchors, 5 + C]
    net.setInput(image[None])
    rows.append(np.concatenate(net.forward(net.getUnconnectedOutLayersNames()), 0))
np.savez(out, rows=np.stack(rows), version=np.array(cv2.__version__))
"""


class OpenCVUnavailable(RuntimeError):
    "No OpenCV 4 Python could be found or made (the message says why: e.g. PyPI unreachable)."


def _works(python: str | Path) -> bool:
    "Whether `python` imports OpenCV 4 with its Darknet importer."
    check = "import cv2; assert cv2.__version__.startswith('4.'); cv2.dnn.readNetFromDarknet"
    try: return subprocess.run([str(python), "-c", check], capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired): return False


def opencv4_python(create: bool = True) -> str:
    "A Python with OpenCV 4: `$YOLO_VOC_OPENCV4_PYTHON`, else `~/.cache/yolo_voc/opencv4-venv` (made when missing)."
    named = os.environ.get("YOLO_VOC_OPENCV4_PYTHON")
    if named:
        if not _works(named): raise OpenCVUnavailable(f"YOLO_VOC_OPENCV4_PYTHON={named}: does not import OpenCV 4 (cv2.dnn)")
        return named
    python = VENV / "bin" / "python"
    if _works(python): return str(python)
    if not create: raise OpenCVUnavailable(f"{VENV}: no OpenCV 4 venv")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True, capture_output=True, timeout=300)
    pip = subprocess.run([str(python), "-m", "pip", "install", "-q", OPENCV_REQUIREMENT, "numpy"], capture_output=True,
                         text=True, timeout=900)
    if pip.returncode != 0 or not _works(python):
        raise OpenCVUnavailable(f"pip install {OPENCV_REQUIREMENT} numpy into {VENV} failed: "
                                + " ".join((pip.stderr or pip.stdout).split())[-600:])
    return str(python)


def pypi_unreachable(message: str) -> bool:
    "Whether a pip failure `message` says that the package index could not be reached (not that the install is broken)."
    signs = ("from versions: none", "connection", "network is unreachable", "name resolution", "timed out",
             "could not fetch url", "proxy", "max retries exceeded", "ssl")
    return any(s in message.lower() for s in signs)


# -- the model and its files ------------------------------------------------------------------------------------
def synthetic_images(n: int, seed: int = 0) -> list[np.ndarray]:
    "`n` synthetic VOC photos (coloured shapes on smooth backgrounds, 500 x 375), as RGB arrays."
    from PIL import Image
    from yolo_voc.synthetic import make_synthetic_voc
    with tempfile.TemporaryDirectory() as d:
        root = make_synthetic_voc(Path(d), n_images=n, image_size=(500, 375), seed=seed)
        return [np.asarray(Image.open(p).convert("RGB")) for p in sorted((root / "JPEGImages").glob("*.jpg"))]


def letterboxed(images: list[np.ndarray], size: int) -> torch.Tensor:
    "The images letterboxed to `size` as the detector does it: `[N, 3, size, size]` float32 in [0, 1]."
    from yolo_voc.predict import letterbox_image, to_tensor
    return torch.stack([to_tensor(letterbox_image(im, size)[0]) for im in images])


@torch.no_grad()
def calibrated_model(num_classes: int, width_mult: float, depth_mult: float, images: torch.Tensor, seed: int = 0):
    "A YOLOv3 with random weights that behaves like a trained one where decoding is concerned (see the module docstring)."
    from torch import nn
    from yolo_voc.model import ConvBlock, YOLOv3
    torch.manual_seed(seed)
    model = YOLOv3(num_classes, width_mult, depth_mult)
    for m in model.modules():
        if isinstance(m, nn.Conv2d): nn.init.kaiming_normal_(m.weight, a=0.1, nonlinearity="leaky_relu")
    heads = [model.head5.pred[1], model.head4.pred[1], model.head3.pred[1]]  # in the order of the outputs
    for p in heads:
        nn.init.normal_(p.conv.weight, std=1 / math.sqrt(p.conv.in_channels)); p.conv.bias.zero_()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns: bn.reset_running_stats(); bn.momentum = None  # a cumulative average over the calibration batches
    model.train()
    for chunk in images.split(4): model(chunk)
    model.eval()
    for block in model.modules():  # BatchNorm sees its input 8x larger: the same function, larger variances
        if isinstance(block, ConvBlock):
            block[0].weight.mul_(8.0); block[1].running_mean.mul_(8.0); block[1].running_var.mul_(64.0)
    outs = [torch.cat(o) for o in zip(*(model(chunk) for chunk in images.split(4)))]  # 3 x [N, 3, S, S, 5+C]
    for p, out in zip(heads, outs):
        mean, std = out.mean((0, 2, 3)), out.std((0, 2, 3)).clamp(min=1e-6)  # [3, 5+C]
        target, spread = torch.zeros_like(mean), torch.ones_like(std)
        target[:, 0], spread[:, 0] = -1.0, 2.0  # objectness logits ~ N(-1, 2)
        target[:, 5:], spread[:, 5:] = -1.0, 2.0  # class logits ~ N(-1, 2)
        spread[:, 3:5] = 0.5  # sizes within about 0.4x to 2.7x their anchor
        gain = (spread / std).flatten()
        p.scale.copy_(gain); p.shift.copy_((target - mean * spread / std).flatten())
    return model


def write_case(folder: Path, num_classes: int = 80, width_mult: float = 1.0, depth_mult: float = 1.0,
               sizes: tuple[int, ...] = (416, 608), n_images: int = 2, n_calibration: int = 8, seed: int = 0) -> dict:
    "Write `model.weights`, `model_<S>.cfg` and `images_<S>.npz` for each size into `folder`; return the case's settings."
    from yolo_voc.darknet import DARKNET_DECODING, darknet_cfg, save_darknet
    folder.mkdir(parents=True, exist_ok=True)
    photos = synthetic_images(n_calibration + n_images, seed)
    model = calibrated_model(num_classes, width_mult, depth_mult, letterboxed(photos[:n_calibration], 416), seed)
    save_darknet(model, folder / "model.weights")
    for size in sizes:
        cfg = darknet_cfg(model, DARKNET_DECODING, image_size=size)
        (folder / f"model_{size}.cfg").write_text(cfg.replace("[yolo]\n", "[yolo]\nthresh=0\n"))  # every score, not > 0.2
        np.savez(folder / f"images_{size}.npz", images=letterboxed(photos[n_calibration:], size).numpy())
    case = dict(num_classes=num_classes, width_mult=width_mult, depth_mult=depth_mult, sizes=list(sizes), images=n_images)
    (folder / "case.json").write_text(json.dumps(case))
    return case


def run_opencv(folder: Path, python: str | None = None) -> str:
    "Run OpenCV 4 on each size's cfg, weights and images; write `opencv_<S>.npz`; return OpenCV's version."
    python = python or opencv4_python()
    case = json.loads((folder / "case.json").read_text())
    version = ""
    for size in case["sizes"]:
        out = folder / f"opencv_{size}.npz"
        r = subprocess.run([python, "-c", OPENCV_FORWARD, str(folder / f"model_{size}.cfg"), str(folder / "model.weights"),
                            str(folder / f"images_{size}.npz"), str(out)], capture_output=True, text=True, timeout=1800)
        if r.returncode != 0: raise RuntimeError(f"OpenCV failed on {folder / f'model_{size}.cfg'}: {r.stderr[-2000:]}")
        version = str(np.load(out)["version"])
    return version


# -- this library's decoding and the comparison --------------------------------------------------------------------
@torch.no_grad()
def ours(folder: Path, size: int) -> tuple[np.ndarray, str]:
    "This library's rows `[N, cells * anchors, 5 + C]` for `images_<size>.npz`, in OpenCV's order and units; and how it decoded."
    from yolo_voc.decode import decode_outputs
    from yolo_voc.runtime import load_detector
    case = json.loads((folder / "case.json").read_text())
    det = load_detector(folder / "model.weights", image_size=size, width_mult=case["width_mult"], depth_mult=case["depth_mult"])
    x = torch.from_numpy(np.load(folder / f"images_{size}.npz")["images"])
    outs = det.forward(x)  # 3 x [N, A, S, S, 5+C], coarsest first
    if hasattr(det, "decoding"):
        boxes, obj, cls = decode_outputs(outs, det.decoding)
        how = str(det.decoding)
    else:  # a release before boxes.Decoding
        from yolo_voc.boxes import STRIDES
        boxes, obj, cls = decode_outputs(outs, det.anchors, STRIDES)
        how = "softmax classes, anchors as fractions of the input side (the release's decode_outputs)"
    cxcywh = torch.cat([(boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]], -1)  # input pixels
    rows = torch.cat([cxcywh, obj[..., None], obj[..., None] * cls], -1)  # [N, rows, 5 + C]
    order, start = [], 0  # this library's rows go anchor, y, x within a head; OpenCV's y, x, anchor
    for o in outs:
        a, sy, sx = o.shape[1:4]
        order.append(start + torch.arange(a * sy * sx).view(a, sy, sx).permute(1, 2, 0).flatten())
        start += a * sy * sx
    return rows[:, torch.cat(order)].numpy(), how


def compare(folder: Path, size: int) -> dict:
    "Largest differences between OpenCV's and this library's rows at `size`: box (px), objectness, class scores."
    cv = np.load(folder / f"opencv_{size}.npz")["rows"].astype(np.float64)  # [N, rows, 5 + C]: boxes normalised
    cv[..., :4] *= size
    mine, how = ours(folder, size)
    mine = mine.astype(np.float64)
    d = np.abs(mine - cv)
    above = cv[..., 5:] > 0.2  # the scores OpenCV reports with its default threshold
    ratio = mine[..., 2:4] / cv[..., 2:4]
    return dict(size=size, decoding=how, rows=int(cv.shape[0] * cv.shape[1]), scores=int(cv[..., 5:].size),
                scores_above_0_2=int(above.sum()), box_px=float(d[..., :4].max()), centre_px=float(d[..., :2].max()),
                size_px=float(d[..., 2:4].max()), size_relative=float((d[..., 2:4] / cv[..., 2:4]).max()),
                box_size_ratio_median=float(np.median(ratio)),
                objectness=float(d[..., 4].max()), class_score=float(d[..., 5:].max()),
                class_score_above_0_2=float(d[..., 5:][above].max()) if above.any() else 0.0,
                opencv_scores_above_0_5=float((cv[..., 5:] > 0.5).mean()))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print the result as one JSON object")
    ap.add_argument("--classes", type=int, default=80)
    ap.add_argument("--width", type=float, default=1.0, help="the YOLOv3's width multiplier")
    ap.add_argument("--depth", type=float, default=1.0, help="its depth multiplier")
    ap.add_argument("--sizes", type=int, nargs="+", default=[416, 608])
    ap.add_argument("--images", type=int, default=2, help="images compared at each size")
    ap.add_argument("--work", type=Path, default=None, help="keep the files here (default: a temporary folder)")
    ap.add_argument("--decode-only", type=Path, default=None, metavar="DIR", help="decode the files of an earlier --work run")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.decode_only or args.work or Path(tmp)
        if args.decode_only is None:
            case = write_case(folder, args.classes, args.width, args.depth, tuple(args.sizes), args.images)
            case["opencv"] = run_opencv(folder)
            (folder / "case.json").write_text(json.dumps(case))
        case = json.loads((folder / "case.json").read_text())
        import yolo_voc
        result = dict(case=case, yolo_voc=str(Path(yolo_voc.__file__).parent), results=[compare(folder, s) for s in case["sizes"]])
    if args.json: print(json.dumps(result, indent=1))
    else:
        for r in result["results"]:
            print(f"{r['size']}: max |diff| box {r['box_px']:.4g} px (sizes {r['size_relative']:.2g} of the size; median size "
                  f"ratio {r['box_size_ratio_median']:.4f}), "
                  f"objectness {r['objectness']:.3g}, class score {r['class_score']:.3g} over {r['scores']:,} scores "
                  f"({r['scores_above_0_2']:,} above 0.2: {r['class_score_above_0_2']:.3g}); decoding: {r['decoding']}")
    return result


if __name__ == "__main__":
    main()
