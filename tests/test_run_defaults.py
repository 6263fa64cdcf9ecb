"""The real-data, real-GPU path (issue 13): defaults decided by the data and the device, the GPU configuration run on
the CPU, the LR range test once under DDP, lrs.txt by value, run folders kept apart, the plain loop learning.

No GPU here: the CUDA device properties of each GPU class are monkeypatched (simulated), and DDP runs as 2 CPU processes.
"""
import json
import os
import re
import subprocess
from types import SimpleNamespace

import pytest
import torch
import yaml

from yolo_voc.boxes import VOC_CLASSES
from yolo_voc.lr_find import LRFile, OneCycleThenConstant
from yolo_voc.synthetic import make_synthetic_voc
from yolo_voc.runs import KNOWN_GPUS, detect_device, run_defaults

TINY = ["--model.width_mult", "0.125", "--model.depth_mult", "0.33", "--data.image_size", "96", "--data.batch_size", "8",
        "--data.num_workers", "0", "--data.synthetic_images", "32", "--data.synthetic_classes", "4",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("YOLO_VOC_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def cli(*args, cwd=None, timeout=600, check=True):
    "Run the real `yolo-voc` console script; returns the CompletedProcess."
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env.pop("YOLO_VOC_RUN_PLAN", None)
    r = subprocess.run(["yolo-voc", *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    if check: assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def fake_cuda(monkeypatch, gpu):
    "Make torch report one CUDA device with `gpu`'s name, compute capability and memory (simulated; no GPU here)."
    props = SimpleNamespace(name=gpu.name, major=gpu.capability[0], minor=gpu.capability[1],
                            total_memory=int(gpu.memory_gib * 2**30))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i=0: props)


@pytest.mark.parametrize("gpu,precision,batch", [("P100", "16-mixed", 16), ("T4", "16-mixed", 16), ("V100", "16-mixed", 16),
                                                 ("A100", "bf16-mixed", 64), ("H100", "bf16-mixed", 64)])
def test_gpu_defaults(monkeypatch, gpu, precision, batch):
    fake_cuda(monkeypatch, KNOWN_GPUS[gpu])
    device = detect_device()
    assert (device.accelerator, device.capability) == ("cuda", KNOWN_GPUS[gpu].capability)
    for synthetic in (True, False):
        d = run_defaults(device, synthetic)
        assert (d["trainer.precision"], d["data.batch_size"]) == (precision, batch)
        assert (d["model.width_mult"], d["model.depth_mult"], d["data.image_size"]) == (1.0, 1.0, 416)
        assert not any("class_names" in k for k in d)  # the device never decides the classes
    # what `yolo-voc fit` would train with on that GPU
    from yolo_voc.cli import main
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()) as out: main(["fit", "--print_config"])
    cfg = yaml.safe_load(out.getvalue())
    assert (cfg["trainer"]["precision"], cfg["data"]["batch_size"], cfg["model"]["width_mult"]) == (precision, batch, 1.0)


def test_cpu_defaults_depend_on_the_data(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    synthetic, real = run_defaults(detect_device(), True), run_defaults(detect_device(), False)
    assert (synthetic["model.width_mult"], synthetic["data.image_size"], synthetic["data.synthetic_classes"]) == (0.25, 192, 10)
    assert (real["model.width_mult"], real["data.image_size"], real["trainer.precision"]) == (1.0, 416, "32-true")


# what `yolo-voc fit` trains with on a CPU when nothing is given: the synthetic set's small run, or a real tree's full one
CPU_SYNTHETIC = {"model.width_mult": 0.25, "model.depth_mult": 0.33, "model.image_size": 192, "model.map_every_n_epochs": 4,
                 "data.image_size": 192, "data.batch_size": 16, "data.num_workers": 1, "data.synthetic_images": 800,
                 "data.synthetic_classes": 10, "trainer.max_epochs": 12, "trainer.precision": "32-true"}
CPU_REAL = {**CPU_SYNTHETIC, "model.width_mult": 1.0, "model.depth_mult": 1.0, "model.image_size": 416, "model.map_every_n_epochs": 5,
            "data.image_size": 416, "data.batch_size": 8, "data.num_workers": min(4, os.cpu_count() or 1),
            "data.synthetic_images": 64, "data.synthetic_classes": 20, "trainer.max_epochs": 30}  # synthetic_*: the class's own


def resolved(cli_obj) -> dict:
    "The values of CPU_SYNTHETIC's keys that the instantiated model, data module and trainer of `cli_obj` hold."
    out = {f"model.{k}": cli_obj.model.hparams[k] for k in ("width_mult", "depth_mult", "image_size", "map_every_n_epochs")}
    out.update({f"data.{k}": cli_obj.datamodule.hparams[k] for k in ("image_size", "batch_size", "num_workers",
                                                                       "synthetic_images", "synthetic_classes")})
    precision = cli_obj.trainer.precision
    return {**out, "trainer.max_epochs": cli_obj.trainer.max_epochs, "trainer.precision": precision}


@pytest.mark.parametrize("where", ["absent", "command line", "config file", "both"])
def test_auto_defaults_follow_the_parsed_data_root(tmp_path, monkeypatch, where):
    "`--data.root` on the command line, in a --config file, or absent: the parsed config, not argv, picks the CPU defaults;"
    " a value the user gives stays; `--print_config` shows \"auto\" for what the data decides, and reads back."
    from yolo_voc.lightning_cli import YoloCLI
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    voc = make_synthetic_voc(tmp_path / "data", n_images=4, image_size=(64, 48), seed=0, class_names=VOC_CLASSES[:2])
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"data": {"root": str(tmp_path / "data")}, "model": {"depth_mult": 0.5}}))
    args = {"absent": [], "command line": ["--data.root", str(tmp_path / "data")], "config file": ["--config", str(tmp_path / "run.yaml")],
            "both": ["--config", str(tmp_path / "run.yaml"), "--data.root", "null"]}[where]  # the command line wins over the file
    made = YoloCLI(args=[*args, "--project", str(tmp_path / "runs"), "--data.batch_size", "4"], run=False, command="fit")
    want = CPU_SYNTHETIC if where in ("absent", "both") else {**CPU_REAL, "model.depth_mult": 0.5 if where == "config file" else 1.0}
    if where == "both": want = {**want, "model.depth_mult": 0.5}
    assert resolved(made) == {**want, "data.batch_size": 4}
    assert made.synthetic == (where in ("absent", "both")) and voc.is_dir()
    saved = made.section(made.config)
    assert saved["model.width_mult"] == want["model.width_mult"]  # config.yaml records the resolved value, not "auto"


def test_print_config_shows_auto_and_reads_back(tmp_path, monkeypatch):
    from yolo_voc.cli import main
    from yolo_voc.lightning_cli import YoloCLI
    import contextlib
    import io
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with contextlib.redirect_stdout(io.StringIO()) as out: main(["fit", "--print_config"])
    cfg = yaml.safe_load(out.getvalue())
    assert (cfg["model"]["width_mult"], cfg["data"]["image_size"], cfg["trainer"]["max_epochs"]) == ("auto", "auto", "auto")
    assert (cfg["trainer"]["precision"], cfg["model"]["backbone"]) == ("32-true", "darknet53")  # the same for any data
    for key in ("ckpt_path", "weights_only"): del cfg[key]  # `fit` options: `YoloCLI(run=False)` below has no subcommands
    (tmp_path / "printed.yaml").write_text(yaml.safe_dump(cfg))
    made = YoloCLI(args=["--config", str(tmp_path / "printed.yaml"), "--project", str(tmp_path / "runs")], run=False, command="fit")
    assert resolved(made) == CPU_SYNTHETIC


@pytest.mark.slow
def test_gpu_configuration_trains_two_steps_on_cpu(monkeypatch, tmp_path):
    "Exactly what `fit` would train on an H100 (full width and depth, 416 px, 20 classes, channels-last), for 2 optimizer"
    " steps on the CPU: only the device and precision change (32-true), and the batch (2 images instead of 64, for memory)."
    from yolo_voc.data import VOCDataModule
    from yolo_voc.train import YoloModule
    from yolo_voc.callbacks import make_trainer
    fake_cuda(monkeypatch, KNOWN_GPUS["H100"])
    d = run_defaults(detect_device(), synthetic=True)
    monkeypatch.undo()  # back to the real (CPU-only) torch for the run itself
    model = {k.split(".", 1)[1]: v for k, v in d.items() if k.startswith("model.")}
    data = {k.split(".", 1)[1]: v for k, v in d.items() if k.startswith("data.")}
    assert model == {"width_mult": 1.0, "depth_mult": 1.0, "map_every_n_epochs": 5, "channels_last": True}
    data.update(batch_size=2, num_workers=0, synthetic_images=8)
    dm = VOCDataModule(None, **data)
    module = YoloModule(num_classes=dm.num_classes, class_names=list(dm.class_names), image_size=data["image_size"],
                        max_lr=1e-3, **model)
    assert dm.num_classes == 20 and data["image_size"] == 416
    before = [p.detach().clone() for p in module.model.parameters()]
    trainer = make_trainer(tmp_path, accelerator="cpu", precision="32-true", max_steps=2, limit_val_batches=0,
                           enable_progress_bar=False, log_every_n_steps=1)
    trainer.fit(module, dm)
    assert trainer.global_step == 2
    losses = [float(line.split(",")[3]) for line in (tmp_path / "metrics.csv").read_text().splitlines()[1:]
              if line.split(",")[2] == "train/loss"]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    changed = sum(not torch.equal(a, b) for a, b in zip(before, module.model.parameters()))
    assert changed > 0.9 * len(before)


def test_lrs_file_holds_each_steps_rate(tmp_path):
    "3 epochs with --model.cycle_epochs 2: step 0 = max_lr/25, the peak = max_lr, the tail constant at max_lr/100;"
    " extending the finished run continues the same lines at the tail rate."
    run = tmp_path / "run"
    args = [*TINY, "--model.max_lr", "0.002", "--model.cycle_epochs", "2", "--model.pct_start", "0.5",
            "--trainer.default_root_dir", run]
    cli("fit", *args, "--trainer.max_epochs", "3")
    steps, rates = LRFile(run / "lrs.txt").read_groups()
    assert steps == list(range(9))  # 24 training images / batch 8: 3 steps an epoch
    first = [r[0] for r in rates]
    assert first[0] == pytest.approx(0.002 / 25, rel=1e-9)
    assert max(first) == pytest.approx(0.002, rel=1e-9) and first.index(max(first)) == 2  # pct_start * 6 - 1
    assert first[5:] == pytest.approx([0.002 / 100] * 4, rel=1e-9)
    assert first == pytest.approx([0.002 * OneCycleThenConstant(6, pct_start=0.5)(s) for s in range(9)], rel=1e-9)
    assert all(len(r) == 2 for r in rates)  # both parameter groups
    cli("fit", *args, "--trainer.max_epochs", "4", "--ckpt_path", "last")
    steps, rates = LRFile(run / "lrs.txt").read()
    assert steps == list(range(12)) and rates[:9] == pytest.approx(first, rel=1e-9)
    assert rates[9:] == pytest.approx([0.002 / 100] * 3, rel=1e-9)


def test_runs_kept_apart(tmp_path):
    "Two fits make train and train2; resume takes the latest; validate writes into the run and keeps its config.yaml;"
    " TensorBoard is written beside the run's own files; Lightning's litlogger advertisement is gone."
    args = [*TINY, "--model.max_lr", "0.002", "--trainer.max_epochs", "1"]
    r1 = cli("fit", *args, cwd=tmp_path)
    r2 = cli("fit", *args, "--tensorboard", "true", cwd=tmp_path)
    runs = tmp_path / "runs/yolo_voc"
    assert sorted(p.name for p in runs.iterdir()) == ["train", "train2"]
    assert "litlogger" not in (r1.stdout + r1.stderr + r2.stdout + r2.stderr).lower()
    assert list((runs / "train2/tensorboard").glob("events.out.tfevents.*"))
    assert (runs / "train2/metrics.csv").read_text().count("train/loss") == 3
    assert (runs / "train2/plots/losses.png").stat().st_size > 5000
    config = (runs / "train/config.yaml").read_bytes()
    r = cli("validate", *args, "--ckpt_path", runs / "train/checkpoints/last.ckpt", cwd=tmp_path)
    assert (runs / "train/config.yaml").read_bytes() == config
    assert (runs / "train/validate_config.yaml").exists() and (runs / "train/validate_per_class.csv").exists()
    summary = json.loads((runs / "train/validate_summary.json").read_text())
    assert [row["name"] for row in summary["per_class"]["per_class"]] == list(VOC_CLASSES[:4])
    assert "map50" in r.stdout
    cli("fit", *args[:-2], "--trainer.max_epochs", "2", "--ckpt_path", "last", cwd=tmp_path)  # the latest run: train2
    assert json.loads((runs / "train2/summary.json").read_text())["epochs"] == 2
    assert json.loads((runs / "train/summary.json").read_text())["epochs"] == 1
    cli("fit", *args[:-2], "--trainer.max_epochs", "2", "--ckpt_path", "last", "--name", "train", cwd=tmp_path)
    assert json.loads((runs / "train/summary.json").read_text())["epochs"] == 2


def test_real_voc_on_cpu_keeps_its_20_classes(tmp_path):
    "A VOCdevkit with all 20 VOC classes trains on a CPU with those 20 (not the synthetic run's 10), with the epoch-time"
    " warning; `check` and `fit` list the same problems, each once."
    voc = make_synthetic_voc(tmp_path / "data", n_images=40, image_size=(160, 120), seed=3)
    (voc.parent / "classes.txt").unlink()  # a real devkit has none: a VOCdevkit tree has the 20 VOC classes
    run = tmp_path / "run"
    args = ["--data.root", tmp_path / "data", "--model.width_mult", "0.125", "--model.depth_mult", "0.33",
            "--data.image_size", "96", "--data.batch_size", "4", "--data.num_workers", "0", "--model.max_lr", "0.002",
            "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", run]
    r = cli("fit", *args)
    assert "training on the CPU: one epoch of" in r.stderr and "will take about" in r.stderr
    ckpt = torch.load(run / "checkpoints/last.ckpt", weights_only=False)
    assert ckpt["yolo_voc"]["num_classes"] == 20 and tuple(ckpt["yolo_voc"]["class_names"]) == VOC_CLASSES
    # a file in both splits with a problem: listed once by check and by fit
    (voc / "ImageSets/Main/test.txt").write_text((voc / "ImageSets/Main/test.txt").read_text()
                                                 + (voc / "ImageSets/Main/trainval.txt").read_text().split()[0] + "\n")
    first = (voc / "ImageSets/Main/trainval.txt").read_text().split()[0]
    (voc / f"JPEGImages/{first}.jpg").write_bytes(b"not a jpeg")
    check = json.loads(cli("check", tmp_path / "data", "--json", "--split", "trainval+test", check=False).stdout)
    assert [p["file"].rsplit("/", 1)[-1] for p in check["problems"]] == [f"{first}.jpg"]
    r = cli("fit", *args, check=False)
    assert r.returncode == 1 and "1 problem(s)" in r.stderr and r.stderr.count(f"{first}.jpg") == 1


@pytest.mark.slow
def test_ddp_lr_finder_runs_once(tmp_path):
    "2 CPU processes without --model.max_lr: one range test, both ranks train with the same max_lr, one lr_find.json."
    run = tmp_path / "run"
    r = cli("fit", *TINY, "--trainer.max_epochs", "1", "--lr_find_steps", "10", "--trainer.default_root_dir", run,
            "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu")
    out = r.stdout + r.stderr
    # each rank prints its own line (a progress bar may share the line: search, don't anchor)
    rates = {f"rank {r}": float(v) for r, v in re.findall(r"\[rank (\d)\] LR finder: max_lr = ([0-9.eE+-]+)", out)}
    print(rates)
    assert set(rates) == {"rank 0", "rank 1"} and rates["rank 0"] == rates["rank 1"]
    found = json.loads((run / "lr_find.json").read_text())
    assert found["suggestion"] == pytest.approx(rates["rank 0"], rel=1e-5)
    assert out.count("wrote " + str(run / "lr_find.json")) == 1
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=False)["yolo_voc"]["max_lr"] == found["suggestion"]


def test_plain_loop_learns():
    "fit_plain (the Lightning module's loss) beats the untrained model on the same validation data by a clear margin."
    from yolo_voc.data import VOCDataModule
    from yolo_voc.train import YoloModule
    from yolo_voc.loop import evaluate, fit_plain
    torch.manual_seed(0)
    dm = VOCDataModule(None, image_size=128, batch_size=8, num_workers=0, synthetic_images=64, synthetic_classes=4,
                       mosaic_prob=0.0)
    model = YoloModule(num_classes=4, width_mult=0.25, depth_mult=0.33).model
    untrained = evaluate(model, dm.val_dataloader(), 4)
    hist = fit_plain(model, dm.train_dataloader(), dm.val_dataloader(), epochs=10, max_lr=5e-3, num_classes=4)
    print(untrained, hist[-1])  # measured: object accuracy 0.00 -> 0.23, mAP50 0.00 -> 0.10
    assert hist[-1]["obj_accuracy"] > untrained["obj_accuracy"] + 0.15
    assert hist[-1]["map50"] > untrained["map50"] + 0.05
    assert hist[-1]["train_loss"] < 0.7 * hist[0]["train_loss"]
