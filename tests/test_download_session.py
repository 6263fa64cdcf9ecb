"""`yolo-voc download voc` in a free session (issue 25): tars deleted once extracted where disk is scarce (simulated
free space: `shutil.disk_usage` is replaced; simulated Kaggle and Colab: their environment variables and folder), and
a cache (`--cache`, `YOLO_VOC_CACHE`) that later sessions extract from without the network, on another file system
too (a tmpfs in a private mount namespace, and simulated EXDEV), shared by two runs."""
import dataclasses
import errno
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_download_safety import can_mount, snapshot, wait_for
from voc_mirror import TEST, TRAINVAL, pack_voc, serve

import yolo_voc
import yolo_voc.cli
from yolo_voc import download
from yolo_voc.voc import check_dataset

REPO = Path(yolo_voc.__file__).parent.parent


@pytest.fixture(scope="module")
def tars(synth_voc):
    return {TRAINVAL: pack_voc(synth_voc, ["train", "val", "trainval"]), TEST: pack_voc(synth_voc, ["test"])}


@pytest.fixture
def mirror(tars):
    url, handler, server = serve(tars)
    yield url, handler, server
    server.shutdown()
    server.server_close()


@pytest.fixture
def simulated(monkeypatch, tars):
    "Simulated: VOC2007's sizes and MD5s set to the synthetic tars'; not on Kaggle or Colab, whatever this machine is."
    monkeypatch.setitem(download.VOC_FILES, "2007", tuple(dataclasses.replace(
        f, md5=hashlib.md5(tars[f.name]).hexdigest(), size=len(tars[f.name])) for f in download.VOC_FILES["2007"]))
    for var in ("KAGGLE_KERNEL_RUN_TYPE", "COLAB_RELEASE_TAG", download.CACHE_ENV): monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(download, "KAGGLE_WORKING", Path("/nonexistent/kaggle/working"))
    no_colab(monkeypatch)


def no_colab(monkeypatch, colab: bool = False) -> None:
    "Simulated: `google.colab` importable or not."
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: (object() if colab else None) if name == "google.colab" else find_spec(name, *args))


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> bytes:
    "A real darknet53.conv.74 in Darknet's layout, of a YOLOv3 32 times narrower and 100 times shallower (a stand-in)."
    import torch

    from yolo_voc.darknet import save_darknet
    from yolo_voc.model import YOLOv3
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("backbone") / "darknet53.conv.74"
    save_darknet(YOLOv3(80, 1 / 32, 0.01), path, backbone_only=True)
    return path.read_bytes()


SHAPE = {"width_mult": 1 / 32, "depth_mult": 0.01}


def run(root: Path, url: str, *args: str, capsys=None) -> tuple[int, str]:
    "`yolo-voc download voc ROOT --years 2007 --base_url URL ...` in this process: (exit status, stderr)."
    status = yolo_voc.cli.main(["download", "voc", str(root), "--years", "2007", "--base_url", url, *args])
    return status, capsys.readouterr().err if capsys else ""


def decision(err: str) -> str: return next(line for line in err.splitlines() if line.startswith("tars: "))


def tars_size(tars: dict) -> int: return sum(map(len, tars.values()))


def data_tree(folder: Path) -> dict:
    "`snapshot` of a VOCdevkit, its done markers by name only (each says where its tar came from: a URL or the cache)."
    return {k: ("marker" if k.endswith(".done") else v) for k, v in snapshot(folder).items()}


# --- --delete_tars -----------------------------------------------------------------------------------------------

def test_delete_tars_deletes_exactly_the_tars(tmp_path, mirror, simulated, capsys):
    url, handler, _ = mirror
    kept, deleted = tmp_path / "kept", tmp_path / "deleted"
    assert run(kept, url, "--keep_tars", "--no_progress")[0] == 0
    status, err = run(deleted, url, "--delete_tars", capsys=capsys)
    assert status == 0 and decision(err) == "tars: deleted once extracted (--delete_tars)"
    assert sorted(p.name for p in kept.iterdir()) == sorted([TEST, "VOCdevkit", TRAINVAL])
    assert sorted(p.name for p in deleted.iterdir()) == ["VOCdevkit"]  # the tars, and nothing else, are gone
    assert snapshot(deleted / "VOCdevkit") == snapshot(kept / "VOCdevkit")  # the same tree, markers included
    # a rerun sees the markers: no request, nothing fetched again
    handler.log.clear()
    status, err = run(deleted, url, "--delete_tars", capsys=capsys)
    assert status == 0 and handler.log == [] and sorted(p.name for p in deleted.iterdir()) == ["VOCdevkit"]
    assert err.splitlines()[:2] == [f"{TRAINVAL}: already extracted in {deleted / 'VOCdevkit'}, skipped",
                                    f"{TEST}: already extracted in {deleted / 'VOCdevkit'}, skipped"]
    assert check_dataset(deleted).ok


def test_tar_deleted_only_after_its_marker(tmp_path, mirror, simulated, monkeypatch, capsys):
    "A marker that can't be written (a full disk): exit 3, and the tar is still there for the next run."
    url, _, _ = mirror
    def full(path, text): raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    monkeypatch.setattr(download, "_write_marker", full)
    status, err = run(tmp_path, url, "--delete_tars", "--no_progress", capsys=capsys)
    assert status == 3 and "No space left on device" in err
    assert (tmp_path / TRAINVAL).exists() and (tmp_path / TEST).exists()


# --- the default where disk is scarce ----------------------------------------------------------------------------------

def fake_disk(monkeypatch, free: float) -> None:
    "Simulated: every file system has `free` bytes free."
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(total=10 ** 12, used=10 ** 12 - free, free=free))


@pytest.mark.parametrize("extra, delete", [(-1, True), (0, False)])
def test_scarce_disk_default(tmp_path, mirror, simulated, tars, monkeypatch, capsys, extra, delete):
    """The border: the tars (T) are downloaded (T) and extracted (about T): they are kept when at least 2T stays free
    after that, so from 4T free on; one byte less and they are deleted."""
    url, _, _ = mirror
    t = tars_size(tars)
    fake_disk(monkeypatch, 4 * t + extra)
    status, err = run(tmp_path, url, capsys=capsys)
    mb = lambda n: f"{n / 1e6:.1f} MB"
    if delete:
        assert decision(err) == (f"tars: deleted once extracted (disk is scarce: {mb(2 * t - 1)} would stay free on {tmp_path}'s "
                                 f"file system after extraction, less than 2 x the tars' {mb(t)}; --keep_tars keeps them)")
    else:
        assert decision(err) == (f"tars: kept ({mb(2 * t)} stays free on {tmp_path}'s file system after extraction, at least "
                                 f"2 x the tars' {mb(t)}; --delete_tars deletes them once extracted)")
    assert status == 0 and sorted(p.name for p in tmp_path.iterdir()) == (["VOCdevkit"] if delete else sorted([TEST, "VOCdevkit", TRAINVAL]))


def test_tars_already_here_need_no_room_to_download(tmp_path, mirror, simulated, tars, monkeypatch, capsys):
    "Tars downloaded by an earlier run take no more room: 3T free is then enough to keep them."
    url, _, _ = mirror
    for name, data in tars.items(): (tmp_path / name).write_bytes(data)
    fake_disk(monkeypatch, 3 * tars_size(tars))
    status, err = run(tmp_path, url, capsys=capsys)
    assert status == 0 and decision(err).startswith("tars: kept (")


@pytest.mark.parametrize("where", ["KAGGLE_KERNEL_RUN_TYPE", "/kaggle/working", "COLAB_RELEASE_TAG", "google.colab"])
def test_kaggle_and_colab_delete_by_default(tmp_path, mirror, simulated, monkeypatch, capsys, where):
    url, _, _ = mirror
    if where == "/kaggle/working":
        (tmp_path / "kaggle" / "working").mkdir(parents=True)
        monkeypatch.setattr(download, "KAGGLE_WORKING", tmp_path / "kaggle" / "working")
    elif where == "google.colab": no_colab(monkeypatch, colab=True)
    else: monkeypatch.setenv(where, "1")
    root = tmp_path / "root"
    status, err = run(root, url, capsys=capsys)
    platform = "Kaggle" if "KAGGLE" in where.upper() else "Colab"
    assert status == 0 and decision(err).startswith(f"tars: deleted once extracted (on {platform}")
    assert sorted(p.name for p in root.iterdir()) == ["VOCdevkit"]
    status, err = run(tmp_path / "kept", url, "--keep_tars", capsys=capsys)  # the user decides
    assert status == 0 and decision(err) == "tars: kept (--keep_tars)" and (tmp_path / "kept" / TRAINVAL).exists()


# --- the cache -----------------------------------------------------------------------------------------------------

def test_cache_then_a_session_without_network(tmp_path, mirror, simulated, tars, monkeypatch, capsys):
    url, handler, server = mirror
    cache = tmp_path / "drive" / "yolo-voc"
    status, err = run(tmp_path / "s1", url, "--cache", str(cache), capsys=capsys)
    assert status == 0 and decision(err) == f"tars: kept in the cache {cache} for later runs"
    assert sorted(p.name for p in cache.iterdir()) == [TEST, TRAINVAL]  # no .part, no record, no lock
    assert [(cache / n).read_bytes() == tars[n] for n in (TEST, TRAINVAL)] == [True, True]
    assert sorted(p.name for p in (tmp_path / "s1").iterdir()) == ["VOCdevkit"]  # the tars stay in the cache only
    server.shutdown(); server.server_close()  # the network is gone; the cache named by the environment variable, --delete_tars given
    before = snapshot(cache)
    monkeypatch.setenv(download.CACHE_ENV, str(cache))
    status, err = run(tmp_path / "s2", url, "--delete_tars", capsys=capsys)
    assert status == 0
    assert decision(err) == f"tars: kept in the cache {cache} for later runs (--delete_tars never deletes the cache)"
    assert snapshot(cache) == before and len(handler.log) == 2
    assert data_tree(tmp_path / "s2" / "VOCdevkit") == data_tree(tmp_path / "s1" / "VOCdevkit")
    assert (tmp_path / "s2/VOCdevkit/VOC2007" / f".{TEST}.done").read_text() == f"{cache / TEST}\n"
    assert check_dataset(tmp_path / "s2").ok


def test_cache_part_resumes_in_the_next_session(tmp_path, mirror, simulated, tars):
    url, handler, _ = mirror
    cache = tmp_path / "cache"
    handler.cut[TRAINVAL] = 30_000
    with pytest.raises(download.DownloadError, match="keeps the 30,000 bytes received"):
        download.fetch_from_mirrors([f"{url}/{TRAINVAL}"], cache / TRAINVAL, progress=False, retries=0)
    handler.log.clear()
    download.download_voc(tmp_path / "s2", "2007", url, cache=cache, progress=False)
    assert handler.log[0] == (TRAINVAL, "bytes=30000-") and (cache / TRAINVAL).read_bytes() == tars[TRAINVAL]


def test_cache_that_is_root_is_never_deleted(tmp_path, mirror, simulated, capsys):
    "--cache ROOT: one lock, and the tars in ROOT are the cache: --delete_tars does not delete them."
    url, _, _ = mirror
    status, err = run(tmp_path, url, "--cache", str(tmp_path), "--delete_tars", capsys=capsys)
    assert status == 0 and sorted(p.name for p in tmp_path.iterdir()) == sorted([TEST, "VOCdevkit", TRAINVAL])
    assert decision(err) == "tars: kept (--delete_tars never deletes the cache, which is ROOT here)"


def test_cache_on_another_file_system_simulated(tmp_path, mirror, simulated, backbone, monkeypatch):
    """Simulated EXDEV: every rename between the cache and ROOT fails, as between two file systems. VOC is extracted
    from the cache and a weights file is copied from it, so both work."""
    url, _, _ = mirror
    cache, root = tmp_path / "cache", tmp_path / "root"
    real_rename, real_replace = os.rename, os.replace

    def one_side(src, dst) -> None:
        sides = {str(cache) in os.fspath(p) for p in (src, dst)}
        if len(sides) == 2: raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), os.fspath(src), os.fspath(dst))
    monkeypatch.setattr(os, "rename", lambda s, d: (one_side(s, d), real_rename(s, d))[1])
    monkeypatch.setattr(os, "replace", lambda s, d: (one_side(s, d), real_replace(s, d))[1])
    download.download_voc(root, "2007", url, cache=cache, progress=False)
    assert check_dataset(root).ok and sorted(p.name for p in cache.iterdir()) == [TEST, TRAINVAL]
    name = "darknet53.conv.74"
    monkeypatch.setitem(download.WEIGHTS_FILES, "darknet53",
                        dataclasses.replace(download.WEIGHTS_FILES["darknet53"], size=len(backbone), **SHAPE))  # simulated
    wurl, _, wserver = serve({name: backbone})
    try: got = download.download_weights("darknet53", root, wurl, cache=cache, progress=False)
    finally: wserver.shutdown(); wserver.server_close()
    assert (root / name).read_bytes() == backbone and (cache / name).read_bytes() == backbone and got.source == f"{wurl}/{name}"


CLI = """
import dataclasses, json, os, sys
from yolo_voc import download
import yolo_voc.cli
for key, changes in json.loads(os.environ["SIMULATED_WEIGHTS"]).items():
    download.WEIGHTS_FILES[key] = dataclasses.replace(download.WEIGHTS_FILES[key], **changes)
sys.exit(yolo_voc.cli.main(sys.argv[1:]))
"""


@pytest.mark.skipif(not can_mount(), reason="needs root and unshare to mount a tmpfs")
def test_cache_on_a_tmpfs(tmp_path, mirror, backbone):
    """A real second file system: the cache is a tmpfs mounted in a private mount namespace. VOC (--no_checksum) and a
    weights file (the stand-in backbone, the table simulated in the child) go through it; afterwards the host sees an
    empty cache folder (the tmpfs went with the namespace) and ROOT holds everything."""
    url, handler, _ = mirror
    handler.files["darknet53.conv.74"] = backbone
    root, cache = tmp_path / "root", tmp_path / "cache"
    cache.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               SIMULATED_WEIGHTS=json.dumps({"darknet53": {"size": len(backbone), **SHAPE}}))
    env.pop(download.CACHE_ENV, None)
    py = '"$0" -c "$1"'
    script = (f"mount -t tmpfs -o size=16m tmpfs {cache} && "
              f"{py} download voc {root} --years 2007 --base_url {url} --no_checksum --no_progress --cache {cache} && "
              f"{py} download darknet53 {root} --base_url {url} --no_progress --cache {cache} && "
              f"\"$0\" -c 'import os, sys; print(os.stat(sys.argv[1]).st_dev != os.stat(sys.argv[2]).st_dev, "
              f"sorted(os.listdir(sys.argv[1])))' {cache} {root}")
    r = subprocess.run(["unshare", "-m", "sh", "-c", script, sys.executable, CLI], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[-1] == f"True {sorted([TEST, TRAINVAL, 'darknet53.conv.74'])}"  # another device, holding the downloads
    assert lines[0] == f"Pascal VOC 2007 in {root / 'VOCdevkit'}; train with: yolo-voc fit --data.root {root}"
    assert lines[1].startswith(f"{root / 'darknet53.conv.74'}: the Darknet-53 backbone") and lines[1].endswith(
        f"from {url}/darknet53.conv.74")
    assert list(cache.iterdir()) == []  # on the host: the tmpfs is gone
    assert sorted(p.name for p in root.iterdir()) == ["VOCdevkit", "darknet53.conv.74"]
    assert (root / "darknet53.conv.74").read_bytes() == backbone and check_dataset(root).ok


def start_cli(root: Path, url: str, cache: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.pop(download.CACHE_ENV, None)
    args = ["download", "voc", str(root), "--years", "2007", "--base_url", url, "--no_checksum", "--cache", str(cache)]
    return subprocess.Popen([sys.executable, "-c", "import sys, yolo_voc.cli; sys.exit(yolo_voc.cli.main(sys.argv[1:]))",
                             *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_runs_share_a_cache(tmp_path, tars, monkeypatch, capsys):
    """Run A fills the cache from a slow server; run B, on another ROOT with the same cache, waits for A's downloads,
    then extracts from the cache: one request per tar in all."""
    monkeypatch.delenv(download.CACHE_ENV, raising=False)
    url, handler, server = serve(tars, delay=0.2)
    cache = tmp_path / "cache"
    try:
        a = start_cli(tmp_path / "a", url, cache)
        wait_for(lambda: (cache / f"{TRAINVAL}.part").exists(), a, "run A's download")
        t0 = time.monotonic()
        status = yolo_voc.cli.main(["download", "voc", str(tmp_path / "b"), "--years", "2007", "--base_url", url,
                                    "--no_checksum", "--cache", str(cache)])
        waited = time.monotonic() - t0
        out, a_err = a.communicate(timeout=120)
    finally: server.shutdown(); server.server_close()
    err = capsys.readouterr().err
    assert (status, a.returncode) == (0, 0), a_err
    assert f"{cache}: another yolo-voc download (process {a.pid}) is working in this folder; waiting for it to finish" in err
    assert sorted(handler.log) == [(TEST, None), (TRAINVAL, None)]  # A's requests only
    assert sorted(p.name for p in cache.iterdir()) == [TEST, TRAINVAL]
    assert data_tree(tmp_path / "a" / "VOCdevkit") == data_tree(tmp_path / "b" / "VOCdevkit") and check_dataset(tmp_path / "b").ok
    assert waited > 0.2  # B did wait
