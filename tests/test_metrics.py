"""Golden tests for yolo_voc.metrics.

- "coco" against pycocotools' COCOeval (difficult boxes given to it as iscrowd=1, see the notebook);
- "voc07" / "voc12" against `devkit_ap` below, a loop-by-loop transcription of the VOC devkit's voc_eval.py
  (with a stable sort, the documented tie order);
- YoloAccuracy against a loop over cells; MeanAveragePrecision's de-duplication, on one process and on two
  (gloo) processes.
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from yolo_voc.metrics import MAP_METHODS, MeanAveragePrecision, YoloAccuracy, mean_average_precision


# ---------------------------------------------------------------------------------------------- random cases
def random_case(seed: int, n_images: int, num_classes: int, max_gt: int = 6, max_det: int = 30,
                p_difficult: float = 0.2, tie_scores: bool = False, crowded: bool = False, extra_dets: int = 0,
                grid: float = 0.0):
    """Per-image preds and targets (dicts of tensors, float32 boxes as the model makes them).

    Detections are jittered copies of ground truths (mostly of the right class) plus random boxes; `crowded`
    packs boxes of one class close together so that greedy matching has to fall back; `tie_scores` rounds
    scores to one decimal; `extra_dets` adds that many detections of one class to image 0 (over pycocotools'
    100 per image and class); `grid` > 0 divides all coordinates by it and rounds them to integers, which makes
    exact ties in IoU, and IoUs exactly on a threshold, common."""
    rng = np.random.default_rng(seed)
    preds, targets = [], []
    for i in range(n_images):
        m = int(rng.integers(0, max_gt + 1))
        if crowded:
            centre = rng.uniform(100, 400, (1, 2))
            xy = centre + rng.normal(0, 15, (m, 2))
            labels = np.full(m, rng.integers(0, num_classes))
        else:
            xy = rng.uniform(0, 450, (m, 2))
            labels = rng.integers(0, num_classes, m)
        wh = rng.uniform(8, 150, (m, 2))
        gt = np.concatenate([xy, xy + wh], 1)
        n = int(rng.integers(0, max_det + 1)) + (extra_dets if i == 0 else 0)
        if m:
            src = rng.integers(0, m, n)
            boxes = gt[src] + rng.normal(0, 1, (n, 4)) * np.tile(wh[src], 2) * rng.uniform(0.02, 0.25, (n, 1))
            dl = np.where(rng.random(n) < 0.85, labels[src], rng.integers(0, num_classes, n))
            rand = rng.random(n) < 0.3
        else:
            boxes, dl, rand = np.zeros((n, 4)), rng.integers(0, num_classes, n), np.ones(n, bool)
        rxy = rng.uniform(0, 450, (n, 2))
        boxes[rand] = np.concatenate([rxy, rxy + rng.uniform(5, 150, (n, 2))], 1)[rand]
        if grid:
            gt, boxes = np.round(gt / grid), np.round(boxes / grid)
            gt[:, 2:] = np.maximum(gt[:, 2:], gt[:, :2] + 1)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + (1 if grid else 0.5))
        if i == 0 and extra_dets:
            dl[-extra_dets:] = 0
        scores = rng.random(n)
        if tie_scores:
            scores = np.round(scores, 1)
        targets.append(dict(boxes=torch.tensor(gt, dtype=torch.float32).reshape(-1, 4), labels=torch.tensor(labels, dtype=torch.long),
                            difficult=torch.tensor(rng.random(m) < p_difficult)))
        preds.append(dict(boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                          scores=torch.tensor(scores, dtype=torch.float32), labels=torch.tensor(dl, dtype=torch.long)))
    return preds, targets


CASES = [  # seed, images, classes, kwargs
    (0, 1, 1, dict()),
    (1, 5, 2, dict()),
    (2, 20, 3, dict(max_gt=10, max_det=40)),
    (3, 40, 5, dict(p_difficult=0.4)),
    (4, 30, 4, dict(crowded=True, max_gt=12, max_det=60)),
    (5, 25, 3, dict(tie_scores=True, max_det=40)),
    (6, 10, 2, dict(crowded=True, tie_scores=True, max_gt=8)),
    (7, 15, 3, dict(extra_dets=150)),
    (8, 60, 20, dict(p_difficult=0.1)),
    (9, 8, 6, dict(p_difficult=0.0, max_gt=3)),
    (10, 12, 2, dict(crowded=True, max_gt=15, max_det=80, p_difficult=0.3)),
    (11, 30, 2, dict(crowded=True, grid=10.0, max_gt=10, max_det=40)),
    (12, 30, 2, dict(crowded=True, grid=5.0, max_gt=10, max_det=40, tie_scores=True)),
    (13, 40, 3, dict(grid=20.0, max_gt=8, max_det=30)),
]


# ------------------------------------------------------------------------------- the VOC devkit, transcribed
def devkit_voc_ap(rec, prec, use_07_metric):
    """voc_ap of the devkit's voc_eval.py, as written there."""
    if use_07_metric:
        ap = 0.
        for t in np.arange(0., 1.1, 0.1):
            if np.sum(rec >= t) == 0:
                p = 0
            else:
                p = np.max(prec[rec >= t])
            ap = ap + p / 11.
    else:
        mrec = np.concatenate(([0.], rec, [1.]))
        mpre = np.concatenate(([0.], prec, [0.]))
        for i in range(mpre.size - 1, 0, -1):
            mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
        i = np.where(mrec[1:] != mrec[:-1])[0]
        ap = np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])
    return ap


def devkit_ap(preds, targets, num_classes, ovthresh=0.5, use_07_metric=True, shift=0.0):
    """voc_eval.py per class; boxes get `shift` added to x1, y1 (1.0 turns continuous boxes into 1-based ones)."""
    off = np.array([shift, shift, 0., 0.])
    aps = []
    for c in range(num_classes):
        class_recs, npos = {}, 0
        for i, t in enumerate(targets):
            sel = t["labels"].numpy() == c
            bbox = t["boxes"].numpy().astype(float)[sel] + off
            difficult = t["difficult"].numpy()[sel].astype(bool)
            npos = npos + sum(~difficult)
            class_recs[i] = {"bbox": bbox, "difficult": difficult, "det": [False] * len(bbox)}
        image_ids, confidence, BB = [], [], []
        for i, p in enumerate(preds):
            for box, score, label in zip(p["boxes"].numpy().astype(float), p["scores"].numpy().astype(float), p["labels"].numpy()):
                if label == c:
                    image_ids.append(i); confidence.append(score); BB.append(box + off)
        confidence, BB = np.array(confidence), np.array(BB).reshape(-1, 4)
        sorted_ind = np.argsort(-confidence, kind="mergesort")  # stable, like Matlab's sort in VOCevaldet.m
        BB = BB[sorted_ind, :]
        image_ids = [image_ids[x] for x in sorted_ind]
        nd = len(image_ids)
        tp, fp = np.zeros(nd), np.zeros(nd)
        for d in range(nd):
            R = class_recs[image_ids[d]]
            bb = BB[d, :].astype(float)
            ovmax = -np.inf
            BBGT = R["bbox"].astype(float)
            if BBGT.size > 0:
                ixmin = np.maximum(BBGT[:, 0], bb[0])
                iymin = np.maximum(BBGT[:, 1], bb[1])
                ixmax = np.minimum(BBGT[:, 2], bb[2])
                iymax = np.minimum(BBGT[:, 3], bb[3])
                iw = np.maximum(ixmax - ixmin + 1., 0.)
                ih = np.maximum(iymax - iymin + 1., 0.)
                inters = iw * ih
                uni = ((bb[2] - bb[0] + 1.) * (bb[3] - bb[1] + 1.) +
                       (BBGT[:, 2] - BBGT[:, 0] + 1.) * (BBGT[:, 3] - BBGT[:, 1] + 1.) - inters)
                overlaps = inters / uni
                ovmax = np.max(overlaps)
                jmax = np.argmax(overlaps)
            if ovmax > ovthresh:
                if not R["difficult"][jmax]:
                    if not R["det"][jmax]:
                        tp[d] = 1.
                        R["det"][jmax] = 1
                    else:
                        fp[d] = 1.
            else:
                fp[d] = 1.
        if npos == 0:
            aps.append(np.nan)  # the devkit divides by zero here; the project leaves such classes out
            continue
        fp, tp = np.cumsum(fp), np.cumsum(tp)
        rec = tp / float(npos)
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        aps.append(devkit_voc_ap(rec, prec, use_07_metric))
    return np.array(aps)


# ------------------------------------------------------------------------------------------------ pycocotools
def pycocotools_precision(preds, targets, num_classes):
    """COCOeval bbox precision [T, R, K] (area all, 100 detections), difficult given as iscrowd=1."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    images, anns, dets = [], [], []
    for i, (p, t) in enumerate(zip(preds, targets)):
        images.append(dict(id=i + 1, width=1000, height=1000))
        for box, label, diff in zip(t["boxes"].tolist(), t["labels"].tolist(), t["difficult"].tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            anns.append(dict(id=len(anns) + 1, image_id=i + 1, category_id=label + 1, bbox=[box[0], box[1], w, h],
                             area=w * h, iscrowd=int(diff)))
        for box, score, label in zip(p["boxes"].tolist(), p["scores"].tolist(), p["labels"].tolist()):
            dets.append(dict(image_id=i + 1, category_id=label + 1, bbox=[box[0], box[1], box[2] - box[0], box[3] - box[1]], score=score))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = dict(images=images, annotations=anns, categories=[dict(id=c + 1, name=str(c)) for c in range(num_classes)])
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
    return ev.eval["precision"][:, :, :, 0, -1]


def coco_summary(precision):
    """map, map50, map75 and per-class AP, AP50 the way COCOeval.summarize averages (-1 = no ground truth)."""
    valid = precision[0, 0] > -1
    mean = lambda s: np.mean(s[s > -1]) if (s > -1).any() else np.nan
    per_class = lambda s: np.where(valid, s.mean(tuple(range(s.ndim - 1))), np.nan)
    return dict(map=mean(precision), map50=mean(precision[0]), map75=mean(precision[5]),
                ap=per_class(precision), ap50=per_class(precision[0]))


# ------------------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("seed,n_images,num_classes,kw", CASES)
def test_coco_matches_pycocotools(seed, n_images, num_classes, kw):
    preds, targets = random_case(seed, n_images, num_classes, **kw)
    if sum(len(p["scores"]) for p in preds) == 0:
        pytest.skip("pycocotools cannot load an empty result list")
    ref = coco_summary(pycocotools_precision(preds, targets, num_classes))
    ours = mean_average_precision(preds, targets, method="coco", num_classes=num_classes)
    for key in ("map", "map50", "map75"):
        assert ours[key] == pytest.approx(ref[key], abs=1e-4, nan_ok=True), key
        assert ours[key] == pytest.approx(ref[key], abs=1e-12, nan_ok=True), key  # in fact: the same arithmetic
    np.testing.assert_allclose(ours["ap_per_class"].numpy(), ref["ap"], atol=1e-12)
    np.testing.assert_allclose(ours["ap50_per_class"].numpy(), ref["ap50"], atol=1e-12)


@pytest.mark.parametrize("method", ["voc07", "voc12"])
@pytest.mark.parametrize("seed,n_images,num_classes,kw", CASES)
def test_voc_matches_devkit(seed, n_images, num_classes, kw, method):
    preds, targets = random_case(seed, n_images, num_classes, **kw)
    use_07 = method == "voc07"
    for inclusive, shift in ((True, 0.0), (False, 1.0)):  # the devkit's own boxes; the project's continuous ones
        ref = devkit_ap(preds, targets, num_classes, 0.5, use_07, shift)
        ours = mean_average_precision(preds, targets, method=method, num_classes=num_classes, inclusive=inclusive)
        np.testing.assert_allclose(ours["ap_per_class"].numpy(), ref, atol=1e-6)
        valid = ~np.isnan(ref)
        assert ours["map"] == pytest.approx(ref[valid].mean() if valid.any() else np.nan, abs=1e-6, nan_ok=True)


@pytest.mark.parametrize("thr", [0.3, 0.7])
def test_voc_other_thresholds(thr):
    preds, targets = random_case(31, 20, 3, crowded=True, max_gt=10, max_det=50)
    for method in ("voc07", "voc12"):
        ref = devkit_ap(preds, targets, 3, thr, method == "voc07", 1.0)
        ours = mean_average_precision(preds, targets, iou_threshold=thr, method=method, num_classes=3)
        np.testing.assert_allclose(ours["ap_per_class"].numpy(), ref, atol=1e-6)


def test_equal_iou_ties():
    "A detection with the same IoU to two boxes: pycocotools takes the later box, the devkit the first."
    f = lambda x: torch.tensor(x, dtype=torch.float32)
    preds = [dict(boxes=f([[0, 0, 10, 10], [0, 0, 10, 20]]), scores=f([0.9, 0.8]), labels=torch.tensor([0, 0]))]
    targets = [dict(boxes=f([[0, 0, 10, 20], [0, 0, 20, 10]]), labels=torch.tensor([0, 0]), difficult=torch.tensor([False, False]))]
    ref = coco_summary(pycocotools_precision(preds, targets, 1))
    ours = mean_average_precision(preds, targets, method="coco")
    assert ref["map50"] == pytest.approx(1.0)  # the first detection took the second box, the second the first
    for key in ("map", "map50", "map75"):
        assert ours[key] == pytest.approx(ref[key], abs=1e-12)
    for inclusive, shift in ((True, 0.0), (False, 1.0)):
        ref = devkit_ap(preds, targets, 1, 0.3, False, shift)
        assert ref[0] == pytest.approx(0.5)  # the first detection took the first box, the second is a duplicate
        assert mean_average_precision(preds, targets, 0.3, "voc12", inclusive=inclusive)["map"] == pytest.approx(ref[0])


def test_numpy_and_float64_inputs_agree():
    preds, targets = random_case(12, 10, 3)
    as_np = lambda items: [{k: v.numpy() for k, v in it.items()} for it in items]
    for method in MAP_METHODS:
        a = mean_average_precision(preds, targets, method=method, num_classes=3)
        b = mean_average_precision(as_np(preds), as_np(targets), method=method, num_classes=3)
        np.testing.assert_array_equal(a["ap_per_class"].numpy(), b["ap_per_class"].numpy())


def test_difficult_is_optional():
    preds, targets = random_case(13, 10, 3, p_difficult=0.0)
    plain = [{k: v for k, v in t.items() if k != "difficult"} for t in targets]
    for method in MAP_METHODS:
        assert mean_average_precision(preds, plain, method=method)["map"] == mean_average_precision(preds, targets, method=method)["map"]


def test_bad_inputs():
    preds, targets = random_case(14, 3, 2, max_gt=3, max_det=3)
    with pytest.raises(ValueError, match="unknown mAP method"):
        mean_average_precision(preds, targets, method="voc2010")
    broken = [dict(p) for p in preds]
    broken[1]["scores"] = torch.zeros(len(broken[1]["scores"]) + 1)
    with pytest.raises(ValueError, match=r"preds\[1\] has"):
        mean_average_precision(broken, targets)
    nan_box = [dict(p) for p in preds]
    nan_box[0] = dict(boxes=torch.tensor([[0., 0., float("nan"), 1.]]), scores=torch.tensor([0.5]), labels=torch.tensor([0]))
    with pytest.raises(ValueError, match="not finite"):
        mean_average_precision(nan_box, targets)
    with pytest.raises(ValueError, match="has no 'labels'"):
        mean_average_precision(preds, [dict(boxes=t["boxes"]) for t in targets])


# ---------------------------------------------------------------------------------------------- YoloAccuracy
def test_yolo_accuracy_matches_loop():
    g = torch.Generator().manual_seed(0)
    C, B = 4, 2
    outputs, targets = [], []
    for S in (3, 5):
        out = torch.randn(B, 3, S, S, 5 + C, generator=g) * 3  # [B, 3, S, S, 5+C]
        tgt = torch.zeros(B, 3, S, S, 6)  # [B, 3, S, S, 6]
        tgt[..., 0] = torch.randint(-1, 2, (B, 3, S, S), generator=g).float()
        tgt[..., 5] = torch.randint(0, C, (B, 3, S, S), generator=g).float()
        outputs.append(out); targets.append(tgt)
    counts = dict(cls=0, obj=0, nobj=0, noobj=0, nnoobj=0)
    for out, tgt in zip(outputs, targets):
        for idx in np.ndindex(*tgt.shape[:-1]):
            p = 1 / (1 + np.exp(-out[idx][0].item()))
            if tgt[idx][0] == 1:
                counts["nobj"] += 1
                counts["obj"] += p > 0.05
                counts["cls"] += int(out[idx][5:].argmax()) == int(tgt[idx][5])
            elif tgt[idx][0] == 0:
                counts["nnoobj"] += 1
                counts["noobj"] += p <= 0.05
    acc = YoloAccuracy(threshold=0.05)
    acc.update(outputs[:1], targets[:1])  # one scale per update, on purpose: counts add up
    acc.update(outputs[1:], targets[1:])
    r = acc.compute()
    assert r["class_accuracy"].item() == pytest.approx(counts["cls"] / counts["nobj"])
    assert r["obj_accuracy"].item() == pytest.approx(counts["obj"] / counts["nobj"])
    assert r["noobj_accuracy"].item() == pytest.approx(counts["noobj"] / counts["nnoobj"])
    with pytest.raises(ValueError, match="does not match"):
        acc.update([outputs[0]], [targets[1]])


# -------------------------------------------------------------------------------------- MeanAveragePrecision
def _expected(preds, targets, num_classes):
    return dict(map50=mean_average_precision(preds, targets, method="voc07", num_classes=num_classes)["map"],
                map50_voc12=mean_average_precision(preds, targets, method="voc12", num_classes=num_classes)["map"],
                map=mean_average_precision(preds, targets, method="coco", num_classes=num_classes)["map"])


def test_metric_dedupes_and_ignores_update_order():
    preds, targets = random_case(20, 9, 3, tie_scores=True)  # ties: the image-id order must decide them
    expected = _expected(preds, targets, 3)
    metric = MeanAveragePrecision(num_classes=3, methods=MAP_METHODS)
    for idx in ([5, 6, 7, 8], [0, 1, 2], [3, 4], [8, 0]):  # shuffled, with two padded repeats
        metric.update([preds[i] for i in idx], [targets[i] for i in idx], torch.tensor(idx))
    r = metric.compute()
    assert set(r) == {"map", "map50", "map50_voc12", "map50_coco", "map75"}
    for key, value in expected.items():
        assert r[key].item() == pytest.approx(value, abs=1e-6), key
    assert metric.results["voc07"]["ap_per_class"].shape == (3,)


def _ddp_worker(rank, world, init_file, out_file, preds, targets):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        metric, acc = MeanAveragePrecision(num_classes=3, methods=MAP_METHODS), YoloAccuracy()
        # DistributedSampler's split of 7 images over 2 processes: padded to 8 by repeating image 0
        order = list(range(len(preds))) + [0]
        mine = order[rank::world]
        for k in range(0, len(mine), 2):
            idx = mine[k:k + 2]
            metric.update([preds[i] for i in idx], [targets[i] for i in idx], idx)
        tgt = torch.zeros(1, 3, 2, 2, 6); tgt[0, rank, 0, 0, 0] = 1  # rank 0: one object, rank 1: one object
        out = torch.zeros(1, 3, 2, 2, 7); out[..., 0] = -10.; out[0, 0, 0, 0, 0] = 10.
        acc.update([out], [tgt])
        r, a = metric.compute(), acc.compute()
        if rank == 0:
            torch.save(({k: v.item() for k, v in r.items()}, {k: v.item() for k, v in a.items()}), out_file)
    finally:
        dist.destroy_process_group()


def test_metric_under_two_processes():
    preds, targets = random_case(21, 7, 3)
    tmp = tempfile.mkdtemp()
    init_file, out_file = os.path.join(tmp, "init"), os.path.join(tmp, "out.pt")
    mp.start_processes(_ddp_worker, args=(2, init_file, out_file, preds, targets), nprocs=2, join=True, start_method="spawn")
    r, a = torch.load(out_file)
    for key, value in _expected(preds, targets, 3).items():
        assert r[key] == pytest.approx(value, abs=1e-6), key
    # two object cells in all (one per process), only rank 0's found; 22 background cells, one fired (rank 1's
    # anchor 0 cell): sums over processes, not a mean of per-process fractions
    assert a == pytest.approx(dict(class_accuracy=1.0, obj_accuracy=0.5, noobj_accuracy=21 / 22))


# ------------------------------------------------------------------------------- edge cases (issue 16)
def _no_gt_case():
    "Two images with detections of classes 0 and 2 and no ground truth at all."
    preds = [dict(boxes=torch.tensor([[10., 10., 50., 60.], [0., 0., 5., 5.]]), scores=torch.tensor([0.9, 0.3]),
                  labels=torch.tensor([0, 2])),
             dict(boxes=torch.tensor([[1., 2., 30., 40.]]), scores=torch.tensor([0.5]), labels=torch.tensor([0]))]
    targets = [dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long)) for _ in preds]
    return preds, targets


@pytest.mark.parametrize("method", MAP_METHODS)
def test_no_ground_truth_gives_nan_per_class(method):
    preds, targets = _no_gt_case()
    for num_classes in (3, None):  # None: the classes the labels reach (0..2)
        r = mean_average_precision(preds, targets, method=method, num_classes=num_classes)
        assert r["ap_per_class"].shape == (3,) and r["ap_per_class"].isnan().all()
        assert np.isnan(r["map"])
        assert r["num_gt"].tolist() == [0, 0, 0]
    metric = MeanAveragePrecision(num_classes=3, methods=[method])
    metric.update(preds, targets, [0, 1])
    assert all(v.isnan() for v in metric.compute().values())


def test_no_ground_truth_as_pycocotools():
    "pycocotools gives -1 (no ground truth) for every class: NaN here."
    preds, targets = _no_gt_case()
    for key in ("difficult",):
        for t in targets: t[key] = torch.zeros(0, dtype=torch.bool)
    ref = coco_summary(pycocotools_precision(preds, targets, 3))
    assert np.isnan(ref["ap"]).all() and np.isnan(ref["map"])


def test_voc07_never_exceeds_one():
    "Eleven precisions of 1 summed as 1/11 + 1/11 + ... give 1.0000000000000002; the AP must be exactly 1."
    box = torch.tensor([[10., 10., 50., 60.]])
    preds = [dict(boxes=box, scores=torch.tensor([0.9]), labels=torch.tensor([0]))]
    targets = [dict(boxes=box, labels=torch.tensor([0]))]
    r = mean_average_precision(preds, targets, method="voc07")
    assert r["map"] == 1.0 and r["ap_per_class"][0].item() == 1.0
    for seed, n_images, num_classes, kw in CASES:
        preds, targets = random_case(seed, n_images, num_classes, **kw)
        ap = mean_average_precision(preds, targets, method="voc07", num_classes=num_classes)["ap_per_class"].numpy()
        assert (ap[~np.isnan(ap)] <= 1.0).all()


# ------------------------------------------------------------------------------- per-class results (issue 16)
def test_per_class_matches_the_functions_and_the_means():
    from yolo_voc.metrics import class_mean
    preds, targets = random_case(40, 25, 4, p_difficult=0.3)
    metric = MeanAveragePrecision(num_classes=4, methods=("voc07", "coco"))
    metric.update(preds, targets, list(range(len(preds))))
    r = metric.compute()
    rows = metric.per_class(["a", "b", "c", "d"])
    voc = mean_average_precision(preds, targets, method="voc07", num_classes=4)
    coco = mean_average_precision(preds, targets, method="coco", num_classes=4)
    np.testing.assert_array_equal([x.ap50 for x in rows], voc["ap_per_class"].numpy())
    np.testing.assert_array_equal([x.ap50_coco for x in rows], coco["ap50_per_class"].numpy())
    np.testing.assert_array_equal([x.ap for x in rows], coco["ap_per_class"].numpy())
    assert [x.num_gt for x in rows] == [int(sum(((t["labels"] == c) & ~t["difficult"]).sum() for t in targets)) for c in range(4)]
    assert [x.num_det for x in rows] == [int(sum((p["labels"] == c).sum() for p in preds)) for c in range(4)]
    m = class_mean(rows)
    assert m["ap50"] == pytest.approx(r["map50"].item(), abs=1e-6)
    assert m["ap50_coco"] == pytest.approx(r["map50_coco"].item(), abs=1e-6)
    assert m["ap"] == pytest.approx(r["map"].item(), abs=1e-6)
    # a method not computed is evaluated on demand, from the rows kept after reset
    only12 = MeanAveragePrecision(num_classes=4, methods=("voc12",))
    only12.update(preds, targets, list(range(len(preds))))
    only12.compute()
    only12.reset()
    assert [x.to_dict() for x in only12.per_class(["a", "b", "c", "d"])] == [x.to_dict() for x in rows]
    curves = only12.pr_curves()
    assert [c.label for c in curves] == [c for c in range(4) if rows[c].num_gt]
    for c in curves:  # the devkit's curve: its 11-point AP is the row's AP50
        ref = devkit_voc_ap(c.recall, c.precision, True)
        assert c.ap == pytest.approx(ref, abs=1e-12) and c.ap == rows[c.label].ap50


def test_per_class_table_and_csv(tmp_path):
    import csv
    from yolo_voc.metrics import format_per_class_table, write_per_class_csv
    box = lambda x: [x, 10., x + 40., 60.]
    # class 0: one object, found; class 1: two objects, one found (6/11 by VOC07); class 2: no ground truth
    preds = [dict(boxes=torch.tensor([box(0.), box(100.), box(300.)]), scores=torch.tensor([0.9, 0.8, 0.7]), labels=torch.tensor([0, 1, 2]))]
    targets = [dict(boxes=torch.tensor([box(0.), box(100.), box(200.)]), labels=torch.tensor([0, 1, 1]))]
    metric = MeanAveragePrecision(num_classes=3)
    metric.update(preds, targets, [7])
    metric.compute()
    rows = metric.per_class(["cat", "dog", "bird"])
    lines = format_per_class_table(rows).splitlines()
    assert lines[2].split()[:4] == ["cat", "1", "1", "1.000"] and "<- low" not in lines[2]
    assert lines[3].split()[:4] == ["dog", "2", "1", "0.545"] and lines[3].endswith("<- low")
    assert "no ground truth" in lines[4]
    assert lines[-1].split()[:6] == ["mean", "(2", "classes)", "3", "3", f"{(1 + 6 / 11) / 2:.3f}"]
    back = list(csv.DictReader(open(write_per_class_csv(rows, tmp_path / "sub" / "per_class.csv"))))
    assert [(b["name"], b["num_gt"], b["ap50"]) for b in back] == [("cat", "1", "1.000000"), ("dog", "2", "0.545455"), ("bird", "0", "nan")]


# ------------------------------------------------------------------------------------------- confusion matrix
def loop_confusion(preds, targets, num_classes, conf=0.25, iou_thr=0.5):
    "Reference: per image, every pair by IoU (torchvision) from the highest, each box used once."
    from torchvision.ops import box_iou
    C = num_classes
    m = np.zeros((C + 1, C + 1), np.int64)
    for p, t in zip(preds, targets):
        keep = p["scores"] >= conf
        order = torch.argsort(-p["scores"][keep], stable=True)
        db, dl = p["boxes"][keep][order].double(), p["labels"][keep][order]
        gb, gl, gd = t["boxes"].double(), t["labels"], t["difficult"]
        iou = box_iou(db, gb) if len(db) and len(gb) else torch.zeros(len(db), len(gb))
        pairs = sorted(((-iou[i, j].item(), i, j) for i in range(len(db)) for j in range(len(gb)) if iou[i, j] >= iou_thr))
        dm, gm = {}, {}
        for _, i, j in pairs:
            if i not in dm and j not in gm: dm[i], gm[j] = j, i
        for i in range(len(db)):
            if i not in dm: m[dl[i], C] += 1
            elif not gd[dm[i]]: m[dl[i], gl[dm[i]]] += 1
        for j in range(len(gb)):
            if j not in gm and not gd[j]: m[C, gl[j]] += 1
    return m


@pytest.mark.parametrize("seed,n_images,num_classes,kw", CASES[:8] + CASES[11:12])
def test_confusion_matrix_matches_loop(seed, n_images, num_classes, kw):
    from yolo_voc.metrics import confusion_matrix
    preds, targets = random_case(seed, n_images, num_classes, **kw)
    for conf, thr in ((0.25, 0.5), (0.0, 0.3)):
        m = confusion_matrix(preds, targets, num_classes, conf_threshold=conf, iou_threshold=thr)
        np.testing.assert_array_equal(m, loop_confusion(preds, targets, num_classes, conf, thr))
        # columns: every non-difficult object once, found as some class or missed
        gt = np.bincount(np.concatenate([t["labels"][~t["difficult"]].numpy() for t in targets]), minlength=num_classes)
        np.testing.assert_array_equal(m[:, :num_classes].sum(0), gt)
    metric = MeanAveragePrecision(num_classes=num_classes)
    metric.update(preds, targets, list(range(len(preds))))
    metric.compute()
    np.testing.assert_array_equal(metric.confusion_matrix(), confusion_matrix(preds, targets, num_classes))
