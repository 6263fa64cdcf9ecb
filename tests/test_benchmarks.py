"""Smoke tests of the benchmarks (on the CPU with tiny settings: the JSON they promise, the result files they write)
and tests of `benchmarks/conditions.py` (machine state, load and spread checks, result files)."""
import datetime
import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import conditions as C  # noqa: E402  (benchmarks/conditions.py)


def run_json(script: str, *args: str, timeout: int = 120, stderr: list | None = None) -> dict:
    "Run `benchmarks/<script> --json ARGS` on the CPU; return the JSON object it prints (its stderr into `stderr`)."
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # the CPU path, also on a GPU machine
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--json", *args], capture_output=True,
                       text=True, timeout=timeout, cwd=ROOT, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    if stderr is not None: stderr.append(p.stderr)
    return json.loads(p.stdout)


def saved(directory: Path, name: str, printed: dict) -> dict:
    "The one result file of `name` in `directory`, checked against the JSON the script printed."
    cond = printed["conditions"]
    path = directory / f"{cond['machine']}-{cond['date'][:10].replace('-', '')}-{name}.json"
    assert [p.name for p in directory.iterdir()] == [path.name]  # one file, no temporary left
    doc = json.loads(path.read_text())
    assert doc["format"] == 1 and doc["benchmark"] == name and doc["conditions"] == cond
    assert (doc["machine"], doc["date"], doc["publishable"]) == (cond["machine"], cond["date"], cond["publishable"])
    assert doc["result"] == {k: v for k, v in printed.items() if k != "conditions"}
    assert doc["command"].startswith(f"python benchmarks/{name}.py --json")
    assert "save_results" not in doc["config"] and "results_dir" not in doc["config"]
    return doc


def check_conditions(cond: dict, spread_keys: set):
    "A conditions block as every benchmark records it."
    assert cond["machine"] == C.machine_state()["machine"] and cond["state"]["cores"] == os.cpu_count()
    assert set(cond["state"]["versions"]) >= {"python", "torch", "torchvision", "numpy", "onnxruntime",
                                              "albumentations", "yolo_voc"}
    assert cond["state"]["versions"]["torch"] == C.metadata.version("torch")
    assert len(cond["load_before"]) == 3 and len(cond["load_after"]) == 3
    assert set(cond["spread"]) == spread_keys
    assert cond["publishable"] == (not cond["reasons"])


def test_train_speed_cpu_json(tmp_path):
    out_file, results = tmp_path / "speed.json", tmp_path / "results"
    r = run_json("train_speed.py", "--device", "cpu", "--steps", "2", "--warmup", "1", "--batch-size", "2",
                 "--image-size", "64", "--images", "8", "--eval-images", "6", "--eval-batch-size", "4",
                 "--workers", "0", "--threads", "1", "--out", str(out_file), "--save-results", "--results-dir", str(results))
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
    check_conditions(r["conditions"], {"eager_fp32_seconds_per_image", "model_only_seconds_per_image",
                                       "end_to_end_seconds_per_image"})
    assert r["conditions"]["spread"]["model_only_seconds_per_image"]["n"] == 2  # a chunk per step of 2 timed steps
    assert r["conditions"]["own_threads"] == 1  # 1 torch thread, no workers
    doc = saved(results, "train_speed", r)
    assert doc["config"]["device"] == "cpu" and doc["config"]["image_size"] == 64


def test_train_speed_rejects_bad_size():
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks/train_speed.py"), "--device", "cpu", "--image-size", "100"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 2 and "not a multiple of 32" in p.stderr


def test_train_memory_json(tmp_path):
    r = run_json("train_memory.py", "--steps", "30", "--images", "24", "--accelerator", "cpu", "--save-results",
                 "--results-dir", str(tmp_path))
    for key in ("rss_start_mb", "rss_end_mb", "rss_peak_mb", "rss_before_training_mb"):
        assert r[key] > 0, key
    assert r["growth_mb"] == pytest.approx(r["rss_end_mb"] - r["rss_start_mb"], abs=0.02)
    assert r["steps"] == 30 and [s["step"] for s in r["samples"]] == [15, 30]
    assert r["start_step"] == 15 and r["end_step"] == 30 and r["rss_source"] in ("psutil", "/proc/self/statm")
    assert r["config"]["num_workers"] == 0 and r["config"]["image_size"] == 96
    check_conditions(r["conditions"], set())  # memory is the figure: no timings judged
    assert saved(tmp_path, "train_memory", r)["config"]["steps"] == 30


def test_eval_speed_json(tmp_path):
    err = []
    r = run_json("eval_speed.py", "--images", "30", "--dets", "10", "--repeat", "3", "--save-results",
                 "--results-dir", str(tmp_path), "--max-cv", "0", stderr=err)
    assert (r["images"], r["classes"]) == (30, 20) and r["abs_diff"] < 1e-9  # the same mAP as pycocotools
    check_conditions(r["conditions"], {"seconds", "voc07_seconds", "voc12_seconds"})
    assert r["conditions"]["spread"]["seconds"]["n"] == 3
    # --max-cv 0: repeated timings always vary a little, so the result is not for publishing, loudly
    assert not r["conditions"]["publishable"] and "NOT FOR PUBLISHING" in err[0]
    assert any(x.startswith("timings 'seconds' vary by") for x in r["conditions"]["reasons"])
    assert saved(tmp_path, "eval_speed", r)["publishable"] is False


def test_data_speed_json(tmp_path):
    r = run_json("data_speed.py", "--images", "10", "--samples", "8", "--rounds", "3", "--batch", "4", "--size", "64",
                 "--save-results", "--results-dir", str(tmp_path))
    assert (r["size"], r["batch"], r["images"], r["threads"]) == (64, 4, 8, 1)  # 80% of 10 images train
    assert r["ratio"] == pytest.approx(r["samples_per_s"] / r["decode_per_s"], abs=1e-3)
    check_conditions(r["conditions"], {"decode_seconds_per_sample", "samples_seconds_per_sample"})
    assert r["conditions"]["spread"]["samples_seconds_per_sample"]["n"] == 3  # one per round
    saved(tmp_path, "data_speed", r)


def test_index_speed_json(tmp_path):
    r = run_json("index_speed.py", "--sizes", "30", "--repeat", "3", "--save-results", "--results-dir", str(tmp_path))
    [x] = r["results"]
    assert x["n"] == 30 and len(x["check_runs_s"]) == 3  # check_s is the median run, rounded to ms (runs are rounded to 0.1 ms)
    assert abs(x["check_s"] - sorted(x["check_runs_s"])[1]) <= 0.0006
    check_conditions(r["conditions"], {"check_30", "check_cached_30"})
    saved(tmp_path, "index_speed", r)


def test_infer_speed_json(tmp_path):
    "The CI mode: a tiny model, every CPU engine that is installed, batch 1 and 2, each engine's mAP50 against eager."
    r = run_json("infer_speed.py", "--width-mult", "0.125", "--depth-mult", "0.33", "--size", "64", "--batches", "1", "2",
                 "--repeats", "3", "--warmup", "1", "--calib-images", "2", "--val-images", "4", "--no-cuda",
                 "--save-results", "--results-dir", str(tmp_path), timeout=600)
    keys = {row["key"] for row in r["results"] if "key" in row and not row["key"].startswith("Detector.predict")}
    expected = {"eager"}
    if r["conditions"]["state"]["versions"]["onnxruntime"]: expected |= {"onnx_fp32", "onnx_int8"}
    try:  # is openvino installed (not imported here: this test process never loads it, see test_openvino.py)
        if importlib.util.find_spec("openvino") is None: raise ImportError("openvino")
        expected |= {"openvino_f32", "openvino_int8", "openvino_int8_nncf"}
        if "BF16" in r["openvino_cpu_capabilities"]: expected.add("openvino_bf16")
        else: assert "openvino_bf16" not in keys  # not available here: not timed
    except ImportError:
        pass
    assert keys == expected
    assert {(row["key"], row["batch"]) for row in r["results"] if row["key"] in keys} == {(k, b) for k in keys for b in (1, 2)}
    for k in keys - {"eager"}:
        for b in (1, 2):
            ratio = r["ratios"][f"{k}_vs_eager_batch{b}"]
            ms = {row["key"]: row["per_image_ms"] for row in r["results"] if row["batch"] == b and row["key"] in keys}
            assert ratio == pytest.approx(ms[k] / ms["eager"], rel=0.02, abs=0.002)
    assert set(r["accuracy"]) == keys and r["accuracy"]["eager"]["map50_vs_eager"] == 1.0
    for k in {"onnx_fp32", "openvino_f32"} & keys: assert r["accuracy"][k]["map50_vs_eager"] > 0.99  # fp32: the same boxes
    assert set(r["cpu_flags"]) >= {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16"}
    assert "fastest" in r["goals"] and r["goals"]["fastest"]["engine"] in keys
    check_conditions(r["conditions"], {f"{k}_batch{b}" for k in keys for b in (1, 2)}
                     | {row["key"] for row in r["results"] if row["key"].startswith("Detector.predict")})
    doc = saved(tmp_path, "infer_speed", r)
    assert doc["config"]["batches"] == [1, 2] and doc["config"]["val_images"] == 4


# -- benchmarks/conditions.py -------------------------------------------------------------------------
def test_machine_id_and_cpu_model(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7R13 Processor\n")
    assert C.cpu_model(info) == "AMD EPYC 7R13 Processor"
    assert C.machine_id(C.cpu_model(info), 2, None) == "cpu-amd-epyc-7r13-processor-2c"
    assert C.machine_id("AMD EPYC 7R13 Processor", 16, "NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert os.uname().nodename not in json.dumps(C.machine_state())  # hostname-free


def test_spread():
    assert C.spread([1.0, 2.0, 3.0]) == dict(n=3, mean=2.0, cv=0.5, max_over_min=3.0)  # stdev 1 / mean 2
    assert C.spread([0.2, 0.2]) == dict(n=2, mean=0.2, cv=0.0, max_over_min=1.0)
    assert C.spread([])["cv"] is None


def loads(*values):
    "A fake `os.getloadavg` returning `values` (1-minute loads) one call after another, the last one for ever."
    it = iter(values)
    last = [values[-1]]
    def f():
        last[0] = next(it, last[0])
        return (last[0], 0.0, 0.0)
    return f


def test_conditions_publishable_or_not(capsys):
    cores = os.cpu_count()
    limit = 0.5 * cores
    ok = C.Conditions(name="t", own_threads=1, loadavg=loads(limit)).start()  # at the limit: still idle
    ok.add_timings("s", [1.0, 1.05, 0.95])  # cv 5%
    rec = ok.finish()
    assert rec["publishable"] and rec["reasons"] == [] and rec["load_before"] == [round(limit, 2), 0.0, 0.0]
    assert capsys.readouterr().err == ""

    busy = C.Conditions(name="t", own_threads=1, loadavg=loads(limit + 0.01, 1.0 + limit + 0.5)).start()
    busy.add_timings("s", [1.0, 1.5, 1.0])  # cv 24.7%
    busy.add_timings("few", [1.0, 9.0])  # fewer than 3: recorded, not judged
    rec = busy.finish()
    assert not rec["publishable"] and len(rec["reasons"]) == 3
    assert rec["reasons"][0].startswith(f"1-minute load average {limit + 0.01:.2f} before the start is above")
    assert "after the end" in rec["reasons"][1] and "other work ran meanwhile" in rec["reasons"][1]
    assert rec["reasons"][2].startswith("timings 's' vary by 24.7%")
    assert rec["spread"]["few"]["n"] == 2
    err = capsys.readouterr().err
    assert "WARNING: t ran on a busy machine: its figures are NOT FOR PUBLISHING" in err and "24.7%" in err


def test_conditions_waits_for_idle(capsys):
    limit = 0.5 * os.cpu_count()
    c = C.Conditions(name="t", wait_idle=5, poll=0.01, loadavg=loads(limit + 1, limit + 1, limit + 1, 0.0)).start()
    assert c.load_before[0] == 0.0 and "waiting up to 5 s" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="before start"): C.Conditions(name="t").finish()


def test_save_results(tmp_path):
    cond = C.Conditions(name="demo", loadavg=loads(0.0)).start().finish()
    result = dict(seconds=0.5, conditions=cond)
    argv = [str(ROOT / "benchmarks" / "demo.py"), "--json", "--save-results", "--results-dir", str(tmp_path)]
    path = C.save_results("demo", result, dict(json=True, repeat=3, save_results=True),
                          command=C.command_line(argv), directory=tmp_path)
    day = datetime.datetime.fromisoformat(cond["date"]).strftime("%Y%m%d")
    assert path == tmp_path / f"{cond['machine']}-{day}-demo.json" and [p.name for p in tmp_path.iterdir()] == [path.name]
    doc = json.loads(path.read_text())
    assert doc["command"] == "python benchmarks/demo.py --json --save-results --results-dir " + shlex.quote(str(tmp_path))
    assert doc["config"] == {"repeat": 3} and doc["result"] == {"seconds": 0.5} and doc["publishable"] is True
    with pytest.raises(ValueError, match="demo: the result has no conditions block"):
        C.save_results("demo", dict(seconds=1.0), directory=tmp_path)


def test_save_results_file_name_keeps_configurations_apart(tmp_path):
    "A second configuration of one benchmark on the same day (infer_speed --ckpt) gets its own file, same benchmark."
    cond = C.Conditions(name="infer_speed", loadavg=loads(0.0)).start().finish()
    first = C.save_results("infer_speed", dict(x=1, conditions=cond), directory=tmp_path)
    second = C.save_results("infer_speed", dict(x=2, conditions=cond), directory=tmp_path, file_name="infer_speed-trained")
    assert first != second and second.name.endswith("-infer_speed-trained.json")
    assert json.loads(first.read_text())["result"] == {"x": 1}  # not replaced
    assert json.loads(second.read_text())["benchmark"] == "infer_speed"


# -- box_loss.py (issue 26) ------------------------------------------------------------------------------------------
def test_box_loss_quick_json(tmp_path):
    "One tiny run of the baseline on the default set: the figures of the summary, the table, the files."
    out_dir, results = tmp_path / "bl", tmp_path / "results"
    r = run_json("box_loss.py", "--quick", "--combos", "mse-one", "--sets", "default", "--out-dir", str(out_dir),
                 "--save-results", "--results-dir", str(results), timeout=600)
    assert r["epochs"] == [1] and r["quick"] and list(r["combos"]) == ["mse-one"]
    (run,) = r["runs"]
    summary = json.loads((Path(run["run_dir"]) / "summary.json").read_text())
    assert (run["combo"], run["set"], run["epochs"]) == ("mse-one", "default", 1)
    assert (run["map50"], run["map"]) == (summary["map50"], summary["map"])
    assert run["ap50_coco"] == summary["per_class"]["mean"]["ap50_coco"]
    assert run["seconds_per_epoch"] == round(summary["seconds"], 2) and run["seconds_per_epoch"] > 0
    assert r["adopt"] is None and r["verdict"]["baseline"] == "mse-one"
    assert (out_dir / "box_loss.md").read_text() == r["table"] and "| default | 1 | mse-one |" in r["table"]
    assert json.loads((out_dir / "box_loss.json").read_text())["runs"] == r["runs"]
    assert json.loads((out_dir / "box_loss.partial.json").read_text())["runs"] == r["runs"]  # kept after each run
    doc = saved(results, "box_loss", r)
    assert doc["config"]["quick"] is True


def test_box_loss_adoption_rule():
    import box_loss as B  # noqa: E402  (benchmarks/box_loss.py)
    def run(combo, set_, ep, m, m50, spe): return dict(combo=combo, set=set_, epochs=ep, map=m, map50=m50, seconds_per_epoch=spe)
    cells = [(s, e) for s in ("default", "small") for e in (12, 24)]
    runs = [run("mse-one", s, e, 0.40, 0.90, 20.0) for s, e in cells]
    runs += [run("ciou-one", s, e, 0.46, 0.90, 21.0) for s, e in cells]  # +0.06 everywhere, 5% slower: qualifies
    runs += [run("ciou-ratio", s, e, 0.50, 0.90 if (s, e) != ("small", 24) else 0.899, 20.0) for s, e in cells]  # mAP50 lower once
    runs += [run("ciou-neighbours", s, e, 0.52, 0.95, 22.1) for s, e in cells]  # 10.5% slower
    runs += [run("giou-one", s, e, 0.449 if e == 12 else 0.50, 0.95, 20.0) for s, e in cells]  # +0.049 at 12 epochs
    v = B.adoption(runs, "mse-one")
    assert {c: x["qualifies"] for c, x in v["combos"].items()} == \
        {"ciou-one": True, "ciou-ratio": False, "ciou-neighbours": False, "giou-one": False}
    assert v["adopt"] == "ciou-one"
    assert [c["meets"] for c in v["combos"]["ciou-ratio"]["cells"]] == [True, True, True, False]
    runs.append(run("mse-one-late", "default", 12, 0.9, 0.99, 1.0))  # a combination without every cell cannot qualify
    assert B.adoption([r for r in runs if r["combo"] in ("mse-one", "ciou-one")][:-1], "mse-one")["adopt"] is None
    assert "Qualifies: **ciou-one**" in B.table([r | dict(ap50_coco=None) for r in runs[:8]], v)


def test_box_loss_small_set_trains_the_main_jobs_model(tmp_path, monkeypatch):
    "The `small` set is a dataset folder: it must get the main job's model and size, not the real-data defaults."
    import box_loss as B  # noqa: E402  (benchmarks/box_loss.py)
    from yolo_voc.runs import DeviceInfo
    monkeypatch.setattr("yolo_voc.runs.detect_device", lambda: DeviceInfo("cpu", "cpu"))
    args = B.set_args("small", tmp_path, quick=True)
    opts = dict(zip(args[::2], args[1::2]))
    assert opts["--data.root"] == str(tmp_path / "small-quick" / "VOCdevkit")
    assert (opts["--model.width_mult"], opts["--model.depth_mult"], opts["--data.image_size"], opts["--data.batch_size"]) == (
        "0.25", "0.33", "192", "16")  # the CPU main job's, as `run_defaults(cpu, synthetic=True)` gives them
    assert B.set_args("default", tmp_path, quick=False) == []  # the embedded set: the defaults themselves
