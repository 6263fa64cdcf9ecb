"""One rule for a photo's EXIF orientation everywhere (issue 21): JPEGs tagged 1, 3, 6 and 8 that all show the same
upright picture give the same pixels under the same box in the dataset check, in training samples (plain and mosaic,
with the reduced JPEG decodes of mosaic tiles), in predict, int8 calibration, Grad-CAM and the app; predict's
--save_xml passes the check; an annotation made on the stored pixels is recognised."""
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from yolo_voc.boxes import letterbox_boxes
from yolo_voc.data import VOCDataset
from yolo_voc.export import CalibrationImages
from yolo_voc.gradcam import gradcam
from yolo_voc.predict import Detector, load_image, predict_to_folder
from yolo_voc.transforms import read_checked, read_image, train_transforms
from yolo_voc.voc import EXIF_ORIENTATION, check_dataset, check_image, load_annotations

from tiny_models import CFG, tiny_model

W, H = 320, 480  # the upright picture: portrait, as a phone shows it
RED, GREEN = (230, 30, 30), (30, 200, 30)
BOXES = np.array([[40, 60, 200, 300], [220, 330, 300, 450]], np.float32)  # pixel xyxy on the upright picture
CLASSES = ("red", "green")
COLOURS = {0: RED, 1: GREEN}
# what makes the stored pixels of a photo that its tag turns back into the upright picture (Pillow's names)
STORE = {1: None, 3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
NO_COLOUR = dict(color_p=0.0, blur_p=0.0, clahe_p=0.0, posterize_p=0.0, gray_p=0.0, channel_shuffle_p=0.0)


def upright() -> np.ndarray:
    "The picture as it should be seen: grey, a red rectangle top left, a green one bottom right."
    a = np.full((H, W, 3), 90, np.uint8)
    for (x1, y1, x2, y2), c in zip(BOXES.astype(int), (RED, GREEN)): a[y1:y2, x1:x2] = c
    return a


def xml(width: int, height: int, boxes) -> str:
    "A VOC annotation with `<size>` width x height and one red and one green box (pixel xyxy, written 1-based)."
    objs = "".join(f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{x1 + 1:g}</xmin><ymin>{y1 + 1:g}</ymin>"
                   f"<xmax>{x2:g}</xmax><ymax>{y2:g}</ymax></bndbox></object>" for n, (x1, y1, x2, y2) in zip(CLASSES, boxes))
    return f"<annotation><size><width>{width}</width><height>{height}</height><depth>3</depth></size>{objs}</annotation>"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    "A LabelImg-style folder of 4 JPEGs tagged 1, 3, 6, 8 (tagN.jpg), each annotated on the upright picture."
    root = tmp_path_factory.mktemp("photos")
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"): (root / sub).mkdir(parents=True)
    for o, turn in STORE.items():
        exif = Image.Exif(); exif[EXIF_ORIENTATION] = o
        pic = Image.fromarray(upright())
        (pic.transpose(turn) if turn else pic).save(root / f"JPEGImages/tag{o}.jpg", quality=95, exif=exif.tobytes())
        (root / f"Annotations/tag{o}.xml").write_text(xml(W, H, BOXES))
    (root / "ImageSets/Main/trainval.txt").write_text("".join(f"tag{o}\n" for o in STORE))
    (root / "classes.txt").write_text("red\ngreen\n")
    return root


def assert_on_colours(img: np.ndarray, boxes, labels, margin: int = 2, tol: int = 45):
    "At least 95% of the inside of each box (less `margin` px) has the colour of its label; returns how many boxes."
    assert len(boxes) > 0
    for b, l in zip(np.asarray(boxes).round().astype(int), np.asarray(labels).astype(int)):
        inner = img[b[1] + margin:b[3] - margin, b[0] + margin:b[2] - margin].reshape(-1, 3).astype(int)
        assert len(inner) > 0, b
        hit = (np.abs(inner - np.array(COLOURS[l])).max(1) < tol).mean()
        assert hit > 0.95, (b, l, hit)
    return len(boxes)


def test_the_test_photos_are_what_pillow_shows(photos):
    "The stored pixels differ (but for tag 1), and Pillow's own exif_transpose turns each into the upright picture."
    for o in STORE:
        with Image.open(photos / f"JPEGImages/tag{o}.jpg") as im:
            assert im.size == ((H, W) if o in (6, 8) else (W, H))  # stored
            shown = np.asarray(ImageOps.exif_transpose(im).convert("RGB")).astype(int)
        assert np.abs(shown - upright()).mean() < 2


def test_check_reads_the_upright_size_and_the_boxes_cover_the_same_pixels(photos):
    for o in STORE: assert check_image(photos / f"JPEGImages/tag{o}.jpg") == (W, H, None, o)
    rep = check_dataset(photos, "trainval", CLASSES)
    assert (rep.ok, rep.images, rep.per_class) == (True, 4, {"red": 4, "green": 4}), rep.problems
    recs = load_annotations(photos, "trainval", CLASSES)
    assert [(r.image_id, r.orientation, r.width, r.height) for r in recs] == [(f"tag{o}", o, W, H) for o in STORE]
    for r in recs:
        np.testing.assert_array_equal(r.boxes, BOXES)
        img = read_checked(r)
        assert np.abs(img.astype(int) - upright()).mean() < 2  # the upright picture ...
        assert_on_colours(img, r.boxes, r.labels)              # ... and the boxes on their colours
        for reduce in (2, 4, 8):                              # the reduced decodes of mosaic tiles too
            small = read_checked(r, reduce)
            assert small.shape == (H // reduce, W // reduce, 3)
            assert_on_colours(small, r.boxes / reduce, r.labels)


def test_check_recognises_an_annotation_made_on_the_stored_pixels(photos, tmp_path):
    "Tags 6 and 8: an annotation of the stored 480x320 pixels is one problem saying what happened and what to do."
    root = tmp_path / "stored"
    shutil.copytree(photos, root)
    for o in (6, 8):  # the boxes where they are in the stored pixels: the upright picture turned back
        stored = np.asarray(Image.fromarray(upright()).transpose(STORE[o]))
        red = np.argwhere((np.abs(stored.astype(int) - RED).max(-1) < 10))
        green = np.argwhere((np.abs(stored.astype(int) - GREEN).max(-1) < 10))
        boxes = [(a[:, 1].min(), a[:, 0].min(), a[:, 1].max() + 1, a[:, 0].max() + 1) for a in (red, green)]
        (root / f"Annotations/tag{o}.xml").write_text(xml(H, W, boxes))
    rep = check_dataset(root, "trainval", CLASSES)
    assert rep.images == 2 and [p.file for p in rep.problems] == ["stored/Annotations/tag6.xml", "stored/Annotations/tag8.xml"]
    turns = {6: "turned 90° clockwise", 8: "turned 90° counter-clockwise"}
    for p, o in zip(rep.problems, (6, 8)):
        assert p.problem == (f"<size> 480x320 differs from the image stored/JPEGImages/tag{o}.jpg (320x480), which is read upright "
                             f"by its EXIF orientation {o} (stored 480x320, shown {turns[o]}): the annotation was made on "
                             f"the stored pixels, by a tool that ignores the tag. Re-annotate the image as photo viewers "
                             f"show it, or, if the boxes fit the stored pixels, remove the tag: exiftool -Orientation= "
                             f"-overwrite_original stored/JPEGImages/tag{o}.jpg")
    # done as the message says (the tag removed, here with Pillow): the stored pixels are read, and the check passes
    for o in (6, 8):
        f = root / f"JPEGImages/tag{o}.jpg"
        with Image.open(f) as im: pixels, exif = im.copy(), im.getexif()
        del exif[EXIF_ORIENTATION]
        pixels.save(f, quality=95, exif=exif.tobytes())
    assert check_dataset(root, "trainval", CLASSES).ok
    for r in load_annotations(root, "trainval", CLASSES):
        assert_on_colours(read_checked(r), r.boxes, r.labels)


def one_image_dataset(photos, o: int, mosaic_prob: float) -> VOCDataset:
    rec = [r for r in load_annotations(photos, "trainval", CLASSES) if r.orientation == o]
    return VOCDataset(rec, size=128, train=True, mosaic_prob=mosaic_prob, seed=3, uint8=True,
                      transforms=train_transforms(128, affine_p=0.0, **NO_COLOUR))


@pytest.mark.parametrize("mosaic_prob", [0.0, 1.0])
def test_training_samples_are_the_same_for_every_tag(photos, mosaic_prob):
    "A one-image dataset per tag, same seed: the same boxes (exactly) on the same pixels, plain and as 4-tile mosaics."
    boxes = {}
    for epoch in range(3):
        ref = None
        for o in STORE:
            ds = one_image_dataset(photos, o, mosaic_prob)
            for image, target, info in (ds[(0, epoch)], ds.__getitems__([(0, epoch)])[0]):  # one decode path each
                assert info["mosaic"] == bool(mosaic_prob)
                img = image.permute(1, 2, 0).numpy()
                xyxy = torch.cat([target[:, 1:3] - target[:, 3:5] / 2, target[:, 1:3] + target[:, 3:5] / 2], 1) * 128
                boxes[o] = boxes.get(o, 0) + assert_on_colours(img, xyxy.numpy(), target[:, 0].numpy())
                if ref is None: ref = (img, target)
                else:
                    torch.testing.assert_close(target, ref[1])                     # the same boxes, exactly
                    assert np.abs(img.astype(int) - ref[0].astype(int)).mean() < 3  # the same picture (JPEG noise aside)
    assert len(set(boxes.values())) == 1 and boxes[1] >= 12


@pytest.fixture(scope="module")
def detector():
    return Detector(tiny_model(), ["circle", "square", "triangle"], image_size=128, model_config=CFG)


def test_predict_sees_the_training_pixels(photos, detector):
    "predict's image is training's, the letterboxed box covers the same pixels, detections are in upright pixels."
    inputs = {}
    for o in STORE:
        path = photos / f"JPEGImages/tag{o}.jpg"
        np.testing.assert_array_equal(load_image(path), read_image(path))  # Pillow + orient == OpenCV + orient, exactly
        np.testing.assert_array_equal(load_image(Image.open(path)), read_image(path))  # a PIL image from the file too
        x, lb = detector.preprocess(path)
        assert (lb.width, lb.height, lb.pad_x, lb.pad_y) == (W, H, 21, 0)
        sq = (x.permute(1, 2, 0) * 255).round().byte().numpy()
        assert_on_colours(sq, letterbox_boxes(torch.from_numpy(BOXES), lb).numpy(), [0, 1])
        inputs[o] = x
        np.testing.assert_array_equal(CalibrationImages([path], 128).get_next()["images"][0], x.numpy())  # int8 calibration
    for o in (3, 6, 8): assert (inputs[o] - inputs[1]).abs().mean() < 0.01
    dets = detector.predict([photos / f"JPEGImages/tag{o}.jpg" for o in STORE], conf=0.01)
    assert [(d.width, d.height) for d in dets] == [(W, H)] * 4
    for d in dets[1:]: np.testing.assert_allclose(d.boxes[:3], dets[0].boxes[:3], atol=3)
    heat = gradcam(detector, photos / "JPEGImages/tag6.jpg", 0, dets[2])
    assert heat.shape == (H, W)
    np.testing.assert_array_equal(heat, gradcam(detector, read_image(photos / "JPEGImages/tag6.jpg"), 0, dets[2]))


def test_app_uploads_are_read_by_the_same_rule(photos):
    "Gradio turns an upload upright itself (the app's image is type='numpy'): the pixels predict reads from the file."
    gr = pytest.importorskip("gradio")
    from gradio.data_classes import ImageData
    for o in STORE:
        path = photos / f"JPEGImages/tag{o}.jpg"
        np.testing.assert_array_equal(gr.Image(type="numpy").preprocess(ImageData(path=str(path))), load_image(path))


def test_save_xml_passes_the_check(photos, detector, tmp_path):
    "predict --save_xml on tagged photos writes <size> and boxes of the upright image: the check passes."
    out = tmp_path / "out"
    predict_to_folder(detector, [photos / f"JPEGImages/tag{o}.jpg" for o in STORE], out, conf=0.01, save_xml=True,
                      save_txt=True, log=lambda s: None)
    ds = tmp_path / "pseudo"
    shutil.copytree(photos / "JPEGImages", ds / "JPEGImages")
    shutil.copytree(out / "Annotations", ds / "Annotations")
    (ds / "ImageSets/Main").mkdir(parents=True)
    (ds / "ImageSets/Main/trainval.txt").write_text("".join(f"tag{o}\n" for o in STORE))
    for o in STORE:
        assert re.search(r"<width>320</width>\s*<height>480</height>", (ds / f"Annotations/tag{o}.xml").read_text())
        assert (out / f"labels/tag{o}.txt").read_text().strip()
    rep = check_dataset(ds, "trainval", detector.class_names)
    assert rep.ok and rep.images == 4 and rep.objects > 4, rep.problems
