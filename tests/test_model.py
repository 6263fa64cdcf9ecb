"Tests of yolo_voc.model and yolo_voc.loss: parameter counts, output shapes, torch.compile, overfitting one batch."
import math
import time

import pytest
import torch

from yolo_voc.boxes import ANCHORS, STRIDES
from yolo_voc.loss import YoloLoss
from yolo_voc.model import ResNet18GN, YOLOv3, model_summary


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def tiny_model(num_classes: int = 4, seed: int = 0, **kw) -> YOLOv3:
    torch.manual_seed(seed)
    return YOLOv3(num_classes, width_mult=0.25, depth_mult=0.33, **kw)


def encode_by_hand(boxes: list[tuple[int, int, float, float, float, float]], batch: int, height: int, width: int):
    """Target grids for a few boxes `(image, class, cx, cy, w, h)` (normalized): each box goes to its best anchor
    by width-height IoU, on that anchor's scale only (enough for tests; no ignore marks)."""
    grids = [torch.zeros(batch, 3, height // s, width // s, 6) for s in STRIDES]  # [B, 3, S, S, 6]
    flat = ANCHORS.view(-1, 2)
    for b, c, cx, cy, w, h in boxes:
        inter = torch.minimum(flat, torch.tensor([w, h])).prod(-1)
        best = int((inter / (flat.prod(-1) + w * h - inter)).argmax())
        scale, anchor = divmod(best, 3)
        sy, sx = grids[scale].shape[2:4]
        col, row = min(int(cx * sx), sx - 1), min(int(cy * sy), sy - 1)
        grids[scale][b, anchor, row, col] = torch.tensor([1., cx * sx - col, cy * sy - row, w, h, c])
    return grids


def test_param_counts():
    assert n_params(YOLOv3(20)) == 61_626_499
    assert n_params(ResNet18GN(10)) == 11_173_962
    # every parameter of the detector is used by the forward (DDP without find_unused_parameters)
    model = tiny_model()
    sum(o.sum() for o in model(torch.randn(1, 3, 64, 64))).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_summary_matches_seed_table():
    s = model_summary(ResNet18GN(), (3, 32, 32))
    assert "Total params: 11,173,962" in s and "Estimated Total Size (MB): 69.64" in s
    assert "BasicBlock-48" in s and "Linear-49" in s


@pytest.mark.parametrize("hw", [(320, 320), (288, 416)])
def test_full_model_shapes(hw):
    torch.manual_seed(0)
    model = YOLOv3(20).eval()
    h, w = hw
    with torch.no_grad():
        outs = model(torch.rand(1, 3, h, w))
    assert [tuple(o.shape) for o in outs] == [(1, 3, h // s, w // s, 25) for s in STRIDES]
    assert all(torch.isfinite(o).all() for o in outs)
    # initial objectness ~ 0.01 (prediction bias), so training starts with a small no-object loss
    assert abs(torch.cat([o[..., 0].flatten() for o in outs]).sigmoid().mean().item() - 0.01) < 0.01


def test_resnet_backbone_shapes():
    model = tiny_model(backbone="resnet18_gn").eval()
    with torch.no_grad():
        outs = model(torch.rand(2, 3, 96, 64))
    assert [tuple(o.shape) for o in outs] == [(2, 3, 96 // s, 64 // s, 9) for s in STRIDES]


def test_torch_compile_matches_eager():
    model = tiny_model().eval()
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        eager = model(x)
        start = time.perf_counter()
        compiled = torch.compile(model, fullgraph=True)(x)  # fullgraph: no graph breaks
    assert time.perf_counter() - start < 300
    for a, b in zip(eager, compiled):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


def test_compiled_loss_matches_eager():
    torch.manual_seed(0)
    outs = [torch.randn(2, 3, 64 // s, 64 // s, 9) for s in STRIDES]
    tgts = encode_by_hand([(0, 1, 0.5, 0.5, 0.3, 0.4), (1, 3, 0.2, 0.7, 0.05, 0.06)], 2, 64, 64)
    crit = YoloLoss()
    eager = crit(outs, tgts)
    compiled = torch.compile(crit, fullgraph=True)(outs, tgts)
    for k in eager:
        torch.testing.assert_close(compiled[k], eager[k], atol=1e-5, rtol=1e-5)


def test_channels_last_and_bf16_autocast():
    model = tiny_model().eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        cl = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    for a, b in zip(ref, cl):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    tgts = encode_by_hand([(0, 2, 0.5, 0.5, 0.3, 0.3)], 1, 64, 64)
    res = YoloLoss()(low, tgts)
    assert res["loss"].dtype == torch.float32 and torch.isfinite(res["loss"])


def test_overfit_one_batch():
    model = tiny_model(num_classes=4, seed=1)
    torch.manual_seed(1)
    images = torch.rand(2, 3, 64, 64)  # [B, 3, H, W]
    boxes = [(0, 0, 0.3, 0.4, 0.35, 0.45), (0, 2, 0.75, 0.7, 0.08, 0.1), (1, 1, 0.5, 0.5, 0.9, 0.8),
             (1, 3, 0.2, 0.8, 0.15, 0.12)]
    tgts = encode_by_hand(boxes, 2, 64, 64)
    crit = YoloLoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        res = crit(model(images), tgts)
        opt.zero_grad()
        res["loss"].backward()
        opt.step()
        losses.append(res["loss"].item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0], losses


def test_loss_no_objects_is_finite():
    model = tiny_model()
    tgts = [torch.zeros(2, 3, 64 // s, 64 // s, 6) for s in STRIDES]
    res = YoloLoss()(model(torch.rand(2, 3, 64, 64)), tgts)
    assert all(torch.isfinite(v) for v in res.values())
    assert res["box"] == 0 and res["obj"] == 0 and res["cls"] == 0 and res["noobj"] > 0
    res["loss"].backward()
