"""The README's results table, rendered from the result files in `benchmarks/results/`.

No figure in the README is typed by hand: each row is the newest *publishable* result file (see
`benchmarks/conditions.py`: load before and after, spread of the timings) per benchmark, machine and configuration,
with its command, date, machine and load. A benchmark without a publishable file gets a row that says so, with the
command that makes one.

    python .ci/results.py                       # print the table (markdown)
    python .ci/results.py --check               # exit 1 when README.md's table differs from the files
    python .ci/results.py --main-job -- yolo-voc fit    # run the main job, record it as a main_job result file
    python .ci/results.py --from-summary runs/yolo_voc/train/summary.json   # record a finished run (load before unknown)

`.ci/readme.py` puts the same table into README.md between the markers `TABLE_START` and `TABLE_END`, where
nbs/index.ipynb has its results code cell (which shows the table in the notebook with `render_table`).

The main job's result file (`<machine>-<YYYYMMDD>-main_job.json`) has the format of every result file, with
`result` = the run's `summary.json` metrics (`map50`, `map`, `class_accuracy`, `obj_accuracy`, `noobj_accuracy`,
`epochs`, `seconds` of `fit` itself), `wall_seconds` (the whole command, with `--main-job`) and `run_config`
(model, data and the main trainer options from the run's `config.yaml`, when it is there).
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from conditions import Conditions, RESULTS_DIR, describe, save_results  # noqa: E402

TABLE_START = "<!-- results table: made by python .ci/results.py from benchmarks/results/*.json; do not edit -->"
TABLE_END = "<!-- end of results table -->"
SUMMARY_METRICS = ("map50", "map", "class_accuracy", "obj_accuracy", "noobj_accuracy")

#: the benchmarks the table always lists, in order: what each measures and the command that publishes it
BENCHMARKS = {
    "main_job": ("`yolo-voc fit` with the machine's defaults",
                 "python .ci/results.py --main-job --wait-idle 300 -- yolo-voc fit"),
    "eval_speed": ("mAP against pycocotools", "python benchmarks/eval_speed.py --json --save-results --wait-idle 300"),
    "data_speed": ("training samples per core against JPEG decode",
                   "python benchmarks/data_speed.py --json --save-results --wait-idle 300"),
    "index_speed": ("the dataset check of VOC annotation files",
                    "python benchmarks/index_speed.py --json --save-results --wait-idle 300"),
    "train_memory": ("resident memory over a long training run",
                     "python benchmarks/train_memory.py --json --save-results --wait-idle 300"),
    "infer_speed": ("YOLOv3-416 inference latency",
                    "python benchmarks/infer_speed.py --json --save-results --wait-idle 300"),
    "train_speed": ("training and evaluation speed on a GPU",
                    "python benchmarks/train_speed.py --json --save-results --wait-idle 300"),
    "box_loss": ("the box loss and positive assignment: the main job under each combination, two sets, 12 and 24 epochs",
                 "python benchmarks/box_loss.py --save-results --wait-idle 300"),
}


class ResultFileError(ValueError):
    "A result file that cannot be read or rendered; the message names the file and the problem."


# -- reading -----------------------------------------------------------------------------------------
REQUIRED = ("benchmark", "machine", "date", "publishable", "command", "conditions", "result")


def read_result(path: Path) -> dict:
    "One result file, checked for the keys the table needs; `ResultFileError` naming the file otherwise."
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ResultFileError(f"{path}: not a readable JSON result file: {e}") from None
    if not isinstance(doc, dict):
        raise ResultFileError(f"{path}: a result file holds a JSON object, not {type(doc).__name__}")
    missing = [k for k in REQUIRED if k not in doc]
    if missing: raise ResultFileError(f"{path}: missing key(s) {', '.join(missing)}")
    if not isinstance(doc["result"], dict): raise ResultFileError(f"{path}: 'result' is not an object")
    doc["file"] = Path(path).name
    return doc


def load_results(directory: Path = RESULTS_DIR) -> list[dict]:
    "Every `*.json` result file in `directory` (none when it doesn't exist), in file-name order."
    return [read_result(p) for p in sorted(Path(directory).glob("*.json"))]


def newest_publishable(results: list[dict]) -> list[dict]:
    "The newest publishable result per (benchmark, machine, configuration), in `BENCHMARKS` order then by machine."
    best = {}
    for r in results:
        if r["publishable"] is not True: continue
        key = (r["benchmark"], r["machine"], json.dumps(r.get("config"), sort_keys=True, default=str))
        if key not in best or (r["date"], r["file"]) > (best[key]["date"], best[key]["file"]): best[key] = r
    order = {name: i for i, name in enumerate(BENCHMARKS)}
    return sorted(best.values(), key=lambda r: (order.get(r["benchmark"], len(order)), r["benchmark"], r["machine"],
                                                r["date"]))


# -- figures -----------------------------------------------------------------------------------------
def duration(seconds: float) -> str:
    "`253.4` -> `4 min 13 s`; under a minute `41.2 s`."
    if seconds < 60: return f"{seconds:.3g} s"
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s} s" if m < 60 else f"{m // 60} h {m % 60} min"


def fig_main_job(r: dict) -> str:
    acc = " / ".join(f"{r[k]:.3f}" for k in ("class_accuracy", "obj_accuracy", "noobj_accuracy"))
    out = f"mAP50 {r['map50']:.3f} (VOC07), mAP {r['map']:.3f} (COCO), class / object / no-object accuracy {acc}"
    cfg = r.get("run_config") or {}
    model, data = cfg.get("model") or {}, cfg.get("data") or {}
    parts = [f"width {model['width_mult']:g} / depth {model['depth_mult']:g}" if "width_mult" in model else None,
             f"{data['image_size']} px" if "image_size" in data else None,
             f"{r['epochs']} epochs" if r.get("epochs") is not None else None]
    parts = [p for p in parts if p]
    wall = r.get("wall_seconds") or r.get("seconds")
    return out + (f"; {', '.join(parts)}" if parts else "") + (f"; {duration(wall)}" if wall else "")


def fig_eval_speed(r: dict) -> str:
    out = (f"{r['images']:,} images, {r['detections']:,} detections: COCO mAP in {r['seconds']:.3g} s, "
           f"VOC07 {r['voc07_seconds']:.3g} s")
    if "pycocotools_seconds" in r:
        out += (f"; pycocotools {r['pycocotools_seconds']:.3g} s ({r['ratio']:g}x slower), "
                f"mAP difference {r['abs_diff']:.0e}")
    return out


def fig_data_speed(r: dict) -> str:
    return (f"{r['samples_per_s']:g} samples/s at {r['size']} px ({r['mosaic_fraction']:.0%} mosaic), "
            f"{r['ratio']:g} x JPEG decode ({r['decode_per_s']:g} images/s)")


def fig_index_speed(r: dict) -> str:
    return "; ".join(f"{x['n']:,} files: {x['check_s']:.3g} s ({x['check_cached_s']:.3g} s with the cache)"
                     for x in r["results"])


def fig_train_memory(r: dict) -> str:
    return (f"{r['rss_start_mb']:,.0f} MB at step {r['start_step']:,}, {r['rss_end_mb']:,.0f} MB at step "
            f"{r['end_step']:,} ({r['growth_mb']:+,.0f} MB)")


def fig_infer_speed(r: dict) -> str:
    "Milliseconds per image for each engine and device, batch by batch."
    groups: dict[tuple, list] = {}
    for row in r["results"]:
        groups.setdefault((row["engine"], row["device"]), []).append(row)
    model = r.get("model") or {}
    head = (f"width {model['width_mult']:g} / depth {model['depth_mult']:g}, " if model.get("width_mult", 1.0) != 1.0
            else "") + f"{r.get('size', 416)} px, ms per image: "
    out = head + "; ".join(f"{engine}{'' if device == 'cpu' else f' ({device})'} "
                           + " / ".join(f"{row['per_image_ms']:.4g} (batch {row['batch']})" for row in rows)
                           for (engine, device), rows in groups.items())
    accuracy = r.get("accuracy") or {}
    measure = "map50" if any("map50" in a for a in accuracy.values()) else "map50_vs_eager"
    if accuracy:  # each engine's mAP50 on the same validation images (against eager fp32's detections without --ckpt)
        out += (f"; mAP50{'' if measure == 'map50' else ' against eager fp32 with random weights (fidelity, not accuracy: a trained model gives accuracy)'}: "
                + ", ".join(f"{a['engine']} {a[measure]:.3f}" for a in accuracy.values()))
    fastest = (r.get("goals") or {}).get("fastest")
    if fastest and measure == "map50":  # "within 1 point" means mAP50 on annotations, which only a trained model has
        out += (f"; fastest within 1 point: {fastest['engine']}, {fastest['ratio']:.2f}x eager at batch {fastest['batch']} "
                f"(goal {fastest['goal']:g}x: {'met' if fastest['met'] else 'not met'})")
    if r.get("cpu_flags"): out += f"; CPU flags: {', '.join(f for f, on in r['cpu_flags'].items() if on) or 'none of note'}"
    return out


def fig_train_speed(r: dict) -> str:
    out = (f"{r['gpu']}, batch {r['batch_size']}, {r['image_size']} px, width {r['width_mult']:g}: model only "
           f"{r['model_only_images_per_s']:.4g} images/s")
    if r.get("eager_fp32_images_per_s"): out += f" (eager fp32 {r['eager_fp32_images_per_s']:.4g})"
    out += f", end to end {r['end_to_end_images_per_s']:.4g} images/s, {r['tflops']:.3g} TFLOP/s"
    if r.get("mfu"): out += f", MFU {r['mfu']:.0%}"
    if r.get("eval_seconds"): out += f"; evaluation of {r['eval_images']:,} images {r['eval_seconds']:.3g} s"
    if r.get("projected_40_epoch_minutes"): out += f"; 40 VOC epochs in about {r['projected_40_epoch_minutes']:.0f} min"
    return out


def fig_box_loss(r: dict) -> str:
    "COCO mAP / VOC07 mAP50 / seconds per epoch of each combination in each (set, length) cell, then the verdict."
    cells = {}
    for run in r["runs"]:
        cells.setdefault((run["set"], run["epochs"]), []).append(
            f"{run['combo']} {run['map']:.3f} / {run['map50']:.3f} / {run['seconds_per_epoch']:.3g} s")
    out = "COCO mAP / mAP50 / s per epoch: " + "; ".join(f"{s_} set, {e} epochs: " + ", ".join(v)
                                                         for (s_, e), v in cells.items())
    verdict = r.get("verdict") or {}
    return out + (f"; adopted: {r['adopt']}" if r.get("adopt") else
                  f"; none meets the rule (+{verdict.get('min_gain', 0.05):g} COCO mAP everywhere): {verdict.get('baseline')} stays")


FIGURES = dict(main_job=fig_main_job, box_loss=fig_box_loss, eval_speed=fig_eval_speed, data_speed=fig_data_speed,
               index_speed=fig_index_speed, train_memory=fig_train_memory, infer_speed=fig_infer_speed,
               train_speed=fig_train_speed)


def figure(doc: dict) -> str:
    "The table's figure text of one result file."
    fn = FIGURES.get(doc["benchmark"])
    if fn is None: return f"see `benchmarks/results/{doc['file']}`"
    try:
        return fn(doc["result"])
    except (KeyError, TypeError, ValueError) as e:
        raise ResultFileError(f"{doc['file']}: the {doc['benchmark']} result lacks or mangles {e!r}") from None


# -- the table ---------------------------------------------------------------------------------------
def cell(text: str) -> str:
    "Text safe inside a markdown table cell."
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_table(directory: Path = RESULTS_DIR) -> str:
    "The markdown results table from the result files in `directory`."
    rows = newest_publishable(load_results(directory))
    lines = ["| benchmark | figure | command | date | machine | 1-min load before / after |",
             "| --- | --- | --- | --- | --- | --- |"]
    names = list(BENCHMARKS) + sorted({r["benchmark"] for r in rows} - set(BENCHMARKS))
    for name in names:
        what, command = BENCHMARKS.get(name, ("", ""))
        label = f"`{name}`" + (f": {cell(what)}" if what else "")
        mine = [r for r in rows if r["benchmark"] == name]
        if not mine: lines.append(f"| {label} | no publishable result yet | `{cell(command)}` | | | |")
        for r in mine:
            load = r["conditions"].get("load_before"), r["conditions"].get("load_after")
            load = " / ".join("?" if x is None else f"{x[0]:.2f}" for x in load)
            lines.append(f"| {label} | {cell(figure(r))} | `{cell(r['command'])}` | {r['date'][:10]} | "
                         f"{cell(r['machine'])} | {load} |")
    return "\n".join(lines) + "\n"


def readme_block(directory: Path = RESULTS_DIR) -> str:
    "The table between its markers, as README.md holds it."
    return f"{TABLE_START}\n\n{render_table(directory)}\n{TABLE_END}"


def readme_table(text: str, source: str = "README.md") -> str:
    "The table README text holds between the markers; `ResultFileError` naming `source` when they are missing."
    if text.count(TABLE_START) != 1 or text.count(TABLE_END) != 1:
        raise ResultFileError(f"{source}: expected one results table between '{TABLE_START}' and '{TABLE_END}'")
    return text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0].strip("\n") + "\n"


def check(readme: Path = ROOT / "README.md", directory: Path = RESULTS_DIR) -> list[str]:
    "Differences between README's table and the one the files make: [] when they agree."
    import difflib
    try:
        have = readme_table(Path(readme).read_text(), str(readme))
    except OSError as e:
        return [f"{readme}: cannot read: {e}"]
    except ResultFileError as e:
        return [str(e)]
    want = render_table(directory)
    if have == want: return []
    return [f"{readme}: the results table differs from {directory} (- README, + files):",
            *difflib.unified_diff(have.splitlines(), want.splitlines(), lineterm="", n=0)][:40]


# -- the main job ------------------------------------------------------------------------------------
def run_config(run_dir: Path) -> dict | None:
    "Model, data and the main trainer options from the run's `config.yaml` (None when it isn't there)."
    path = Path(run_dir) / "config.yaml"
    if not path.exists(): return None
    import yaml
    cfg = yaml.safe_load(path.read_text()) or {}
    trainer = cfg.get("trainer") or {}
    return dict(model=cfg.get("model"), data=cfg.get("data"),
                trainer={k: trainer.get(k) for k in ("max_epochs", "precision", "accelerator", "devices")})


def main_job_result(summary: Path) -> dict:
    "The main job's figures from a run's `summary.json`; `ResultFileError` naming it when it lacks them."
    try:
        s = json.loads(Path(summary).read_text())
    except (OSError, ValueError) as e:
        raise ResultFileError(f"{summary}: not a readable summary.json: {e}") from None
    missing = [k for k in SUMMARY_METRICS if not isinstance(s.get(k), (int, float))]
    if missing: raise ResultFileError(f"{summary}: no value for {', '.join(missing)} (did the run validate?)")
    out = {k: s[k] for k in SUMMARY_METRICS} | dict(epochs=s.get("epochs"), seconds=s.get("seconds"),
                                                   summary=str(summary))
    out["run_config"] = run_config(Path(summary).parent)
    return out


def record_main_job(command: list[str], summary: Path, directory: Path, max_load: float, max_cv: float,
                    wait_idle: float) -> Path:
    "Run the main job `command` under `Conditions`, then write its result file from `summary`."
    import os
    cond = Conditions(name="main_job", own_threads=os.cpu_count() or 1, max_load=max_load, max_cv=max_cv,
                      wait_idle=wait_idle).start()
    t0, wall0 = time.perf_counter(), time.time()
    p = subprocess.run(command)
    wall = time.perf_counter() - t0
    if p.returncode: raise SystemExit(f"results.py: {shlex.join(command)} exited with status {p.returncode}")
    if not Path(summary).exists() or Path(summary).stat().st_mtime < wall0:
        raise SystemExit(f"results.py: {summary} was not written by this run (pass --summary with the run's folder)")
    out = main_job_result(summary) | dict(wall_seconds=round(wall, 1))
    out["conditions"] = cond.finish()
    return save_results("main_job", out, dict(argv=command), command=shlex.join(command), directory=directory)


def record_summary(summary: Path, directory: Path, command: str) -> Path:
    "Write a main_job result file for a finished run: not publishable, as the load before the run is unknown."
    cond = Conditions(name="main_job").start()
    out = main_job_result(summary)
    rec = cond.finish()
    rec.update(load_before=None, publishable=False,
               reasons=["recorded after the run (--from-summary): the load before and during it is unknown; "
                        "record it with --main-job"] + rec["reasons"])
    out["conditions"] = rec
    print(f"main_job: NOT for publishing: {rec['reasons'][0]}", file=sys.stderr)
    return save_results("main_job", out, dict(argv=shlex.split(command)), command=command, directory=directory)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="folder of result files")
    p.add_argument("--check", action="store_true", help="exit 1 when the README's table differs from the files")
    p.add_argument("--readme", type=Path, default=ROOT / "README.md", help="the README --check reads")
    p.add_argument("--main-job", action="store_true", help="run the command after -- and record it as main_job")
    p.add_argument("--summary", type=Path, default=Path("runs/yolo_voc/train/summary.json"),
                   help="the summary.json the main job writes (default runs/yolo_voc/train/summary.json)")
    p.add_argument("--from-summary", type=Path, default=None, metavar="SUMMARY",
                   help="record a finished run's summary.json as main_job (not publishable: load unknown)")
    p.add_argument("--command", default="yolo-voc fit", help="the command --from-summary records")
    p.add_argument("--wait-idle", type=float, default=0.0, help="--main-job: wait up to this long for an idle machine")
    p.add_argument("--max-load", type=float, default=0.5, help="--main-job: the load limit, a fraction of the cores")
    p.add_argument("--max-cv", type=float, default=0.10, help="--main-job: the timings' spread limit")
    p.add_argument("job", nargs="*", help="with --main-job: the command to run (after --)")
    a = p.parse_args(argv)
    try:
        if a.main_job:
            if not a.job: p.error("--main-job needs the command after --, e.g. -- yolo-voc fit")
            path = record_main_job(a.job, a.summary, a.results_dir, a.max_load, a.max_cv, a.wait_idle)
            print(f"wrote {path}: {describe(json.loads(path.read_text())['conditions'])}")
        elif a.from_summary:
            path = record_summary(a.from_summary, a.results_dir, a.command)
            print(f"wrote {path} (not publishable)")
        elif a.check:
            problems = check(a.readme, a.results_dir)
            print("\n".join(problems) if problems else f"{a.readme}: the results table matches {a.results_dir}")
            if problems: print("run: python .ci/readme.py (it writes the table from the files)")
            return 1 if problems else 0
        else:
            print(render_table(a.results_dir), end="")
    except ResultFileError as e:
        print(f"results.py: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
