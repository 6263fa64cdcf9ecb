"""Training on several nodes: `torchrun` "nodes" on 127.0.0.1, each with its own home folder (so its own cache and its
own copy of the synthetic data), one shared project folder, on the CPU (gloo). Every node must train with what rank 0
decided (the run folder, the checkpoint to resume, the LR), and a node that reads other data, no data, or another
folder must stop every node at once with one message, not train on or leave the others waiting for the DDP timeout.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from yolo_voc.boxes import VOC_CLASSES
from yolo_voc.checkpoint import load_checkpoint_file
from yolo_voc.lr_find import LRFile
from yolo_voc.runtime import load_detector
from yolo_voc.synthetic import make_synthetic_voc

# a tiny model on 16 synthetic images of 3 classes; 2 training steps an epoch on each of the 2 processes
TINY = ["--model.width_mult", "0.125", "--model.depth_mult", "0.33", "--data.image_size", "64", "--data.batch_size", "2",
        "--data.num_workers", "0", "--data.synthetic_images", "16", "--data.synthetic_image_size", "[96, 80]",
        "--data.synthetic_classes", "3", "--data.mosaic_prob", "0", "--trainer.limit_train_batches", "2",
        "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "ddp"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def torchrun_nodes(tmp: Path, *args, nodes: int = 2, cwds: tuple | None = None, timeout: int = 150):
    "Run `yolo-voc ARGS` as `nodes` torchrun nodes of one process each, node n with home `tmp/home{n}`, in `tmp/shared`."
    port, procs = free_port(), []
    for node in range(nodes):
        home, cwd = tmp / f"home{node}", tmp / (cwds[node] if cwds else "shared")
        home.mkdir(exist_ok=True); cwd.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("YOLO_VOC_", "PYTHONWARNINGS"))}
        env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), OMP_NUM_THREADS="1")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nodes), "--node_rank", str(node),
               "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
               shutil.which("yolo-voc"), *map(str, args), "--trainer.num_nodes", str(nodes)]
        # a session of its own: a node that hangs is stopped with its worker, not only the torchrun agent
        procs.append(subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      start_new_session=True))
    deadline, results = time.monotonic() + timeout, []
    for p in procs:
        try: out, err = p.communicate(timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
            err += f"\n(killed after {timeout} s)"
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return results


def ok(results):
    for n, r in enumerate(results): assert r.returncode == 0, f"node {n}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return results


def said(results, pattern: str) -> list[tuple]:
    "The matches of `pattern` in each node's stdout (a line a rank prints about itself)."
    return [re.findall(pattern, r.stdout) for r in results]


def folders(results) -> list:
    return said(results, r"\[rank (\d)\] run folder (\S+), (a new run|resuming \S+)")


def max_lrs(results) -> list:
    return said(results, r"\[rank (\d)\] LR finder: max_lr = ([0-9.eE+-]+)")


@pytest.mark.slow
def test_two_nodes_agree_on_run_folder_lr_and_checkpoint(tmp_path):
    "A first run (LR finder), a second run in the same project (train2) and a resume of it (--ckpt_path last): both nodes"
    " print rank 0's decisions, and rank 0 alone writes the run's files, on the shared folder."
    shared, runs = tmp_path / "shared", tmp_path / "shared/runs/yolo_voc"
    first = ok(torchrun_nodes(tmp_path, "fit", *TINY, "--trainer.max_epochs", "1", "--lr_find_steps", "8"))
    assert folders(first) == [[("0", "runs/yolo_voc/train", "a new run")], [("1", "runs/yolo_voc/train", "a new run")]]
    (rank0, lr0), (rank1, lr1) = [found[0] for found in max_lrs(first)]
    suggestion = json.loads((runs / "train/lr_find.json").read_text())["suggestion"]
    assert (rank0, rank1) == ("0", "1") and float(lr0) == float(lr1) == pytest.approx(suggestion, rel=1e-5)
    assert 1e-6 < suggestion < 1.0  # a rate inside the range test, not one of its ends
    assert sum((r.stdout + r.stderr).count("wrote runs/yolo_voc/train/lr_find.json") for r in first) == 1

    # one checkpoint per kind, in the shared run folder only, loadable by the library's own loaders
    assert sorted(p.name for p in (runs / "train/checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.ckpt")) == [
        "shared/runs/yolo_voc/train/checkpoints/best.ckpt", "shared/runs/yolo_voc/train/checkpoints/last.ckpt"]
    last = load_checkpoint_file(runs / "train/checkpoints/last.ckpt")
    assert last["yolo_voc"]["max_lr"] == suggestion and last["global_step"] == 2 and last["epoch"] == 0
    assert load_detector(runs / "train/checkpoints/last.ckpt").class_names == list(VOC_CLASSES[:3])
    assert LRFile(runs / "train/lrs.txt").read()[0] == [0, 1]  # each step once: rank 0 alone writes the run's files
    assert sorted(p.name for p in shared.iterdir()) == ["runs"] and not list(tmp_path.glob("home*/runs"))
    # each node generated its own synthetic set, from the same seed: the same annotations
    sets = [sorted((tmp_path / f"home{n}/.cache/yolo_voc").glob("synthetic-*")) for n in (0, 1)]
    assert len(sets[0]) == len(sets[1]) == 1 and sets[0][0].name == sets[1][0].name
    xml = [sorted(s[0].rglob("Annotations/*.xml")) for s in sets]
    assert len(xml[0]) == 16 and [p.read_bytes() for p in xml[0]] == [p.read_bytes() for p in xml[1]]

    # a second run in the same project: a new folder, the same one on both nodes
    train_summary = (runs / "train/summary.json").read_text()
    second = ok(torchrun_nodes(tmp_path, "fit", *TINY, "--trainer.max_epochs", "1", "--model.max_lr", "0.003"))
    assert folders(second) == [[("0", "runs/yolo_voc/train2", "a new run")], [("1", "runs/yolo_voc/train2", "a new run")]]
    assert sorted(p.name for p in runs.iterdir()) == ["train", "train2"]

    # the resume: both nodes take the latest run's last.ckpt, and the run goes on from it
    resumed = ok(torchrun_nodes(tmp_path, "fit", *TINY, "--trainer.max_epochs", "2", "--ckpt_path", "last"))
    ckpt = "runs/yolo_voc/train2/checkpoints/last.ckpt"
    assert folders(resumed) == [[("0", "runs/yolo_voc/train2", f"resuming {ckpt}")],
                                [("1", "runs/yolo_voc/train2", f"resuming {ckpt}")]]
    assert max_lrs(resumed) == [[], []]  # the rate comes from the checkpoint: no range test
    last = load_checkpoint_file(runs / "train2/checkpoints/last.ckpt")
    assert last["yolo_voc"]["max_lr"] == 0.003 and last["global_step"] == 4 and last["epoch"] == 1
    assert LRFile(runs / "train2/lrs.txt").read()[0] == [0, 1, 2, 3]
    assert json.loads((runs / "train2/summary.json").read_text())["epochs"] == 2
    assert (runs / "train/summary.json").read_text() == train_summary  # the first run is left alone
    assert sorted(p.name for p in runs.iterdir()) == ["train", "train2"]


@pytest.mark.slow
def test_nodes_without_the_same_data_stop_every_node(tmp_path):
    "--data.root ~/data on 3 nodes: node 1 has none, node 2 a different copy; every node stops at once, naming both."
    make_synthetic_voc(tmp_path / "home0/data", n_images=12, image_size=(96, 80), seed=3, class_names=("cat", "dog"))
    make_synthetic_voc(tmp_path / "home2/data", n_images=12, image_size=(96, 80), seed=4, class_names=("cat", "dog"))
    t0 = time.monotonic()
    results = torchrun_nodes(tmp_path, "fit", *TINY, "--data.root", "~/data", "--model.max_lr", "0.003", nodes=3)
    print(f"stopped after {time.monotonic() - t0:.0f} s")
    for n, r in enumerate(results):
        assert r.returncode != 0 and "killed after" not in r.stderr, f"node {n}:\n{r.stderr[-3000:]}"
        message = re.search(r"yolo-voc fit: the 3 processes do not all read the same data \(--data.root ~/data\).*\n"
                            r"  rank 1: (.*)\n  rank 2: (.*)\n", r.stderr)
        assert message, f"node {n}:\n{r.stderr[-3000:]}"
        assert message[1].startswith(f"{tmp_path}/home1/data: no such folder")
        assert message[2] == "other images, annotations or classes than rank 0"
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.slow
def test_nodes_in_different_folders_stop_every_node(tmp_path):
    "Node 1 started in another folder (the project folder not shared): both stop with one message naming both folders."
    results = torchrun_nodes(tmp_path, "fit", *TINY, "--model.max_lr", "0.003", cwds=("shared", "elsewhere"))
    for n, r in enumerate(results):
        assert r.returncode != 0 and "killed after" not in r.stderr, f"node {n}:\n{r.stderr[-3000:]}"
        assert (f"yolo-voc fit: the 2 processes do not agree on the run: rank 0 (in {tmp_path}/shared) trains in "
                f"runs/yolo_voc/train (a new run) but rank 1 (in {tmp_path}/elsewhere) does not see rank 0's files in "
                "runs/yolo_voc/train") in r.stderr, f"node {n}:\n{r.stderr[-3000:]}"
    assert not list(tmp_path.rglob("*.ckpt"))


FAKE_SRUN = """#!/bin/bash
# srun for the test: the options this script must pass, then the task's command, which only prints its configuration
[ "$1" = "--kill-on-bad-exit=1" ] || { echo "srun: expected --kill-on-bad-exit=1 first, not $1" >&2; exit 9; }
shift
exec "$@" --print_config
"""


def test_slurm_script(tmp_path):
    "examples/slurm_train.sh is valid bash, and under the job its #SBATCH lines ask for, yolo-voc accepts its command"
    " with one process per GPU on every node (--trainer.num_nodes = --nodes, --trainer.devices = --ntasks-per-node)."
    script = Path(__file__).resolve().parents[1] / "examples/slurm_train.sh"
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    sbatch = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", script.read_text(), re.M))
    assert sbatch["gpus-per-node"] == sbatch["ntasks-per-node"]  # one task per GPU: Lightning starts no process under SLURM
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/srun").write_text(FAKE_SRUN); (tmp_path / "bin/srun").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "YOLO_VOC_"))}
    env.update(PATH=f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}", SHARED=str(tmp_path / "shared"),  # what SLURM sets
               SLURM_JOB_NUM_NODES=sbatch["nodes"], SLURM_NTASKS_PER_NODE=sbatch["ntasks-per-node"],
               SLURM_CPUS_PER_TASK=sbatch["cpus-per-task"])
    (tmp_path / "shared").mkdir()
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = yaml.safe_load(r.stdout)
    assert (cfg["trainer"]["num_nodes"], int(cfg["trainer"]["devices"])) == (int(sbatch["nodes"]), int(sbatch["ntasks-per-node"]))
    shared = str(tmp_path / "shared")
    assert (cfg["data"]["root"], cfg["model"]["pretrained"], cfg["project"]) == (
        f"{shared}/data", f"{shared}/darknet53.conv.74", f"{shared}/runs/yolo_voc")
    assert (cfg["name"], cfg["ckpt_path"], cfg["data"]["num_workers"]) == ("voc0712", "last", int(sbatch["cpus-per-task"]) - 1)
