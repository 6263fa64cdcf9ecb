"""How fast `yolo_voc.voc.check_dataset` indexes a VOCdevkit: N annotation XML files + tiny JPEGs.

    python benchmarks/index_speed.py            # N = 5000, 10000, 20000
    python benchmarks/index_speed.py --json --sizes 5000 20000 --save-results

For each N it writes a VOCdevkit of N XML files (3 objects each) and N tiny JPEGs into a temporary folder, then
times, in the same run: a full check without cache (parse every XML, read every image header and end marker),
a first check that fills the cache, and a check served by the cache (two `stat`s per image). The checks without
and with the cache run `--repeat` times each and report the median (`check_s`, `check_cached_s`; all runs in
`check_runs_s`, `check_cached_runs_s`). The result records the machine's state and load (`conditions`, see
`benchmarks/conditions.py`); the spread of the repeated checks is checked.
"""
import argparse
import io
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from conditions import Conditions, add_arguments, describe, save_results
from yolo_voc.boxes import VOC_CLASSES
from yolo_voc.voc import check_dataset


def write_devkit(root: Path, n: int, seed: int = 0) -> Path:
    "A VOCdevkit with `n` annotation files (3 objects each) and `n` tiny JPEGs (all the same bytes)."
    voc = root / "VOCdevkit" / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"): (voc / sub).mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    jpg = buf.getvalue()
    rng = np.random.default_rng(seed)
    ids = [f"{i:06d}" for i in range(1, n + 1)]
    for iid in ids:
        objs = []
        for _ in range(3):
            x0, y0 = rng.integers(1, 16, 2)
            objs.append(f"<object><name>{VOC_CLASSES[rng.integers(20)]}</name><pose>Unspecified</pose><truncated>0</truncated>"
                        f"<difficult>0</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x0 + 10}</xmax>"
                        f"<ymax>{y0 + 8}</ymax></bndbox></object>")
        (voc / "Annotations" / f"{iid}.xml").write_text(
            f"<annotation><folder>VOC2007</folder><filename>{iid}.jpg</filename><size><width>32</width>"
            f"<height>24</height><depth>3</depth></size>{''.join(objs)}</annotation>")
        (voc / "JPEGImages" / f"{iid}.jpg").write_bytes(jpg)
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("".join(f"{i}\n" for i in ids))
    return voc


def timed(fn) -> tuple:
    "(fn(), seconds)."
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def bench(n: int, repeat: int = 3) -> dict:
    "Times of checking a VOCdevkit of `n` files: median of `repeat` checks without cache, filling it, and cached."
    tmp = Path(tempfile.mkdtemp())
    try:
        voc = write_devkit(tmp, n)
        cache = tmp / "cache.json"
        nocache = []
        for _ in range(repeat):
            rep, t = timed(lambda: check_dataset(voc, "trainval"))
            assert rep.ok and rep.images == n, rep.problems[:3]
            nocache.append(t)
        _, t_fill = timed(lambda: check_dataset(voc, "trainval", cache=cache))
        cached = []
        for _ in range(repeat):
            rep2, t = timed(lambda: check_dataset(voc, "trainval", cache=cache))
            assert rep2.cache_hits == n
            cached.append(t)
        t_nocache, t_cached = statistics.median(nocache), statistics.median(cached)
        return {"n": n, "check_s": round(t_nocache, 3), "check_fill_cache_s": round(t_fill, 3),
                "check_cached_s": round(t_cached, 3), "us_per_file": round(t_nocache / n * 1e6, 1),
                "cached_us_per_file": round(t_cached / n * 1e6, 1),
                "check_runs_s": [round(t, 4) for t in nocache], "check_cached_runs_s": [round(t, 4) for t in cached]}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[5000, 10000, 20000])
    p.add_argument("--repeat", type=int, default=3, help="checks without and with the cache per size (the median counts)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_arguments(p)
    a = p.parse_args(argv)
    if a.repeat < 1: p.error("--repeat must be at least 1")
    cond = Conditions.from_args(a, "index_speed", own_threads=1).start()
    results = [bench(n, a.repeat) for n in a.sizes]
    for r in results:
        cond.add_timings(f"check_{r['n']}", r["check_runs_s"])
        cond.add_timings(f"check_cached_{r['n']}", r["check_cached_runs_s"])
    out = {"benchmark": "index_speed", "results": results, "conditions": cond.finish()}
    if a.save_results: save_results("index_speed", out, a)
    if a.json: print(json.dumps(out))
    else:
        for r in results:
            print(f"N={r['n']:>6}: check {r['check_s']:.2f} s ({r['us_per_file']} us/file), "
                  f"cached {r['check_cached_s']:.2f} s ({r['cached_us_per_file']} us/file)")
        print(f"conditions: {describe(out['conditions'])}")


if __name__ == "__main__":
    main()
