"""A model's decoding travels with it (issue 21): a model trained with class_loss=bce is read with logistic classes by
validation, predict, ONNX (raw, end to end, int8), TorchScript and the app; files written before the decoding was
recorded decode as their models were trained; a resumed run keeps its checkpoint's decoding."""
import json

import numpy as np
import pytest
import torch

from yolo_voc import train
from yolo_voc.boxes import VOC_CLASSES, Decoding
from yolo_voc.decode import decode_outputs, postprocess
from yolo_voc.checkpoint import CheckpointError, read_checkpoint, save_weights
from yolo_voc.runtime import load_detector
from yolo_voc.train import YoloModule
from yolo_voc.callbacks import make_trainer

from tiny_models import CFG, tiny_datamodule, tiny_model, tiny_module

NAMES = list(VOC_CLASSES[:3])
SIZE = 128
LOGISTIC = Decoding("logistic")


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("YOLO_VOC_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def datamodule():
    return tiny_datamodule(NAMES, SIZE)


def module(**kw) -> YoloModule:
    "The tiny model of the predict tests (lively heads) in a YoloModule."
    return tiny_module(NAMES, SIZE, **kw)


class Spy:
    "Stands in for `train.postprocess`: records the decoding and the detections of each call."
    def __init__(self): self.calls = []
    def __call__(self, outputs, decoding, *args, **kw):
        dets = postprocess(outputs, decoding, *args, **kw)
        self.calls.append((decoding, [o.detach().clone() for o in outputs], dets))
        return dets


@pytest.fixture(scope="module")
def bce_ckpt(tmp_path_factory):
    "A Lightning checkpoint of a model trained with class_loss=bce (written by the trainer, with `on_save_checkpoint`)."
    run = tmp_path_factory.mktemp("bce_run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("YOLO_VOC_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        m = module(class_loss="bce")
        trainer = make_trainer(run, max_epochs=1, enable_progress_bar=False)
        trainer.validate(m, datamodule(), verbose=False)
        trainer.save_checkpoint(run / "bce.ckpt")
    return run / "bce.ckpt"


def test_checkpoint_records_the_decoding(bce_ckpt):
    raw = torch.load(bce_ckpt, weights_only=False)
    assert raw["yolo_voc"]["decoding"] == LOGISTIC.to_dict() and raw["hyper_parameters"]["class_loss"] == "bce"
    assert read_checkpoint(bce_ckpt)["decoding"] == LOGISTIC


def sigmoid_top(outputs) -> float:
    "The best score of a batch decoded by hand with logistic classes: sigmoid(obj) * max sigmoid(class)."
    return max(float((o[..., 0].sigmoid() * o[..., 5:].sigmoid().amax(-1)).max()) for o in outputs)


def test_validation_decodes_with_the_checkpoints_rule(bce_ckpt, monkeypatch, tmp_path):
    "`validate` from the checkpoint with a module that does not say its class loss: mAP's detections are sigmoid-scored."
    spy = Spy()
    monkeypatch.setattr(train, "postprocess", spy)
    fresh = module()  # class_loss unset: ce until the checkpoint says otherwise
    assert fresh.decoding == Decoding()
    make_trainer(tmp_path / "v", enable_progress_bar=False).validate(fresh, datamodule(), ckpt_path=str(bce_ckpt),
                                                                                    verbose=False)
    assert fresh.decoding == LOGISTIC and fresh.hparams.class_loss == "bce" and fresh.loss_fn.class_loss == "bce"
    assert spy.calls and all(d == LOGISTIC for d, _, _ in spy.calls)
    for _, outputs, dets in spy.calls:  # the best detection of each batch has the score computed by hand
        best = max(float(d["scores"].max()) for d in dets if len(d["scores"]))
        assert best == pytest.approx(sigmoid_top(outputs), abs=1e-5)
        _, obj, cls = decode_outputs(outputs)  # the default decoding: softmax
        softmax_best = float((obj * cls.amax(-1)).max())
        assert abs(best - softmax_best) > 0.05  # the rule matters for these outputs
    # a run that asks for the other class loss is refused, not silently mixed
    with pytest.raises(CheckpointError, match="trained with logistic classes .* asks for class_loss=ce"):
        make_trainer(tmp_path / "w", enable_progress_bar=False).validate(
            module(class_loss="ce"), datamodule(), ckpt_path=str(bce_ckpt), verbose=False)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    "Three synthetic photos (coloured shapes): the tiny model finds boxes in them."
    from yolo_voc.synthetic import make_synthetic_voc
    root = make_synthetic_voc(tmp_path_factory.mktemp("images"), n_images=3, image_size=(160, 120), class_names=NAMES)
    return sorted(root.rglob("*.jpg"))


def reference(det, image, decoding, conf=0.05):
    "letterbox + network + postprocess with `decoding` + unletterbox: what predict must return."
    from yolo_voc.boxes import unletterbox_boxes
    x, lb = det.preprocess(image)
    d = postprocess(det.forward(x[None]), decoding, conf_threshold=conf, iou_threshold=0.45)[0]
    return unletterbox_boxes(d["boxes"], lb).numpy(), d["scores"].numpy()


def test_predict_decodes_with_sigmoid(bce_ckpt, images):
    det = load_detector(bce_ckpt)
    assert det.decoding == LOGISTIC and "logistic" in repr(det)
    found, gap = 0, 0.0
    for image, res in zip(images, det.predict(images, conf=0.02)):
        boxes, scores = reference(det, image, LOGISTIC, conf=0.02)
        np.testing.assert_allclose(res.scores, scores, atol=1e-6)
        np.testing.assert_allclose(res.boxes, boxes, atol=1e-3)
        _, softmax_scores = reference(det, image, Decoding(), conf=0.02)
        found += len(scores)
        if len(scores): gap = max(gap, abs(scores.max() - softmax_scores.max()))
    assert found > 5 and gap > 0.01  # the rule matters for this model


def test_exports_carry_the_decoding(bce_ckpt, images, tmp_path):
    "Raw ONNX (as a Detector), ONNX and TorchScript end to end, int8: all decode like `Detector.predict`."
    ort = pytest.importorskip("onnxruntime")
    from yolo_voc.export import NmsSettings, export_onnx, export_torchscript, quantize_int8
    from yolo_voc.runtime import load_onnx_detector
    det = load_detector(bce_ckpt)
    want = det.predict(images, conf=0.05)
    onnx_det = load_onnx_detector(export_onnx(det, tmp_path / "raw.onnx"))
    assert onnx_det.decoding == LOGISTIC
    for got, ref in zip(onnx_det.predict(images, conf=0.05), want):
        np.testing.assert_allclose(got.scores, ref.scores, atol=1e-4)
    nms = NmsSettings(conf=0.05, iou=0.45, max_detections=50)
    x = torch.stack([det.preprocess(p)[0] for p in images])
    sess = ort.InferenceSession(str(export_onnx(det, tmp_path / "e2e.onnx", nms=nms)), providers=["CPUExecutionProvider"])
    assert json.loads(sess.get_modelmeta().custom_metadata_map["decoding"]) == LOGISTIC.to_dict()
    _, scores, _, counts = sess.run(None, {"images": x.numpy()})
    ts = torch.jit.load(str(export_torchscript(det, tmp_path / "e2e.pt", nms=nms)), _extra_files=(extra := {"yolo_voc.json": ""}))
    assert json.loads(extra["yolo_voc.json"])["decoding"] == LOGISTIC.to_dict()
    with torch.no_grad(): _, ts_scores, _, ts_counts = ts(x)
    for i, ref in enumerate(want):
        k = min(len(ref), nms.max_detections)
        assert int(counts[i]) == k == int(ts_counts[i])
        np.testing.assert_allclose(scores[i, :k], ref.scores[:k], atol=1e-4)
        np.testing.assert_allclose(ts_scores[i, :k].numpy(), ref.scores[:k], atol=1e-4)
    int8 = quantize_int8(det, tmp_path / "int8.onnx", images)
    assert load_onnx_detector(int8).decoding == LOGISTIC


def test_app_and_space_decode_with_sigmoid(bce_ckpt, images, tmp_path):
    pytest.importorskip("onnxruntime")
    from yolo_voc.app import detect_view, load_app_detector, write_space
    from yolo_voc.export import export_onnx
    det = load_app_detector(bce_ckpt)
    _, _, _, record = detect_view(det, images[0], conf=0.05, show_cam=False)
    _, scores = reference(det, images[0], LOGISTIC)
    np.testing.assert_allclose([d["score"] for d in record["detections"]], scores, atol=1e-5)
    space = write_space(det, tmp_path / "space")
    assert load_app_detector(space / "model.pt").decoding == LOGISTIC
    onnx_space = write_space(load_app_detector(export_onnx(det, tmp_path / "m.onnx")), tmp_path / "onnx_space")
    assert load_app_detector(onnx_space / "model.onnx").decoding == LOGISTIC


# -- files written before the decoding was recorded --------------------------------------------------------------
def test_older_files_decode_as_they_were_trained(tmp_path):
    model = tiny_model()
    hp = dict(CFG, class_names=NAMES, backbone="darknet53", image_size=SIZE, lr=1e-3)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"hyper_parameters": hp, "state_dict": state}, tmp_path / "ce.ckpt")  # an earlier release's checkpoint
    torch.save({"hyper_parameters": {**hp, "class_loss": "bce"}, "state_dict": state}, tmp_path / "bce.ckpt")
    assert load_detector(tmp_path / "ce.ckpt").decoding == Decoding()
    assert load_detector(tmp_path / "bce.ckpt").decoding == LOGISTIC
    new = torch.load(save_weights(model, tmp_path / "w.pt", class_names=NAMES, **CFG))
    old = {k: v for k, v in new.items() if k != "decoding"} | {"format": "yolo_voc.weights/1", "anchors": [[[0.5, 0.5]] * 3] * 3}
    torch.save(old, tmp_path / "old.pt")
    assert load_detector(tmp_path / "old.pt").decoding == Decoding("softmax", [[[0.5, 0.5]] * 3] * 3, "fraction")
    torch.save({**new, "decoding": {**new["decoding"], "box_rule": 2.0}}, tmp_path / "newer.pt")
    with pytest.raises(CheckpointError, match=r"newer.pt: decoding field\(s\) \['box_rule'\] are unknown"):
        load_detector(tmp_path / "newer.pt")


def test_older_onnx_exports_decode_with_softmax(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from yolo_voc.export import export_onnx
    from yolo_voc.runtime import load_onnx_detector
    det = load_detector(save_weights(tiny_model(), tmp_path / "w.pt", class_names=NAMES, decoding=LOGISTIC, **CFG))
    m = onnx.load(str(export_onnx(det, tmp_path / "m.onnx")))
    meta = {p.key: json.loads(p.value) for p in m.metadata_props}
    old = {k: v for k, v in meta.items() if k != "decoding"} | {"format": "yolo_voc.export/1", "anchors": [[[0.3, 0.2]] * 3] * 3}
    del m.metadata_props[:]
    for k, v in old.items(): m.metadata_props.add(key=k, value=json.dumps(v))
    onnx.save(m, str(tmp_path / "old.onnx"))
    assert load_onnx_detector(tmp_path / "old.onnx").decoding == Decoding("softmax", [[[0.3, 0.2]] * 3] * 3)
    del m.metadata_props[:]
    for k, v in (meta | {"format": "yolo_voc.export/3"}).items(): m.metadata_props.add(key=k, value=json.dumps(v))
    onnx.save(m, str(tmp_path / "future.onnx"))
    with pytest.raises(CheckpointError, match="future.onnx: not a yolo_voc ONNX export this version reads .*upgrade"):
        load_onnx_detector(tmp_path / "future.onnx")
