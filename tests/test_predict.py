"""Tests of yolo_voc.predict: checkpoint formats and errors, predictions in original pixels, the `predict`
command (bad files, exit codes), Grad-CAM. The export tests are in tests/test_export.py."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from yolo_voc.boxes import unletterbox_boxes
from yolo_voc.decode import postprocess
from yolo_voc.model import YOLOv3
from yolo_voc.checkpoint import CheckpointError, read_checkpoint, save_weights
from yolo_voc.gradcam import gradcam, overlay_heatmap, render_view
from yolo_voc.cli import predict_main
from yolo_voc.predict import ImageReadError, draw_detections
from yolo_voc.runtime import load_detector

from tiny_models import CFG, NAMES, tiny_model

SIZE = 128


def write_checkpoint(path: Path, model: torch.nn.Module, **extra) -> Path:
    "A checkpoint laid out as Lightning writes it (hyper_parameters + 'model.' state_dict + training state)."
    hp = dict(CFG, class_names=NAMES, backbone="darknet53", image_size=SIZE, anchors=None, lr=1e-3, epochs=3)
    torch.save({"epoch": 2, "global_step": 30, "pytorch-lightning_version": "2.6.0", "hyper_parameters": hp,
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-3}]}], "lr_schedulers": [],
                "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 2}}}}, **extra}, path)
    return path


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory):
    "A tiny model written as a weights file and as a Lightning-style checkpoint."
    root = tmp_path_factory.mktemp("ckpts")
    model = tiny_model()
    weights = save_weights(model, root / "tiny.pt", class_names=NAMES, image_size=SIZE, **CFG)
    return dict(model=model, weights=weights, ckpt=write_checkpoint(root / "last.ckpt", model), root=root)


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    "A folder with three good images of different sizes and modes, one text file named .jpg, one truncated JPEG."
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (150, 200, 3), dtype=np.uint8)).save(d / "a.jpg", quality=95)
    Image.fromarray(rng.integers(0, 255, (160, 96, 3), dtype=np.uint8)).save(d / "b.png")
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(d / "c.png")  # grey
    (d / "fake.jpg").write_text("this is not an image")
    (d / "trunc.jpg").write_bytes((d / "a.jpg").read_bytes()[:1500])
    return d


def test_load_formats_agree(ckpts):
    x = torch.rand(2, 3, SIZE, SIZE)
    a, b = load_detector(ckpts["weights"]), load_detector(ckpts["ckpt"])
    for det in (a, b):
        assert det.class_names == NAMES and det.image_size == SIZE and det.num_classes == 3
        assert det.model_config == dict(CFG, backbone="darknet53")
    for oa, ob, om in zip(a.forward(x), b.forward(x), ckpts["model"](x)):
        assert torch.equal(oa, ob)
        torch.testing.assert_close(oa, om)


def test_real_lightning_checkpoint(tmp_path):
    "A checkpoint written by pytorch-lightning itself (callbacks, loops, optimizer) loads with weights_only=True."
    pl = pytest.importorskip("pytorch_lightning")

    class Module(pl.LightningModule):
        def __init__(self, num_classes=3, class_names=NAMES, width_mult=0.25, depth_mult=0.33,
                     backbone="darknet53", image_size=64, anchors=None, lr=1e-3):
            super().__init__()
            self.save_hyperparameters()
            self.model = YOLOv3(num_classes, width_mult, depth_mult, backbone)

        def training_step(self, batch, _):
            return sum(o.mean() for o in self.model(batch[0]))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    torch.manual_seed(0)
    module = Module()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.rand(2, 3, 64, 64)), batch_size=2)
    trainer = pl.Trainer(max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path, accelerator="cpu", devices=1)
    trainer.fit(module, data)
    trainer.save_checkpoint(tmp_path / "real.ckpt")
    det = load_detector(tmp_path / "real.ckpt")
    x = torch.rand(1, 3, 64, 64)
    for a, b in zip(det.forward(x), module.model.eval()(x)):
        torch.testing.assert_close(a, b)
    # and the lightweight file made from the LightningModule itself
    det2 = load_detector(save_weights(module, tmp_path / "w.pt"))
    assert det2.image_size == 64 and det2.class_names == NAMES


def test_yolo_module_checkpoint(tmp_path):
    "A checkpoint of the project's own training module (yolo_voc.train.YoloModule) loads without its code's state."
    train = pytest.importorskip("yolo_voc.train")
    pl = pytest.importorskip("pytorch_lightning")
    torch.manual_seed(0)
    module = train.YoloModule(num_classes=3, class_names=NAMES, width_mult=0.25, depth_mult=0.33, image_size=64)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         accelerator="cpu", devices=1)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "module.ckpt")
    det = load_detector(tmp_path / "module.ckpt")
    assert det.class_names == NAMES and det.image_size == 64
    x = torch.rand(1, 3, 64, 64)
    for a, b in zip(det.forward(x), module.model.eval()(x)):
        torch.testing.assert_close(a, b)
    assert load_detector(save_weights(module, tmp_path / "w.pt")).class_names == NAMES


def test_load_errors(ckpts, tmp_path):
    good = ckpts["weights"]
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    (tmp_path / "half.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    torch.save([1, 2, 3], tmp_path / "list.pt")
    torch.save({"epoch": 1, "state_dict": {}}, tmp_path / "nohp.ckpt")
    torch.save({"format": "yolo_voc.weights/7"}, tmp_path / "future.pt")
    write_checkpoint(tmp_path / "shape.ckpt", YOLOv3(num_classes=5, width_mult=0.25, depth_mult=0.33))
    write_checkpoint(tmp_path / "pickled.ckpt", ckpts["model"], callbacks={"fn": os.getcwd})
    (tmp_path / "folder.ckpt").mkdir()
    cases = {"missing.ckpt": (FileNotFoundError, "no such checkpoint file"),
             "text.ckpt": (CheckpointError, "not a readable PyTorch checkpoint"),
             "half.pt": (CheckpointError, "not a readable PyTorch checkpoint"),
             "random.pt": (CheckpointError, "not a readable PyTorch checkpoint"),
             "list.pt": (CheckpointError, "not a yolo_voc checkpoint"),
             "nohp.ckpt": (CheckpointError, "not a yolo_voc checkpoint"),
             "future.pt": (CheckpointError, "unsupported weights format"),
             "shape.ckpt": (CheckpointError, "the weights don't fit"),
             "pickled.ckpt": (CheckpointError, "a weights-only load refuses"),
             "folder.ckpt": (CheckpointError, "is a folder")}
    for name, (err, msg) in cases.items():
        with pytest.raises(err) as e:
            load_detector(tmp_path / name)
        assert str(e.value).startswith(f"{tmp_path / name}: {msg}"), str(e.value)
    # a trusted file with pickled objects loads when asked explicitly
    assert load_detector(tmp_path / "pickled.ckpt", weights_only=False).num_classes == 3


def test_save_weights_atomic_and_self_contained(ckpts, tmp_path):
    det = load_detector(ckpts["ckpt"])
    path = save_weights(det, tmp_path / "sub" / "w.pt")
    assert sorted(p.name for p in path.parent.iterdir()) == ["w.pt"]  # no temporary file left
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "yolo_voc.weights/2" and set(raw) == {"format", "model", "class_names", "image_size",
                                                                   "decoding", "state_dict"}
    assert raw["decoding"] == det.decoding.to_dict()
    ck = read_checkpoint(path)
    assert ck["class_names"] == NAMES and ck["image_size"] == SIZE
    with pytest.raises(ValueError, match="width_mult"):
        save_weights(ckpts["model"], tmp_path / "x.pt")  # a bare YOLOv3 doesn't know its width


def test_predict_maps_back_to_original_pixels(ckpts, images):
    "predict == letterbox + model + postprocess + unletterbox, whatever the input type and batch size."
    det = load_detector(ckpts["weights"])
    paths = [images / "a.jpg", images / "b.png", images / "c.png"]
    res = det.predict(paths, conf=0.05, batch_size=2)
    assert [r.file for r in res] == [str(p) for p in paths]
    assert sum(len(r) for r in res) > 0
    for p, r in zip(paths, res):
        x, lb = det.preprocess(p)
        ref = postprocess(det.forward(x[None]), det.decoding, conf_threshold=0.05, iou_threshold=0.45)[0]
        np.testing.assert_allclose(r.boxes, unletterbox_boxes(ref["boxes"], lb).numpy(), atol=1e-3)
        np.testing.assert_allclose(r.scores, ref["scores"].numpy(), atol=1e-5)
        with Image.open(p) as im:
            assert (r.width, r.height) == im.size
        assert (r.boxes[:, [0, 2]] <= r.width + 1e-3).all() and (r.boxes[:, [1, 3]] <= r.height + 1e-3).all()
        assert r.names == [NAMES[i] for i in r.labels]
    arr = np.asarray(Image.open(paths[0]).convert("RGB"))
    for same in (det.predict(arr, conf=0.05)[0], det.predict(Image.open(paths[0]), conf=0.05)[0],
                 det.predict(images, conf=0.05, errors=[], batch_size=1)[0]):
        np.testing.assert_allclose(same.boxes, res[0].boxes, atol=1e-4)
    assert len(det.predict(arr, conf=0.05, max_detections=2)[0]) <= 2


def test_predict_bad_images(ckpts, images):
    det = load_detector(ckpts["weights"])
    with pytest.raises(ImageReadError, match="fake.jpg: cannot read the image"):
        det.predict(images / "fake.jpg")
    errors = []
    res = det.predict([images, images / "nope.png"], conf=0.05, errors=errors)
    assert [Path(r.file).name for r in res] == ["a.jpg", "b.png", "c.png"]
    assert sorted(Path(e["file"]).name for e in errors) == ["fake.jpg", "nope.png", "trunc.jpg"]
    assert any("truncated" in e["error"] for e in errors)


def run_predict(ckpt, out, *inputs, extra=()):
    return predict_main(["--ckpt_path", str(ckpt), "--out", str(out), "--conf", "0.02", *extra, *map(str, inputs)])


def test_predict_command(ckpts, images, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_predict(ckpts["ckpt"], out, images, images / "missing.jpg", extra=["--batch_size", "2"]) == 0
    err = capsys.readouterr().err
    for bad in ("fake.jpg", "trunc.jpg", "missing.jpg"):
        assert bad in err
    result = json.loads((out / "predictions.json").read_text())
    assert [Path(r["file"]).name for r in result["images"]] == ["a.jpg", "b.png", "c.png"]
    assert sorted(Path(e["file"]).name for e in result["errors"]) == ["fake.jpg", "missing.jpg", "trunc.jpg"]
    direct = load_detector(ckpts["ckpt"]).predict(images / "a.jpg", conf=0.02)[0]
    rec = result["images"][0]
    assert (rec["width"], rec["height"]) == (200, 150)
    assert len(rec["detections"]) == len(direct) > 0
    for d, box, score, label in zip(rec["detections"], direct.boxes, direct.scores, direct.labels):
        assert set(d) == {"box", "score", "label", "name"}
        np.testing.assert_allclose(d["box"], box, atol=0.01)
        assert abs(d["score"] - score) < 1e-4 and d["label"] == label and d["name"] == NAMES[label]
    for r in result["images"]:  # drawn images, same size as the inputs
        with Image.open(out / r["output"]) as im:
            assert im.size == (r["width"], r["height"])
    # same names from two folders don't overwrite each other
    other = tmp_path / "other"; other.mkdir(); shutil.copy(images / "a.jpg", other / "a.jpg")
    assert run_predict(ckpts["ckpt"], tmp_path / "out2", images / "a.jpg", other / "a.jpg") == 0
    outs = [r["output"] for r in json.loads((tmp_path / "out2" / "predictions.json").read_text())["images"]]
    assert outs == ["a.jpg", "a_1.jpg"]


def test_predict_command_exit_codes(ckpts, images, tmp_path, capsys):
    assert run_predict(ckpts["ckpt"], tmp_path / "o1", images / "fake.jpg", images / "trunc.jpg") == 1
    result = json.loads((tmp_path / "o1" / "predictions.json").read_text())
    assert result["images"] == [] and len(result["errors"]) == 2
    (tmp_path / "bad.ckpt").write_text("x")
    assert run_predict(tmp_path / "bad.ckpt", tmp_path / "o2", images) == 1  # bad input: a checkpoint that can't be used
    assert "bad.ckpt: not a readable PyTorch checkpoint" in capsys.readouterr().err
    assert predict_main(["--out", str(tmp_path)]) == 2  # usage error
    assert predict_main(["--help"]) == 0


def test_predict_console_script(ckpts, images, tmp_path):
    "Through the installed `yolo-voc` command, once `predict` is registered in yolo_voc.cli.COMMANDS."
    cli = pytest.importorskip("yolo_voc.cli")
    if "predict" not in getattr(cli, "COMMANDS", {}):
        pytest.skip("`predict` is not registered in yolo_voc.cli.COMMANDS yet")
    exe = shutil.which("yolo-voc") or pytest.skip("the yolo-voc console script is not installed")
    p = subprocess.run([exe, "predict", "--ckpt_path", str(ckpts["weights"]), "--out", str(tmp_path / "o"), "--conf", "0.05",
                        str(images)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "fake.jpg" in p.stderr and (tmp_path / "o" / "predictions.json").exists()


def test_gradcam(ckpts, images):
    det = load_detector(ckpts["weights"])
    img = np.asarray(Image.open(images / "a.jpg").convert("RGB"))
    dets = det.predict(img, conf=0.01)[0]
    assert len(dets) >= 2
    for i in range(min(len(dets), 4)):
        heat = gradcam(det, img, i, dets)
        assert heat.shape == (150, 200) and heat.dtype == np.float32
        assert heat.min() >= 0 and heat.max() <= 1 and heat.max() > 0.99  # normalized, not empty
    # a named layer works too, and no parameter gradient is left behind
    heat = gradcam(det, img, 0, dets, layer="neck3")
    assert heat.shape == (150, 200)
    assert all(p.grad is None for p in det.model.parameters())
    assert overlay_heatmap(img, heat).size == (200, 150)
    with pytest.raises(IndexError, match="out of range"):
        gradcam(det, img, len(dets), dets)
    with pytest.raises(ValueError, match="doesn't match"):
        overlay_heatmap(img, heat[:10])


def test_draw_and_render_view(ckpts, images):
    det = load_detector(ckpts["weights"])
    img = images / "b.png"
    dets = det.predict(img, conf=0.05)[0]
    drawn = draw_detections(img, dets)
    assert drawn.size == (96, 160) and drawn.mode == "RGB"
    view, table = render_view(det, img, conf=0.05, iou=0.45, show_cam=True, detection_index=99)
    assert view.size == (96, 160)
    assert list(table.columns) == ["name", "score", "x1", "y1", "x2", "y2"] and len(table) == len(dets)
    view, table = render_view(det, img, conf=0.999)  # nothing detected: the plain image and an empty table
    assert len(table) == 0 and np.array_equal(np.asarray(view), np.asarray(Image.open(img).convert("RGB")))
