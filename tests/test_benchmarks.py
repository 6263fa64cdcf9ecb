"Smoke tests of the training benchmarks: they run on the CPU with tiny settings and print the JSON they promise."
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_json(script: str, *args: str, timeout: int = 120) -> dict:
    "Run `benchmarks/<script> --json ARGS` on the CPU; return the JSON object it prints."
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # the CPU path, also on a GPU machine
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--json", *args], capture_output=True,
                       text=True, timeout=timeout, cwd=ROOT, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout)


def test_train_speed_cpu_json(tmp_path):
    out_file = tmp_path / "speed.json"
    r = run_json("train_speed.py", "--device", "cpu", "--steps", "2", "--warmup", "1", "--batch-size", "2",
                 "--image-size", "64", "--images", "8", "--eval-images", "6", "--eval-batch-size", "4",
                 "--workers", "0", "--threads", "1", "--out", str(out_file))
    for key in ("eager_fp32_images_per_s", "model_only_images_per_s", "end_to_end_images_per_s", "tflops",
                "gflop_per_image_fwd_bwd", "eval_seconds", "projected_40_epoch_minutes", "eval_images_per_s",
                "end_to_end_images_per_s_all_steps", "tflops_end_to_end"):
        assert isinstance(r[key], (int, float)) and r[key] > 0, (key, r[key])
    assert r["gpu"] == "cpu" and r["device"] == "cpu" and r["mfu"] is None and r["peak_tflops"] is None
    assert r["mfu_end_to_end"] is None
    assert (r["batch_size"], r["image_size"], r["width_mult"], r["depth_mult"]) == (2, 64, 0.125, 0.33)
    assert r["eval_images"] == 6 and r["eval_detections"] > 0
    assert r["fast_path"]["compile"] is False and r["fast_path"]["channels_last"] is True
    assert r["model_only_loss_finite"] and r["end_to_end_loss_finite"] and r["eager_fp32_loss_finite"]
    assert r["torch"] and r["projection"]["train_images_per_epoch"] == 16551
    assert json.loads(out_file.read_text()) == r  # --out writes the same object


def test_train_speed_rejects_bad_size():
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks/train_speed.py"), "--device", "cpu", "--image-size", "100"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 2 and "not a multiple of 32" in p.stderr


def test_train_memory_json():
    r = run_json("train_memory.py", "--steps", "30", "--images", "24", "--accelerator", "cpu")
    for key in ("rss_start_mb", "rss_end_mb", "rss_peak_mb", "rss_before_training_mb"):
        assert r[key] > 0, key
    assert r["growth_mb"] == pytest.approx(r["rss_end_mb"] - r["rss_start_mb"], abs=0.02)
    assert r["steps"] == 30 and [s["step"] for s in r["samples"]] == [15, 30]
    assert r["start_step"] == 15 and r["end_step"] == 30 and r["rss_source"] in ("psutil", "/proc/self/statm")
    assert r["config"]["num_workers"] == 0 and r["config"]["image_size"] == 96
