"""Checkpoints outlive releases (issue 22): a checkpoint written by earlier yolo_voc code resumes with today's code
and continues its schedule exactly, and a file that can't be resumed is refused in one line that says what to pass.

The fixtures in tests/fixtures/old_checkpoints/<commit>/ were written by the code of two earlier commits, with
`bash tests/fixtures/old_checkpoints/make.sh` (which rewrites them; it documents each step): a tiny YOLOv3 (width
0.03125, depth 0.33, 64 px, 2 classes, 16 synthetic images, batch 4: 3 steps per epoch, max_lr 0.01) trained for 3
epochs and stopped after the first, so its one-cycle schedule stops mid-cycle; kept are checkpoints/last.ckpt
(xz-compressed), lrs.txt and metrics.csv.
- 5bce0e7, the previous release: a cycle of 2 of 3 epochs (6 steps), then a tail at 1% of max_lr.
- 304e7fa, the last commit before 86158fc: a cycle over all 3 epochs (9 steps) annealing to
  max_lr / (25 * 1e4), and schedule state `tail_factor=None`, which meant "stay there". Today's main resumes it into
  `TypeError: unsupported operand type(s) for *: 'float' and 'NoneType'` at step 9.
The expected rates come from torch's own `OneCycleLR`, which both releases' schedules follow step for step."""
import csv
import json
import lzma
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from yolo_voc.boxes import VOC_CLASSES
from yolo_voc.checkpoint import CHECKPOINT_FORMAT, save_weights
from yolo_voc.cli import main
from yolo_voc.lr_find import LRFile
from yolo_voc.runtime import load_detector
from yolo_voc.synthetic import make_synthetic_voc

from tiny_models import CFG, NAMES, tiny_model

FIXTURES = Path(__file__).parent / "fixtures" / "old_checkpoints"
CLASSES = ["aeroplane", "bicycle"]
MAX_LR, STEPS_PER_EPOCH = 0.01, 3
# the settings the fixtures were trained with (make.sh), and a fourth epoch: the schedule's tail
FIT = ["--data.class_names", json.dumps(CLASSES), "--data.image_size", "64", "--data.batch_size", "4",
       "--data.num_workers", "0", "--model.width_mult", "0.03125", "--model.depth_mult", "0.33",
       "--trainer.max_epochs", "4", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def one_cycle(total_steps: int, final_div_factor: float, steps: int) -> list[float]:
    "The rates of torch's OneCycleLR (cosine, two phases) at max_lr 0.01 for `steps` steps, then its last rate."
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=MAX_LR)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, MAX_LR, total_steps=total_steps, pct_start=0.3, div_factor=25.0,
                                                final_div_factor=final_div_factor)
    rates = []
    for _ in range(total_steps):
        rates.append(opt.param_groups[0]["lr"]); opt.step(); sched.step()
    return (rates + [rates[-1]] * steps)[:steps]


#: What each old run would have trained with at every step of 4 epochs (12 steps).
EXPECTED = {"5bce0e7": one_cycle(6, 4.0, 12),  # ends at max_lr / (25 * 4) = 1% of max_lr, the tail
            "304e7fa": one_cycle(9, 1e4, 12)}  # ends at max_lr / (25 * 1e4) and stays there


def flat(groups: list[list[float]]) -> list[float]: return [r for g in groups for r in g]
def two_groups(rates: list[float]) -> list[float]: return [r for r in rates for _ in range(2)]  # decay, no decay


@pytest.fixture
def cache(tmp_path_factory, monkeypatch):
    "The synthetic set's cache in the test's folder; sys.argv as the console script has it (LightningCLI reads it)."
    monkeypatch.setenv("YOLO_VOC_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setattr(sys, "argv", ["yolo-voc"])


def old_run(commit: str, tmp_path: Path) -> Path:
    "The fixture's run folder as the old code left it: checkpoints/last.ckpt, lrs.txt, metrics.csv."
    run = tmp_path / commit / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(lzma.decompress((FIXTURES / commit / "last.ckpt.xz").read_bytes()))
    for name in ("lrs.txt", "metrics.csv"): shutil.copy(FIXTURES / commit / name, run / name)
    return run


def dataset(tmp_path: Path) -> Path:
    "The fixtures' training data again (make.sh: `yolo-voc synth DATA --images 16 --image_size 64 --classes 2`)."
    root = tmp_path / "data"
    if not root.exists(): make_synthetic_voc(root, 16, (64, 64), 0, VOC_CLASSES[:2])
    n = len((root / "VOCdevkit/VOC2007/ImageSets/Main/trainval.txt").read_text().split())
    assert n // 4 == STEPS_PER_EPOCH  # the number of steps the fixtures' schedules were made for
    return root


def fit(*args) -> subprocess.CompletedProcess:
    "The real `yolo-voc fit`, as a user runs it after reinstalling."
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(["yolo-voc", "fit", *map(str, args)], capture_output=True, text=True, timeout=600, env=env)


def test_fixtures_are_what_the_old_code_wrote():
    "The fixtures hold the old schedules' state, and their lrs.txt agrees with OneCycleLR (the reference below)."
    for commit, tail, cycle in [("5bce0e7", 0.01, 6), ("304e7fa", None, 9)]:
        ckpt = torch.load(lzma.open(FIXTURES / commit / "last.ckpt.xz"), map_location="cpu", weights_only=False)
        assert (ckpt["epoch"], ckpt["global_step"], "format" in ckpt["yolo_voc"]) == (0, STEPS_PER_EPOCH, False)
        lam = ckpt["lr_schedulers"][0]["lr_lambdas"]
        assert [(s["tail_factor"], s["cycle_steps"]) for s in lam] == [(tail, cycle)] * 2
        assert (FIXTURES / commit / "last.ckpt.xz").stat().st_size < 600_000
    # 5bce0e7 wrote each step's own rates (two parameter groups); 304e7fa wrote, on line s, the rate of step s + 1
    steps, groups = LRFile(FIXTURES / "5bce0e7" / "lrs.txt").read_groups()
    assert steps == [0, 1, 2] and flat(groups) == pytest.approx(two_groups(EXPECTED["5bce0e7"][:3]), rel=1e-8)
    steps, rates = LRFile(FIXTURES / "304e7fa" / "lrs.txt").read()
    assert steps == [0, 1, 2] and rates == pytest.approx(EXPECTED["304e7fa"][1:4], rel=1e-8)


@pytest.mark.parametrize("commit", ["5bce0e7", "304e7fa"])
def test_old_checkpoint_resumes_its_schedule_exactly(commit, tmp_path, cache):
    run = old_run(commit, tmp_path)
    before = {n: (run / n).read_bytes() for n in ("lrs.txt", "metrics.csv")}
    r = fit("--data.root", dataset(tmp_path), *FIT, "--ckpt_path", run / "checkpoints" / "last.ckpt")
    assert r.returncode == 0, r.stderr[-3000:]
    # the run went on from step 3 of epoch 1 to the end of epoch 4, in the old run's folder
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert (ckpt["epoch"], ckpt["global_step"]) == (3, 4 * STEPS_PER_EPOCH)
    assert ckpt["yolo_voc"]["format"] == CHECKPOINT_FORMAT
    # lrs.txt: the old lines as they were, then every step's own rates, exactly the old schedule's
    assert (run / "lrs.txt").read_bytes().startswith(before["lrs.txt"])
    steps, groups = LRFile(run / "lrs.txt").read_groups()
    assert steps == list(range(12))
    assert flat(groups[3:]) == pytest.approx(two_groups(EXPECTED[commit][3:]), rel=1e-8)
    if commit == "304e7fa":  # the tail the old code would have stayed at, not today's 1% of max_lr
        assert flat(groups[9:]) == pytest.approx([MAX_LR / (25 * 1e4)] * 6, rel=1e-8)
    # metrics.csv: cut back to the checkpoint, then one training loss per step, each step once
    assert (run / "metrics.csv").read_bytes().startswith(before["metrics.csv"])
    losses = [int(row["step"]) for row in csv.DictReader(open(run / "metrics.csv")) if row["name"] == "train/loss"]
    assert losses == list(range(12))
    # the settings the run continued with say what the schedule does (304e7fa's tail_lr_factor None is migrated)
    assert ckpt["hyper_parameters"]["tail_lr_factor"] == pytest.approx(0.01 if commit == "5bce0e7" else 4e-6)


@pytest.mark.parametrize("commit", ["5bce0e7", "304e7fa"])
def test_old_checkpoint_still_predicts_and_exports(commit, tmp_path):
    run = old_run(commit, tmp_path)
    det = load_detector(run / "checkpoints" / "last.ckpt")
    assert (det.class_names, det.image_size, det.model_config["width_mult"]) == (CLASSES, 64, 0.03125)
    assert main(["export", "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), "--format", "weights",
                 "--out", str(tmp_path / "w.pt")]) == 0


def write_old(tmp_path: Path, change) -> Path:
    "The 304e7fa fixture with `change(ckpt)` applied, as a run folder's last.ckpt."
    run = old_run("304e7fa", tmp_path)
    path = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    change(ckpt)
    torch.save(ckpt, path)
    return path


def no_schedule_end(ckpt):
    for s in ckpt["lr_schedulers"][0]["lr_lambdas"]: s["final_div_factor"] = None


def foreign_schedule(ckpt):
    ckpt["lr_schedulers"][0]["lr_lambdas"] = [None, None]  # a LambdaLR over plain functions saves None


def newer_format(ckpt):
    ckpt["yolo_voc"]["format"] = "yolo_voc.checkpoint/9"


def weights_only(ckpt):  # as Lightning writes with ModelCheckpoint(save_weights_only=True), in today's format
    del ckpt["optimizer_states"], ckpt["lr_schedulers"]
    ckpt["yolo_voc"]["format"] = CHECKPOINT_FORMAT


@pytest.mark.parametrize("change, why", [(no_schedule_end, "its schedule's tail_factor is None and final_div_factor is None"),
                                         (foreign_schedule, "its learning-rate schedule is not yolo_voc's"),
                                         (newer_format, "written by a newer yolo_voc (checkpoint format 9"),
                                         (weights_only, "it holds no optimizer_states, lr_schedulers (weights only)")])
def test_inexact_migration_is_refused_in_one_line(change, why, tmp_path, capsys, cache):
    "What can't be continued exactly: exit 1, one line saying why and how to go on from the weights, nothing trained."
    path = write_old(tmp_path, change)
    lrs = (path.parent.parent / "lrs.txt").read_bytes()
    assert main(["fit", "--data.root", str(dataset(tmp_path)), *FIT, "--ckpt_path", str(path)]) == 1
    err = capsys.readouterr().err
    line = next(l for l in err.splitlines() if l.startswith("yolo-voc fit:"))
    assert line.startswith(f"yolo-voc fit: {path}: can't be resumed exactly: ") and why in line
    assert line.endswith(f". Start a new run from its weights with --model.pretrained {path} (its schedule starts again)")
    assert "Traceback" not in err
    assert (path.parent.parent / "lrs.txt").read_bytes() == lrs  # the run's files untouched


@pytest.fixture(scope="module")
def not_checkpoints(tmp_path_factory):
    "Files with weights but no training state: a weights file, an ONNX export, a Darknet .weights file."
    from yolo_voc.darknet import save_darknet
    from yolo_voc.export import export_onnx
    root = tmp_path_factory.mktemp("files")
    model = tiny_model()
    weights = save_weights(model, root / "tiny.pt", class_names=NAMES, image_size=128, **CFG)
    onnx = export_onnx(load_detector(weights), root / "model.onnx")
    save_darknet(model, root / "yolov3.weights")
    shutil.copy(root / "yolov3.weights", root / "darknet53.conv.74")  # Darknet's own name, no .weights suffix
    return dict(weights=weights, onnx=onnx, darknet=root / "yolov3.weights", darknet74=root / "darknet53.conv.74")


@pytest.mark.parametrize("kind, what", [("weights", "a yolo_voc weights file (yolo_voc.weights/2"),
                                        ("onnx", "an ONNX export, not a training checkpoint"),
                                        ("darknet", "a Darknet .weights file, not a training checkpoint"),
                                        ("darknet74", "a Darknet .weights file, not a training checkpoint")])
def test_fit_ckpt_path_on_a_file_that_is_not_a_checkpoint(kind, what, not_checkpoints, tmp_path, capsys, cache):
    "Before: `KeyError: 'pytorch-lightning_version'` traceback (weights file) or a pickle error. Now one line, exit 1."
    path = not_checkpoints[kind]
    assert main(["fit", *FIT, "--trainer.default_root_dir", str(tmp_path / "run"), "--ckpt_path", str(path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "KeyError" not in err
    line = next(l for l in err.splitlines() if l.startswith("yolo-voc fit:"))
    assert line.startswith(f"yolo-voc fit: {path}: {what}")
    expected = "--model.pretrained CKPT" if kind == "onnx" else f"pass --model.pretrained {path} instead of --ckpt_path"
    assert expected in line
    assert not (tmp_path / "run" / "checkpoints").exists()
