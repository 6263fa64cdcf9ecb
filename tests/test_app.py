"""Tests of the demo app (yolo_voc.app): start `yolo-voc app` on a free loopback port in a subprocess, call its
API with gradio_client, and drive the page in headless Chromium (Playwright). Skipped without gradio
(the optional `[app]` extra); the browser test is skipped without Playwright or a Chromium binary. A Space folder
written by `--export_space` is started with `python app.py` there and queried the same way."""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio", reason="the app needs the optional extra: pip install 'yolo_voc[app]'")
pytest.importorskip("gradio_client", reason="the app tests need gradio_client: pip install 'yolo_voc[app]'")

from yolo_voc.app import build_app, detect_view, pick_examples  # noqa: E402
from yolo_voc.cli import app_main  # noqa: E402
from yolo_voc.checkpoint import save_weights  # noqa: E402
from yolo_voc.export import export_onnx  # noqa: E402
from yolo_voc.runtime import load_detector, load_onnx_detector  # noqa: E402
from yolo_voc.synthetic import make_synthetic_voc  # noqa: E402
from yolo_voc.voc import load_annotations  # noqa: E402

from tiny_models import CFG, NAMES, tiny_model  # noqa: E402

CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium")
ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
       "HF_HUB_OFFLINE": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(cmd: list[str], port: int, log_path: Path, cwd=None, env=None):
    "Start `cmd` (a Gradio app on `port` of 127.0.0.1); return the process once the app answers."
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env={**os.environ, **ENV, **(env or {})})
    url = f"http://127.0.0.1:{port}/"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.time() + 120
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the app exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                if opener.open(url + "config", timeout=2).status == 200: break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"the app did not answer within 120 s:\n{log_path.read_text()}")
            time.sleep(0.5)
    except BaseException:
        stop(proc, log); raise
    return proc, log, url


def stop(proc, log):
    proc.terminate()
    try: proc.wait(timeout=15)
    except subprocess.TimeoutExpired: proc.kill(); proc.wait()
    log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    "`yolo-voc app` serving a tiny checkpoint with one example image, on a free port of 127.0.0.1."
    root = tmp_path_factory.mktemp("app")
    ckpt = save_weights(tiny_model(), root / "tiny.pt", class_names=NAMES, image_size=128, **CFG)
    (root / "examples").mkdir()
    example = root / "examples" / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8)).save(example)
    port = free_port()
    proc, log, url = serve(
        [sys.executable, "-c", "import sys; from yolo_voc.cli import app_main; sys.exit(app_main(sys.argv[1:]))",
         "--ckpt_path", str(ckpt), "--port", str(port), "--examples", str(root / "examples"), "--conf", "0.02"],
        port, root / "server.log")
    try:
        yield dict(url=url, ckpt=ckpt, example=example, root=root)
    finally:
        stop(proc, log)


def test_api_detections(server, monkeypatch):
    for k, v in ENV.items(): monkeypatch.setenv(k, v)
    from gradio_client import Client, handle_file
    client = Client(server["url"], verbose=False)
    boxes, table, cam, record = client.predict(handle_file(str(server["example"])), 0.02, 0.45, True, 1, api_name="/detect")
    direct = load_detector(server["ckpt"]).predict(server["example"], conf=0.02)[0]
    assert len(direct) >= 2
    got = record["detections"]
    assert (record["width"], record["height"]) == (200, 150)
    assert [d["name"] for d in got] == direct.names
    np.testing.assert_allclose([d["box"] for d in got], direct.boxes, atol=0.01)
    np.testing.assert_allclose([d["score"] for d in got], direct.scores, atol=1e-4)
    assert table["headers"] == ["name", "score", "x1", "y1", "x2", "y2"] and len(table["data"]) == len(direct)
    for path in (boxes, cam):  # images come back as files
        with Image.open(path) as im:
            assert im.size == (200, 150)


def test_detect_view_without_server(tmp_path):
    det = load_detector(save_weights(tiny_model(), tmp_path / "w.pt", class_names=NAMES, image_size=128, **CFG))
    img = np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8)
    boxes, table, cam, record = detect_view(det, img, conf=0.02, show_cam=True, detection_index=99)
    assert boxes.size == cam.size == (200, 150) and len(table) == len(record["detections"]) >= 2
    assert type(build_app(det, [])).__name__ == "Blocks"


def test_app_main_errors(tmp_path, capsys):
    assert app_main(["--ckpt_path", str(tmp_path / "missing.pt")]) == 1  # bad input: the checkpoint
    assert "missing.pt: no such checkpoint file" in capsys.readouterr().err


def test_browser_upload_and_screenshot(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright: pip install playwright")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; or set CHROMIUM=/path/to/chrome)")
    shot = tmp_path / "app.png"
    first_name = load_detector(server["ckpt"]).predict(server["example"], conf=0.02)[0].names[0]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.goto(server["url"], wait_until="domcontentloaded", timeout=60_000)
            page.locator("#input-image input[type=file]").set_input_files(str(server["example"]), timeout=60_000)
            page.locator("#boxes-image img").first.wait_for(state="visible", timeout=60_000)
            page.locator("#cam-image img").first.wait_for(state="visible", timeout=60_000)
            page.locator("#detections-table").get_by_text(first_name).first.wait_for(timeout=30_000)  # a table row
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    with Image.open(shot) as im:
        assert im.size[0] == 1280 and im.size[1] >= 600
    keep = os.environ.get("YOLO_VOC_SCREENSHOT")  # to look at it: YOLO_VOC_SCREENSHOT=/tmp/app.png pytest ...
    if keep: shutil.copy(shot, keep)


def test_share_flag_reaches_launch(tmp_path, monkeypatch):
    "--share (and --host, --port) go to Gradio's launch; nothing is served here."
    import yolo_voc.app as app
    seen = {}
    monkeypatch.setattr(app, "launch", lambda demo, host, port, block=True, share=False: seen.update(host=host, port=port, share=share))
    ckpt = save_weights(tiny_model(), tmp_path / "w.pt", class_names=NAMES, image_size=128, **CFG)
    assert app_main(["--ckpt_path", str(ckpt), "--host", "0.0.0.0", "--port", "7999", "--share"]) == 0
    assert seen == dict(host="0.0.0.0", port=7999, share=True)
    assert app_main(["--ckpt_path", str(ckpt)]) == 0 and seen == dict(host="127.0.0.1", port=7860, share=False)


def test_examples_picked_from_validation_split(tmp_path):
    make_synthetic_voc(tmp_path, n_images=40, image_size=(96, 64), class_names=NAMES)
    val = load_annotations(tmp_path, "val", NAMES)
    train = {a.image_path for a in load_annotations(tmp_path, "train", NAMES)}
    picked = pick_examples(val, 3)
    assert len(picked) == 3 and not set(picked) & train
    labels = {a.image_path: set(a.labels.tolist()) for a in val}
    assert set().union(*(labels[p] for p in picked)) == set().union(*labels.values())  # every class the split has
    first = max(val, key=lambda a: (len(set(a.labels.tolist())), len(a)))  # the greedy first pick
    assert picked[0] == first.image_path


def test_space_folder_serves_onnx(tmp_path, monkeypatch):
    "`yolo-voc app --ckpt_path model.onnx --export_space DIR`, then `python app.py` in DIR, queried with gradio_client."
    pytest.importorskip("onnxruntime")
    for k, v in ENV.items(): monkeypatch.setenv(k, v)
    ckpt = save_weights(tiny_model(), tmp_path / "tiny.pt", class_names=NAMES, image_size=128, **CFG)
    onnx_path = export_onnx(load_detector(ckpt), tmp_path / "tiny.onnx")
    make_synthetic_voc(tmp_path / "data", n_images=20, image_size=(200, 150), class_names=NAMES)
    space = tmp_path / "space"
    assert app_main(["--ckpt_path", str(onnx_path), "--examples_from", str(tmp_path / "data"), "--num_examples", "3",
                     "--conf", "0.02", "--export_space", str(space)]) == 0
    assert sorted(p.name for p in space.iterdir()) == ["README.md", "app.py", "examples", "model.onnx", "requirements.txt"]
    reqs = (space / "requirements.txt").read_text()
    assert "yolo_voc[app]==" in reqs and "onnxruntime" in reqs and "app_file: app.py" in (space / "README.md").read_text()
    examples = sorted((space / "examples").iterdir())
    assert len(examples) == 3
    port = free_port()
    proc, log, url = serve([sys.executable, "app.py"], port, tmp_path / "space.log", cwd=space,
                           env={"GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port)})
    try:
        from gradio_client import Client, handle_file
        client = Client(url, verbose=False)
        boxes, table, cam, record = client.predict(handle_file(str(examples[0])), 0.02, 0.45, True, 0, api_name="/detect")
    finally:
        stop(proc, log)
    direct = load_onnx_detector(space / "model.onnx").predict(examples[0], conf=0.02)[0]
    assert len(direct) >= 2 and cam is None  # no Grad-CAM from ONNX Runtime
    assert [d["name"] for d in record["detections"]] == direct.names
    np.testing.assert_allclose([d["box"] for d in record["detections"]], direct.boxes, atol=0.01)
    with Image.open(boxes) as im:
        assert im.size == (200, 150)
