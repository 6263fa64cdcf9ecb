"""Box loss and positive assignment (issue 26): the main job under each combination, on two synthetic sets, at two
lengths; which combination (if any) may become the default.

Each run is `yolo-voc fit` with the machine's defaults (on a CPU: width 0.25, 192 px, the embedded synthetic set of
800 images, the LR range test first) plus the combination's options and `--trainer.max_epochs N`, in its own run
folder under `--out-dir`. From the run's `summary.json` it records VOC07 mAP50 (`map50`), COCO AP50 (the per-class
mean `ap50_coco`), COCO mAP over IoU 0.5:0.95 (`map`) and seconds per epoch (`fit`'s seconds / epochs, evaluation
every `map_every_n_epochs` included, as for every combination).

The combinations (`--combos`; the first is the baseline every other is compared with):

    mse-one               the seed's recipe: --model.box_loss mse --model.assign one (xy_scale 1): today's default
    ciou-ratio-box2       --model.box_loss ciou --model.assign ratio --model.lambda_box 2
    ciou-neighbours-box2  --model.box_loss ciou --model.assign ratio_neighbours --model.xy_scale 2 --model.lambda_box 2
                          (YOLOv5's assignment and grid sensitivity)
    ciou-one, ciou-ratio, ciou-neighbours, giou-one, mse-neighbours, ciou-one-xy2   (box weight 10; not run by default)

The box weight: 10 balances the seed's squared offsets (about 0.1-0.5 per box at the end of a run). 1 - CIoU starts
near 1, so at weight 10 the box term outweighs the class loss: on the default set at 12 epochs, ciou-neighbours at
weight 10 reached class accuracy 0.21 and mAP50 0.29 (against 0.46 and 0.84 for mse-one), at weight 2 class accuracy
0.65 and mAP50 0.73. The default combinations therefore use weight 2.

The sets (`--sets`):

    default   the embedded synthetic set of `yolo-voc fit` (seed 0, 320 x 240, 10 classes, 40 % small objects)
    small     `make_synthetic_voc` with seed 1, portrait 256 x 352 images, 70 % small objects (5-10 % of the short
              side), up to 8 per image, 800 images, 10 classes; written once into `--out-dir`/data and trained
              with `--data.root`, the synthetic set's augmentation (no colour changes: classes differ by colour)
              and the main job's model and input size on this device (`main_job_size_args`)

The adoption rule (issue 26): a combination qualifies when, at every length and on every set, its COCO mAP is at
least `--min-gain` (0.05) above the baseline's, its VOC07 mAP50 is not lower, and its seconds per epoch are at most
`--max-slowdown` (1.10) times the baseline's. Of those that qualify, the one with the largest mean gain is named.

Usage:

    python benchmarks/box_loss.py --save-results --wait-idle 300          # the full measurement (hours on 2 cores)
    python benchmarks/box_loss.py --combos mse-one ciou-one --epochs 12 --sets default   # a part of it
    python benchmarks/box_loss.py --quick --json                          # a smoke run: tiny model, 1 epoch, seconds

Writes `--out-dir`/box_loss.md (the table) and `box_loss.json`; with `--save-results` also
`benchmarks/results/<machine>-<date>-box_loss.json`. Measure on an idle machine: the seconds per epoch of two runs
are compared, so nothing else may run meanwhile.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conditions import Conditions, add_arguments, describe, save_results  # noqa: E402

#: name -> the options of `yolo-voc fit` that make the combination (the first name is the baseline)
COMBOS: dict[str, list[str]] = {
    "mse-one": ["--model.box_loss", "mse", "--model.assign", "one", "--model.xy_scale", "1"],
    "ciou-one": ["--model.box_loss", "ciou", "--model.assign", "one"],
    "ciou-ratio": ["--model.box_loss", "ciou", "--model.assign", "ratio"],
    "ciou-neighbours": ["--model.box_loss", "ciou", "--model.assign", "ratio_neighbours", "--model.xy_scale", "2"],
    "giou-one": ["--model.box_loss", "giou", "--model.assign", "one"],
    "mse-neighbours": ["--model.box_loss", "mse", "--model.assign", "ratio_neighbours", "--model.xy_scale", "2"],
    "ciou-one-xy2": ["--model.box_loss", "ciou", "--model.assign", "one", "--model.xy_scale", "2"],
    # the box weight scaled to 1 - CIoU: weight 10 suits the seed's squared offsets (about 0.1-0.5 per box), while
    # 1 - CIoU starts near 1 and so, at 10, outweighs the class loss (stop 28: ciou-neighbours, class accuracy 0.21)
    "ciou-ratio-box2": ["--model.box_loss", "ciou", "--model.assign", "ratio", "--model.lambda_box", "2"],
    "ciou-neighbours-box2": ["--model.box_loss", "ciou", "--model.assign", "ratio_neighbours", "--model.xy_scale", "2",
                             "--model.lambda_box", "2"],
}
DEFAULT_COMBOS = ["mse-one", "ciou-ratio-box2", "ciou-neighbours-box2"]
#: the second set: another seed, other image sizes, more small objects
SMALL_SET = dict(n_images=800, image_size=(256, 352), seed=1, small_fraction=0.7, max_objects=8)
#: --quick: a tiny model for a few seconds per run (not a measurement)
QUICK_ARGS = ["--model.width_mult", "0.125", "--model.depth_mult", "0.33", "--model.max_lr", "1e-3",
              "--data.image_size", "64", "--data.batch_size", "4", "--data.num_workers", "0",
              "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2"]
QUICK_DEFAULT_SET = ["--data.synthetic_images", "24"]
QUICK_SMALL_SET = dict(n_images=24, image_size=(96, 128), seed=1, small_fraction=0.7, max_objects=8)


def set_args(name: str, data_dir: Path, quick: bool) -> list[str]:
    "The `yolo-voc fit` options that select set `name` (writing the `small` set into `data_dir` once)."
    if name == "default": return list(QUICK_DEFAULT_SET) if quick else []
    from yolo_voc.boxes import VOC_CLASSES
    from yolo_voc.data import SYNTHETIC_AUGMENT
    from yolo_voc.synthetic import make_synthetic_voc
    params = QUICK_SMALL_SET if quick else SMALL_SET
    root = data_dir / ("small-quick" if quick else "small")
    if not (root / "VOCdevkit" / "VOC2007" / "ImageSets").is_dir():
        make_synthetic_voc(root, class_names=VOC_CLASSES[:10], **params)
    return ["--data.root", str(root / "VOCdevkit"), "--data.augment", json.dumps(SYNTHETIC_AUGMENT),
            *main_job_size_args()]


def main_job_size_args() -> list[str]:
    """The model and input size of the main job on this device, for a set given by `--data.root`: without them a
    dataset folder gets the real-data defaults (on a CPU, the full YOLOv3 at 416 px, about 16 times the compute)."""
    from yolo_voc.runs import detect_device, run_defaults
    keep = ("model.width_mult", "model.depth_mult", "data.image_size", "data.batch_size", "data.num_workers",
            "model.map_every_n_epochs", "trainer.precision", "trainer.log_every_n_steps")
    defaults = run_defaults(detect_device(), synthetic=True)
    return [arg for k in keep if k in defaults for arg in (f"--{k}", str(defaults[k]))]


def run_one(combo: str, set_name: str, epochs: int, out_dir: Path, data_dir: Path, quick: bool, log) -> dict:
    "Run the main job once; its figures from the run's summary.json."
    name = f"{set_name}-{combo}-{epochs}ep"
    command = ["yolo-voc", "fit", "--project", str(out_dir / "runs"), "--name", name, "--trainer.max_epochs", str(epochs),
               *COMBOS[combo], *set_args(set_name, data_dir, quick), *(QUICK_ARGS if quick else [])]
    log(f"box_loss: {shlex.join(command)}")
    t0 = time.perf_counter()
    p = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    run_dir = out_dir / "runs" / name
    summary = run_dir / "summary.json"
    if p.returncode != 0 or not summary.is_file():
        raise SystemExit(f"box_loss: {name} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    s = json.loads(summary.read_text())
    mean = (s.get("per_class") or {}).get("mean") or {}
    return dict(combo=combo, set=set_name, epochs=int(s["epochs"]), map50=s["map50"], ap50_coco=mean.get("ap50_coco"),
                map=s["map"], seconds=s["seconds"], seconds_per_epoch=round(s["seconds"] / max(1, s["epochs"]), 2),
                max_lr=s.get("max_lr"), wall_seconds=round(wall, 1), run_dir=str(run_dir), options=COMBOS[combo])


def adoption(runs: list[dict], baseline: str, min_gain: float = 0.05, max_slowdown: float = 1.10) -> dict:
    "Per combination: its gains over `baseline` in every (set, epochs) cell and whether it meets the adoption rule."
    base = {(r["set"], r["epochs"]): r for r in runs if r["combo"] == baseline}
    verdicts = {}
    for combo in dict.fromkeys(r["combo"] for r in runs if r["combo"] != baseline):
        cells, ok = [], True
        for r in (r for r in runs if r["combo"] == combo):
            b = base.get((r["set"], r["epochs"]))
            if b is None: ok = False; continue  # noqa: E702  (no baseline to compare with: cannot qualify)
            gain, slow = r["map"] - b["map"], r["seconds_per_epoch"] / b["seconds_per_epoch"]
            good = gain >= min_gain and r["map50"] >= b["map50"] and slow <= max_slowdown
            ok &= good
            cells.append(dict(set=r["set"], epochs=r["epochs"], map_gain=round(gain, 4), map50_change=round(r["map50"] - b["map50"], 4),
                              time_ratio=round(slow, 3), meets=good))
        ok &= bool(cells) and len(cells) == len(base)
        verdicts[combo] = dict(qualifies=ok, mean_map_gain=round(sum(c["map_gain"] for c in cells) / max(1, len(cells)), 4),
                               cells=cells)
    good = [c for c, v in verdicts.items() if v["qualifies"]]
    best = max(good, key=lambda c: verdicts[c]["mean_map_gain"]) if good else None
    return dict(baseline=baseline, min_gain=min_gain, max_slowdown=max_slowdown, combos=verdicts, adopt=best)


def table(runs: list[dict], verdict: dict) -> str:
    "The runs as a markdown table, then the rule's verdict."
    lines = ["| set | epochs | combination | VOC07 mAP50 | COCO AP50 | COCO mAP 0.5:0.95 | s / epoch | meets the rule |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    meets = {(v_c, c["set"], c["epochs"]): c["meets"] for v_c, v in verdict["combos"].items() for c in v["cells"]}
    for r in sorted(runs, key=lambda r: (r["set"], r["epochs"])):
        m = "baseline" if r["combo"] == verdict["baseline"] else ("yes" if meets.get((r["combo"], r["set"], r["epochs"])) else "no")
        ap50 = "-" if r["ap50_coco"] is None else f"{r['ap50_coco']:.3f}"
        lines.append(f"| {r['set']} | {r['epochs']} | {r['combo']} | {r['map50']:.3f} | {ap50} | {r['map']:.3f} | "
                     f"{r['seconds_per_epoch']:.1f} | {m} |")
    rule = (f"Rule: COCO mAP at least +{verdict['min_gain']:g} over {verdict['baseline']} on every set and length, VOC07 mAP50 "
            f"not lower, at most {verdict['max_slowdown']:g}x its seconds per epoch.")
    adopt = (f"Qualifies: **{verdict['adopt']}**." if verdict["adopt"] else
             f"No combination qualifies: keep {verdict['baseline']} (today's default).")
    return "\n".join(lines) + "\n\n" + rule + "\n" + adopt + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--combos", nargs="+", default=None, choices=list(COMBOS),
                    help=f"combinations, the baseline first (default: {' '.join(DEFAULT_COMBOS)})")
    ap.add_argument("--sets", nargs="+", default=["default", "small"], choices=["default", "small"])
    ap.add_argument("--epochs", nargs="+", type=int, default=None, help="run lengths (default: 12 24; --quick: 1)")
    ap.add_argument("--out-dir", type=Path, default=Path("runs/box_loss"), help="run folders, the table and the JSON")
    ap.add_argument("--min-gain", type=float, default=0.05, help="COCO mAP gain the rule asks for")
    ap.add_argument("--max-slowdown", type=float, default=1.10, help="seconds-per-epoch ratio the rule allows")
    ap.add_argument("--quick", action="store_true", help="tiny model, 2 batches per epoch, 1 epoch: checks the script only")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    add_arguments(ap)
    args = ap.parse_args(argv)
    combos = args.combos or (DEFAULT_COMBOS[:2] if args.quick else DEFAULT_COMBOS)
    epochs = args.epochs or ([1] if args.quick else [12, 24])
    if any(e < 1 for e in epochs): ap.error("--epochs: each length must be at least 1")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    cond = Conditions.from_args(args, "box_loss", own_threads=os.cpu_count() or 1).start()
    runs = []
    for s in args.sets:
        for e in epochs:
            for c in combos:
                runs.append(run_one(c, s, e, args.out_dir, args.out_dir / "data", args.quick, log))
                # the runs so far, after each one: hours of runs are not lost to a crash or a Ctrl-C
                (args.out_dir / "box_loss.partial.json").write_text(json.dumps(dict(runs=runs), indent=1))
    verdict = adoption(runs, combos[0], args.min_gain, args.max_slowdown)
    text = table(runs, verdict)
    out = dict(combos={c: COMBOS[c] for c in combos}, sets=args.sets, epochs=epochs, quick=args.quick,
               small_set=QUICK_SMALL_SET if args.quick else SMALL_SET, runs=runs, verdict=verdict, adopt=verdict["adopt"],
               table=text)
    out["conditions"] = cond.finish()
    (args.out_dir / "box_loss.md").write_text(text)
    (args.out_dir / "box_loss.json").write_text(json.dumps(out, indent=1))
    if args.save_results: save_results("box_loss", out, args)
    if args.json:
        print(json.dumps(out))
    else:
        print(text)
        print(f"conditions: {describe(out['conditions'])}")


if __name__ == "__main__":
    main()
