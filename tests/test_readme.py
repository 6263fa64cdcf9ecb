"""The README is generated from nbs/index.ipynb, its quick start is what CI runs, and its results table is rendered
from the result files in benchmarks/results/ (never typed by hand)."""
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS_PY = ROOT / ".ci" / "results.py"
_spec = importlib.util.spec_from_file_location("ci_results", RESULTS_PY)
results = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(results)


def run_results(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RESULTS_PY), *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_readme_matches_index_notebook():
    r = subprocess.run([sys.executable, str(ROOT / ".ci" / "readme.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_quick_start_has_two_commands():
    text = (ROOT / "README.md").read_text()
    block = text.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [l for l in block.strip().splitlines() if l.strip() and not l.startswith("#")]
    assert len(commands) == 2, commands
    assert commands[0].startswith("pip install -e .") and "yolo-voc fit" in commands[0]
    assert "nbdev_test" in commands[1] and "pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "nbdev_test" in ci and "README.md" in ci


# -- the results table ---------------------------------------------------------------------------------
def test_readme_results_table_matches_files():
    r = run_results("--check")
    assert r.returncode == 0, r.stdout + r.stderr
    table = results.readme_table((ROOT / "README.md").read_text())
    assert table == results.render_table() and table.startswith("| benchmark | figure | command | date |")


def test_check_fails_on_an_edited_copy(tmp_path):
    readme = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    assert run_results("--check", "--readme", str(readme)).returncode == 0
    text = readme.read_text()
    row = next(l for l in results.readme_table(text).splitlines() if l.startswith("| `eval_speed`"))
    readme.write_text(text.replace(row, row.replace("| `eval_speed`", "| `eval_speed` 0.44 s", 1)))  # a hand-typed figure
    r = run_results("--check", "--readme", str(readme))
    assert r.returncode == 1 and "the results table differs" in r.stdout and "0.44 s" in r.stdout
    readme.write_text(text.replace(results.TABLE_END, ""))  # a table without its end marker
    r = run_results("--check", "--readme", str(readme))
    assert r.returncode == 1 and f"{readme}: expected one results table between" in r.stdout


def result_doc(benchmark: str, date: str, publishable: bool, result: dict, config: dict | None = None,
               machine: str = "cpu-amd-epyc-2c", load=((0.05, 0.1, 0.2), (1.02, 0.3, 0.2))) -> dict:
    "A result file's content, as `benchmarks/conditions.save_results` writes it."
    cond = dict(machine=machine, date=date, publishable=publishable, reasons=[] if publishable else ["busy"],
                load_before=list(load[0]), load_after=list(load[1]))
    return dict(format=1, benchmark=benchmark, machine=machine, date=date, publishable=publishable,
                command=f"python benchmarks/{benchmark}.py --json --save-results", config=config or {"images": 5000},
                conditions=cond, result=result)


EVAL = dict(images=5000, detections=247332, seconds=0.44, voc07_seconds=0.31, pycocotools_seconds=38.9, ratio=88.4,
            abs_diff=6e-17)


def write(directory: Path, name: str, doc: dict):
    directory.mkdir(exist_ok=True)
    (directory / name).write_text(json.dumps(doc))


def test_table_lists_the_newest_publishable_result(tmp_path):
    d = tmp_path / "results"
    write(d, "a-20260101-eval_speed.json", result_doc("eval_speed", "2026-01-01T10:00:00+00:00", True, EVAL | dict(seconds=0.5)))
    write(d, "a-20260201-eval_speed.json", result_doc("eval_speed", "2026-02-01T10:00:00+00:00", True, EVAL))
    write(d, "a-20260301-eval_speed.json", result_doc("eval_speed", "2026-03-01T10:00:00+00:00", False, EVAL | dict(seconds=9.0)))
    write(d, "a-20260115-eval_speed.json", result_doc("eval_speed", "2026-01-15T10:00:00+00:00", True,
                                                      EVAL | dict(images=100, seconds=0.01), config={"images": 100}))
    table = results.render_table(d)
    rows = [l for l in table.splitlines() if l.startswith("| `eval_speed`")]
    assert rows == [  # one row per configuration (by machine, then date), the newest publishable of each
        "| `eval_speed`: mAP against pycocotools | 100 images, 247,332 detections: COCO mAP in 0.01 s, VOC07 0.31 s; "
        "pycocotools 38.9 s (88.4x slower), mAP difference 6e-17 | `python benchmarks/eval_speed.py --json --save-results` "
        "| 2026-01-15 | cpu-amd-epyc-2c | 0.05 / 1.02 |",
        "| `eval_speed`: mAP against pycocotools | 5,000 images, 247,332 detections: COCO mAP in 0.44 s, VOC07 0.31 s; "
        "pycocotools 38.9 s (88.4x slower), mAP difference 6e-17 | `python benchmarks/eval_speed.py --json --save-results` "
        "| 2026-02-01 | cpu-amd-epyc-2c | 0.05 / 1.02 |"]  # not January's older one, nor the busy run of March
    assert "| `data_speed`: training samples per core against JPEG decode | no publishable result yet | " \
           "`python benchmarks/data_speed.py --json --save-results --wait-idle 300` | | | |" in table
    assert len(table.splitlines()) == 2 + len(results.BENCHMARKS) + 1  # header, a row per benchmark, the 2nd config


def test_table_without_files_lists_no_figure(tmp_path):
    table = results.render_table(tmp_path / "none")
    assert table.count("no publishable result yet") == len(results.BENCHMARKS)


def test_bad_result_file_is_named(tmp_path):
    write(tmp_path, "x-20260101-eval_speed.json", {"benchmark": "eval_speed"})
    with pytest.raises(results.ResultFileError, match=r"x-20260101-eval_speed.json: missing key\(s\) machine, date"):
        results.render_table(tmp_path)
    (tmp_path / "x-20260101-eval_speed.json").write_text("{not json")
    r = run_results("--results-dir", str(tmp_path))
    assert r.returncode == 2 and "x-20260101-eval_speed.json: not a readable JSON result file" in r.stderr
    write(tmp_path, "x-20260101-eval_speed.json", result_doc("eval_speed", "2026-01-01T00:00:00+00:00", True, {"images": 1}))
    with pytest.raises(results.ResultFileError, match="x-20260101-eval_speed.json: the eval_speed result lacks"):
        results.render_table(tmp_path)


SUMMARY = dict(map50=0.732, map=0.344, class_accuracy=0.485, noobj_accuracy=0.973, obj_accuracy=0.9, epochs=12,
               seconds=240.2)


def test_main_job_result_file(tmp_path):
    run_dir, d = tmp_path / "runs", tmp_path / "results"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("model:\n  width_mult: 0.25\n  depth_mult: 0.33\ndata:\n  image_size: 192\n"
                                         "trainer:\n  max_epochs: 12\n  precision: 32-true\n")
    summary = run_dir / "summary.json"
    job = f"import json; open({str(summary)!r}, 'w').write(json.dumps({SUMMARY!r}))"  # a stand-in for yolo-voc fit
    r = run_results("--main-job", "--summary", str(summary), "--results-dir", str(d), "--max-load", "1000",
                    "--", sys.executable, "-c", job)
    assert r.returncode == 0, r.stdout + r.stderr
    [path] = d.iterdir()
    doc = json.loads(path.read_text())
    assert path.name.endswith("-main_job.json") and doc["benchmark"] == "main_job" and doc["publishable"] is True
    assert doc["result"]["map50"] == 0.732 and doc["result"]["run_config"]["data"] == {"image_size": 192}
    assert doc["config"]["argv"][1:] == ["-c", job] and doc["conditions"]["own_threads"] >= 1
    row = next(l for l in results.render_table(d).splitlines() if l.startswith("| `main_job`"))
    assert row.startswith("| `main_job`: `yolo-voc fit` with the machine's defaults | mAP50 0.732 (VOC07), mAP 0.344 "
                          "(COCO), class / object / no-object accuracy 0.485 / 0.900 / 0.973; width 0.25 / depth 0.33, "
                          "192 px, 12 epochs; ")
    # a finished run, recorded afterwards: the load before it is unknown, so it is not for publishing
    r = run_results("--from-summary", str(summary), "--results-dir", str(tmp_path / "later"))
    assert r.returncode == 0, r.stderr
    [path] = (tmp_path / "later").iterdir()
    doc = json.loads(path.read_text())
    assert doc["publishable"] is False and doc["conditions"]["load_before"] is None
    assert doc["command"] == "yolo-voc fit" and "no publishable result yet" in results.render_table(tmp_path / "later")
    summary.write_text(json.dumps(SUMMARY | dict(map50=None)))
    r = run_results("--from-summary", str(summary), "--results-dir", str(tmp_path / "later"))
    assert r.returncode == 2 and f"{summary}: no value for map50" in r.stderr


def test_box_loss_figure():
    "The box-loss row: each cell's combinations with COCO mAP / mAP50 / s per epoch, then the rule's verdict."
    run = lambda combo, s, e, m, m50, sec: dict(combo=combo, set=s, epochs=e, map=m, map50=m50, seconds_per_epoch=sec)  # noqa: E731
    r = dict(runs=[run("mse-one", "default", 12, 0.4111, 0.8386, 16.9), run("ciou-ratio-box2", "default", 12, 0.4, 0.8, 17.2),
                   run("mse-one", "small", 12, 0.3, 0.7, 15.0)],
             verdict=dict(baseline="mse-one", min_gain=0.05), adopt=None)
    assert results.fig_box_loss(r) == (
        "COCO mAP / mAP50 / s per epoch: default set, 12 epochs: mse-one 0.411 / 0.839 / 16.9 s, ciou-ratio-box2 0.400 / "
        "0.800 / 17.2 s; small set, 12 epochs: mse-one 0.300 / 0.700 / 15 s; none meets the rule (+0.05 COCO mAP "
        "everywhere): mse-one stays")
    assert results.fig_box_loss(r | dict(adopt="ciou-ratio-box2")).endswith("; adopted: ciou-ratio-box2")
