"""Free-GPU sessions, simulated on this machine: a line per epoch through a pipe, `--max_hours`, runs never
overwritten, and the tutorial's Kaggle and Colab branches (`cloud_session`, `fit_args`) with a simulated Kaggle tree
(a read-only /kaggle/input made with chmod, as root ignores it only where the library checks the permission bits) and
a simulated Google Drive folder (a plain folder). No GPU, no Kaggle and no Colab are involved."""
import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from yolo_voc.boxes import VOC_CLASSES
from yolo_voc.runs import cloud_session, fit_args

CLASSES = VOC_CLASSES[:4]
TINY = ["--model.width_mult", "0.125", "--model.depth_mult", "0.33", "--data.image_size", "96", "--data.batch_size", "8",
        "--data.num_workers", "0", "--data.synthetic_images", "32", "--data.class_names", json.dumps(list(CLASSES)),
        "--model.max_lr", "0.002", "--trainer.enable_model_summary", "false", "--model.map_every_n_epochs", "1"]
LINE = re.compile(r"^epoch (\d+)/(\d+)  train loss (\S+)  val loss (\S+) \(box \S+ obj \S+ noobj \S+ cls \S+\)  mAP50 (\S+)  .*$")


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("YOLO_VOC_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    for k in ("KAGGLE_KERNEL_RUN_TYPE", "COLAB_RELEASE_TAG", "YOLO_VOC_RUN_PLAN"): monkeypatch.delenv(k, raising=False)


def fit(*args, env=None, check=True):
    "`yolo-voc fit` through a pipe, as the tutorial's `sh` runs it."
    r = subprocess.run(["yolo-voc", "fit", *TINY, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=600, env=dict(os.environ, PYTHONWARNINGS="ignore", **(env or {})))
    if check: assert r.returncode == 0, r.stdout[-4000:]
    return r.stdout


def metrics(run: Path) -> dict[tuple[str, int], list[float]]:
    out: dict = {}
    for r in csv.DictReader(open(run / "metrics.csv")): out.setdefault((r["name"], int(r["epoch"])), []).append(float(r["value"]))
    return out


def epoch_lines(out: str) -> list[tuple]:
    return [m.groups() for line in out.splitlines() if (m := LINE.match(line))]


@pytest.mark.parametrize("bar", ["false", "true"])
def test_a_line_per_epoch_through_a_pipe(tmp_path, bar):
    "One line per epoch after validation, with or without a progress bar; its numbers are the logged ones."
    run = tmp_path / "run"
    out = fit("--trainer.max_epochs", "2", "--trainer.default_root_dir", run, "--trainer.enable_progress_bar", bar)
    lines, logged = epoch_lines(out), metrics(run)
    assert [(int(e), int(n)) for e, n, *_ in lines] == [(1, 2), (2, 2)], out[-3000:]
    for e, _, train, val, map50 in lines:
        epoch = int(e) - 1
        assert float(val) == pytest.approx(logged[("val/loss", epoch)][0], rel=1e-3)
        assert float(train) == pytest.approx(sum(logged[("train/loss", epoch)]) / len(logged[("train/loss", epoch)]), rel=1e-3)
        assert map50 == f"{logged[('val/map50', epoch)][0]:.4f}"
    assert "\r" not in out or bar == "true"  # no progress bar redraws through a pipe unless asked for


def test_max_hours_plans_and_resumes_the_plan(tmp_path):
    "A fit given 72 s plans the epochs that fit (never all 1000), ends before the limit, and a resumed run keeps the plan."
    run = tmp_path / "run"
    hours = 0.02  # 72 s: less the 30 s margin, 42 s for a fit of 1000 epochs that can't all fit
    out = fit("--trainer.max_epochs", "1000", "--max_hours", hours, "--trainer.default_root_dir", run)
    assert "session plan:" in out, out[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["seconds"] < hours * 3600 and 1 <= summary["epochs"] < 1000
    ck = torch.load(run / "checkpoints/last.ckpt", weights_only=False)
    plan = next(v["plan"] for k, v in ck["callbacks"].items() if k.startswith("SessionTime"))
    assert ck["epoch"] + 1 == summary["epochs"] and summary["epochs"] <= plan["epochs"] < 1000
    # the plan's epochs all ran, unless the session's clock said stop earlier (then the line says so)
    assert (summary["epochs"] < plan["epochs"]) == ("this session's last" in out), out[-3000:]
    assert ck["lr_schedulers"][0]["lr_lambdas"][0]["cycle_steps"] == plan["cycle_steps"]  # the schedule of the plan
    # resumed (no time limit now): the same plan, to its end
    out = fit("--trainer.max_epochs", "1000", "--trainer.default_root_dir", run, "--ckpt_path", "last")
    lines = epoch_lines(out)
    assert [int(e) for e, *_ in lines] == list(range(summary["epochs"] + 1, plan["epochs"] + 1)), out[-3000:]
    assert all(int(n) == plan["epochs"] for _, n, *_ in lines)
    ck = torch.load(run / "checkpoints/last.ckpt", weights_only=False)
    assert ck["epoch"] + 1 == plan["epochs"] and ck["lr_schedulers"][0]["lr_lambdas"][0]["cycle_steps"] == plan["cycle_steps"]


def tree_digest(top: Path) -> dict[str, str]:
    return {str(p.relative_to(top)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(top.rglob("*")) if p.is_file()}


def set_read_only(top: Path, read_only: bool) -> None:
    for p in [*top.rglob("*"), top]: p.chmod((0o555 if p.is_dir() else 0o444) if read_only else (0o755 if p.is_dir() else 0o644))


class _Strategy:
    def broadcast(self, x): return x


class _Trainer:  # what SessionTime reads of a Trainer at an epoch's last step
    def __init__(self, current_epoch, max_epochs):
        self.current_epoch, self.max_epochs, self.strategy = current_epoch, max_epochs, _Strategy()
        self.fit_loop = type("FitLoop", (), {"max_epochs": max_epochs})()


@pytest.mark.parametrize("now, stops", [(60.0, False), (75.0, True), (86.0, True)])
def test_session_stops_when_the_next_epoch_would_overrun(monkeypatch, now, stops):
    "3 epochs done since the start (t=0), deadline t=100: the next epoch plus a quarter epoch of validation must end by then."
    import time
    from yolo_voc.callbacks import SessionTime
    st = SessionTime(max_hours=1)
    st._start, st._epoch0, st._deadline = 0.0, 0, 100.0
    trainer = _Trainer(current_epoch=2, max_epochs=10)
    monkeypatch.setattr(time, "monotonic", lambda: now)
    st._stop_if_next_epoch_overruns(trainer)
    # at t=60, 20 s per epoch: 60 + 1.25 x 20 = 85 <= 100 goes on; at t=75, 25 s per epoch: 75 + 31.25 > 100 stops
    assert trainer.fit_loop.max_epochs == (3 if stops else 10)


class _Module:
    def __init__(self, trainer): self.trainer = trainer
    def cycle_steps(self): return 10 * self.trainer.fit_loop.max_epochs  # stands in for YoloModule's: 10 steps an epoch


class _Lambda:
    cycle_steps = 0


@pytest.mark.parametrize("now, epochs", [(30.0, 3), (12.0, 8), (5.0, 10)])
def test_session_plan_revised_after_the_first_epoch(monkeypatch, now, epochs):
    "Planned for 10 epochs; the first whole epoch (t=0..now) shows how many fit before the deadline t=100: never more than planned."
    import time
    from yolo_voc.callbacks import SessionTime
    st = SessionTime(max_hours=1)
    trainer = _Trainer(current_epoch=0, max_epochs=10)
    trainer.callbacks = []  # no LR range test running
    lam = _Lambda()
    trainer.lr_scheduler_configs = [type("Config", (), {"scheduler": type("S", (), {"lr_lambdas": [lam]})()})()]
    module = _Module(trainer)
    st._start, st._epoch0 = 0.0, None  # as on_fit_start leaves them
    st._deadline, st._planned_here, st.plan = 100.0, True, dict(epochs=10, seconds_per_epoch=2.0, cycle_steps=100)
    monkeypatch.setattr(time, "monotonic", lambda: 0.0)
    st.on_train_epoch_start(trainer, module)  # the first epoch starts at t=0
    trainer.current_epoch = 1
    monkeypatch.setattr(time, "monotonic", lambda: now)
    st.on_train_epoch_start(trainer, module)  # the second: 30 s an epoch fits 3 in 100 s, 12 s fits 8, 5 s all 10
    assert trainer.fit_loop.max_epochs == epochs and st.plan["epochs"] == epochs
    assert lam.cycle_steps == (10 * epochs if epochs < 10 else 0) and st.plan["cycle_steps"] == (10 * epochs if epochs < 10 else 100)
    st.on_train_epoch_start(trainer, module)  # revised once only
    assert st._revised


def test_session_margin():
    from yolo_voc.callbacks import session_margin
    assert [session_margin(s) for s in (60, 3600, 12 * 3600, 40 * 3600)] == [30.0, 180.0, 900.0, 900.0]


def test_kaggle_sessions_simulated(tmp_path):
    "Session 1 commits a version; session 2 attaches its output (read-only) and resumes it into /kaggle/working."
    kaggle = tmp_path / "kaggle"  # simulated /kaggle
    (kaggle / "working").mkdir(parents=True); (kaggle / "input").mkdir()
    env = {"KAGGLE_KERNEL_RUN_TYPE": "Batch"}  # as in a committed version
    s1 = cloud_session(resume=False, kaggle=kaggle)
    assert (s1.platform, s1.project, s1.data, s1.resume_from) == ("kaggle", kaggle / "working/runs", kaggle / "temp/data", None)
    fit("--trainer.max_epochs", "1", *fit_args(s1).split(), env=env)  # the session's time limit: test_max_hours_...
    run1 = kaggle / "working/runs/voc"
    done = json.loads((run1 / "summary.json").read_text())["epochs"]
    per_epoch = len([r for r in csv.DictReader(open(run1 / "metrics.csv")) if r["name"] == "train/loss"])
    # "Save Version": /kaggle/working becomes the version's output; the next session attaches it under /kaggle/input
    shutil.copytree(kaggle / "working", kaggle / "input/my-notebook"); shutil.rmtree(kaggle / "working"); (kaggle / "working").mkdir()
    set_read_only(kaggle / "input", True)
    before = tree_digest(kaggle / "input")
    try:
        s2 = cloud_session(resume=True, kaggle=kaggle)
        assert s2.resume_from == kaggle / "input/my-notebook/runs/voc/checkpoints/last.ckpt"
        out = fit("--trainer.max_epochs", "3", *fit_args(s2).split(), env=env)
        assert f"{kaggle / 'input/my-notebook/runs/voc'} can't be written: this fit writes {run1}" in out
        assert tree_digest(kaggle / "input") == before  # the attached output is untouched
    finally:
        set_read_only(kaggle / "input", False)
    steps = [int(r["step"]) for r in csv.DictReader(open(run1 / "metrics.csv")) if r["name"] == "train/loss"]
    assert steps == list(range(3 * per_epoch))  # 3 epochs, continued without a gap or a repeat
    assert [int(e) for e, *_ in epoch_lines(out)] == list(range(done + 1, 4))


def test_colab_sessions_simulated(tmp_path):
    "Runs live on (simulated) Drive from the start: a new session resumes there; RESUME off starts a new folder beside."
    drive, content = tmp_path / "drive/MyDrive", tmp_path / "content"  # simulated mounted Drive and local disk
    drive.mkdir(parents=True)
    env = {"COLAB_RELEASE_TAG": "simulated"}
    os.environ["COLAB_RELEASE_TAG"] = "simulated"  # found from the environment, as in Colab (monkeypatch restores it)
    s1 = cloud_session(resume=False, drive=drive, local=content, kaggle=tmp_path / "no-kaggle")
    del os.environ["COLAB_RELEASE_TAG"]
    assert (s1.platform, s1.project, s1.data) == ("colab", drive / "yolo_voc/runs", content / "data")
    fit("--trainer.max_epochs", "1", *fit_args(s1).split(), env=env)
    run = drive / "yolo_voc/runs/voc"
    first = tree_digest(run)
    per_epoch = len([r for r in csv.DictReader(open(run / "metrics.csv")) if r["name"] == "train/loss"])
    s2 = cloud_session(resume=True, platform="colab", drive=drive, local=content)
    assert s2.resume_from == run / "checkpoints/last.ckpt"
    fit("--trainer.max_epochs", "2", *fit_args(s2).split(), env=env)
    steps = [int(r["step"]) for r in csv.DictReader(open(run / "metrics.csv")) if r["name"] == "train/loss"]
    assert steps == list(range(2 * per_epoch))  # two epochs in one run folder
    # re-running the notebook from the top with RESUME off: a new folder, the first run's files untouched
    after = tree_digest(run)
    out = fit("--trainer.max_epochs", "1", *fit_args(cloud_session(resume=False, platform="colab", drive=drive, local=content)).split(), env=env)
    assert tree_digest(run) == after and (drive / "yolo_voc/runs/voc2/checkpoints/last.ckpt").is_file(), out[-2000:]
    assert first != after


def test_explicit_run_folder_is_never_overwritten(tmp_path):
    "Re-running `fit --trainer.default_root_dir DIR` after a run in DIR writes DIR2, and says so; DIR's files stay."
    run = tmp_path / "runs/voc"
    fit("--trainer.max_epochs", "1", "--trainer.default_root_dir", run)
    before = tree_digest(run)
    out = fit("--trainer.max_epochs", "1", "--trainer.default_root_dir", run)
    assert f"{run} holds an earlier run (go on with it: --ckpt_path last): this fit writes {tmp_path / 'runs/voc2'}" in out
    assert tree_digest(run) == before and (tmp_path / "runs/voc2/metrics.csv").is_file()
