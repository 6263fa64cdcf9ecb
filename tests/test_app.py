"""Tests of the demo app (yolo_voc.app): start `yolo-voc app` on a free loopback port in a subprocess, call its
API with gradio_client, and drive the page in headless Chromium (Playwright). Skipped without gradio
(the optional `[app]` extra); the browser test is skipped without Playwright or a Chromium binary."""
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
import torch
from PIL import Image

pytest.importorskip("gradio", reason="the app needs the optional extra: pip install 'yolo_voc[app]'")
pytest.importorskip("gradio_client", reason="the app tests need gradio_client: pip install 'yolo_voc[app]'")

from yolo_voc.app import app_main, build_app, detect_view  # noqa: E402
from yolo_voc.checkpoint import save_weights  # noqa: E402
from yolo_voc.predict import load_detector  # noqa: E402

from tiny_models import CFG, NAMES, tiny_model  # noqa: E402

CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium")
ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
       "HF_HUB_OFFLINE": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    "`yolo-voc app` serving a tiny checkpoint with one example image, on a free port of 127.0.0.1."
    root = tmp_path_factory.mktemp("app")
    ckpt = save_weights(tiny_model(), root / "tiny.pt", class_names=NAMES, image_size=128, **CFG)
    (root / "examples").mkdir()
    example = root / "examples" / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8)).save(example)
    port = free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from yolo_voc.app import app_main; sys.exit(app_main(sys.argv[1:]))",
         "--ckpt", str(ckpt), "--port", str(port), "--examples", str(root / "examples"), "--conf", "0.02"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **ENV})
    url = f"http://127.0.0.1:{port}/"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.time() + 120
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the app exited with {proc.returncode}:\n{(root / 'server.log').read_text()}")
            try:
                if opener.open(url + "config", timeout=2).status == 200: break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"the app did not answer within 120 s:\n{(root / 'server.log').read_text()}")
            time.sleep(0.5)
        yield dict(url=url, ckpt=ckpt, example=example, root=root)
    finally:
        proc.terminate()
        try: proc.wait(timeout=15)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait()
        log.close()


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
    assert app_main(["--ckpt", str(tmp_path / "missing.pt")]) == 2
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
