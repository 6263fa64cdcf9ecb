"""Tests of the OpenVINO export and runtime (issue 24): IR detections against eager `Detector.predict`, the metadata
round trip (decoding included), int8 by NNCF through mAP50, `predict` on an .xml, the app and its Space, the
missing-package message, the safety of the output files and the choice of precision (bf16 simulated where the CPU
has none). Skipped only where openvino is not importable.

Run in a process of their own by `test_openvino.py` (see there why); `pytest tests/openvino_cases.py` runs them directly."""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ov = pytest.importorskip("openvino", reason="the OpenVINO tests need the optional extra: pip install 'yolo_voc[openvino]'")

from yolo_voc.boxes import Decoding  # noqa: E402
from yolo_voc.checkpoint import save_weights  # noqa: E402
from yolo_voc.cli import EXIT_BAD_INPUT, EXIT_MISSING_DEPENDENCY, EXIT_USAGE, export_main, predict_main  # noqa: E402
from yolo_voc.export import detector_map50, export_openvino, quantize_int8  # noqa: E402
from yolo_voc.metrics import mean_average_precision  # noqa: E402
from yolo_voc.predict import Detector  # noqa: E402
from yolo_voc.runtime import (OpenVinoBackend, choose_precision, cpu_capabilities, load_detector,  # noqa: E402
                              load_onnx_detector, load_openvino_detector, openvino_metadata)
from yolo_voc.synthetic import make_synthetic_voc  # noqa: E402
from yolo_voc.voc import load_annotations  # noqa: E402

from tiny_models import CFG, NAMES, tiny_model  # noqa: E402

SIZE = 128
BOX_TOL, SCORE_TOL = 1e-2, 1e-3  # f32: max |box difference| in pixels, max |score difference|


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ov")


@pytest.fixture(scope="module")
def weights(root) -> Path:
    return save_weights(tiny_model(), root / "tiny.pt", class_names=NAMES, image_size=SIZE, **CFG)


@pytest.fixture(scope="module")
def data(root) -> Path:
    "A small synthetic VOCdevkit with the tiny model's classes (train and val splits)."
    make_synthetic_voc(root / "data", n_images=24, image_size=(160, 120), class_names=NAMES)
    return root / "data"


@pytest.fixture(scope="module")
def images(data) -> list:
    return sorted((data / "VOCdevkit" / "VOC2007" / "JPEGImages").glob("*.jpg"))


@pytest.fixture(scope="module")
def ir(weights, root) -> Path:
    return export_openvino(load_detector(weights), root / "ir")


def max_diffs(a, b):
    "Largest box and score differences of two lists of `Detections` whose labels agree one to one."
    assert [len(x) for x in a] == [len(y) for y in b]
    for x, y in zip(a, b): np.testing.assert_array_equal(x.labels, y.labels)
    box = max((float(np.abs(x.boxes - y.boxes).max()) for x, y in zip(a, b) if len(x)), default=0.0)
    score = max((float(np.abs(x.scores - y.scores).max()) for x, y in zip(a, b) if len(x)), default=0.0)
    return box, score


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


# -- f32 against eager ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 5])
def test_f32_detections_match_eager(weights, ir, images, batch):
    eager = load_detector(weights)
    det = load_openvino_detector(ir, precision="f32", verbose=False)
    assert isinstance(det.model, OpenVinoBackend) and det.model.precision.hint == "f32"
    a, b = det.predict(images, conf=0.05, batch_size=batch), eager.predict(images, conf=0.05, batch_size=batch)
    assert sum(map(len, b)) > 20  # enough detections to compare
    box, score = max_diffs(a, b)
    assert box < BOX_TOL and score < SCORE_TOL, (box, score)


def test_metadata_round_trip_and_decoding(weights, root, images):
    "The rt_info holds the export metadata; a logistic, pixel-anchor model decodes as such after the round trip."
    eager = load_detector(weights)
    anchors = (np.array(eager.decoding.anchors) * SIZE).round(1).tolist()  # the same anchors, in input pixels
    darknet_like = Detector(eager.model, NAMES, SIZE, Decoding("logistic", anchors, "pixels"))
    xml = export_openvino(darknet_like, root / "logistic.xml")
    assert xml == root / "logistic.xml" and (root / "logistic.bin").exists()
    meta = openvino_metadata(ov.Core().read_model(str(xml)), xml)
    assert meta["format"] == "yolo_voc.export/2" and meta["class_names"] == NAMES and meta["image_size"] == SIZE
    assert meta["decoding"] == darknet_like.decoding.to_dict() and meta["strides"] == [32, 16, 8]
    assert meta["precision"] == "fp32" and meta["end_to_end"] is False and "out_stride32" in meta["outputs"]
    det = load_openvino_detector(xml, precision="f32", verbose=False)
    assert det.decoding == darknet_like.decoding and det.class_names == NAMES and det.image_size == SIZE
    box, score = max_diffs(det.predict(images, conf=0.05), darknet_like.predict(images, conf=0.05))
    assert box < BOX_TOL and score < SCORE_TOL


def test_end_to_end_ir_matches_predict(weights, root, images):
    "--nms: the IR's padded detections are `Detector.predict`'s in letterbox pixels, in the same order."
    eager = load_detector(weights)
    assert export_main(["--ckpt_path", str(weights), "--format", "openvino", "--nms", "--conf", "0.05",
                        "--out", str(root / "e2e")]) == 0
    xml = root / "e2e" / "model.xml"
    meta = openvino_metadata(ov.Core().read_model(str(xml)))
    assert meta["end_to_end"] is True and meta["nms"]["conf"] == 0.05
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    batch = torch.stack([eager.preprocess(p)[0] for p in images[:4]])
    boxes, scores, labels, counts = (np.array(v) for v in compiled(batch.numpy()).values())
    from yolo_voc.decode import postprocess
    ref = postprocess(eager.forward(batch), eager.decoding, conf_threshold=0.05, iou_threshold=0.45, max_detections=100)
    assert counts.tolist() == [len(r["scores"]) for r in ref] and counts.sum() > 5
    for i, r in enumerate(ref):
        n = counts[i]
        np.testing.assert_allclose(boxes[i, :n], r["boxes"].numpy(), atol=BOX_TOL)
        np.testing.assert_allclose(scores[i, :n], r["scores"].numpy(), atol=SCORE_TOL)
        np.testing.assert_array_equal(labels[i, :n], r["labels"].numpy())
    with pytest.raises(Exception, match="end-to-end"): load_openvino_detector(xml, verbose=False)


# -- int8 ----------------------------------------------------------------------------------------------------------
def map50_against(detector, reference, images) -> float:
    "mAP50 of `detector` on `images`, with `reference`'s detections (conf 0.25) as the ground truth (boxes over 1 px)."
    def kept(d):  # metrics.mean_average_precision fails on two zero-width boxes at the image's edge (0/0 IoU)
        ok = (d.boxes[:, 2] - d.boxes[:, 0] > 1) & (d.boxes[:, 3] - d.boxes[:, 1] > 1)
        return d.boxes[ok], d.scores[ok], d.labels[ok]
    gts = [dict(zip(("boxes", "scores", "labels"), kept(d))) for d in reference.predict(images, conf=0.25)]
    for g in gts: g["difficult"] = np.zeros(len(g["labels"]), bool)
    preds = [dict(zip(("boxes", "scores", "labels"), kept(d))) for d in detector.predict(images, conf=0.05)]
    return float(mean_average_precision(preds, gts, method="voc07", num_classes=len(NAMES))["map"])


def test_int8_through_map50(weights, root, data, capsys):
    """`export --format openvino --int8 --int8_method qdq`: int8 from the QDQ graph (FakeQuantize in the IR),
    calibrated on the training split. Its mAP50 on the validation images, with eager fp32's detections as the truth, is within 5 points of ONNX
    Runtime's on the same QDQ graph (an untrained tiny model: its near-tied boxes make int8 lose much against fp32,
    for either runtime; a trained model's loss is what the command's report shows)."""
    out = root / "int8.xml"
    assert export_main(["--ckpt_path", str(weights), "--format", "openvino", "--int8", "--int8_method", "qdq", "--data",
                        str(data), "--calib_images", "8", "--out", str(out)]) == 0
    report = capsys.readouterr().out
    assert "(openvino int8)" in report and "calibrated on 8 images" in report and "mAP50 on" in report
    model = ov.Core().read_model(str(out))
    assert sum(op.get_type_name() == "FakeQuantize" for op in model.get_ops()) > 40
    meta = openvino_metadata(model)
    assert (meta["precision"], meta["int8_method"], meta["calibration_images"]) == ("int8", "qdq", 8)
    eager = load_detector(weights)
    int8 = load_openvino_detector(out, verbose=False)
    assert int8.model_config["precision"] == "int8 (from the file), other layers f32"
    val = [a.image_path for a in load_annotations(data, "val", NAMES)]
    calib = [a.image_path for a in load_annotations(data, "train", NAMES)]
    calib = [calib[i] for i in np.unique(np.linspace(0, len(calib) - 1, 8).round().astype(int))]  # as the command spreads them
    ort8 = load_onnx_detector(quantize_int8(eager, root / "int8.onnx", calib))
    f32 = map50_against(load_openvino_detector(root / "ir", precision="f32", verbose=False), eager, val)
    i8, o8 = map50_against(int8, eager, val), map50_against(ort8, eager, val)
    print(f"mAP50 against eager fp32: OpenVINO f32 {f32:.4f}, OpenVINO int8 {i8:.4f}, ONNX Runtime int8 {o8:.4f}")
    assert f32 > 0.99 and abs(i8 - o8) < 0.05, (f32, i8, o8)
    assert out.with_suffix(".bin").stat().st_size < 0.5 * (root / "ir" / "model.bin").stat().st_size


def test_int8_by_nncf(weights, root, data):
    """--int8 (NNCF, the default): FakeQuantize, the first convolution left in float; it loads and detects. (Its
    accuracy on a trained model is measured by `benchmarks/infer_speed.py --ckpt`: an untrained model says little.)"""
    out = root / "nncf.xml"
    assert export_main(["--ckpt_path", str(weights), "--format", "openvino", "--int8", "--data",
                        str(data), "--calib_images", "4", "--no_eval", "--out", str(out)]) == 0
    model = ov.Core().read_model(str(out))
    ops = list(model.get_ops())
    assert sum(op.get_type_name() == "FakeQuantize" for op in ops) > 40
    [first] = [op for op in ops if op.get_type_name() == "Convolution" and op.input_value(0).get_node().get_type_name() != "FakeQuantize"
               and op.input_value(0).get_node().get_type_name() == "Parameter"]
    assert openvino_metadata(model)["int8_method"] == "nncf"
    assert load_openvino_detector(out, verbose=False).predict(sorted((data / "VOCdevkit" / "VOC2007" / "JPEGImages").glob("*.jpg"))[:2], conf=0.05)


def test_int8_report_matches_detector_map50(weights, root, data):
    "The mAP50 the export prints is `detector_map50` of the IR it wrote (against the dataset's annotations)."
    from yolo_voc.export import Int8Settings, export_openvino_model
    report = export_openvino_model(load_detector(weights), root / "int8b", int8=Int8Settings(str(data), calib_images=4))
    val = load_annotations(data, "val", NAMES)
    assert report.val_images == len(val) and report.precision == "int8"
    assert report.map50_int8 == pytest.approx(detector_map50(load_openvino_detector(report.path, verbose=False), val))


# -- predict, app ----------------------------------------------------------------------------------------------------
def test_predict_command_on_xml(weights, ir, images, tmp_path, capsys):
    out = tmp_path / "det"
    assert predict_main([str(p) for p in images[:4]] + ["--ckpt_path", str(ir), "--out", str(out), "--conf", "0.05",
                                                         "--precision", "f32"]) == 0
    err = capsys.readouterr().err
    assert "OpenVINO on the CPU, model.xml: precision f32 (--precision f32)" in err
    got = json.loads((out / "predictions.json").read_text())
    eager = load_detector(weights).predict(images[:4], conf=0.05)
    assert [len(r["detections"]) for r in got["images"]] == [len(d) for d in eager] and sum(map(len, eager)) > 3
    for r, d in zip(got["images"], eager):
        np.testing.assert_allclose(np.reshape([x["box"] for x in r["detections"]], (-1, 4)), d.boxes, atol=BOX_TOL)
        assert [x["name"] for x in r["detections"]] == d.names
    # the IR's folder works as well, and --device auto means the CPU for OpenVINO
    assert predict_main([str(images[0]), "--ckpt_path", str(ir.parent), "--out", str(tmp_path / "det2"), "--device", "auto"]) == 0


def test_app_serves_the_ir(weights, ir, tmp_path):
    pytest.importorskip("gradio")
    from yolo_voc.app import can_gradcam, detect_view, load_app_detector, model_kind, write_space
    det = load_app_detector(ir, precision="f32")
    assert not can_gradcam(det) and model_kind(det) == "OpenVINO on the CPU, f32"
    img = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    _, table, cam, record = detect_view(det, img, conf=0.003)
    ref = load_detector(weights).predict(img, conf=0.003)[0]
    assert cam is None and len(record["detections"]) == len(ref) > 0
    space = write_space(det, tmp_path / "space")
    assert sorted(p.name for p in space.iterdir()) == ["README.md", "app.py", "examples", "model.bin", "model.xml",
                                                       "requirements.txt"]
    assert "openvino" in (space / "requirements.txt").read_text().splitlines()
    again = load_app_detector(space / "model.xml", precision="f32")
    assert len(again.predict(img, conf=0.003)[0]) == len(ref)


# -- missing package, errors, output safety ------------------------------------------------------------------------------
@pytest.mark.parametrize("package, extra", [("openvino", []), ("onnx", []), ("onnxruntime", ["--int8", "--int8_method", "qdq"]),
                                            ("nncf", ["--int8"])])
def test_missing_package_one_line_exit_4(weights, tmp_path, capsys, monkeypatch, package, extra):
    monkeypatch.setitem(sys.modules, package, None)  # what Python does for a package that is not installed
    assert export_main(["--ckpt_path", str(weights), "--format", "openvino", *extra, "--out", str(tmp_path / "m.xml")]) == EXIT_MISSING_DEPENDENCY
    line = one_line(capsys)
    assert f"needs the {package} package" in line and 'pip install "yolo_voc[openvino]"' in line
    assert not list(tmp_path.iterdir())


def test_predict_without_openvino_exit_4(ir, images, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    assert predict_main([str(images[0]), "--ckpt_path", str(ir), "--out", str(tmp_path / "d")]) == EXIT_MISSING_DEPENDENCY
    assert 'pip install "yolo_voc[openvino]"' in one_line(capsys)


def test_load_errors(ir, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="holds one .xml file"): load_openvino_detector(tmp_path / "empty", verbose=False)
    (tmp_path / "lonely.xml").write_bytes(ir.read_bytes())
    with pytest.raises(Exception, match="lonely.bin are missing"): load_openvino_detector(tmp_path / "lonely.xml", verbose=False)
    (tmp_path / "bad.xml").write_text("<net>not an IR</net>"); (tmp_path / "bad.bin").write_bytes(b"")
    with pytest.raises(Exception, match="bad.xml: OpenVINO can't read it"): load_openvino_detector(tmp_path / "bad.xml", verbose=False)
    with pytest.raises(ValueError, match="run on the CPU"): load_openvino_detector(ir, device="cuda", verbose=False)


def test_export_output_safety(weights, tmp_path, capsys, monkeypatch):
    "Never over the checkpoint (its .bin neither), never over a file without --exist_ok; no temporary file left."
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.bin").write_bytes(weights.read_bytes())  # a checkpoint that happens to end in .bin
    before = (tmp_path / "model.bin").read_bytes()
    assert export_main(["--ckpt_path", "model.bin", "--format", "openvino", "--out", "model.xml", "--exist_ok"]) == EXIT_USAGE
    assert "is the checkpoint being exported" in one_line(capsys)
    assert (tmp_path / "model.bin").read_bytes() == before and not (tmp_path / "model.xml").exists()
    assert export_main(["--ckpt_path", "model.bin", "--format", "openvino", "--out", "ir"]) == 0
    capsys.readouterr()
    assert export_main(["--ckpt_path", "model.bin", "--format", "openvino", "--out", "ir"]) == EXIT_USAGE
    assert "ir/model.xml: exists" in one_line(capsys)
    mtime = os.stat(tmp_path / "ir" / "model.xml").st_mtime_ns
    assert export_main(["--ckpt_path", "model.bin", "--format", "openvino", "--out", "ir", "--exist_ok"]) == 0
    assert os.stat(tmp_path / "ir" / "model.xml").st_mtime_ns != mtime
    leftovers = [p for p in tmp_path.rglob("*") if p.name.startswith("tmp-") or p.name.endswith(".partial")]
    assert not leftovers and sorted(p.name for p in (tmp_path / "ir").iterdir()) == ["model.bin", "model.xml"]
    assert load_openvino_detector(tmp_path / "ir", verbose=False).class_names == NAMES
    assert export_main(["--ckpt_path", str(tmp_path / "ir" / "model.xml"), "--format", "openvino", "--out", "again"]) == EXIT_BAD_INPUT


# -- precision -----------------------------------------------------------------------------------------------------
def test_precision_choice_simulated():
    "SIMULATED capability lists: the bf16 path's selection logic, on a CPU that may have no bf16."
    bf16_cpu, avx2_cpu = ["FP32", "BF16", "INT8", "BIN", "EXPORT_IMPORT"], ["FP32", "INT8", "BIN", "EXPORT_IMPORT"]
    assert choose_precision("auto", "fp32", bf16_cpu).hint == "bf16"
    assert choose_precision("auto", "fp32", avx2_cpu).hint == "f32"
    assert choose_precision("bf16", "fp32", bf16_cpu).hint == "bf16"
    assert choose_precision("f32", "fp32", bf16_cpu).hint == "f32"
    assert choose_precision("auto", "int8", bf16_cpu).label == "int8 (from the file), other layers bf16"
    assert choose_precision("auto", "int8", avx2_cpu).label == "int8 (from the file), other layers f32"
    with pytest.raises(ValueError, match="this CPU has no bf16"): choose_precision("bf16", "fp32", avx2_cpu)
    with pytest.raises(ValueError, match="must be one of"): choose_precision("fp16", "fp32", bf16_cpu)


def test_bf16_compile_simulated(ir):
    "A simulated bf16 CPU compiles the IR with the bf16 hint; on this CPU, auto follows what OpenVINO lists."
    det = load_openvino_detector(ir, precision="auto", capabilities=["FP32", "BF16", "INT8"], verbose=False)
    assert det.model.precision.hint == "bf16" and det.model_config["precision_reason"] == "auto: the CPU has bf16"
    real = load_openvino_detector(ir, precision="auto", verbose=False)
    assert real.model.precision.hint == ("bf16" if "BF16" in cpu_capabilities() else "f32")


def test_bf16_refused_where_the_cpu_has_none(ir, images, tmp_path, capsys):
    if "BF16" in cpu_capabilities(): pytest.skip("this CPU has bf16: nothing to refuse")
    assert predict_main([str(images[0]), "--ckpt_path", str(ir), "--out", str(tmp_path / "d"), "--precision", "bf16"]) == EXIT_USAGE
    assert "this CPU has no bf16" in one_line(capsys)
