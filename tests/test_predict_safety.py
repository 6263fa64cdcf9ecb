"""`yolo-voc predict` against a hostile but realistic user (issue 17) and its new options (issue 16, part 3):
output never touches inputs, results survive output errors with one line and exit 3, deep images are read as
they look, folder scans report what they skip, options are checked before anything is written, the device
choice, --image_size, --save_txt / --save_xml, videos and Darknet files."""
import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from yolo_voc.checkpoint import save_weights
from yolo_voc.cli import predict_main, predict_parser
from yolo_voc.predict import (OutputError, UnsafeOutputError, Video, check_output, load_image, predict_to_folder,
                              resolve_device)
from yolo_voc.runtime import load_detector
from yolo_voc.voc import check_dataset, parse_yolo_labels

from tiny_models import CFG, NAMES, tiny_model

SIZE = 128
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    "The tiny model as a yolo_voc weights file (input size 128)."
    return save_weights(tiny_model(), tmp_path_factory.mktemp("w") / "tiny.pt", class_names=NAMES, image_size=SIZE, **CFG)


def noise(h: int, w: int, seed: int = 0, dtype=np.uint8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=dtype)


@pytest.fixture
def photos(tmp_path):
    "A user's folder of photos: two JPEGs and a PNG."
    d = tmp_path / "photos"; d.mkdir()
    Image.fromarray(noise(90, 120, 1)).save(d / "a.jpg", quality=90)
    Image.fromarray(noise(100, 80, 2)).save(d / "b.jpg", quality=90)
    Image.fromarray(noise(64, 64, 3)).save(d / "c.png")
    return d


def run(weights, out, *inputs, extra=()) -> int:
    return predict_main(["--ckpt_path", str(weights), "--out", str(out), "--conf", "0.02", "--device", "cpu", *extra, *map(str, inputs)])


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def one_line(err: str) -> str:
    "stderr must be exactly one line and no traceback."
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- 1. output never touches inputs -------------------------------------------------------------------------

def test_out_equal_to_input_folder_keeps_inputs(weights, photos, capsys):
    before = snapshot(photos)
    assert run(weights, photos, photos) == 2
    line = one_line(capsys.readouterr().err)
    assert f"{photos}: is the input folder" in line and "--allow_input_overlap" in line
    assert snapshot(photos) == before  # not one byte written, nothing added
    # even asked explicitly, no input is written over: the drawings get other names
    assert run(weights, photos, photos, extra=["--exist_ok", "--allow_input_overlap"]) == 0
    after = snapshot(photos)
    assert {n: after[n] for n in before} == before
    outputs = [r["output"] for r in json.loads(after["predictions.json"])["images"]]
    assert outputs == ["a_1.jpg", "b_1.jpg", "c_1.png"]
    assert set(after) == set(before) | set(outputs) | {"predictions.json", "predictions.jsonl"}


def test_out_inside_or_holding_an_input_is_refused(weights, photos, tmp_path, capsys):
    assert run(weights, photos / "detections", photos) == 2
    assert "lies inside the input folder" in one_line(capsys.readouterr().err)
    assert not (photos / "detections").exists()
    assert run(weights, photos, photos / "a.jpg", extra=["--exist_ok"]) == 2
    assert "holds the input" in one_line(capsys.readouterr().err)
    link = tmp_path / "link"; link.symlink_to(photos)  # the same folder by another name
    assert run(weights, link, photos) == 2
    assert "is the input folder" in one_line(capsys.readouterr().err)


def test_second_run_is_refused_unless_exist_ok(weights, photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(weights, out, photos) == 0
    first = snapshot(out)
    capsys.readouterr()
    assert run(weights, out, photos / "a.jpg") == 2
    assert f"{out}: is not empty" in one_line(capsys.readouterr().err) and snapshot(out) == first
    # --exist_ok: replaces what it writes again and lists what the first run left
    assert run(weights, out, photos / "a.jpg", extra=["--exist_ok"]) == 0
    err = capsys.readouterr().err
    assert "2 entries that were there before are not part of this run" in err
    result = json.loads((out / "predictions.json").read_text())
    assert [r["output"] for r in result["images"]] == ["a.jpg"] and result["earlier_files"] == ["b.jpg", "c.png"]


# --- 2. output errors: one line, exit 3, results kept ---------------------------------------------------------

def test_out_is_a_file_or_cannot_be_made(weights, photos, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("x")
    assert run(weights, tmp_path / "file.txt", photos) == 3
    assert one_line(capsys.readouterr().err) == f"yolo-voc predict: {tmp_path / 'file.txt'}: exists and is not a folder"
    assert run(weights, tmp_path / "file.txt" / "sub", photos) == 3
    line = one_line(capsys.readouterr().err)
    assert line == f"yolo-voc predict: {tmp_path / 'file.txt' / 'sub'}: cannot create the folder (Not a directory)"
    assert (tmp_path / "file.txt").read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_unwritable_folder(weights, photos, tmp_path, capsys):
    ro = tmp_path / "ro"; ro.mkdir(); ro.chmod(0o500)
    try:
        assert run(weights, ro / "out", photos) == 3
        assert "Permission denied" in one_line(capsys.readouterr().err)
    finally: ro.chmod(0o700)


def test_disk_full_midway_keeps_every_result(weights, tmp_path, capsys, monkeypatch):
    "ENOSPC on the third drawing: exit 3, one line naming the file, the first two images in both result files."
    src = tmp_path / "in"; src.mkdir()
    for i in range(4): Image.fromarray(noise(60, 80, i)).save(src / f"{i}.png")
    saves, real_save = [], Image.Image.save
    def save(self, fp, *a, **k):
        saves.append(fp)
        if len(saves) == 3:
            Path(fp).write_bytes(b"\x89PNG partial")  # what a full disk leaves
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(self, fp, *a, **k)
    monkeypatch.setattr(Image.Image, "save", save)
    out = tmp_path / "out"
    assert run(weights, out, src) == 3
    line = one_line(capsys.readouterr().err)
    assert f"{out / '2.png'}: No space left on device" in line and "stopped after 2 images" in line
    lines = [json.loads(l) for l in (out / "predictions.jsonl").read_text().splitlines()]
    assert [Path(l["file"]).name for l in lines] == ["0.png", "1.png"]
    result = json.loads((out / "predictions.json").read_text())
    assert result["images"] == lines and "No space left" in result["stopped"]
    assert not (out / "2.png").exists()  # the partial drawing is not left looking like a result


def test_file_too_large_in_a_real_process(weights, tmp_path):
    "A real write failure (RLIMIT_FSIZE, as a full disk but per file) in a real process: no traceback, exit 3."
    src = tmp_path / "in"; src.mkdir()
    Image.fromarray(noise(40, 40, 0)).save(src / "a.png")
    Image.fromarray(noise(300, 300, 1)).save(src / "b.png")  # its drawing is > 200 kB
    Image.fromarray(noise(40, 40, 2)).save(src / "c.png")
    limit = 100_000
    def limit_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-c", "import sys; from yolo_voc.cli import predict_main; sys.exit(predict_main())",
                        "--ckpt_path", str(weights), "--out", str(out), "--conf", "0.02", "--device", "cpu", str(src)],
                       capture_output=True, text=True, timeout=300, preexec_fn=limit_files,
                       env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    assert p.returncode == 3, p.stderr
    assert "Traceback" not in p.stderr and f"{out / 'b.png'}: File too large" in p.stderr
    lines = [json.loads(l) for l in (out / "predictions.jsonl").read_text().splitlines()]
    assert [Path(l["file"]).name for l in lines] == ["a.png"] and len(lines[0]["detections"]) > 0


# --- 3. every image read as it looks ---------------------------------------------------------------------------

def test_deep_images_read_as_opencv_shows_them(weights, tmp_path):
    grey = np.array([[0, 13000, 65535, 256, 511, 40000]], np.uint16).repeat(4, 0)
    cv2.imwrite(str(tmp_path / "g16.png"), grey)
    colour = np.stack([grey, grey // 2, grey // 4], -1)  # B, G, R as OpenCV writes
    cv2.imwrite(str(tmp_path / "c16.png"), colour)
    Image.fromarray(np.array([[0, 13000, 70000, -5]], np.int32)).save(tmp_path / "i32.tif")
    Image.fromarray(np.array([[0.0, 0.5, 1.0, 2.0, -1.0]], np.float32)).save(tmp_path / "f32.tif")
    cv2.imwrite(str(tmp_path / "f32x3.tif"), np.array([[[0.0, 0.25, 1.0]]], np.float32))
    training = lambda f: cv2.cvtColor(cv2.imread(str(tmp_path / f), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert load_image(tmp_path / "g16.png")[0, :, 0].tolist() == [0, 50, 255, 1, 1, 156]
    np.testing.assert_array_equal(load_image(tmp_path / "g16.png"), training("g16.png"))  # exactly the training decoder
    np.testing.assert_array_equal(load_image(tmp_path / "c16.png"), training("c16.png"))
    assert load_image(tmp_path / "i32.tif")[0].tolist() == [[0] * 3, [50] * 3, [255] * 3, [0] * 3]
    assert load_image(tmp_path / "f32.tif")[0].tolist() == [[0] * 3, [128] * 3, [255] * 3, [255] * 3, [0] * 3]
    assert load_image(tmp_path / "f32x3.tif")[0, 0].tolist() == [255, 64, 0]  # BGR on disk, RGB here
    # predict sees the same picture as from its 8-bit version: same detections
    det = load_detector(weights)
    img8 = noise(96, 128, 5)
    cv2.imwrite(str(tmp_path / "n16.png"), (img8[..., ::-1].astype(np.uint16) << 8) | 0x7F)
    cv2.imwrite(str(tmp_path / "nf.tif"), img8[..., ::-1].astype(np.float32) / 255)
    ref = det.predict(img8, conf=0.02)[0]
    assert len(ref) > 0
    for f in ("n16.png", "nf.tif"):
        got = det.predict(tmp_path / f, conf=0.02)[0]
        np.testing.assert_allclose(got.boxes, ref.boxes, atol=1e-3)


def test_folder_scan_takes_gif_and_reports_skips(weights, tmp_path):
    src = tmp_path / "in"; src.mkdir()
    Image.fromarray(noise(50, 60, 0)).save(src / "a.png")
    Image.fromarray(np.full((50, 60, 3), 120, np.uint8)).save(src / "b.gif")
    (src / "gone.jpg").symlink_to(src / "missing.jpg")
    (src / "loop.jpg").symlink_to(src / "loop.jpg")
    (src / "notes.txt").write_text("shopping list")
    (src / "sub").mkdir()
    assert run(weights, tmp_path / "out", src) == 0
    result = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert [Path(r["file"]).name for r in result["images"]] == ["a.png", "b.gif"]
    assert [r["output"] for r in result["images"]] == ["a.png", "b.png"]
    errors = {Path(e["file"]).name: e["error"] for e in result["errors"]}
    assert set(errors) == {"gone.jpg", "loop.jpg", "notes.txt"}
    assert "broken symbolic link" in errors["gone.jpg"] and "symbolic link loop" in errors["loop.jpg"]
    assert "not an image or video suffix" in errors["notes.txt"]


# --- 4. options checked before anything is written; strict JSON ------------------------------------------------

@pytest.mark.parametrize("bad, message", [
    (["--conf", "1.5"], "--conf must be a number in [0, 1], got 1.5"), (["--conf", "-0.5"], "--conf"),
    (["--conf", "nan"], "--conf must be a number in [0, 1], got nan"), (["--iou", "-0.3"], "--iou"),
    (["--max_detections", "-1"], "--max_detections must be a whole number >= 1"), (["--batch_size", "0"], "--batch_size"),
    (["--image_size", "100"], "--image_size must be a positive multiple of 32"), (["--image_size", "0"], "--image_size"),
    (["--fps", "0"], "--fps"), (["--device", "cuda:7"], "--device cuda:7")])
def test_bad_options_write_nothing(weights, photos, tmp_path, capsys, bad, message, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert run(weights, tmp_path / "out", photos, extra=bad) == 2
    assert message in one_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_results_are_strict_json(weights, photos, tmp_path):
    def refuse(name): raise AssertionError(f"non-standard JSON constant {name}")
    assert run(weights, tmp_path / "out", photos) == 0
    json.loads((tmp_path / "out" / "predictions.json").read_text(), parse_constant=refuse)
    for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=refuse)
    with pytest.raises(ValueError, match="--conf"):
        predict_to_folder(load_detector(weights), photos, tmp_path / "o2", conf=float("nan"))
    assert not (tmp_path / "o2").exists()


def test_help_says_output_policy_and_exit_codes(capsys):
    assert predict_main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for s in ("OUT must be new or empty, unless --exist_ok", "never written over", "0 at least one image was processed",
              "1 no image could be processed", "2 bad command line", "3 an output could not be written", "--save_xml"):
        assert s in text, s


def test_library_errors_are_typed(weights, photos, tmp_path):
    with pytest.raises(UnsafeOutputError): check_output(photos, [photos])
    with pytest.raises(OutputError): check_output(photos / "a.jpg", [])
    assert issubclass(OutputError, OSError)


# --- issue 16: device, image size, labels as files, video, Darknet ---------------------------------------------

def test_device_auto_follows_cuda_availability(monkeypatch):
    "Simulated: torch.cuda.is_available is monkeypatched (this machine's answer is not used)."
    assert predict_parser().parse_args(["--ckpt_path", "c", "--out", "o", "x"]).device == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda" and resolve_device(None) == "cuda" and resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ValueError, match="sees no CUDA GPU"): resolve_device("cuda")
    with pytest.raises(ValueError, match="not a torch device"): resolve_device("tpu9")


def test_device_recorded(weights, photos, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert predict_main(["--ckpt_path", str(weights), "--out", str(tmp_path / "o"), str(photos / "a.jpg")]) == 0
    assert json.loads((tmp_path / "o" / "predictions.json").read_text())["settings"]["device"] == "cpu"


def test_image_size_option(weights, photos, tmp_path):
    assert run(weights, tmp_path / "o", photos / "a.jpg", extra=["--image_size", "96"]) == 0
    result = json.loads((tmp_path / "o" / "predictions.json").read_text())
    assert result["settings"]["image_size"] == 96
    ref = load_detector(weights, image_size=96).predict(photos / "a.jpg", conf=0.02)[0]
    default = load_detector(weights).predict(photos / "a.jpg", conf=0.02)[0]
    got = result["images"][0]["detections"]
    assert len(got) == len(ref) > 0
    np.testing.assert_allclose([d["box"] for d in got], ref.boxes, atol=0.01)
    assert len(default) != len(ref) or not np.allclose(default.boxes, ref.boxes, atol=0.01)  # the size mattered


def test_save_xml_is_a_dataset_check_accepts(weights, synth_voc, tmp_path):
    "predict --save_xml on synthetic images, laid out as a VOCdevkit: `check_dataset` finds no problem."
    ids = sorted(p.stem for p in (synth_voc / "JPEGImages").glob("*.jpg"))[:4]
    assert run(weights, tmp_path / "out", *[synth_voc / "JPEGImages" / f"{i}.jpg" for i in ids],
               extra=["--save_xml", "--save_txt", "--conf", "0.005"]) == 0
    result = json.loads((tmp_path / "out" / "predictions.json").read_text())
    # an image without detections gets no XML (nor text), as ultralytics writes no label file for it
    found = [Path(r["file"]).stem for r in result["images"] if r["detections"]]
    assert len(found) >= 2 and sorted(p.stem for p in (tmp_path / "out" / "Annotations").iterdir()) == found
    ids, result["images"] = found, [r for r in result["images"] if r["detections"]]
    voc = tmp_path / "VOCdevkit" / "VOC2007"
    shutil.copytree(tmp_path / "out" / "Annotations", voc / "Annotations")
    (voc / "JPEGImages").mkdir(); (voc / "ImageSets" / "Main").mkdir(parents=True)
    for i in ids: shutil.copy(synth_voc / "JPEGImages" / f"{i}.jpg", voc / "JPEGImages")
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(ids) + "\n")
    report = check_dataset(tmp_path / "VOCdevkit", "trainval", class_names=NAMES)
    assert report.problems == [] and report.warnings == []
    # every detection is there, except boxes wholly in the letterbox padding, which clip to zero area in the image
    area = lambda b: (b[2] - b[0]) * (b[3] - b[1]) > 0
    assert report.images == len(ids) and report.objects == sum(area(d["box"]) for r in result["images"] for d in r["detections"])
    # the YOLO text says the same boxes
    for r in result["images"]:
        text = (tmp_path / "out" / "labels" / f"{Path(r['file']).stem}.txt").read_text()
        boxes, labels = parse_yolo_labels(text, r["width"], r["height"], class_names=NAMES)
        kept = [d for d in r["detections"] if area(d["box"])]
        assert labels.tolist() == [d["label"] for d in kept]
        np.testing.assert_allclose(boxes, [d["box"] for d in kept], atol=0.01)


def frames_with_a_square(n: int, h: int = 96, w: int = 128) -> list:
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for k in range(n):
        f = np.stack([xx * 2, yy * 2, np.full_like(xx, 60)], -1).astype(np.uint8)
        f[20:60, 10 + 10 * k:50 + 10 * k] = (250, 250, 250)
        out.append(f)
    return out


def test_video_file(weights, tmp_path):
    "A 7-frame MJPG .avi written with cv2.VideoWriter: an annotated .avi of 7 frames, same size, and a record per frame."
    vid = tmp_path / "clip.avi"
    w = cv2.VideoWriter(str(vid), cv2.VideoWriter_fourcc(*"MJPG"), 12, (128, 96))
    for f in frames_with_a_square(7): w.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    w.release()
    out = tmp_path / "out"
    assert predict_main(["--ckpt_path", str(weights), "--out", str(out), "--conf", "0.01", "--device", "cpu",
                         "--batch_size", "3", str(vid)]) == 0
    v = Video.open(out / "clip.avi")
    assert (v.width, v.height, v.fps) == (128, 96, 12.0) and len(list(v)) == 7
    lines = [json.loads(l) for l in (out / "predictions.jsonl").read_text().splitlines()]
    assert [l["frame"] for l in lines] == list(range(7))
    assert all(l["output"] == "clip.avi" and l["file"] == str(vid) and len(l["detections"]) > 0 for l in lines)
    # the frames are drawn: the output differs from the input where the boxes are
    assert any(np.abs(a.astype(int) - b).max() > 100 for a, b in zip(Video.open(out / "clip.avi"), Video.open(vid)))


def test_folder_of_frames_as_video(weights, tmp_path):
    src = tmp_path / "frames"; src.mkdir()
    for i, f in enumerate(frames_with_a_square(5)): Image.fromarray(f).save(src / f"{i:03d}.png")
    (src / "002.png").write_bytes(b"broken")  # a bad frame is reported, the video goes on
    out = tmp_path / "out"
    assert predict_main(["--ckpt_path", str(weights), "--out", str(out), "--conf", "0.01", "--device", "cpu",
                         "--save_video", "--fps", "5", str(src)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["frames.avi", "predictions.json", "predictions.jsonl"]
    v = Video.open(out / "frames.avi")
    assert (v.width, v.height, v.fps, len(list(v))) == (128, 96, 5.0, 4)
    result = json.loads((out / "predictions.json").read_text())
    assert [r["frame"] for r in result["images"]] == [0, 1, 3, 4]
    assert [Path(e["file"]).name for e in result["errors"]] == ["002.png"]


def test_unreadable_video_is_an_input_error(weights, tmp_path, capsys):
    (tmp_path / "fake.mp4").write_text("not a video")
    assert run(weights, tmp_path / "out", tmp_path / "fake.mp4") == 1
    assert "fake.mp4: cannot open the video" in capsys.readouterr().err


def test_darknet_weights(tmp_path):
    darknet = pytest.importorskip("yolo_voc.darknet")
    model = tiny_model()
    path = darknet.save_darknet(model, tmp_path / "tiny.weights")
    det = load_detector(path, width_mult=CFG["width_mult"], depth_mult=CFG["depth_mult"])
    assert det.class_names == ["0", "1", "2"] and det.image_size == 416
    assert det.decoding == darknet.DARKNET_DECODING
    x = torch.rand(1, 3, 128, 128)
    for a, b in zip(det.forward(x), model(x)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert load_detector(path, image_size=160, width_mult=0.25, depth_mult=0.33).image_size == 160
    with pytest.raises(Exception, match="tiny.weights"):  # a full-size YOLOv3 doesn't fit this file: named
        load_detector(path)
