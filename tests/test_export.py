"""Tests of yolo_voc.export: ONNX / TorchScript against eager PyTorch (raw and end to end with NMS), BatchNorm folding,
ONNX Runtime as a `Detector` backend, int8 quantisation, and the `export` command's errors and exit codes."""
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from yolo_voc.boxes import box_iou, unletterbox_boxes
from yolo_voc.decode import postprocess
from yolo_voc.checkpoint import save_weights
from yolo_voc.model import YOLOv3
from yolo_voc.cli import EXIT_BAD_INPUT, EXIT_MISSING_DEPENDENCY, EXIT_OUTPUT, EXIT_USAGE, export_main
from yolo_voc.export import EndToEnd, NmsSettings, export_onnx, fold_batchnorm, quantize_int8
from yolo_voc.runtime import load_onnx_detector
from yolo_voc.runtime import load_detector
from yolo_voc.synthetic import make_synthetic_voc

from tiny_models import CFG, NAMES, tiny_model

SIZE = 128


def write_checkpoint(path: Path, model: torch.nn.Module) -> Path:
    "A checkpoint laid out as Lightning writes it (hyper_parameters + 'model.' state_dict + training state)."
    hp = dict(CFG, class_names=NAMES, backbone="darknet53", image_size=SIZE, anchors=None, lr=1e-3, epochs=3)
    torch.save({"epoch": 2, "global_step": 30, "pytorch-lightning_version": "2.6.0", "hyper_parameters": hp,
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-3}]}], "lr_schedulers": []}, path)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    "A tiny model as a weights file and a Lightning-style checkpoint."
    root = tmp_path_factory.mktemp("ckpts")
    model = tiny_model()
    weights = save_weights(model, root / "tiny.pt", class_names=NAMES, image_size=SIZE, **CFG)
    return dict(model=model, weights=weights, ckpt=write_checkpoint(root / "last.ckpt", model), root=root)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    "A small synthetic VOCdevkit with the tiny model's classes."
    root = tmp_path_factory.mktemp("data")
    make_synthetic_voc(root, n_images=12, image_size=(160, 120), class_names=NAMES)
    return root


def images_of(root: Path) -> list[Path]:
    return sorted((root / "VOCdevkit" / "VOC2007" / "JPEGImages").glob("*.jpg"))


# -- raw exports --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_matches_eager(ckpts, tmp_path, batch):
    ort = pytest.importorskip("onnxruntime")
    det = load_detector(ckpts["weights"])
    assert export_main(["--ckpt_path", str(ckpts["ckpt"]), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["out_stride32", "out_stride16", "out_stride8"]
    meta = sess.get_modelmeta().custom_metadata_map
    assert json.loads(meta["class_names"]) == NAMES and json.loads(meta["image_size"]) == SIZE
    x = torch.rand(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(batch))
    got, ref = sess.run(None, {"images": x.numpy()}), det.forward(x)
    diff = max(float(np.abs(g - r.numpy()).max()) for g, r in zip(got, ref))
    print(f"ONNX Runtime vs eager, batch {batch}: max abs diff {diff:.2e}")
    assert [g.shape for g in got] == [tuple(r.shape) for r in ref]
    assert diff < 1e-3


def test_onnx_dynamic_hw(ckpts, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    det = load_detector(ckpts["weights"])
    export_onnx(det, tmp_path / "m.onnx", dynamic_hw=True)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = torch.rand(2, 3, 96, 160)
    got, ref = sess.run(None, {"images": x.numpy()}), det.forward(x)
    assert max(float(np.abs(g - r.numpy()).max()) for g, r in zip(got, ref)) < 1e-3
    assert got[0].shape == (2, 3, 3, 5, 8)


def test_torchscript_matches_eager(ckpts, tmp_path):
    det = load_detector(ckpts["weights"])
    assert export_main(["--ckpt_path", str(ckpts["weights"]), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 0
    extra = {"yolo_voc.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still the TorchScript loader
        ts = torch.jit.load(str(tmp_path / "m.pt"), _extra_files=extra)
    assert json.loads(extra["yolo_voc.json"])["class_names"] == NAMES
    for batch in (1, 3):
        x = torch.rand(batch, 3, SIZE, SIZE)
        with torch.no_grad():
            got = ts(x)
        for g, r in zip(got, det.forward(x)):
            torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)


def test_batchnorm_folded(ckpts, tmp_path):
    onnx = pytest.importorskip("onnx")
    model = YOLOv3(**CFG).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # statistics far from the initial (0, 1), so that a fold that ignored them would show
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    folded = fold_batchnorm(model)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) > 40  # the original is untouched
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for a, b in zip(folded(x), model(x)):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    path = export_onnx(load_detector(ckpts["weights"]), tmp_path / "m.onnx")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "BatchNormalization" not in ops and ops.count("Conv") == sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())


# -- end to end (NMS in the graph) ----------------------------------------------------------------------------
def test_end_to_end_module_equals_postprocess(ckpts):
    det = load_detector(ckpts["weights"])
    nms = NmsSettings(conf=0.05, iou=0.45, max_detections=20)
    x = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        boxes, scores, labels, counts = EndToEnd(det.model, det.decoding, nms)(x)
        ref = postprocess(det.model(x), det.decoding, conf_threshold=0.05, iou_threshold=0.45, max_detections=20)
    assert boxes.shape == (3, 20, 4) and scores.shape == labels.shape == (3, 20) and counts.shape == (3,)
    assert counts.tolist() == [len(r["scores"]) for r in ref] and min(counts.tolist()) >= 2
    for i, r in enumerate(ref):
        k = len(r["scores"])
        torch.testing.assert_close(boxes[i, :k], r["boxes"]); torch.testing.assert_close(scores[i, :k], r["scores"])
        assert labels[i, :k].tolist() == r["labels"].tolist()
        assert (labels[i, k:] == -1).all() and (scores[i, k:] == 0).all() and (boxes[i, k:] == 0).all()


def test_onnx_end_to_end_matches_predict(ckpts, data, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    det = load_detector(ckpts["weights"])
    assert export_main(["--ckpt_path", str(ckpts["weights"]), "--format", "onnx", "--nms", "--conf", "0.05",
                        "--max_detections", "30", "--out", str(tmp_path / "e2e.onnx")]) == 0
    sess = ort.InferenceSession(str(tmp_path / "e2e.onnx"), providers=["CPUExecutionProvider"])  # onnxruntime alone
    assert [o.name for o in sess.get_outputs()] == ["boxes", "scores", "labels", "num_detections"]
    meta = {k: json.loads(v) for k, v in sess.get_modelmeta().custom_metadata_map.items()}
    assert meta["end_to_end"] and meta["nms"] == dict(conf=0.05, iou=0.45, max_detections=30, pre_nms_topk=1000)
    assert "num_detections" in meta["output_format"]
    images = images_of(data)[:5]
    batch, lbs = zip(*(det.preprocess(p) for p in images))
    boxes, scores, labels, counts = sess.run(None, {"images": torch.stack(batch).numpy()})
    assert boxes.shape == (5, 30, 4) and labels.dtype == np.int64 and counts.dtype == np.int64
    ref = det.predict(images, conf=0.05, iou=0.45, max_detections=30)
    assert counts.tolist() == [len(d) for d in ref] and sum(counts) > 5
    for i, d in enumerate(ref):
        k = len(d)
        assert labels[i, :k].tolist() == d.labels.tolist() and (labels[i, k:] == -1).all()
        np.testing.assert_allclose(unletterbox_boxes(torch.from_numpy(boxes[i, :k]), lbs[i]).numpy(), d.boxes, atol=0.01)
        np.testing.assert_allclose(scores[i, :k], d.scores, atol=1e-4)


def test_end_to_end_without_detections(ckpts, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    det = load_detector(ckpts["weights"])
    path = export_onnx(det, tmp_path / "e2e.onnx", nms=NmsSettings(conf=0.999, max_detections=5))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    boxes, scores, labels, counts = sess.run(None, {"images": np.zeros((2, 3, SIZE, SIZE), np.float32)})
    assert counts.tolist() == [0, 0] and (labels == -1).all() and not boxes.any() and not scores.any()


def test_torchscript_end_to_end_matches_onnx(ckpts, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    det = load_detector(ckpts["weights"])
    assert export_main(["--ckpt_path", str(ckpts["weights"]), "--format", "torchscript", "--nms", "--conf", "0.05",
                        "--out", str(tmp_path / "e2e.pt")]) == 0
    onnx_path = export_onnx(det, tmp_path / "e2e.onnx", nms=NmsSettings(conf=0.05))
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ts = torch.jit.load(str(tmp_path / "e2e.pt"))
    for batch in (1, 3):
        x = torch.rand(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            got = ts(x)
        ref = sess.run(None, {"images": x.numpy()})
        assert got[3].tolist() == ref[3].tolist() and got[3].sum() > 0
        assert got[2].tolist() == ref[2].tolist()
        np.testing.assert_allclose(got[0].numpy(), ref[0], atol=1e-2)


# -- ONNX Runtime as the Detector's network, int8 --------------------------------------------------------------
def test_detector_on_onnx_file(ckpts, data, tmp_path):
    pytest.importorskip("onnxruntime")
    det = load_detector(ckpts["weights"])
    onnx_det = load_onnx_detector(export_onnx(det, tmp_path / "m.onnx"))
    assert (onnx_det.class_names, onnx_det.image_size) == (NAMES, SIZE)
    assert onnx_det.decoding == det.decoding
    images = images_of(data)[:4]
    session = onnx_det.model.session
    got, ref = onnx_det.predict(images, conf=0.05), det.predict(images, conf=0.05)
    assert onnx_det.model.session is session  # created once, reused
    assert sum(map(len, ref)) > 5
    for a, b in zip(got, ref):
        assert a.labels.tolist() == b.labels.tolist()
        np.testing.assert_allclose(a.boxes, b.boxes, atol=0.01); np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)


def test_onnx_detector_errors(ckpts, tmp_path):
    pytest.importorskip("onnxruntime")
    from yolo_voc.checkpoint import CheckpointError
    with pytest.raises(FileNotFoundError, match="none.onnx: no such ONNX file"): load_onnx_detector(tmp_path / "none.onnx")
    (tmp_path / "bad.onnx").write_text("not a graph")
    with pytest.raises(CheckpointError, match="bad.onnx: ONNX Runtime can't load it"): load_onnx_detector(tmp_path / "bad.onnx")
    e2e = export_onnx(load_detector(ckpts["weights"]), tmp_path / "e2e.onnx", nms=NmsSettings())
    with pytest.raises(CheckpointError, match="end-to-end"): load_onnx_detector(e2e)


def agreement(a, b) -> float:
    "Share of `b`'s detections that `a` finds too (same label, IoU above 0.5)."
    if not len(b): return 1.0
    if not len(a): return 0.0
    iou = box_iou(torch.from_numpy(b.boxes), torch.from_numpy(a.boxes))
    same = torch.from_numpy(b.labels)[:, None] == torch.from_numpy(a.labels)[None]
    return float(((iou > 0.5) & same).any(1).float().mean())


def test_int8_export_agrees_with_fp32(ckpts, data, tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "int8.onnx"
    assert export_main(["--ckpt_path", str(ckpts["weights"]), "--format", "onnx", "--int8", "--data", str(data),
                        "--calib_images", "6", "--out", str(out)]) == 0
    report = capsys.readouterr().out
    assert "int8" in report and "calibrated on 6 images" in report and "mAP50 on" in report and "fp32" in report
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert ops.count("QuantizeLinear") > 40 and "BatchNormalization" not in ops
    int8 = load_onnx_detector(out)
    assert int8.model_config["precision"] == "int8"
    fp32 = load_onnx_detector(export_onnx(load_detector(ckpts["weights"]), tmp_path / "fp32.onnx"))
    images = images_of(data)
    d8, d32 = int8.predict(images, conf=0.05), fp32.predict(images, conf=0.05)
    agree = float(np.mean([agreement(a, b) for a, b in zip(d8, d32)]))
    print(f"int8 finds {agree:.1%} of fp32's {sum(map(len, d32))} detections")
    assert sum(map(len, d32)) > 10 and agree > 0.8
    assert out.stat().st_size < 0.5 * (tmp_path / "fp32.onnx").stat().st_size


def test_int8_end_to_end(ckpts, data, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    det = load_detector(ckpts["weights"])
    path = quantize_int8(det, tmp_path / "e2e8.onnx", images_of(data)[:4], nms=NmsSettings(conf=0.05))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["boxes", "scores", "labels", "num_detections"]
    batch = torch.stack([det.preprocess(p)[0] for p in images_of(data)[:3]]).numpy()
    assert sess.run(None, {"images": batch})[3].sum() > 0


# -- the command's errors ---------------------------------------------------------------------------------------
def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_export_command_errors(tmp_path, capsys):
    assert export_main(["--ckpt_path", str(tmp_path / "no.ckpt"), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == EXIT_BAD_INPUT
    assert "no.ckpt: no such checkpoint file" in capsys.readouterr().err
    assert export_main(["--ckpt_path", "x", "--format", "tflite", "--out", "y"]) == 2
    assert not (tmp_path / "m.onnx").exists()


def test_export_missing_onnx_names_the_package(ckpts, tmp_path, capsys, monkeypatch):
    "Without onnx, one line naming it and the extra, exit 4 (before: torch's OnnxExporterError traceback)."
    monkeypatch.setitem(sys.modules, "onnx", None)  # what Python does for a package that is not installed
    assert export_main(["--ckpt_path", str(ckpts["weights"]), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == EXIT_MISSING_DEPENDENCY
    err = one_line_error(capsys)
    assert "onnx package" in err and 'pip install "yolo_voc[export]"' in err
    assert not (tmp_path / "m.onnx").exists()


def test_export_int8_missing_onnxruntime(ckpts, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert export_main(["--ckpt_path", str(ckpts["weights"]), "--format", "onnx", "--int8",
                        "--out", str(tmp_path / "m.onnx")]) == EXIT_MISSING_DEPENDENCY
    assert "onnxruntime package" in one_line_error(capsys)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "weights"])
def test_export_out_is_a_folder(ckpts, tmp_path, capsys, fmt):
    "An existing folder as --out: one line, exit 3 (before: IsADirectoryError traceback)."
    (tmp_path / "out").mkdir()
    assert export_main(["--ckpt_path", str(ckpts["weights"]), "--format", fmt, "--out", str(tmp_path / "out")]) == EXIT_OUTPUT
    assert "is a folder" in one_line_error(capsys)
    assert list((tmp_path / "out").iterdir()) == []


def test_export_out_under_a_file(ckpts, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert export_main(["--ckpt_path", str(ckpts["weights"]), "--format", "weights",
                        "--out", str(tmp_path / "file" / "w.pt")]) == EXIT_OUTPUT
    assert str(tmp_path / "file") in one_line_error(capsys)


def test_export_bad_option_combinations(ckpts, tmp_path, capsys):
    assert export_main(["--ckpt_path", str(ckpts["weights"]), "--format", "torchscript", "--int8",
                        "--out", str(tmp_path / "m.pt")]) == EXIT_USAGE
    assert "int8" in one_line_error(capsys)
    assert export_main(["--ckpt_path", str(ckpts["weights"]), "--format", "onnx", "--int8", "--data", str(tmp_path / "nodata"),
                        "--out", str(tmp_path / "m.onnx")]) == EXIT_BAD_INPUT
    assert "nodata: no such dataset folder" in one_line_error(capsys)


def test_export_console_script_missing_onnx(ckpts, tmp_path):
    "The real command in a fresh process where `import onnx` fails: one line on stderr, exit 4."
    code = ("import sys; sys.modules['onnx'] = None; from yolo_voc.cli import export_main; "
            "sys.exit(export_main(sys.argv[1:]))")
    p = subprocess.run([sys.executable, "-c", code, "--ckpt_path", str(ckpts["weights"]), "--format", "onnx",
                        "--out", str(tmp_path / "m.onnx")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 4 and "Traceback" not in p.stderr and 'pip install "yolo_voc[export]"' in p.stderr
