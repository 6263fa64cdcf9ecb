"""Fine-tuning from weights users have (issue 14): `--model.pretrained` with a Darknet backbone file, a full Darknet file
of another class count, and a yolo_voc checkpoint."""
import os
import subprocess

import pytest
import torch

from yolo_voc.darknet import save_darknet
from yolo_voc.model import YOLOv3
from yolo_voc.train import YoloModule, load_pretrained

W = dict(width_mult=0.125, depth_mult=0.33)
TINY = ["--model.width_mult", "0.125", "--model.depth_mult", "0.33", "--data.image_size", "96", "--data.batch_size", "8",
        "--data.num_workers", "0", "--data.synthetic_images", "32", "--data.synthetic_classes", "4", "--model.max_lr", "0.002",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("YOLO_VOC_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def backbone_of(model):
    return {k: v for k, v in model.state_dict().items() if k.startswith("backbone.")}


def test_load_pretrained_backbone_and_other_class_count(tmp_path):
    torch.manual_seed(1)
    source = YOLOv3(80, **W)
    save_darknet(source, tmp_path / "backbone.conv.74", backbone_only=True)
    save_darknet(source, tmp_path / "coco.weights")
    torch.manual_seed(2)
    target = YOLOv3(4, **W)
    heads_before = {k: v.clone() for k, v in target.state_dict().items() if not k.startswith("backbone.")}
    msg = load_pretrained(target, tmp_path / "backbone.conv.74")
    assert "24 Darknet convolutions loaded, 23 left as initialised" in msg  # the narrow backbone: 24 of its 47 convolutions
    for k, v in backbone_of(source).items():
        if "num_batches_tracked" not in k: torch.testing.assert_close(target.state_dict()[k], v, msg=k)
    for k, v in heads_before.items(): assert torch.equal(target.state_dict()[k], v), k  # the rest is untouched
    # a full 80-class file into a 4-class model: everything but the prediction convolutions
    target2 = YOLOv3(4, **W)
    msg = load_pretrained(target2, tmp_path / "coco.weights")
    assert "re-initialised" in msg
    neck = [k for k in source.state_dict() if k.startswith("neck") and "num_batches" not in k]
    assert neck and all(torch.equal(target2.state_dict()[k], source.state_dict()[k]) for k in neck)
    # a yolo_voc checkpoint of another class count: the shapes that fit
    ckpt = tmp_path / "other.ckpt"
    module = YoloModule(num_classes=7, **W)
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, ckpt)
    target3 = YOLOv3(4, **W)
    msg = load_pretrained(target3, ckpt)
    assert "weights loaded" in msg
    for k, v in backbone_of(module.model).items(): assert torch.equal(target3.state_dict()[k], v), k
    with pytest.raises(Exception, match="no such pretrained weights file"):
        load_pretrained(target3, tmp_path / "missing.weights")
    (tmp_path / "junk.weights").write_bytes(b"\0" * 1000)
    with pytest.raises(Exception, match="junk.weights"):
        load_pretrained(target3, tmp_path / "junk.weights")


def test_fit_from_a_darknet_backbone(tmp_path):
    torch.manual_seed(3)
    save_darknet(YOLOv3(20, **W), tmp_path / "darknet53.conv.74", backbone_only=True)
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env.pop("YOLO_VOC_RUN_PLAN", None)
    r = subprocess.run(["yolo-voc", "fit", *TINY, "--trainer.max_epochs", "1", "--trainer.default_root_dir", tmp_path / "run",
                        "--model.pretrained", tmp_path / "darknet53.conv.74"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "pretrained: " in r.stdout + r.stderr and "24 Darknet convolutions loaded" in r.stdout + r.stderr
    # resuming takes the checkpoint's weights, not the pretrained file again
    r = subprocess.run(["yolo-voc", "fit", *TINY, "--trainer.max_epochs", "2", "--trainer.default_root_dir", tmp_path / "run",
                        "--model.pretrained", tmp_path / "darknet53.conv.74", "--ckpt_path", "last"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Darknet convolutions loaded" not in r.stdout + r.stderr


# -- the conventions of the heads (issue 21) ------------------------------------------------------------------------
def test_kept_darknet_heads_train_with_darknet_conventions(tmp_path):
    "A full Darknet file with the model's class count: BCE classes and yolov3.cfg's pixel anchors at every input size."
    from yolo_voc.boxes import Decoding
    from yolo_voc.darknet import DARKNET_ANCHORS, DARKNET_DECODING
    from yolo_voc.loss import encode_targets
    from yolo_voc.loss import YoloLoss
    torch.manual_seed(4)
    save_darknet(YOLOv3(4, **W), tmp_path / "four.weights")
    kept = YoloModule(num_classes=4, **W, pretrained=str(tmp_path / "four.weights"))
    assert (kept.decoding, kept.hparams.class_loss, kept.loss_fn.class_loss) == (DARKNET_DECODING, "bce", "bce")
    other = YoloModule(num_classes=3, **W, pretrained=str(tmp_path / "four.weights"))  # heads re-initialised
    assert (other.decoding, other.hparams.class_loss) == (Decoding(), "ce")
    asked = YoloModule(num_classes=4, **W, pretrained=str(tmp_path / "four.weights"), class_loss="ce")
    assert asked.decoding == Decoding("softmax", DARKNET_ANCHORS, "pixels")  # the loss asked for; the heads' anchors
    # the training loss at 608 encodes and scores against 373 / 608 of the input, not 373 / 416
    images = torch.rand(2, 3, 608, 608)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.6, 0.5], [1, 3, 0.3, 0.6, 0.05, 0.08]])
    kept.eval()
    with torch.no_grad(): _, _, parts = kept._loss(images, targets)
    for px, same in ((DARKNET_ANCHORS / 608, True), (DARKNET_ANCHORS / 416, False)):
        enc = encode_targets(targets, 2, (608, 608), px)
        with torch.no_grad():
            ref = YoloLoss(px, **{k: kept.hparams[k] for k in ("lambda_box", "lambda_noobj", "lambda_obj", "lambda_class")},
                           obj_target="iou", obj_loss="bce", class_loss="bce")(kept.model(images), enc)
        assert torch.allclose(parts["loss"], ref["loss"], rtol=1e-5) == same


def test_fit_from_a_full_darknet_file_keeps_its_conventions(tmp_path):
    "`yolo-voc fit --model.pretrained` with a full Darknet file of the data's class count: the checkpoint decodes as Darknet."
    from yolo_voc.darknet import DARKNET_DECODING
    from yolo_voc.runtime import load_detector
    torch.manual_seed(5)
    save_darknet(YOLOv3(4, **W), tmp_path / "four.weights")
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env.pop("YOLO_VOC_RUN_PLAN", None)
    r = subprocess.run(["yolo-voc", "fit", *TINY, "--trainer.max_epochs", "1", "--trainer.default_root_dir", tmp_path / "run",
                        "--model.pretrained", tmp_path / "four.weights"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "47 Darknet convolutions loaded" in r.stdout + r.stderr  # all of them: the heads are kept
    assert "decoding: logistic classes, anchors 10x13 .. 373x326 px (class_loss=bce)" in r.stdout + r.stderr
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    raw = torch.load(ckpt, weights_only=False)
    assert raw["hyper_parameters"]["class_loss"] == "bce" and raw["yolo_voc"]["decoding"] == DARKNET_DECODING.to_dict()
    assert load_detector(ckpt).decoding == DARKNET_DECODING
