"""Tests for yolo_voc.plots: the drawing function and colours, results.png, PR curves, confusion matrix, the
evaluation report and the PredictionImages callback (callbacks.py); every picture is checked for content, not only existence."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from yolo_voc.metrics import MeanAveragePrecision, PRCurve
from yolo_voc.plots import (RESULT_PANELS, as_uint8_image, class_colour, draw_boxes, image_grid, plot_confusion_matrix,
                            plot_pr_curves, plot_results, plot_run, results_figure, read_lrs, read_metrics,
                            write_evaluation_report)


def pixels(path) -> np.ndarray:
    "The RGB pixels of a PNG."
    return np.asarray(Image.open(path).convert("RGB"))


def has_colour(img: np.ndarray, rgb, tol: int = 6) -> int:
    "How many pixels are within `tol` of `rgb` in every channel."
    return int((np.abs(img.astype(int) - np.array(rgb)).max(-1) <= tol).sum())


# --------------------------------------------------------------------------------------------- boxes, colours
def test_class_colour_is_one_scheme():
    assert class_colour(0) == (242, 48, 48)
    assert len({class_colour(k) for k in range(20)}) == 20
    assert class_colour(3) == class_colour(np.int64(3))
    assert all(0 <= v <= 255 for k in range(100) for v in class_colour(k))


def test_draw_boxes_values():
    img = np.full((200, 300, 3), 30, np.uint8)
    boxes = torch.tensor([[50., 60., 150., 180.], [180., 20., 280., 120.]])
    out = draw_boxes(img, boxes, torch.tensor([2, 7]), torch.tensor([0.9, 0.4]), class_names=[f"n{k}" for k in range(10)])
    assert out.shape == img.shape and out.dtype == np.uint8
    assert (img == 30).all()  # the input is untouched
    assert tuple(out[120, 50]) == class_colour(2) and tuple(out[70, 280]) == class_colour(7)  # left / right edges
    assert tuple(out[120, 100]) == (30, 30, 30)  # inside a box: untouched
    # the label band above box 0: filled with the class colour, with ink of another colour inside it
    ys, xs = np.nonzero((out[:60] == class_colour(2)).all(-1))  # above box 0 (its top edge is y = 60)
    assert ys.min() >= 60 - 20 and xs.min() == 50 and xs.max() > 80  # a band about one text line high, from x1
    band = out[ys.min():60, xs.min():xs.max() + 1]
    filled = has_colour(band, class_colour(2), 0)
    assert 0.5 * band[..., 0].size < filled < band[..., 0].size  # mostly colour, with ink
    # line width from the image size (max(2, 300/250) = 2) and twice that for the highlighted box
    assert has_colour(out[130:131, 45:60], class_colour(2), 0) == 2
    thick = draw_boxes(img, boxes, [2, 7], highlight=0)
    assert has_colour(thick[130:131, 45:60], class_colour(2), 0) == 4
    # no names: the index is written; no boxes: the same picture
    assert not np.array_equal(draw_boxes(img, boxes[:1], [2]), draw_boxes(img, boxes[:1], [3]))
    assert np.array_equal(draw_boxes(img, np.zeros((0, 4)), []), img)


def test_draw_boxes_bad_input():
    img = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ValueError, match=r"uint8 array, got float64 \(10, 10, 3\)"):
        draw_boxes(img.astype(float), [[0, 0, 5, 5]], [0])
    with pytest.raises(ValueError, match="1 boxes, 2 labels"):
        draw_boxes(img, [[0, 0, 5, 5]], [0, 1])
    with pytest.raises(ValueError, match="1 boxes, 1 labels, 2 scores"):
        draw_boxes(img, [[0, 0, 5, 5]], [0], scores=[0.1, 0.2])
    with pytest.raises(ValueError, match=r"got shape \(2, 10, 10, 3\)"):
        as_uint8_image(np.zeros((2, 10, 10, 3)))


def test_as_uint8_image_and_grid():
    t = torch.zeros(3, 4, 5)
    t[0] = 1.0  # red
    a = as_uint8_image(t)
    assert a.shape == (4, 5, 3) and (a[..., 0] == 255).all() and (a[..., 1:] == 0).all()
    assert np.array_equal(as_uint8_image(torch.full((4, 5, 3), 7, dtype=torch.uint8)), np.full((4, 5, 3), 7, np.uint8))
    g = image_grid([a, a, a], ncols=2)
    assert g.shape == (2 * 4 + 3 * 4, 2 * 5 + 3 * 4, 3)
    assert np.array_equal(g[12:16, 4:9], a)  # the third picture: second row (y = 4 + 8), first column (x = 4)
    assert (g[12:16, 13:18] == 255).all()  # no fourth picture: white
    with pytest.raises(ValueError, match="no images"):
        image_grid([])


def test_import_is_cheap():
    code = ("import sys, yolo_voc.plots as p; bad = [m for m in ('matplotlib', 'pytorch_lightning') if m in sys.modules]; "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# ----------------------------------------------------------------------------------------------- results.png
def fake_run(run: Path, epochs: int = 4, steps_per_epoch: int = 5, with_map: bool = True) -> Path:
    "A run directory with metrics.csv in RunLogger's format and lrs.txt in LRFile's."
    run.mkdir(parents=True, exist_ok=True)
    with open(run / "metrics.csv", "w") as f:
        f.write("step,epoch,name,value\n")
        for s in range(epochs * steps_per_epoch):
            for k, part in enumerate(("loss", "box", "obj", "noobj", "cls")):
                f.write(f"{s},{s // steps_per_epoch},train/{part},{(k + 1) * 10 / (s + 1):.8g}\n")
        for e in range(epochs):
            s = (e + 1) * steps_per_epoch - 1
            for k, name in enumerate(("loss", "box", "obj", "noobj", "cls", "class_accuracy", "obj_accuracy", "noobj_accuracy")):
                f.write(f"{s},{e},val/{name},{0.1 * (k + 1) + 0.01 * e:.8g}\n")
            if with_map and e % 2 == 1:
                for k, name in enumerate(("map50", "map50_voc12", "map", "map75")):
                    f.write(f"{s},{e},val/{name},{0.05 * (k + 1) * e:.8g}\n")
    (run / "lrs.txt").write_text("".join(f"{s} {1e-4 * (s + 1):.9e}\n" for s in range(epochs * steps_per_epoch)))
    return run


def test_results_figure_values(tmp_path):
    run = fake_run(tmp_path / "run")
    m = read_metrics(run / "metrics.csv")
    fig = results_figure(m, *read_lrs(run / "lrs.txt"))
    axs = np.array(fig.axes).reshape(len(RESULT_PANELS), -1)
    assert [[a.get_title() for a in row] for row in axs] == [list(r) for r in RESULT_PANELS]
    for row, names in zip(axs, RESULT_PANELS):
        for ax, name in zip(row, names):
            assert ax.lines, name  # every panel has data in this run
            line = ax.lines[0]
            if name == "lr":
                np.testing.assert_allclose(line.get_ydata(), 1e-4 * np.arange(1, 21))
            elif name.startswith("train/"):
                np.testing.assert_allclose(line.get_ydata(), m[name][2])
                assert len(ax.lines) == 2  # raw and smoothed
            else:
                np.testing.assert_array_equal(line.get_xdata(), m[name][1] + 1)
                np.testing.assert_allclose(line.get_ydata(), m[name][2])
    assert axs[2, 3].lines[0].get_xdata().tolist() == [2, 4]  # mAP on epochs 2 and 4 only


def test_plot_run_writes_results_png(tmp_path):
    run = fake_run(tmp_path / "run", with_map=False)
    paths = plot_run(run)
    assert [p.name for p in paths] == ["losses.png", "accuracies.png", "lr.png", "results.png"]
    img = pixels(run / "plots" / "results.png")
    assert img.shape == (660, 1560, 3)
    assert (img.min(-1) < 250).mean() > 0.03  # drawn, not blank
    fig = results_figure(read_metrics(run / "metrics.csv"), *read_lrs(run / "lrs.txt"))
    missing = [a.get_title() for a in fig.axes if [t.get_text() for t in a.texts] == ["not logged"]]
    assert missing == ["val/map75", "val/map50", "val/map50_voc12", "val/map"]
    with pytest.raises(FileNotFoundError, match="nope: no such run directory"):
        plot_results(tmp_path / "nope")


# ------------------------------------------------------------------------------------- evaluation pictures
def eval_metric(seed: int = 0, n_images: int = 30, num_classes: int = 4) -> MeanAveragePrecision:
    "A computed metric over jittered ground truths (quality falling with the class) and a few false alarms."
    rng = np.random.default_rng(seed)
    metric = MeanAveragePrecision(num_classes=num_classes)
    for i in range(n_images):
        k = int(rng.integers(1, 4))
        xy = rng.uniform(0, 300, (k, 2))
        gt = np.concatenate([xy, xy + rng.uniform(40, 120, (k, 2))], 1)
        gl = rng.integers(0, num_classes, k)
        det = gt + rng.normal(0, 1, (k, 4)) * (2 + 8 * gl)[:, None]
        det[:, 2:] = np.maximum(det[:, 2:], det[:, :2] + 1)
        fa = np.array([[400., 400., 450., 450.]])
        boxes, labels = np.concatenate([det, fa]), np.concatenate([gl, [int(rng.integers(0, num_classes))]])
        scores = np.concatenate([rng.uniform(0.3, 1.0, k), [0.5]])
        metric.update([dict(boxes=boxes, scores=scores, labels=labels)], [dict(boxes=gt, labels=gl)], [i])
    metric.compute()
    return metric


def test_pr_curves_picture(tmp_path):
    metric = eval_metric()
    curves = metric.pr_curves(["a", "b", "c", "d"])
    fig = plot_pr_curves(curves, tmp_path / "plots" / "pr.png")
    ax = fig.axes[0]
    assert len(ax.lines) == len(curves) + 1 == 5
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    mean = np.mean([c.ap for c in curves])
    assert legend == [f"{c.name} {c.ap:.3f}" for c in curves] + [f"all classes, mAP50 {mean:.3f}"]
    assert f"{mean:.3f}" == f"{metric.compute()['map50'].item():.3f}"
    for line, c in zip(ax.lines, curves):  # each class in its colour, the envelope as drawn
        rec, prec = c.envelope()
        np.testing.assert_array_equal(line.get_xdata(), rec)
        np.testing.assert_array_equal(line.get_ydata(), prec)
    img = pixels(tmp_path / "plots" / "pr.png")
    for c in curves:
        assert has_colour(img, class_colour(c.label)) > 50, c.name  # every class's line is in the picture
    assert has_colour(img, (0, 0, 0), 10) > 500  # the mean line


def test_pr_curve_hand_made():
    "Precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1: the envelope steps 1 -> 2/3 at recall 1/2, then 0."
    fig = plot_pr_curves([PRCurve(0, "x", np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3]), 0.8485)])
    mean = fig.axes[0].lines[-1]
    grid = mean.get_xdata()
    np.testing.assert_allclose(mean.get_ydata(), np.where(grid <= 0.5, 1.0, 2 / 3))


def test_confusion_matrix_picture(tmp_path):
    cm = np.array([[5, 1, 0, 2], [0, 3, 0, 1], [0, 0, 0, 0], [1, 2, 4, 0]])
    fig = plot_confusion_matrix(cm, ["a", "b", "c"], tmp_path / "cm.png")
    shown = fig.axes[0].images[0].get_array().filled(np.nan)
    np.testing.assert_allclose(shown[:, 0], [5 / 6, np.nan, np.nan, 1 / 6])
    np.testing.assert_allclose(shown[:, 2], [np.nan, np.nan, np.nan, 1.0])  # every c missed
    assert np.isnan(shown[2]).all()  # nothing predicted as c: a white row
    texts = sorted(t.get_text() for t in fig.axes[0].texts)
    assert len(texts) == 8 and "0.83" in texts and "1.00" in texts
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["a", "b", "c", "background"]
    counts = plot_confusion_matrix(cm, ["a", "b", "c"], normalize=False)
    assert sorted(t.get_text() for t in counts.axes[0].texts) == sorted(str(v) for v in cm[cm > 0])
    img = pixels(tmp_path / "cm.png")
    assert (img.min(-1) < 128).mean() > 0.01  # dark cells and text
    with pytest.raises(ValueError, match="3 classes must be 4 x 4"):
        plot_confusion_matrix(cm[:3, :3], ["a", "b", "c"])


def test_write_evaluation_report(tmp_path):
    names = ["a", "b", "c", "d"]
    metric = eval_metric()
    expected = metric.compute()
    metric.reset()  # as the training loop does before the report is written
    report = write_evaluation_report(metric, names, tmp_path, prefix="test")
    assert {k: v.relative_to(tmp_path).as_posix() for k, v in report.files.items()} == dict(
        per_class="test_per_class.csv", pr_curves="plots/test_pr_curves.png", confusion_matrix="plots/test_confusion_matrix.png")
    rows = list(csv.DictReader(open(report.files["per_class"])))
    assert [r["name"] for r in rows] == names
    assert [float(r["ap50"]) for r in rows] == pytest.approx([r.ap50 for r in report.rows], abs=1e-6)
    assert report.mean["ap50"] == pytest.approx(expected["map50"].item(), abs=1e-6)
    assert report.mean["ap"] == pytest.approx(expected["map"].item(), abs=1e-6)
    np.testing.assert_array_equal(report.confusion, metric.confusion_matrix())
    assert report.confusion[:4, :4].trace() > 0
    d = json.loads(json.dumps(report.to_dict(), allow_nan=False))  # strictly JSON
    assert d["prefix"] == "test" and len(d["per_class"]) == 4 and len(d["confusion_matrix"]) == 5
    assert report.table.splitlines()[-1].startswith("mean (4 classes)")
    pr = pixels(report.files["pr_curves"])
    assert all(has_colour(pr, class_colour(k)) > 50 for k in range(4))
    assert (pixels(report.files["confusion_matrix"]).min(-1) < 128).mean() > 0.01
    plain = write_evaluation_report(metric, names, tmp_path / "fit", prefix="")  # no prefix: plain names
    assert sorted(p.relative_to(tmp_path / "fit").as_posix() for p in plain.files.values()) == [
        "per_class.csv", "plots/confusion_matrix.png", "plots/pr_curves.png"]
    with pytest.raises(RuntimeError, match="call compute"):
        write_evaluation_report(MeanAveragePrecision(num_classes=4), names, tmp_path)
    with pytest.raises(ValueError, match="3 class names for 4 classes"):
        write_evaluation_report(metric, names[:3], tmp_path)


# --------------------------------------------------------------------------------------------- the callback
def test_prediction_images_callback(tmp_path, synth_voc):
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_models import NAMES, tiny_model
    from yolo_voc.boxes import Decoding
    from yolo_voc.data import VOCDataset
    from yolo_voc.callbacks import PredictionImages
    from yolo_voc.voc import load_annotations
    model = tiny_model()

    class Module:  # what the callback uses of a YoloModule
        device, decoding, class_names, hparams = torch.device("cpu"), Decoding(), NAMES, SimpleNamespace(nms_iou=0.45)
        def __call__(self, images): return model(images)

    ds = VOCDataset(load_annotations(synth_voc, split=None)[:3], size=128, train=False)
    trainer = SimpleNamespace(sanity_checking=False, current_epoch=1, datamodule=SimpleNamespace(val_dataset=ds))
    PredictionImages(tmp_path, n=3, conf_threshold=0.05).on_validation_epoch_end(trainer, Module())
    img = pixels(tmp_path / "plots" / "predictions_epoch2.png")
    assert img.shape == (24 + 128 + 2 * 4, 3 * 128 + 4 * 4, 3)  # title band, three 128 px tiles
    assert (img[:24].min(-1) < 128).any()  # the title
    assert any(has_colour(img[24:], class_colour(k), 0) > 20 for k in range(3)), "no box drawn"
