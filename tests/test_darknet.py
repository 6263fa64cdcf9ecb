"Tests of yolo_voc.darknet: Darknet .weights sizes, read/write round trips, the prediction row order, partial loads and errors."
import os

import numpy as np
import pytest
import torch
from torch import nn

from yolo_voc.boxes import VOC_CLASSES
from yolo_voc.decode import decode_outputs
from yolo_voc.darknet import (COCO_CLASSES, DARKNET_DECODING, DarknetError, darknet_cfg, darknet_class_names, darknet_layout,
                              load_darknet, model_from_darknet, save_darknet)
from yolo_voc.model import YOLOv3

NARROW = dict(width_mult=0.25, depth_mult=0.33)
HEADS = ("head5", "head4", "head3")


def logit(p: float) -> float: return float(np.log(p / (1 - p)))


def random_model(num_classes: int = 3, seed: int = 0, identity_pred: bool = True) -> YOLOv3:
    "A narrow YOLOv3 with every weight, bias and BatchNorm statistic random (prediction scale/shift random unless `identity_pred`)."
    torch.manual_seed(seed)
    model = YOLOv3(num_classes, **NARROW)
    with torch.no_grad():
        for p in model.parameters(): p.normal_(0, 0.1)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d): m.running_mean.normal_(); m.running_var.uniform_(0.5, 2.0)
        for h in HEADS:
            pred = getattr(model, h).pred[1]
            if identity_pred: pred.scale.fill_(1.0); pred.shift.zero_()
            else: pred.scale.uniform_(0.5, 2.0); pred.shift.normal_()
    return model.eval()


def file_floats(model: YOLOv3) -> int:
    "Floats a Darknet file of `model` holds, counted from its parameters (not from yolo_voc.darknet)."
    n = sum(p.numel() for name, p in model.named_parameters() if not name.endswith(("scale", "shift")))
    return n + sum(2 * m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_full_size_files(tmp_path):
    "yolov3.weights and darknet53.conv.74 sizes from the issue; the file's first and last blocks hold what Darknet puts there."
    torch.manual_seed(0)
    model = YOLOv3(80).eval()
    assert file_floats(model) == 62_001_757
    path = save_darknet(model, tmp_path / "yolov3.weights", seen=32_013_312)
    assert path.stat().st_size == 248_007_048
    layout = darknet_layout(path)
    assert (layout.kind, layout.num_classes, layout.version, layout.seen) == ("full", 80, (0, 2, 0), 32_013_312)
    floats = np.memmap(path, dtype="<f4", mode="r", offset=20)
    stem = model.backbone.stem[1]
    np.testing.assert_array_equal(floats[:32], stem.bias.detach().numpy())         # beta first
    np.testing.assert_array_equal(floats[32:64], stem.weight.detach().numpy())     # then gamma
    np.testing.assert_array_equal(floats[64:96], stem.running_mean.numpy())
    np.testing.assert_array_equal(floats[96:128], stem.running_var.numpy())
    np.testing.assert_array_equal(floats[128:128 + 864], model.backbone.stem[0].weight.detach().numpy().ravel())
    conv = model.head3.pred[1].conv  # last block: 255 biases, then 255 x 256 weights
    bias, weight = floats[-255 * 257:-255 * 256], floats[-255 * 256:].reshape(255, 256)
    for dark, ours in [(0, 1), (3, 4), (4, 0), (5, 5), (85 + 4, 85), (254, 254)]:  # x, h, objectness, class 0, ...
        assert bias[dark] == conv.bias[ours].item()
        np.testing.assert_array_equal(weight[dark], conv.weight[ours].detach().numpy().ravel())
    del floats
    backbone = save_darknet(model, tmp_path / "darknet53.conv.74", backbone_only=True)
    assert backbone.stat().st_size == 162_482_580
    assert darknet_layout(backbone).kind == "backbone"


def test_layout_from_size():
    coco = darknet_layout(248_007_048)
    assert (coco.kind, coco.num_classes, coco.num_floats, coco.header_bytes) == ("full", 80, 62_001_757, 20)
    assert darknet_layout(20 + 4 * (61_570_957 + 5_385 * 20)).num_classes == 20
    assert darknet_layout(20 + 4 * (61_570_957 + 5_385)).num_classes == 1
    assert darknet_layout(162_482_580).kind == "backbone"
    assert darknet_layout(248_007_044).header_bytes == 16
    with pytest.raises(DarknetError, match=r"x\.weights: 248,007,076 bytes hold 62,001,764 floats after the 20-byte header; "
                                           r"a full YOLOv3 needs 61,570,957 \+ 5,385\*C .*the backbone alone needs 40,620,640"):
        darknet_layout(248_007_048 + 28, name="x.weights")
    with pytest.raises(DarknetError, match="not a whole number of float32s"): darknet_layout(1_235)
    with pytest.raises(DarknetError, match="shorter than"): darknet_layout(12)
    narrow = darknet_layout(20 + 4 * file_floats(YOLOv3(7, **NARROW)), **NARROW)
    assert (narrow.kind, narrow.num_classes) == ("full", 7)


def test_round_trip(tmp_path):
    a = random_model()
    path = save_darknet(a, tmp_path / "a.weights")
    assert path.stat().st_size == 20 + 4 * file_floats(a)
    b = YOLOv3(3, **NARROW).eval()
    info = load_darknet(b, path)
    assert (len(info.loaded), info.reinitialised, info.untouched) == (47, [], [])
    sa, sb = a.state_dict(), b.state_dict()
    assert [k for k in sa if not torch.equal(sa[k], sb[k])] == []
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        for oa, ob in zip(a(x), b(x)): assert torch.equal(oa, ob)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.weights"]  # no temporary file left


def test_scale_and_shift_are_folded(tmp_path):
    a = random_model(identity_pred=False)
    b = YOLOv3(3, **NARROW).eval()
    load_darknet(b, save_darknet(a, tmp_path / "a.weights"))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for oa, ob in zip(a(x), b(x)): torch.testing.assert_close(ob, oa, atol=1e-5, rtol=1e-5)
    assert torch.equal(b.head4.pred[1].scale, torch.ones(24)) and torch.equal(b.head4.pred[1].shift, torch.zeros(24))


@pytest.mark.parametrize("version,header", [((0, 2, 0), 20), ((0, 1, 0), 16), ((1, 0, 0), 20)])
def test_header_versions(tmp_path, version, header):
    "Version 0.1 files store `seen` as an int32 (16-byte header); 0.2 and later as an int64."
    a = random_model()
    path = save_darknet(a, tmp_path / "a.weights", seen=1234, version=version)
    assert path.stat().st_size == header + 4 * file_floats(a)
    assert path.read_bytes()[:12] == np.array(version, "<i4").tobytes()
    b = YOLOv3(3, **NARROW).eval()
    info = load_darknet(b, path)
    assert (info.layout.version, info.layout.seen, info.layout.header_bytes) == (version, 1234, header)
    assert torch.equal(a.head3.pred[1].conv.weight, b.head3.pred[1].conv.weight)


def test_row_meaning(tmp_path):
    "A hand-written file, zero but for the last prediction bias: Darknet's x, y, w, h, objectness, classes land where decode_outputs reads them."
    model = YOLOv3(2, **NARROW).eval()
    n = file_floats(model)
    rows = np.zeros((3, 7), np.float32)  # per anchor: x, y, w, h, objectness, class 0, class 1
    rows[:, :5] = [logit(0.25), logit(0.75), np.log(2.0), 0.0, logit(0.9)]
    rows[:, 5:] = [3.0, 1.0]
    floats = np.zeros(n, np.float32)
    floats[n - 21 * 65:n - 21 * 64] = rows.ravel()  # head3's prediction conv: 21 biases, 21 x 64 weights
    path = tmp_path / "by_hand.weights"
    path.write_bytes(np.array([0, 2, 0], "<i4").tobytes() + np.array([5], "<i8").tobytes() + floats.tobytes())
    load_darknet(model, path)
    with torch.no_grad(): outs = model(torch.zeros(1, 3, 64, 64))
    out = outs[2]  # [1, 3, 8, 8, 7]
    torch.testing.assert_close(out[0, :, 3, 5, 0], torch.full((3,), logit(0.9)))
    torch.testing.assert_close(out[0, :, 3, 5, 1:5], torch.tensor([logit(0.25), logit(0.75), float(np.log(2.0)), 0.0]).expand(3, 4))
    boxes, obj, cls = decode_outputs(outs, DARKNET_DECODING)
    fine = slice(3 * (4 + 16), None)
    torch.testing.assert_close(obj[0, fine], torch.full((192,), 0.9))
    # anchor 1 (16 x 30 px, at any input size) in cell (row 3, col 5) of the stride-8 grid: centre (5.25, 3.75) cells
    w, h = 2 * 16, 30
    cx, cy = 5.25 * 8, 3.75 * 8
    torch.testing.assert_close(boxes[0, fine].view(3, 8, 8, 4)[1, 3, 5], torch.tensor([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]))
    torch.testing.assert_close(cls[0, fine][0], torch.tensor([3.0, 1.0]).sigmoid())  # Darknet's logistic classes
    # and back: writing the loaded model gives the hand-written file
    assert save_darknet(model, tmp_path / "again.weights", seen=5).read_bytes() == path.read_bytes()


def test_backbone_only(tmp_path):
    a = random_model()
    path = save_darknet(a, tmp_path / "backbone.weights", backbone_only=True)
    assert path.stat().st_size == 20 + 4 * sum(file_floats(a.backbone) for _ in [0])
    b = YOLOv3(3, **NARROW)
    before = {k: v.clone() for k, v in b.state_dict().items()}
    info = load_darknet(b, path)
    assert (info.layout.kind, len(info.loaded), len(info.untouched)) == ("backbone", 24, 23)
    for k, v in b.state_dict().items():
        if k.startswith("backbone."):
            assert torch.equal(v, a.state_dict()[k]) or k.endswith("num_batches_tracked"), k
        else:
            assert torch.equal(v, before[k]), k


def test_other_class_count(tmp_path):
    "A 3-class file into a 5-class model: everything but the prediction convs loads; those start afresh."
    a = random_model(3)
    path = save_darknet(a, tmp_path / "a.weights")
    b = YOLOv3(5, **NARROW)
    with torch.no_grad():
        for h in HEADS: getattr(b, h).pred[1].conv.bias.fill_(9.0); getattr(b, h).pred[1].scale.fill_(2.0)
    info = load_darknet(b, path)
    assert (info.layout.num_classes, len(info.loaded)) == (3, 44)
    assert info.reinitialised == ["head5.pred.1", "head4.pred.1", "head3.pred.1"]
    for h in HEADS:
        pred = getattr(b, h).pred[1]
        assert torch.equal(pred.conv.bias.view(3, 10)[:, 0], torch.full((3,), logit(0.01)))
        assert torch.equal(pred.conv.bias.view(3, 10)[:, 1:], torch.zeros(3, 9))
        assert torch.equal(pred.scale, torch.ones_like(pred.scale))
        assert 0.005 < pred.conv.weight.std().item() < 0.02
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa if ".pred.1." not in k)
    assert "re-initialised" in str(info)


def test_errors(tmp_path):
    a = random_model()
    good = save_darknet(a, tmp_path / "good.weights")
    b = YOLOv3(3, **NARROW)
    before = {k: v.clone() for k, v in b.state_dict().items()}
    with pytest.raises(FileNotFoundError, match="missing.weights: no such file"): load_darknet(b, tmp_path / "missing.weights")
    with pytest.raises(DarknetError, match="is a folder"): load_darknet(b, tmp_path)
    (tmp_path / "empty.weights").write_bytes(b"")
    with pytest.raises(DarknetError, match="empty.weights: 0 bytes, shorter than a Darknet header"):
        load_darknet(b, tmp_path / "empty.weights")
    (tmp_path / "header.weights").write_bytes(np.array([0, 2, 0, 0], "<i4").tobytes())
    with pytest.raises(DarknetError, match="16 bytes, shorter than the 20-byte header of Darknet version 0.2"):
        load_darknet(b, tmp_path / "header.weights")
    (tmp_path / "cut.weights").write_bytes(good.read_bytes()[:-4])
    with pytest.raises(DarknetError, match=r"cut.weights: .* bytes hold .* floats after the 20-byte header; this model takes"):
        load_darknet(b, tmp_path / "cut.weights")
    (tmp_path / "odd.weights").write_bytes(good.read_bytes()[:-2])
    with pytest.raises(DarknetError, match="odd.weights: .*not a whole number of float32s"): load_darknet(b, tmp_path / "odd.weights")
    with pytest.raises(DarknetError, match="good.weights"): load_darknet(YOLOv3(3, width_mult=0.5, depth_mult=0.33), good)
    with pytest.raises(DarknetError, match="Darknet-53"): load_darknet(YOLOv3(3, backbone="resnet18_gn", **NARROW), good)
    assert issubclass(DarknetError, ValueError)
    assert all(torch.equal(v, before[k]) for k, v in b.state_dict().items())  # no failed load changed a weight


def test_atomic_save(tmp_path, monkeypatch):
    "A write that fails leaves the old file as it was and no temporary file."
    path = save_darknet(random_model(seed=1), tmp_path / "a.weights")
    old = path.read_bytes()
    def fail(*args): raise OSError("disk full")
    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"): save_darknet(random_model(seed=2), path)
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.weights"]


def test_model_from_darknet(tmp_path):
    a = random_model(identity_pred=False)
    model, names = model_from_darknet(save_darknet(a, tmp_path / "a.weights"), **NARROW)
    assert (model.num_classes, names, model.training) == (3, ["0", "1", "2"], False)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for oa, om in zip(a(x), model(x)): torch.testing.assert_close(om, oa, atol=1e-5, rtol=1e-5)
    voc, voc_names = model_from_darknet(save_darknet(random_model(20), tmp_path / "voc.weights"), **NARROW)
    assert (voc.num_classes, voc_names) == (20, list(VOC_CLASSES))
    assert darknet_class_names(80) == list(COCO_CLASSES)
    with pytest.raises(DarknetError, match="holds only the Darknet-53 backbone"):
        model_from_darknet(save_darknet(a, tmp_path / "bb.weights", backbone_only=True), **NARROW)


def test_coco_names():
    assert len(COCO_CLASSES) == len(set(COCO_CLASSES)) == 80
    assert COCO_CLASSES[:4] == ("person", "bicycle", "car", "motorbike")
    assert COCO_CLASSES[56:63] == ("chair", "sofa", "pottedplant", "bed", "diningtable", "toilet", "tvmonitor")
    assert COCO_CLASSES[-4:] == ("scissors", "teddy bear", "hair drier", "toothbrush")
    assert set(VOC_CLASSES) <= set(COCO_CLASSES)


# -- the cfg ---------------------------------------------------------------------------------------------------
def cfg_layers(text: str) -> list[str]:
    "One token per layer of a Darknet cfg (after [net]): c<filters>/<size>[s2][L] for convolutions (L: linear, no BatchNorm), "
    "s<from> shortcut, r<layers> route, u<stride> upsample, y<mask>/<classes>/<anchors> yolo."
    sections, cur = [], None
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if not line: continue
        if line.startswith("["): cur = {"": line.strip("[]")}; sections.append(cur)
        else:
            k, v = (t.strip() for t in line.split("=", 1))
            cur[k] = v.replace(" ", "")
    out = []
    for s in sections[1:]:
        kind = s[""]
        if kind == "convolutional":
            linear = s.get("activation") == "linear" and not s.get("batch_normalize")
            out.append(f"c{s['filters']}/{s['size']}" + ("s2" if s.get("stride") == "2" else "") + ("L" if linear else ""))
        elif kind == "shortcut": out.append(f"s{s['from']}")
        elif kind == "route": out.append(f"r{s['layers']}")
        elif kind == "upsample": out.append(f"u{s['stride']}")
        elif kind == "yolo": out.append(f"y{s['mask']}/{s['classes']}/{s['num']}/{s['anchors']}")
        else: out.append(kind)
    return out


# The layers of the published cfg/yolov3.cfg (pjreddie/darknet), written out from that file: 107 layers after [net].
ANCHORS_CFG = "10,13,16,30,33,23,30,61,62,45,59,119,116,90,156,198,373,326"
PUBLISHED_YOLOV3 = (
    "c32/3 c64/3s2 c32/1 c64/3 s-3 c128/3s2 " + "c64/1 c128/3 s-3 " * 2 + "c256/3s2 " + "c128/1 c256/3 s-3 " * 8
    + "c512/3s2 " + "c256/1 c512/3 s-3 " * 8 + "c1024/3s2 " + "c512/1 c1024/3 s-3 " * 4
    + "c512/1 c1024/3 c512/1 c1024/3 c512/1 c1024/3 c255/1L " + f"y6,7,8/80/9/{ANCHORS_CFG} r-4 "
    + "c256/1 u2 r-1,61 c256/1 c512/3 c256/1 c512/3 c256/1 c512/3 c255/1L " + f"y3,4,5/80/9/{ANCHORS_CFG} r-4 "
    + "c128/1 u2 r-1,36 c128/1 c256/3 c128/1 c256/3 c128/1 c256/3 c255/1L " + f"y0,1,2/80/9/{ANCHORS_CFG}").split()


def test_cfg_is_the_published_yolov3_cfg():
    "The cfg of a full-width, full-depth 80-class model has yolov3.cfg's 107 layers, in order, with its parameters."
    with torch.device("meta"): model = YOLOv3(80)
    cfg = darknet_cfg(model, image_size=608)
    assert len(PUBLISHED_YOLOV3) == 107 and sum(t.startswith("c") for t in PUBLISHED_YOLOV3) == 75
    assert cfg_layers(cfg) == PUBLISHED_YOLOV3
    assert "width=608\nheight=608\nchannels=3" in cfg


def test_cfg_of_narrow_models_and_other_decodings():
    "Narrow and shallow models get their own filters and route numbers; fraction anchors become pixels of the cfg's size."
    model = random_model(num_classes=2)  # width 0.25, depth 0.33: stages of 1, 1, 3, 3, 1 units
    layers = cfg_layers(darknet_cfg(model))
    assert len([t for t in layers if t.startswith("c")]) == len(list(m for m in model.modules() if isinstance(m, nn.Conv2d)))
    routes = [t for t in layers if t.startswith("r-1,")]
    # stage outputs: stem 0; stage i = 1 downsample + 3 layers per unit; route to the 256 (stage 2) and 512 (stage 3) ends
    ends, at = [], 0
    for units in (1, 1, 3, 3, 1): at += 1 + 3 * units; ends.append(at)
    assert routes == [f"r-1,{ends[3]}", f"r-1,{ends[2]}"]
    assert [t.split("/")[0] for t in layers if t.startswith("y")] == ["y6,7,8", "y3,4,5", "y0,1,2"]
    assert layers[-2] == "c21/1L"  # 3 * (5 + 2) outputs
    from yolo_voc.boxes import Decoding
    frac = darknet_cfg(model, Decoding("logistic"), image_size=320)  # ANCHORS x 320: 0.02 x 0.03 -> 6.4 x 9.6 px
    assert "anchors=6.4,9.6,  12.8,22.4," in frac
    with pytest.raises(DarknetError, match="softmax"):
        darknet_cfg(model, Decoding("softmax"))
