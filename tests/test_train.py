"""Training: exact resume, crash safety (SIGKILL, also during a checkpoint save), non-finite loss, wrong checkpoints,
bad data before training, the plain loop, and DDP on CPU with metrics over the whole validation set."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from yolo_voc.boxes import VOC_CLASSES
from yolo_voc.data import VOCDataModule
from yolo_voc.lr_find import LRFile
from yolo_voc.callbacks import make_trainer
from yolo_voc.checkpoint import CheckpointError, check_checkpoint_fits, load_checkpoint_file
from yolo_voc.train import TrainingError, YoloModule

CLASSES = VOC_CLASSES[:4]
TINY = dict(num_classes=4, class_names=CLASSES, width_mult=0.125, depth_mult=0.33, image_size=96)
# a small, fast `yolo-voc fit` (tiny model, 32 synthetic images of 96 px, 4 classes)
CLI_TINY = ["--model.width_mult", "0.125", "--model.depth_mult", "0.33", "--data.image_size", "96",
            "--data.batch_size", "8", "--data.num_workers", "0", "--data.synthetic_images", "32",
            "--data.class_names", json.dumps(list(CLASSES)), "--model.max_lr", "0.002",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("YOLO_VOC_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def datamodule(**kw):
    return VOCDataModule(None, image_size=96, batch_size=8, num_workers=0, synthetic_images=32, class_names=CLASSES, **kw)


def cli(*args, timeout=300, check=True):
    "Run the real `yolo-voc` console script."
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    r = subprocess.run(["yolo-voc", *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)
    if check: assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def train_loss_steps(run: Path) -> list[int]:
    return [int(r["step"]) for r in csv.DictReader(open(run / "metrics.csv")) if r["name"] == "train/loss"]


class StopAfterFirstEpoch(__import__("pytorch_lightning").Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == 0: trainer.should_stop = True


def test_resume_equals_uninterrupted_run(tmp_path):
    "A run stopped after epoch 1 and resumed from last.ckpt ends with the weights of an uninterrupted run."
    import pytorch_lightning as pl
    pl.seed_everything(0)
    full = YoloModule(**TINY, max_lr=2e-3)
    make_trainer(tmp_path / "a", max_epochs=3, enable_progress_bar=False, deterministic=True).fit(full, datamodule())

    pl.seed_everything(0)
    first = YoloModule(**TINY, max_lr=2e-3)
    make_trainer(tmp_path / "b", max_epochs=3, enable_progress_bar=False, deterministic=True,
                 callbacks=[StopAfterFirstEpoch()]).fit(first, datamodule())
    assert torch.load(tmp_path / "b/checkpoints/last.ckpt", weights_only=False)["global_step"] == 3  # one epoch
    pl.seed_everything(123)  # resuming must not depend on the global seed
    resumed = YoloModule(**TINY, max_lr=2e-3)
    make_trainer(tmp_path / "b", max_epochs=3, enable_progress_bar=False, deterministic=True).fit(
        resumed, datamodule(), ckpt_path="last")

    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=k)
    assert LRFile(tmp_path / "a/lrs.txt").read() == LRFile(tmp_path / "b/lrs.txt").read()
    assert train_loss_steps(tmp_path / "b") == train_loss_steps(tmp_path / "a")


def test_nonfinite_loss_stops_without_checkpoint(tmp_path):
    class Poison(__import__("pytorch_lightning").Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 5:
                with torch.no_grad(): next(pl_module.model.parameters()).view(-1)[0] = float("inf")
    trainer = make_trainer(tmp_path, max_epochs=3, enable_progress_bar=False, callbacks=[Poison()])
    with pytest.raises(TrainingError, match=r"non-finite loss at step 5: loss \(first at step 5\)"):
        trainer.fit(YoloModule(**TINY, max_lr=2e-3, nonfinite_check_every=4), datamodule())
    # epoch 0 (steps 0-2) was fine and checkpointed; nothing after the bad step was written
    ckpt = torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=False)
    assert ckpt["global_step"] <= 5
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_wrong_checkpoints_give_clear_errors(tmp_path):
    trainer = make_trainer(tmp_path, max_epochs=1, enable_progress_bar=False)
    trainer.fit(YoloModule(**TINY, max_lr=2e-3), datamodule())
    ckpt = load_checkpoint_file(tmp_path / "checkpoints/last.ckpt")
    with pytest.raises(CheckpointError, match="made for num_classes=4, but this model has num_classes=20"):
        check_checkpoint_fits(ckpt, YoloModule(width_mult=0.125, depth_mult=0.33), "last.ckpt")
    with pytest.raises(CheckpointError, match="made for width_mult=0.125"):
        check_checkpoint_fits(ckpt, YoloModule(**{**TINY, "width_mult": 0.25}), "last.ckpt")
    (tmp_path / "half.ckpt").write_bytes((tmp_path / "checkpoints/last.ckpt").read_bytes()[:3000])
    with pytest.raises(CheckpointError, match="half.ckpt: not a readable PyTorch checkpoint"):
        load_checkpoint_file(tmp_path / "half.ckpt")
    with pytest.raises(CheckpointError, match="missing.ckpt: no such checkpoint file"):
        load_checkpoint_file(tmp_path / "missing.ckpt")
    # the command line says the same, without a tensor-shape traceback
    r = cli("fit", *CLI_TINY, "--data.class_names", json.dumps(list(VOC_CLASSES[:5])),
            "--trainer.default_root_dir", tmp_path, "--ckpt_path", tmp_path / "checkpoints/last.ckpt", check=False)
    assert r.returncode != 0 and "made for num_classes=4, but this model has num_classes=5" in r.stderr
    r = cli("fit", *CLI_TINY, "--trainer.default_root_dir", tmp_path, "--ckpt_path", tmp_path / "half.ckpt", check=False)
    assert r.returncode != 0 and "half.ckpt: not a readable PyTorch checkpoint" in r.stderr


# -- the command line ------------------------------------------------------------------------------

def test_fit_end_to_end_writes_summary_and_resumes(tmp_path):
    run = tmp_path / "run"
    r = cli("fit", *CLI_TINY, "--trainer.max_epochs", "2", "--trainer.default_root_dir", run)
    summary = json.loads((run / "summary.json").read_text())
    assert {"map50", "map", "class_accuracy", "noobj_accuracy", "obj_accuracy", "epochs", "seconds", "plots", "checkpoints"} <= set(summary)
    assert summary["epochs"] == 2 and Path(summary["checkpoints"]["last"]).exists()
    assert all(Path(p).exists() for p in summary["plots"])
    assert "map50" in r.stdout and "class_accuracy" in r.stdout
    # resuming for more epochs continues the files
    cli("fit", *CLI_TINY, "--trainer.max_epochs", "3", "--trainer.default_root_dir", run, "--ckpt_path", "last")
    steps = train_loss_steps(run)
    assert steps == list(range(len(steps))) and LRFile(run / "lrs.txt").read()[0] == steps
    # validate and test a checkpoint
    r = cli("validate", *CLI_TINY, "--trainer.default_root_dir", run, "--ckpt_path", run / "checkpoints/last.ckpt")
    assert "map50" in r.stdout
    # the trained checkpoint predicts from the command line, boxes in each image's own pixels
    images = sorted((Path(os.environ["YOLO_VOC_CACHE"])).glob("synthetic-*/VOCdevkit/VOC2007/JPEGImages/*.jpg"))[:3]
    cli("predict", "--ckpt_path", run / "checkpoints/last.ckpt", "--out", tmp_path / "pred", "--conf", "0.01", *images)
    preds = json.loads((tmp_path / "pred/predictions.json").read_text())
    entries = preds["images"] if isinstance(preds, dict) else preds
    assert len(entries) == 3 and all(e["width"] == 320 and e["height"] == 240 for e in entries)
    for e in entries:
        for d in e["detections"]:
            assert 0 <= d["box"][0] <= d["box"][2] <= 320 and 0 <= d["box"][1] <= d["box"][3] <= 240 and d["name"] in CLASSES


def test_fit_finds_lr_when_not_given(tmp_path):
    args = [a for a in CLI_TINY]
    i = args.index("--model.max_lr"); del args[i:i + 2]
    cli("fit", *args, "--trainer.max_epochs", "1", "--lr_find_steps", "12", "--trainer.default_root_dir", tmp_path)
    found = json.loads((tmp_path / "lr_find.json").read_text())
    assert 3 <= len(found["lrs"]) <= 12 and (tmp_path / "lr_find.png").exists()  # the test stops early when the loss diverges
    assert torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=False)["yolo_voc"]["max_lr"] == found["suggestion"]
    # the range test alone
    r = cli("lr-find", *args, "--lr_find_steps", "8", "--trainer.default_root_dir", tmp_path / "lr")
    assert "suggested max_lr" in r.stdout and 3 <= len(json.loads((tmp_path / "lr/lr_find.json").read_text())["lrs"]) <= 8


KILL_DURING_SAVE = r'''
import os, signal, sys, torch
real_save = torch.save
def save_then_die(obj, f, *a, **k):
    # write half of a checkpoint, then die as a SIGKILL would, in the middle of the write
    import io
    buf = io.BytesIO(); real_save(obj, buf, *a, **k)
    data = buf.getvalue()
    f.write(data[: len(data) // 2]); f.flush()
    if os.environ.get("DIE_AT_SAVE") == str(obj.get("epoch")):
        os.kill(os.getpid(), signal.SIGKILL)
    f.write(data[len(data) // 2:])
torch.save = save_then_die
from yolo_voc.cli import main
sys.exit(main())
'''


def test_sigkill_at_any_moment_resumes_cleanly(tmp_path):
    "Kill -9 during training (twice, at random steps) and during a checkpoint save; resume completes the run."
    run = tmp_path / "run"
    base = ["fit", *CLI_TINY, "--trainer.max_epochs", "4", "--trainer.default_root_dir", str(run)]
    script = tmp_path / "kill_during_save.py"
    script.write_text(KILL_DURING_SAVE)
    env = dict(os.environ, PYTHONWARNINGS="ignore", DIE_AT_SAVE="1")
    # 1. killed while writing the checkpoint of epoch 2 (index 1): the epoch-1 last.ckpt must survive intact
    r = subprocess.run([sys.executable, str(script), *base], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 3  # epoch 1's
    # 2. killed at a random moment in the middle of training, twice
    for delay_steps in (4, 9):
        p = subprocess.Popen(["yolo-voc", *base, "--ckpt_path", "last"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONWARNINGS="ignore"))
        start = len(LRFile(run / "lrs.txt").read()[0])
        deadline = time.time() + 120
        while time.time() < deadline and len(LRFile(run / "lrs.txt").read()[0]) < start + delay_steps and p.poll() is None:
            time.sleep(0.05)
        p.send_signal(signal.SIGKILL); p.wait()
        torch.load(run / "checkpoints/last.ckpt", weights_only=False)  # always loadable
    # 3. resume to the end
    cli(*base, "--ckpt_path", "last")
    steps, _ = LRFile(run / "lrs.txt").read()
    assert steps == list(range(4 * 3)), steps  # 24 train images / batch 8 = 3 steps per epoch, each once
    assert train_loss_steps(run) == steps
    assert json.loads((run / "summary.json").read_text())["epochs"] == 4


def test_fit_refuses_bad_data_then_skips_it(tmp_path):
    from yolo_voc.synthetic import make_synthetic_voc
    voc = make_synthetic_voc(tmp_path / "data", n_images=32, image_size=(160, 120), seed=1, class_names=CLASSES)
    (voc / "JPEGImages/000003.jpg").write_bytes(b"not a jpeg")
    xml = voc / "Annotations/000004.xml"
    xml.write_text(xml.read_text().replace("<name>", "<name>unicorn", 1))
    args = [a for a in CLI_TINY if a != "--data.synthetic_images"]
    args = ["fit", *CLI_TINY, "--data.root", voc, "--trainer.max_epochs", "1", "--trainer.default_root_dir", tmp_path / "run"]
    r = cli(*args, check=False)
    assert r.returncode != 0 and "2 problem(s)" in r.stderr
    assert "000003.jpg" in r.stderr and "000004.xml" in r.stderr and "unicorn" in r.stderr
    cli(*args, "--data.skip_bad", "true")
    skipped = json.loads((tmp_path / "run/skipped.json").read_text())
    assert sorted(p["file"].rsplit("/", 1)[-1] for p in skipped) == ["000003.jpg", "000004.xml"]


def test_ddp_on_cpu_metrics_over_whole_validation_set(tmp_path):
    "validate with 2 DDP processes gives the metrics of one process: every image counted once."
    run = tmp_path / "run"
    cli("fit", *CLI_TINY, "--trainer.max_epochs", "1", "--trainer.default_root_dir", run,
        "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu")
    ckpt = run / "checkpoints/last.ckpt"
    def table(out):
        return {l.split()[0]: float(l.split()[1]) for l in out.splitlines()
                if l.split() and l.split()[0] in ("map50", "map", "class_accuracy", "noobj_accuracy", "obj_accuracy")}
    one = table(cli("validate", *CLI_TINY, "--trainer.default_root_dir", tmp_path / "v1", "--ckpt_path", ckpt).stdout)
    two = table(cli("validate", *CLI_TINY, "--trainer.default_root_dir", tmp_path / "v2", "--ckpt_path", ckpt,
                    "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu").stdout)
    assert set(one) == {"map50", "map", "class_accuracy", "noobj_accuracy", "obj_accuracy"}
    for k in one: assert abs(one[k] - two[k]) < 1e-6, (k, one[k], two[k])
