"""The conditions a benchmark ran under, recorded with its figures, and the result files the README is made from.

A figure measured while other work shared the cores says little about the code: a YOLOv3-416 forward on two
cores can take several times longer on a busy machine than on an idle one. So every script in `benchmarks/`
records, beside its figures, the machine's state (`machine_state`: CPU model, cores, torch threads, library
versions, GPU) and the load around the run (`Conditions`), and marks the result as not for publishing, with a
loud warning on stderr, when

- the 1-minute load average before the start was above `max_load` (default half) of the cores, or
- the 1-minute load average after the end was above the run's own busy threads plus `max_load` of the cores
  (other work started during the run), or
- any list of the run's repeated timings has a coefficient of variation (sample standard deviation / mean) above
  `max_cv` (default 0.10, i.e. 10%); lists of fewer than 3 timings are recorded but not judged.

`save_results(name, result)` writes `benchmarks/results/<machine>-<YYYYMMDD>-<name>.json` (UTC date of the run's
start; a rerun of the same benchmark on the same machine and day replaces the file), atomically (a temporary
file in the same folder, then `os.replace`). `<machine>` is `machine_id`: the GPU's name when one is visible
(`nvidia-h100-80gb-hbm3`), else `cpu-<model>-<n>c` (`cpu-amd-epyc-2c`); no hostname. The file holds:

    {"format": 1, "benchmark": name, "machine": ..., "date": ISO 8601 UTC, "publishable": bool,
     "command": the command line as run, "config": the script's arguments,
     "conditions": {...Conditions.finish()...}, "result": {...the script's figures...}}

`.ci/results.py` renders the README's results table from these files. In a script:

    add_arguments(parser)                        # --save-results, --results-dir, --wait-idle, --max-load, --max-cv
    args = parser.parse_args()
    cond = Conditions.from_args(args, "eval_speed", own_threads=1).start()
    ...                                          # the measurements
    cond.add_timings("seconds", times)           # repeated timings, for the spread check
    out["conditions"] = cond.finish()            # warns on stderr when not publishable
    if args.save_results: save_results("eval_speed", out, args)
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parents[1]
FORMAT = 1
MAX_LOAD = 0.5  # of the cores: the 1-minute load average allowed before the start
MAX_CV = 0.10  # coefficient of variation allowed in a list of repeated timings
MIN_TIMINGS = 3  # fewer timings than this are recorded, not judged
#: distribution names whose versions are recorded (None when not installed)
PACKAGES = ("torch", "torchvision", "numpy", "onnxruntime", "albumentations", "opencv-python-headless",
            "pytorch-lightning", "yolo_voc")


def slug(text: str) -> str:
    "Lower-case `text` with every run of other characters than a-z and 0-9 turned into one '-'."
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    "The CPU's model name from /proc/cpuinfo (`platform.processor()` or the architecture where there is none)."
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.split(":", 1)[0].strip() in ("model name", "Model", "cpu model"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def gpu_name() -> str | None:
    "The name of CUDA device 0, or None when torch sees no GPU."
    try:
        import torch
        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # no torch, or a broken driver: no GPU to report
        return None


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    "Installed versions of the distributions `names` (None for those not installed), and Python's."
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(root: Path = REPO_ROOT) -> dict:
    "The checkout's commit and whether tracked files differ from it (None where git or the repository is missing)."
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        if head.returncode: return dict(commit=None, dirty=None)
        return dict(commit=head.stdout.strip(), dirty=bool(dirty.stdout.strip()))
    except (OSError, subprocess.SubprocessError):
        return dict(commit=None, dirty=None)


def machine_id(cpu: str, cores: int, gpu: str | None) -> str:
    "A hostname-free name for the machine: the GPU's name when there is one, else `cpu-<model>-<cores>c`."
    return slug(gpu) if gpu else f"cpu-{slug(cpu) or 'unknown'}-{cores}c"


def machine_state() -> dict:
    "CPU model, cores, torch threads, GPU, library versions, code commit and the machine id, as a JSON-able dict."
    cpu, cores, gpu = cpu_model(), os.cpu_count() or 1, gpu_name()
    try:
        import torch
        torch_threads = torch.get_num_threads()
    except ImportError:
        torch_threads = None
    return dict(machine=machine_id(cpu, cores, gpu), cpu=cpu, cores=cores,
                cores_available=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores,
                torch_threads=torch_threads, gpu=gpu, platform=platform.platform(), versions=package_versions(),
                code=git_commit())


def spread(seconds: list[float]) -> dict:
    "Spread of repeated timings: n, mean, coefficient of variation (sample stdev / mean) and max / min."
    xs = [float(x) for x in seconds]
    if not xs: return dict(n=0, mean=None, cv=None, max_over_min=None)
    mean = statistics.fmean(xs)
    cv = statistics.stdev(xs) / mean if len(xs) > 1 and mean > 0 else 0.0
    return dict(n=len(xs), mean=mean, cv=round(cv, 4), max_over_min=round(max(xs) / min(xs), 4) if min(xs) > 0 else None)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    "Add the options every benchmark shares: --save-results, --results-dir, --wait-idle, --max-load, --max-cv."
    g = parser.add_argument_group("conditions and result files")
    g.add_argument("--save-results", action="store_true",
                   help="also write the result to <results-dir>/<machine>-<YYYYMMDD>-<benchmark>.json")
    g.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="folder of result files (benchmarks/results)")
    g.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                   help="before starting, wait up to this long for the 1-minute load average to fall to --max-load")
    g.add_argument("--max-load", type=float, default=MAX_LOAD, metavar="FRACTION",
                   help="publishable only when the 1-minute load average before the run is at most this fraction "
                        "of the cores (default 0.5)")
    g.add_argument("--max-cv", type=float, default=MAX_CV,
                   help="publishable only when repeated timings vary less than this coefficient of variation (0.10)")
    return parser


def _log(*a, sep: str = " "):
    print(*a, sep=sep, file=sys.stderr, flush=True)


@dataclass
class Conditions:
    "The machine's state and load around one benchmark run: `start()`, `add_timings()`, then `finish()`."
    name: str = "benchmark"  # the benchmark, for the warning
    own_threads: int | None = None  # threads the run itself keeps busy (default: torch's thread count)
    max_load: float = MAX_LOAD  # fraction of the cores
    max_cv: float = MAX_CV
    wait_idle: float = 0.0  # seconds to wait for the load to fall to max_load before starting
    loadavg: Callable[[], tuple] = os.getloadavg  # the 1, 5 and 15-minute load averages
    poll: float = 5.0  # seconds between looks at the load while waiting for it to fall
    state: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    load_before: list | None = None
    started: str | None = None
    record: dict | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace, name: str, own_threads: int | None = None, **kw) -> "Conditions":
        "Conditions with the thresholds of the options `add_arguments` added."
        return cls(name=name, own_threads=own_threads, max_load=args.max_load, max_cv=args.max_cv,
                   wait_idle=args.wait_idle, **kw)

    def load_limit(self) -> float:
        "The 1-minute load average allowed before the start: `max_load` x the cores."
        return self.max_load * (self.state.get("cores") or os.cpu_count() or 1)

    def start(self) -> "Conditions":
        "Record the machine's state and the load before the run (after waiting up to `wait_idle` s for it to fall)."
        self.state = machine_state()
        deadline, waited = time.monotonic() + self.wait_idle, False
        while True:
            load = self.loadavg()
            if load[0] <= self.load_limit() or time.monotonic() >= deadline: break
            if not waited: _log(f"{self.name}: waiting up to {self.wait_idle:.0f} s for the load average "
                                f"({load[0]:.2f}) to fall to {self.load_limit():.2f}")
            waited = True
            time.sleep(min(self.poll, max(0.0, deadline - time.monotonic())))
        self.load_before = [round(x, 2) for x in load]
        self.started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self._t0 = time.perf_counter()
        return self

    __enter__ = start

    def __exit__(self, *exc):
        if exc[0] is None and self.record is None: self.finish()

    def add_timings(self, key: str, seconds: list[float]) -> "Conditions":
        "Add a list of repeated timings (seconds per repetition) of one measurement, for the spread check."
        self.timings.setdefault(key, []).extend(float(s) for s in seconds)
        return self

    def finish(self) -> dict:
        "Load after, spreads, `publishable` and its `reasons`; warns loudly on stderr when not publishable."
        if self.load_before is None: raise RuntimeError(f"{self.name}: Conditions.finish() before start()")
        load_after = [round(x, 2) for x in self.loadavg()]
        cores = self.state["cores"]
        own = self.own_threads if self.own_threads is not None else (self.state.get("torch_threads") or 1)
        reasons = []
        if self.load_before[0] > self.load_limit():
            reasons.append(f"1-minute load average {self.load_before[0]:.2f} before the start is above "
                           f"{self.load_limit():.2f} ({self.max_load:g} x {cores} cores)")
        after_limit = own + self.max_load * cores
        if load_after[0] > after_limit:
            reasons.append(f"1-minute load average {load_after[0]:.2f} after the end is above {after_limit:.2f} "
                           f"(the run's own {own} thread(s) + {self.max_load:g} x {cores} cores): other work ran meanwhile")
        spreads = {k: spread(v) for k, v in self.timings.items()}
        for k, s in spreads.items():
            if s["n"] >= MIN_TIMINGS and s["cv"] > self.max_cv:
                reasons.append(f"timings '{k}' vary by {s['cv']:.1%} (coefficient of variation of {s['n']}) "
                               f"above {self.max_cv:.0%}")
        self.record = dict(machine=self.state["machine"], date=self.started, publishable=not reasons,
                           reasons=reasons, load_before=self.load_before, load_after=load_after,
                           seconds=round(time.perf_counter() - self._t0, 2), own_threads=own,
                           thresholds=dict(max_load=self.max_load, max_cv=self.max_cv, min_timings=MIN_TIMINGS),
                           spread=spreads, state=self.state)
        if reasons: warn_busy(self.name, reasons)
        return self.record


def describe(record: dict) -> str:
    "One line about a `Conditions.finish()` record: machine, load before -> after, publishable or not."
    verdict = "publishable" if record["publishable"] else f"NOT publishable ({len(record['reasons'])} reason(s))"
    return (f"{record['machine']}, {record['date']}, 1-minute load {record['load_before'][0]:.2f} -> "
            f"{record['load_after'][0]:.2f}: {verdict}")


def warn_busy(name: str, reasons: list[str]):
    "Print a loud warning on stderr that the figures of `name` are not for publishing, with the reasons."
    bar = "!" * 78
    _log(bar, f"WARNING: {name} ran on a busy machine: its figures are NOT FOR PUBLISHING", *[f"  - {r}" for r in reasons],
         "  Re-run on an idle machine (--wait-idle SECONDS waits for the load to fall).", bar, sep="\n")


def command_line(argv: list[str] | None = None, script: str | None = None) -> str:
    "The command as run, with the script's path relative to the repository: `python benchmarks/x.py --json ...`."
    argv = sys.argv if argv is None else argv
    path = Path(script or argv[0]).resolve()
    try:
        path = path.relative_to(REPO_ROOT)
    except ValueError:
        pass
    return shlex.join(["python", str(path), *argv[1:]])


def result_path(name: str, machine: str, date: str, directory: Path = RESULTS_DIR) -> Path:
    "`<directory>/<machine>-<YYYYMMDD>-<name>.json` for a run started at the ISO `date`."
    return Path(directory) / f"{machine}-{date[:10].replace('-', '')}-{name}.json"


def write_json_atomic(path: Path, obj) -> Path:
    "Write `obj` as indented JSON to `path` through a temporary file in the same folder and `os.replace`."
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(obj, indent=1) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def config_of(args) -> dict:
    "The run's configuration from an argparse namespace or a dict: JSON-able, without the output-only options."
    items = vars(args).items() if isinstance(args, argparse.Namespace) else dict(args or {}).items()
    skip = {"json", "out", "save_results", "results_dir", "wait_idle", "max_load", "max_cv"}
    return {k: (str(v) if isinstance(v, Path) or type(v).__name__ == "device" else v)
            for k, v in items if k not in skip}


def save_results(name: str, result: dict, args=None, command: str | None = None,
                 directory: Path | None = None, file_name: str | None = None) -> Path:
    """Write `result` (with its `conditions` block) to `<directory>/<machine>-<YYYYMMDD>-<file_name or name>.json`
    atomically; `file_name` keeps apart two configurations of one benchmark run on the same day."""
    cond = result.get("conditions")
    if not isinstance(cond, dict) or "machine" not in cond or "date" not in cond:
        raise ValueError(f"{name}: the result has no conditions block: record one with Conditions(...).finish()")
    if directory is None: directory = getattr(args, "results_dir", None) or RESULTS_DIR
    path = result_path(file_name or name, cond["machine"], cond["date"], directory)
    if path.exists():
        try:
            if json.loads(path.read_text()).get("publishable") and not cond["publishable"]:
                _log(f"{name}: replacing the publishable {path} with a result NOT for publishing")
        except (OSError, ValueError):
            pass
    body = {k: v for k, v in result.items() if k != "conditions"}
    doc = dict(format=FORMAT, benchmark=name, machine=cond["machine"], date=cond["date"],
               publishable=cond["publishable"], command=command or command_line(), config=config_of(args),
               conditions=cond, result=body)
    write_json_atomic(path, doc)
    _log(f"{name}: wrote {path}" + ("" if cond["publishable"] else " (not publishable)"))
    return path
