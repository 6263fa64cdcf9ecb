"""One table of exit codes for every `yolo-voc` command (issue 22): 0 done, 1 bad input, 2 bad command line,
3 an output that can't be written, 4 a missing optional package, 130 Ctrl-C; each error one line, never a traceback.
Each command is driven into every status it can end with; `--help` of each command and the README show the table."""
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import yolo_voc.app
import yolo_voc.export
import yolo_voc.predict
import yolo_voc.runtime
import yolo_voc.synthetic
import yolo_voc.voc
from yolo_voc.checkpoint import save_weights
from yolo_voc.cli import (COMMANDS, EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_MISSING_DEPENDENCY, EXIT_OK, EXIT_OUTPUT,
                          EXIT_STATUS_HELP, EXIT_USAGE, main)

from tiny_models import CFG, NAMES, tiny_model

ROOT = Path(__file__).resolve().parents[1]


def test_the_table():
    assert (EXIT_OK, EXIT_BAD_INPUT, EXIT_USAGE, EXIT_OUTPUT, EXIT_MISSING_DEPENDENCY, EXIT_INTERRUPTED) == (0, 1, 2, 3, 4, 130)
    rows = [line.split()[0] for line in EXIT_STATUS_HELP.splitlines()[1:]]
    assert rows == ["0", "1", "2", "3", "4", "130"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    "A weights file, its ONNX export, a folder with one photo, a file in the way of paths, and a dataset."
    root = tmp_path_factory.mktemp("files")
    weights = save_weights(tiny_model(), root / "tiny.pt", class_names=NAMES, image_size=128, **CFG)
    onnx = yolo_voc.export.export_onnx(yolo_voc.runtime.load_detector(weights), root / "tiny.onnx")
    (root / "photos").mkdir()
    Image.new("RGB", (64, 48), (30, 160, 60)).save(root / "photos" / "a.jpg")
    (root / "photos" / "fake.jpg").write_bytes(b"not a jpeg")
    (root / "afile").write_text("in the way")
    data = root / "data"
    yolo_voc.synthetic.make_synthetic_voc(data, 6, (96, 72), class_names=NAMES)
    return dict(weights=weights, onnx=onnx, photos=root / "photos", afile=root / "afile", data=data, root=root)


def run(capsys, *argv) -> tuple[int, str]:
    "`yolo-voc ARGV` in this process: the status and stderr, which must be at most one line and no traceback."
    status = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [l for l in err.strip().splitlines() if l.startswith("yolo-voc")]
    return status, lines[-1] if lines else ""


def interrupt(*args, **kwargs): raise KeyboardInterrupt


def disk_full():
    "torch.save failing as on a full disk, naming the file it was given (a temporary one)."
    def fail(obj, f, *args, **kwargs): raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
    return fail


# -- predict ---------------------------------------------------------------------------------------------------
def test_predict_statuses(files, tmp_path, capsys, monkeypatch):
    w, photos = files["weights"], files["photos"]
    base = ["predict", "--ckpt_path", w, "--device", "cpu", "--conf", "0.02"]
    assert run(capsys, *base, "--out", tmp_path / "o0", photos / "a.jpg")[0] == EXIT_OK
    assert run(capsys, *base, "--out", tmp_path / "o1", photos / "fake.jpg") == (
        EXIT_BAD_INPUT, "yolo-voc predict: no image could be processed")
    (tmp_path / "bad.ckpt").write_text("x")
    status, line = run(capsys, "predict", "--ckpt_path", tmp_path / "bad.ckpt", "--out", tmp_path / "o1b", photos)
    assert status == EXIT_BAD_INPUT and f"{tmp_path / 'bad.ckpt'}: not a readable PyTorch checkpoint" in line
    assert run(capsys, *base, "--out", tmp_path / "o2", "--conf", "1.5", photos)[0] == EXIT_USAGE
    assert run(capsys, *base, "--out", photos / "det", photos)[0] == EXIT_USAGE  # an --out that is refused
    status, line = run(capsys, *base, "--out", files["afile"] / "det", photos)
    assert (status, line) == (EXIT_OUTPUT, f"yolo-voc predict: {files['afile'] / 'det'}: cannot create the folder (Not a directory)")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    status, line = run(capsys, "predict", "--ckpt_path", files["onnx"], "--device", "cpu", "--out", tmp_path / "o4", photos)
    assert status == EXIT_MISSING_DEPENDENCY and 'pip install "yolo_voc[export]"' in line
    monkeypatch.setattr(yolo_voc.predict, "predict_to_folder", interrupt)
    assert run(capsys, *base, "--out", tmp_path / "o5", photos) == (EXIT_INTERRUPTED, "yolo-voc predict: interrupted")


# -- export ----------------------------------------------------------------------------------------------------
def test_export_statuses(files, tmp_path, capsys, monkeypatch):
    w = files["weights"]
    assert run(capsys, "export", "--ckpt_path", w, "--format", "weights", "--out", tmp_path / "w.pt")[0] == EXIT_OK
    assert run(capsys, "export", "--ckpt_path", tmp_path / "no.pt", "--format", "weights", "--out", tmp_path / "x.pt") == (
        EXIT_BAD_INPUT, f"yolo-voc export: {tmp_path / 'no.pt'}: no such checkpoint file")
    status, line = run(capsys, "export", "--ckpt_path", files["afile"], "--format", "weights", "--out", tmp_path / "x.pt")
    assert status == EXIT_BAD_INPUT and "not a readable PyTorch checkpoint" in line
    status, line = run(capsys, "export", "--ckpt_path", w, "--format", "onnx", "--int8", "--data", tmp_path / "nodata",
                       "--out", tmp_path / "i.onnx")
    assert status == EXIT_BAD_INPUT and "nodata: no such dataset folder" in line
    assert run(capsys, "export", "--ckpt_path", w, "--format", "weights", "--out", tmp_path / "w.pt")[0] == EXIT_USAGE  # exists
    assert run(capsys, "export", "--ckpt_path", w, "--format", "weights", "--out", w, "--exist_ok")[0] == EXIT_USAGE  # itself
    assert run(capsys, "export", "--ckpt_path", w, "--format", "torchscript", "--int8", "--out", tmp_path / "t.pt")[0] == EXIT_USAGE
    assert run(capsys, "export", "--ckpt_path", w, "--format", "tflite", "--out", tmp_path / "t.pt")[0] == EXIT_USAGE
    assert run(capsys, "export", "--ckpt_path", w, "--format", "weights", "--out", files["afile"] / "w.pt") == (
        EXIT_OUTPUT, f"yolo-voc export: {files['afile'] / 'w.pt'}: cannot be written: {files['afile']} is a file, not a folder")
    assert run(capsys, "export", "--ckpt_path", w, "--format", "weights", "--out", tmp_path) == (
        EXIT_OUTPUT, f"yolo-voc export: {tmp_path}: is a folder: --out names the file to write")
    with monkeypatch.context() as m:  # the disk fills up while the file is written: named by its final name
        m.setattr(yolo_voc.checkpoint.torch, "save", disk_full())
        assert run(capsys, "export", "--ckpt_path", w, "--format", "weights", "--out", tmp_path / "full.pt") == (
            EXIT_OUTPUT, f"yolo-voc export: {tmp_path / 'full.pt'}: No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pt"]  # nothing half-written left
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "onnx", None)
        status, line = run(capsys, "export", "--ckpt_path", w, "--format", "onnx", "--out", tmp_path / "m.onnx")
        assert status == EXIT_MISSING_DEPENDENCY and 'pip install "yolo_voc[export]"' in line
    monkeypatch.setattr(yolo_voc.export, "export_model", interrupt)
    assert run(capsys, "export", "--ckpt_path", w, "--format", "weights", "--out", tmp_path / "i.pt") == (
        EXIT_INTERRUPTED, "yolo-voc export: interrupted")


# -- app -------------------------------------------------------------------------------------------------------
def test_app_statuses(files, tmp_path, capsys, monkeypatch):
    pytest.importorskip("gradio")
    w = files["weights"]
    assert run(capsys, "app", "--ckpt_path", w, "--export_space", tmp_path / "space")[0] == EXIT_OK
    assert (tmp_path / "space" / "app.py").exists()
    assert run(capsys, "app", "--ckpt_path", tmp_path / "no.pt") == (EXIT_BAD_INPUT, f"yolo-voc app: {tmp_path / 'no.pt'}: no such checkpoint file")
    status, line = run(capsys, "app", "--ckpt_path", w, "--examples_from", tmp_path / "nodata")
    assert status == EXIT_BAD_INPUT and "nodata" in line
    assert run(capsys, "app", "--ckpt_path", w, "--port", "seven")[0] == EXIT_USAGE
    assert run(capsys, "app", "--ckpt_path", w, "--device", "tpu:9")[0] == EXIT_USAGE
    status, line = run(capsys, "app", "--ckpt_path", w, "--export_space", files["afile"] / "space")
    assert status == EXIT_OUTPUT and line.startswith(f"yolo-voc app: {files['afile']}")
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "gradio", None)
        status, line = run(capsys, "app", "--ckpt_path", w)
        assert status == EXIT_MISSING_DEPENDENCY and 'pip install "yolo_voc[app]"' in line
    monkeypatch.setattr(yolo_voc.app, "load_app_detector", interrupt)
    assert run(capsys, "app", "--ckpt_path", w) == (EXIT_INTERRUPTED, "yolo-voc app: interrupted")


# -- check and synth ---------------------------------------------------------------------------------------------
def test_check_statuses(files, tmp_path, capsys, monkeypatch):
    assert main(["check", str(files["data"]), "--no_cache"]) == EXIT_OK
    assert main(["check", str(tmp_path), "--no_cache"]) == EXIT_BAD_INPUT  # not a dataset
    assert main(["check", str(files["data"]), "--frobnicate"]) == EXIT_USAGE
    capsys.readouterr()
    monkeypatch.setattr(yolo_voc.voc, "check_dataset", interrupt)
    assert run(capsys, "check", files["data"], "--no_cache") == (EXIT_INTERRUPTED, "yolo-voc check: interrupted")


def test_synth_statuses(files, tmp_path, capsys, monkeypatch):
    assert run(capsys, "synth", tmp_path / "s", "--images", "2", "--image_size", "64")[0] == EXIT_OK
    assert run(capsys, "synth", tmp_path / "s2", "--classes", "99")[0] == EXIT_USAGE
    status, line = run(capsys, "synth", files["afile"] / "s", "--images", "2", "--image_size", "64")
    assert status == EXIT_OUTPUT and line.startswith(f"yolo-voc synth: {files['afile']}") and "Not a directory" in line
    monkeypatch.setattr(yolo_voc.synthetic, "make_synthetic_voc", interrupt)
    assert run(capsys, "synth", tmp_path / "s3") == (EXIT_INTERRUPTED, "yolo-voc synth: interrupted")


# -- fit: Lightning's own Ctrl-C ---------------------------------------------------------------------------------
def test_fit_interrupted_is_130(tmp_path):
    "Lightning catches Ctrl-C, shuts the run down and exits 1; the command says 'interrupted' and exits 130."
    (tmp_path / "interrupt_at_step_2.py").write_text(
        "import pytorch_lightning as pl\n"
        "class InterruptAtStep2(pl.Callback):\n"
        "    def on_train_batch_start(self, trainer, *args):\n"
        "        if trainer.global_step == 2: raise KeyboardInterrupt\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
               YOLO_VOC_CACHE=str(tmp_path / "cache"), PYTHONWARNINGS="ignore")
    p = subprocess.run(["yolo-voc", "fit", "--model.width_mult", "0.03125", "--model.depth_mult", "0.33",
                        "--data.image_size", "64", "--data.batch_size", "4", "--data.num_workers", "0",
                        "--data.synthetic_images", "16", "--data.synthetic_image_size", "[64, 64]", "--data.synthetic_classes", "2",
                        "--model.max_lr", "0.01", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
                        "--trainer.default_root_dir", str(tmp_path / "run"),
                        "--trainer.callbacks+=interrupt_at_step_2.InterruptAtStep2"],
                       capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert p.returncode == EXIT_INTERRUPTED, p.stderr[-3000:]
    assert p.stderr.strip().splitlines()[-1] == "yolo-voc fit: interrupted" and "Traceback" not in p.stderr


def test_fit_bad_command_line_is_2(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["yolo-voc"])
    assert main(["fit", "--trainer.max_epochs", "many"]) == EXIT_USAGE


# -- the table in --help and the README ----------------------------------------------------------------------------
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_help_ends_with_the_table(command, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["yolo-voc"])
    assert main([command, "--help"]) == EXIT_OK
    assert capsys.readouterr().out.rstrip().endswith(EXIT_STATUS_HELP), command


def test_readme_has_the_table():
    readme = (ROOT / "README.md").read_text()
    assert EXIT_STATUS_HELP.split("\n", 1)[1] in readme  # the rows, as --help shows them


def test_console_script_statuses(files, tmp_path):
    "The installed console script, in a fresh process: the status reaches the shell."
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    p = subprocess.run(["yolo-voc", "export", "--ckpt_path", str(files["weights"]), "--format", "weights",
                        "--out", str(files["afile"] / "w.pt")], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == EXIT_OUTPUT and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    p = subprocess.run(["yolo-voc", "check", str(tmp_path / "nothing"), "--json"], capture_output=True, text=True,
                       timeout=300, env=env)
    assert p.returncode == EXIT_BAD_INPUT and json.loads(p.stdout)["problems"]
