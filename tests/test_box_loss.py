"""Issue 26: box-loss and assignment options reach training, and a grid-sensitivity decoding (`xy_scale`) travels
with the model: checkpoint, predict, ONNX (raw and end to end), the app; a resumed run keeps it; Darknet refuses it."""
import json

import numpy as np
import pytest
import torch

from yolo_voc.boxes import VOC_CLASSES, Decoding, unletterbox_boxes
from yolo_voc.decode import decode_outputs, postprocess
from yolo_voc.checkpoint import CheckpointError, read_checkpoint
from yolo_voc.runtime import load_detector
from yolo_voc.callbacks import make_trainer
from yolo_voc.train import YoloModule

from tiny_models import tiny_datamodule, tiny_module

NAMES = list(VOC_CLASSES[:3])
SIZE = 128
TWO = Decoding(xy_scale=2.0)


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("YOLO_VOC_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def datamodule():
    return tiny_datamodule(NAMES, SIZE)


def module(**kw) -> YoloModule:
    "The tiny model of the predict tests (lively heads) in a YoloModule."
    return tiny_module(NAMES, SIZE, **kw)


def test_options_reach_the_loss_and_the_decoding():
    m = module()  # the seed's recipe is the default
    assert (m.loss_fn.box_loss, m.loss_fn.assign, m.loss_fn.xy_scale, m.decoding) == ("mse", "one", 1.0, Decoding())
    m = module(box_loss="ciou", assign="ratio_neighbours")  # xy_scale: 2, which the neighbours need
    assert (m.loss_fn.box_loss, m.loss_fn.assign, m.loss_fn.xy_scale, m.decoding, m.hparams.xy_scale) == \
        ("ciou", "ratio_neighbours", 2.0, TWO, 2.0)
    assert module(xy_scale=1.05).decoding.xy_scale == 1.05
    with pytest.raises(ValueError, match="use xy_scale 2"):
        module(assign="ratio_neighbours", xy_scale=1.0)
    with pytest.raises(ValueError, match="box_loss='iou'"):
        module(box_loss="iou")


@pytest.fixture(scope="module")
def two_ckpt(tmp_path_factory):
    "A Lightning checkpoint of a model trained with ciou, ratio_neighbours and xy_scale 2 (one training step)."
    run = tmp_path_factory.mktemp("two_run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("YOLO_VOC_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        m = module(box_loss="ciou", assign="ratio_neighbours")
        trainer = make_trainer(run, max_epochs=1, max_steps=1, enable_progress_bar=False, limit_val_batches=1)
        trainer.fit(m, datamodule())
        trainer.save_checkpoint(run / "two.ckpt")
    return run / "two.ckpt"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from yolo_voc.synthetic import make_synthetic_voc
    root = make_synthetic_voc(tmp_path_factory.mktemp("images"), n_images=3, image_size=(160, 120), class_names=NAMES)
    return sorted(root.rglob("*.jpg"))


def reference(det, image, decoding, conf=0.02):
    x, lb = det.preprocess(image)
    d = postprocess(det.forward(x[None]), decoding, conf_threshold=conf, iou_threshold=0.45)[0]
    return unletterbox_boxes(d["boxes"], lb).numpy(), d["scores"].numpy()


def test_checkpoint_and_predict_carry_xy_scale(two_ckpt, images):
    raw = torch.load(two_ckpt, weights_only=False)
    assert raw["yolo_voc"]["decoding"]["xy_scale"] == 2.0 and raw["hyper_parameters"]["xy_scale"] == 2.0
    assert raw["hyper_parameters"]["box_loss"] == "ciou" and raw["hyper_parameters"]["assign"] == "ratio_neighbours"
    assert read_checkpoint(two_ckpt)["decoding"] == TWO
    det = load_detector(two_ckpt)
    assert det.decoding == TWO and "xy_scale 2" in repr(det)
    found = 0
    for image, res in zip(images, det.predict(images, conf=0.02)):
        boxes, scores = reference(det, image, TWO)
        np.testing.assert_allclose(res.boxes, boxes, atol=1e-3)
        np.testing.assert_allclose(res.scores, scores, atol=1e-6)
        found += len(scores)
    assert found > 5
    # the field matters: the same outputs decoded with xy_scale 1 put the centres elsewhere, by (sigmoid - 0.5) cells
    with torch.no_grad(): outs = det.forward(det.preprocess(images[0])[0][None])
    two, one = decode_outputs(outs, TWO)[0], decode_outputs(outs, Decoding())[0]
    shift = outs[0][..., 1].sigmoid().flatten() - 0.5  # x, scale 0 (stride 32), in cells
    n0 = shift.numel()
    np.testing.assert_allclose(((two - one)[0, :n0, 0] / 32).numpy(), shift.numpy(), atol=1e-4)
    assert float(shift.abs().max()) > 0.01  # 0.3 px at stride 32, far above the tolerance


def test_exports_and_app_carry_xy_scale(two_ckpt, images, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from yolo_voc.app import load_app_detector, write_space
    from yolo_voc.export import NmsSettings, export_onnx
    from yolo_voc.runtime import load_onnx_detector
    det = load_detector(two_ckpt)
    want = det.predict(images, conf=0.05)
    onnx_det = load_onnx_detector(export_onnx(det, tmp_path / "raw.onnx"))
    assert onnx_det.decoding == TWO
    rows = lambda b: b[np.lexsort(np.round(b, 1).T[::-1])]  # the same boxes in one order (the tiny model ties scores)
    for got, ref in zip(onnx_det.predict(images, conf=0.05), want):
        np.testing.assert_allclose(rows(got.boxes), rows(ref.boxes), atol=1e-2)
    nms = NmsSettings(conf=0.05, iou=0.45, max_detections=50)
    x = torch.stack([det.preprocess(p)[0] for p in images])
    sess = ort.InferenceSession(str(export_onnx(det, tmp_path / "e2e.onnx", nms=nms)), providers=["CPUExecutionProvider"])
    assert json.loads(sess.get_modelmeta().custom_metadata_map["decoding"])["xy_scale"] == 2.0
    boxes, _, _, counts = sess.run(None, {"images": x.numpy()})
    with torch.no_grad(): outs = det.forward(x)
    def matched(decoding) -> float:
        "The share of the graph's boxes that are rows of `decode_outputs` with `decoding` (clipped to the input)."
        cand = decode_outputs(outs, decoding)[0].clamp(0, SIZE).numpy()  # [B, N, 4]
        hits = [np.abs(cand[i] - b).max(-1).min() < 1e-2 for i in range(len(x)) for b in boxes[i, :int(counts[i])]]
        return float(np.mean(hits))
    assert int(counts.sum()) > 5
    assert matched(TWO) == 1.0 and matched(Decoding()) < 0.5  # the graph decodes centres with xy_scale 2
    space = write_space(det, tmp_path / "space")
    assert load_app_detector(space / "model.pt").decoding == TWO


def test_resume_keeps_xy_scale(two_ckpt, tmp_path):
    fresh = module()  # asks for nothing: takes the checkpoint's decoding, and the loss follows it
    make_trainer(tmp_path / "v", enable_progress_bar=False, limit_val_batches=1).validate(
        fresh, datamodule(), ckpt_path=str(two_ckpt), verbose=False)
    assert fresh.decoding == TWO and fresh.loss_fn.xy_scale == 2.0
    with pytest.raises(CheckpointError, match="xy_scale=2, but this run asks for xy_scale=1"):
        make_trainer(tmp_path / "w", enable_progress_bar=False, limit_val_batches=1).validate(
            module(xy_scale=1.0), datamodule(), ckpt_path=str(two_ckpt), verbose=False)


def test_darknet_keeps_its_decoding():
    from yolo_voc.darknet import DARKNET_DECODING, DarknetError, darknet_cfg
    from yolo_voc.model import YOLOv3
    assert DARKNET_DECODING.xy_scale == 1.0
    model = YOLOv3(3, width_mult=0.125, depth_mult=0.33)
    assert "[yolo]" in darknet_cfg(model, DARKNET_DECODING)
    with pytest.raises(DarknetError, match="xy_scale=2"):
        darknet_cfg(model, Decoding("logistic", xy_scale=2.0))
