"""`yolo-voc download` against a hostile mirror and bad luck (issue 22): nothing is written outside ROOT, nothing of the
user's is replaced, an incomplete tar or a changed file is never accepted, and every stop leaves no temporary tree."""
import errno
import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from voc_mirror import TEST, TRAINVAL, make_tar, pack_voc, serve, tar_headers

import yolo_voc
import yolo_voc.cli
from yolo_voc import download
from yolo_voc.download import DownloadError, download_file, extract_tar, lock_root
from yolo_voc.synthetic import make_synthetic_voc
from yolo_voc.voc import check_dataset

REPO = Path(yolo_voc.__file__).parent.parent
NO_LINKS = "the official VOC tars hold no links"


@pytest.fixture(scope="module")
def tars(synth_voc):
    return {TRAINVAL: pack_voc(synth_voc, ["train", "val", "trainval"]), TEST: pack_voc(synth_voc, ["test"])}


@pytest.fixture
def mirror(tars):
    url, handler, server = serve(tars)
    yield url, handler
    server.shutdown()
    server.server_close()


@pytest.fixture(params=["running Python", "no tarfile.data_filter"])
def python(request, monkeypatch):
    "Each test twice: on the running Python, and as on 3.10.0-3.10.11 / 3.11.0-3.11.3, whose tarfile has no data filter."
    if request.param != "running Python": monkeypatch.delattr(tarfile, "data_filter", raising=False)
    return request.param


def run_cli(root: Path, *args: str, url: str | None = None, capsys=None, checksum: bool = False) -> tuple[int, str]:
    "`yolo-voc download voc ROOT --years 2007 ...` in this process: (exit status, stderr)."
    argv = ["download", "voc", str(root), "--years", "2007", "--no_progress"] + (["--base_url", url] if url else [])
    argv += [] if checksum else ["--no_checksum"]
    status = yolo_voc.cli.main(argv + list(args))
    return status, capsys.readouterr().err if capsys else ""


def snapshot(folder: Path) -> dict[str, tuple]:
    "Every entry below `folder`: its kind and, for files, the MD5 of its bytes (links are not followed)."
    out = {}
    for p in sorted(folder.rglob("*")):
        kind = "link" if p.is_symlink() else "dir" if p.is_dir() else "file"
        out[str(p.relative_to(folder))] = (kind, hashlib.md5(p.read_bytes()).hexdigest() if kind == "file" else None)
    return out


def temporary_trees(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob(".VOC*"))


# --- 1. Extraction cannot escape ROOT --------------------------------------------------------------------------------

def chain_tars(depth: int = 3, up: int = 3) -> tuple[bytes, bytes]:
    """The issue's chain: a symlink `L` placed before the link `d` it goes through exists, then a second tar that writes
    `L/.bashrc`. With depth 3 and up 3, L resolves to the folder 3 levels above VOCdevkit: ROOT's parent's parent."""
    dirs = [f"VOCdevkit/{'/'.join('abcdefgh'[:i])}" for i in range(1, depth + 1)]
    deepest = "/".join("abcdefgh"[:depth])
    first = make_tar([(d, ("dir",)) for d in dirs] + [("VOCdevkit/L", ("link", f"{deepest}/d" + "/.." * up)),
                                                         (f"VOCdevkit/{deepest}/d", ("link", "/".join([".."] * depth)))])
    return first, make_tar({"VOCdevkit/L/.bashrc": b"echo gotcha\n"})


def home_tree(tmp_path: Path) -> tuple[Path, Path]:
    "ROOT = home/data/voc, and a sentinel file in home (the folder the chain reaches); (ROOT, sentinel)."
    (tmp_path / "home" / "data").mkdir(parents=True)
    (sentinel := tmp_path / "home" / "notes.txt").write_text("mine\n")
    return tmp_path / "home" / "data" / "voc", sentinel


def test_issue_chain_writes_nothing_outside_root(tmp_path, python, capsys):
    "Both VOC2007 tars from 127.0.0.1, --no_checksum: exit 1 at the first link, ~/.bashrc never written."
    first, second = chain_tars()
    url, handler, server = serve({TRAINVAL: first, TEST: second})
    root, sentinel = home_tree(tmp_path)
    try: status, err = run_cli(root, url=url, capsys=capsys)
    finally: server.shutdown(); server.server_close()
    assert status == 1
    assert err == (f"yolo-voc download: {root / TRAINVAL}: member 'VOCdevkit/L' is a symbolic link (to 'a/b/c/d/../../..'); "
                   f"{NO_LINKS}, and a link could lead a later member or tar out of ROOT, so a tar with links is refused; "
                   "nothing was extracted\n")
    assert not (tmp_path / "home" / ".bashrc").exists()  # the file the chain writes on today's main
    assert sentinel.read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(["home", "data", "voc", "notes.txt", TEST, TRAINVAL])


@pytest.mark.parametrize("members, member, problem", [
    # the chain's first tar alone: on 3.10.0-3.10.11 it wrote one level above ROOT
    (None, "VOCdevkit/L", f"is a symbolic link (to 'a/b/c/d/../../..'); {NO_LINKS}"),
    # a deeper chain (five folders, six levels up)
    ("deep", "VOCdevkit/L", f"is a symbolic link (to 'a/b/c/d/e/d/../../../../../..'); {NO_LINKS}"),
    # planted bug of the issue: the link stays inside the temporary folder, so Python's filter allows it, but it
    # points outside VOCdevkit/ once moved into place
    ([("VOCdevkit/VOC2007/link", ("link", "../../other"))], "VOCdevkit/VOC2007/link",
     f"is a symbolic link (to '../../other'); {NO_LINKS}"),
    ([("VOCdevkit/VOC2007/JPEGImages", ("link", "../../../outside"))], "VOCdevkit/VOC2007/JPEGImages",
     f"is a symbolic link (to '../../../outside'); {NO_LINKS}"),
    ([("VOCdevkit/h", ("hardlink", "VOCdevkit/../../outside/victim.txt"))], "VOCdevkit/h",
     f"is a hard link (to 'VOCdevkit/../../outside/victim.txt'); {NO_LINKS}"),
    ([("VOCdevkit/a.txt", b"a"), ("VOCdevkit/h", ("hardlink", "VOCdevkit/a.txt"))], "VOCdevkit/h",
     f"is a hard link (to 'VOCdevkit/a.txt'); {NO_LINKS}"),
    # a member whose name goes through a link member
    ([("VOCdevkit/L", ("link", "../..")), ("VOCdevkit/L/outside/through.txt", b"x")], "VOCdevkit/L",
     f"is a symbolic link (to '../..'); {NO_LINKS}"),
    ([("VOCdevkit/VOC2007/../../../outside/up.txt", b"x")], "VOCdevkit/VOC2007/../../../outside/up.txt",
     "goes up with '..', out of the tree"),
    ("absolute", None, "has an absolute path"),
    ([("VOCdevkit/fifo", ("fifo",))], "VOCdevkit/fifo", "is a FIFO; the official VOC tars hold only files and folders"),
    ([("VOCdevkit/null", ("chr",))], "VOCdevkit/null", "is a character device; the official VOC tars hold only files"),
])
def test_hostile_tar_variants_refused(tmp_path, python, members, member, problem):
    root = tmp_path / "home" / "data" / "voc"
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "victim.txt").write_text("mine\n")
    if members is None: members = chain_tars()[0]
    elif members == "deep": members = chain_tars(depth=5, up=6)[0]
    elif members == "absolute":
        member = str(tmp_path / "outside" / "abs.txt")
        members = [(member, b"x")]
    tar = tmp_path / "x.tar"
    tar.write_bytes(members if isinstance(members, bytes) else make_tar(members))
    with pytest.raises(DownloadError) as e: extract_tar(tar, root)
    assert str(e.value).startswith(f"{tar}: member {member!r} {problem}")
    assert "not a complete tar file" not in str(e.value) and "delete it" not in str(e.value)
    assert sorted(p.name for p in (tmp_path / "outside").iterdir()) == ["victim.txt"]
    assert (tmp_path / "outside" / "victim.txt").read_text() == "mine\n"
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == \
        ["home", "home/data", "home/data/voc", "outside", "outside/victim.txt", "x.tar"]


def test_link_planted_earlier_is_not_followed(tmp_path, python, capsys):
    "ROOT/VOCdevkit/L -> ../../.. left by an earlier tar (today's main extracts it): the second tar is refused, exit 2."
    root, sentinel = home_tree(tmp_path)
    (root / "VOCdevkit").mkdir(parents=True)
    (root / "VOCdevkit" / "L").symlink_to("../../..")
    url, handler, server = serve({TRAINVAL: chain_tars()[1], TEST: make_tar({"VOCdevkit/VOC2007/t.txt": b"t"})})
    try: status, err = run_cli(root, url=url, capsys=capsys)
    finally: server.shutdown(); server.server_close()
    assert status == 2
    assert err == (f"yolo-voc download: {root}: 1 path of yours would be replaced or written through by {TRAINVAL}: "
                   "VOCdevkit/L (a symbolic link (to '../../..'): nothing is written through links); nothing was "
                   "extracted. Download into another folder (another ROOT), or move these away first\n")
    assert not (tmp_path / "home" / ".bashrc").exists() and sentinel.read_text() == "mine\n"
    assert temporary_trees(root) == [] and not (root / "VOCdevkit" / "VOC2007").exists()


def test_root_devkit_symlink_refused_before_download(tmp_path, mirror, capsys):
    """ROOT/VOCdevkit as a link the user made (to another disk): refused at once, exit 2, with the ROOT to give instead;
    nothing is downloaded. (Following it would let the tars' files be written wherever it points.)"""
    url, handler = mirror
    disk = tmp_path / "disk"
    (disk / "VOCdevkit").mkdir(parents=True)
    root = tmp_path / "root"
    root.mkdir()
    (root / "VOCdevkit").symlink_to(disk / "VOCdevkit")
    status, err = run_cli(root, url=url, capsys=capsys)
    assert status == 2
    assert err == (f"yolo-voc download: {root / 'VOCdevkit'}: is a symbolic link (to {disk / 'VOCdevkit'}); nothing is "
                   "written through links, as a tar could use one to write outside ROOT: give the folder that holds the "
                   f"real VOCdevkit as ROOT (here {disk}), or remove the link\n")
    assert handler.log == [] and list(disk.rglob("*")) == [disk / "VOCdevkit"]
    assert run_cli(disk, url=url)[0] == 0 and check_dataset(disk).ok  # what the message says to do works


def dot_repack(tmp_path: Path, data: bytes) -> bytes:
    "`data` unpacked and packed again with GNU `tar -C dir -cf x.tar .` (members `.`, `./VOCdevkit/...`)."
    src = tmp_path / "repack"
    with tarfile.open(fileobj=io.BytesIO(data)) as t: t.extractall(src, filter="data") if hasattr(tarfile, "data_filter") \
        else t.extractall(src)
    out = tmp_path / "repacked.tar"
    subprocess.run(["tar", "-C", str(src), "-cf", str(out), "."], check=True)
    return out.read_bytes()


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU or BSD tar")
def test_dot_repack_accepted(tmp_path, tars, python, capsys):
    repacked = {name: dot_repack(tmp_path / name, data) for name, data in tars.items()}
    assert [n for _, n in tar_headers(repacked[TRAINVAL])][:2] == [".", "./VOCdevkit"]
    url, handler, server = serve(repacked)
    root = tmp_path / "root"
    try: status, err = run_cli(root, url=url, capsys=capsys)
    finally: server.shutdown(); server.server_close()
    assert (status, err) == (0, "")
    report = check_dataset(root)
    assert report.ok and report.images == 40


# --- 2. Nothing of the user's is replaced ----------------------------------------------------------------------------

def test_own_voc2007_is_never_replaced(tmp_path, mirror, capsys):
    "`download voc own --years 2007` over the user's own VOC2007: exit 2 before extracting, every file of theirs as it was."
    url, _ = mirror
    own = tmp_path / "own"
    make_synthetic_voc(own, n_images=3, image_size=32, seed=1)  # their data: 000001-000003, other pictures
    before = snapshot(own / "VOCdevkit")
    status, err = run_cli(own, url=url, capsys=capsys)
    assert status == 2
    differ = [f"VOCdevkit/VOC2007/{f} (differs from the tar's)" for f in ["ImageSets/Main/train.txt", "ImageSets/Main/val.txt",
              "ImageSets/Main/trainval.txt", "Annotations/000001.xml", "JPEGImages/000001.jpg", "Annotations/000003.xml",
              "JPEGImages/000003.jpg"]]  # 000002 is in their test split, which the trainval tar does not hold
    assert err == (f"yolo-voc download: {own}: 7 paths of yours would be replaced or written through by {TRAINVAL}: "
                   f"{', '.join(differ)}; nothing was extracted. Download into another folder (another ROOT), or move "
                   "these away first\n")
    assert snapshot(own / "VOCdevkit") == before
    assert temporary_trees(own) == []
    assert run_cli(tmp_path / "another", url=url)[0] == 0  # what the message says: another ROOT


def test_rerun_over_complete_download_is_a_no_op(tmp_path, mirror, capsys):
    "Identical files are fine: with the done markers deleted, a rerun changes no file (not even its time) and exits 0."
    url, _ = mirror
    root = tmp_path / "root"
    assert run_cli(root, url=url)[0] == 0
    for marker in (root / "VOCdevkit" / "VOC2007").glob(".*.done"): marker.unlink()
    times = lambda: {str(p): p.stat().st_mtime_ns for p in (root / "VOCdevkit").rglob("*") if p.is_file() and p.suffix != ".done"}
    before, before_times = snapshot(root / "VOCdevkit"), times()
    assert run_cli(root, url=url, capsys=capsys) == (0, "")
    assert times() == before_times
    after = snapshot(root / "VOCdevkit")
    assert {k for k in after if k.endswith(".done")} == {f"VOC2007/.{TRAINVAL}.done", f"VOC2007/.{TEST}.done"}
    assert {k: v for k, v in after.items() if not k.endswith(".done")} == before


def test_partly_there_and_folder_where_file(tmp_path, tars):
    "Files already there with the same bytes are kept, the rest added; a folder where the tar has a file is refused."
    root = tmp_path / "root"
    (tmp_path / "a.tar").write_bytes(tars[TRAINVAL])
    with tarfile.open(tmp_path / "a.tar") as t: some = [m for m in t.getmembers() if m.name.endswith(".xml")][:3]
    for m in some:
        (root / m.name).parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tmp_path / "a.tar") as t: (root / m.name).write_bytes(t.extractfile(m).read())
    extract_tar(tmp_path / "a.tar", root)
    assert check_dataset(root, "trainval").ok and check_dataset(root, "trainval").images == 32
    other = tmp_path / "other"
    (other / "VOCdevkit/VOC2007/ImageSets/Main/train.txt").mkdir(parents=True)
    with pytest.raises(download.RootConflict, match="VOCdevkit/VOC2007/ImageSets/Main/train.txt "
                                                   r"\(a folder or special file where the tar has a file\)"):
        extract_tar(tmp_path / "a.tar", other)


# --- 3. Success means the whole archive ------------------------------------------------------------------------------

def damaged(data: bytes) -> tuple[bytes, int, int]:
    "`data` with the header of its middle member damaged (checksum no longer matches): (bytes, offset, members before)."
    headers = tar_headers(data)
    k = len(headers) // 2
    offset = headers[k][0]
    bad = bytearray(data)
    bad[offset:offset + 4] = b"XXXX"  # the name field; the stored checksum now disagrees
    return bytes(bad), offset, k


def test_damaged_header_refused(tmp_path, tars, capsys):
    bad, offset, k = damaged(tars[TRAINVAL])
    (tmp_path / "bad.tar").write_bytes(bad)
    with tarfile.open(tmp_path / "bad.tar") as t: assert len(t.getmembers()) == k  # Python's tarfile: no error, k members
    if shutil.which("tar"):  # GNU tar, the independent check that the test file is broken
        assert subprocess.run(["tar", "tf", str(tmp_path / "bad.tar")], capture_output=True).returncode == 2
    url, handler, server = serve({TRAINVAL: bad, TEST: tars[TEST]})
    root = tmp_path / "root"
    try: status, err = run_cli(root, url=url, capsys=capsys)
    finally: server.shutdown(); server.server_close()
    last = tar_headers(tars[TRAINVAL])[k - 1][1]
    assert status == 1
    assert err == (f"yolo-voc download: {root / TRAINVAL}: not a complete tar file (the header at byte {offset:,} "
                   f"(after member {k} ({last!r})) is damaged); nothing was extracted, delete it to download it again\n")
    assert sorted(p.name for p in root.iterdir()) == [TEST, TRAINVAL]  # no VOCdevkit, no done marker, no temporary tree


@pytest.mark.parametrize("how, problem", [
    ("cut at a member", "it ends at byte {end:,} (after member {k} ({last!r})) without the end-of-archive marker: it is cut short"),
    ("zeros in the middle", "the header at byte {after:,} (after member {k} ({last!r})) follows an empty one"),
    ("marker then members", "it holds data after its end-of-archive marker at byte {end:,} (after member {k} ({last!r}))"),
])
def test_incomplete_tar_variants_refused(tmp_path, tars, how, problem):
    "Python's tarfile reads each of these without an error and lists only the first k members."
    data = tars[TEST]
    headers = tar_headers(data)
    k = 3
    end, last = headers[k][0], headers[k - 1][1]
    bad = {"cut at a member": data[:end], "zeros in the middle": data[:end] + bytes(512) + data[end:],
           "marker then members": data[:end] + bytes(1024) + data[end:]}[how]
    (tmp_path / "bad.tar").write_bytes(bad)
    with tarfile.open(tmp_path / "bad.tar") as t: assert len(t.getmembers()) == k
    with pytest.raises(DownloadError) as e: extract_tar(tmp_path / "bad.tar", tmp_path / "root")
    assert str(e.value) == (f"{tmp_path / 'bad.tar'}: not a complete tar file ("
                            + problem.format(end=end, k=k, last=last, after=end + 512)
                            + "); nothing was extracted, delete it to download it again")
    assert list((tmp_path / "root").iterdir()) == []


# --- 4. A resumed download is the same file --------------------------------------------------------------------------

A = bytes(range(256)) * 200  # 51,200 bytes
B = bytes(reversed(range(256))) * 200  # another file of the same size: only its ETag tells it apart
C = bytes(reversed(range(256))) * 180  # another file of another size


def interrupted(url: str, handler, dest: Path, n: int) -> None:
    "A download of `dest` from `url` cut after `n` bytes: `dest`.part holds them."
    handler.cut[dest.name] = n
    with pytest.raises(DownloadError, match="run again to resume"): download_file(f"{url}/{dest.name}", dest, progress=False, retries=0)
    assert (dest.parent / f"{dest.name}.part").stat().st_size == n
    handler.log.clear()


@pytest.mark.parametrize("settings, new", [({}, B), ({"no_validators": True}, C)], ids=["ETag", "no validators, size"])
def test_resume_after_server_file_changed(tmp_path, settings, new):
    "The server's file changed between the two runs: the result is exactly the new file, never old head + new tail."
    url, handler, server = serve({"f.bin": A}, **settings)
    try:
        interrupted(url, handler, tmp_path / "f.bin", 10_000)
        handler.files["f.bin"] = new
        download_file(f"{url}/f.bin", tmp_path / "f.bin", progress=False)
    finally: server.shutdown(); server.server_close()
    assert (tmp_path / "f.bin").read_bytes() == new
    assert handler.if_range == ([] if settings else [f'"{hashlib.md5(A).hexdigest()}"'])
    assert handler.log[0] == ("f.bin", "bytes=10000-")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]  # no .part, no record beside it


def test_resume_same_file_continues(tmp_path):
    url, handler, server = serve({"f.bin": A})
    try:
        interrupted(url, handler, tmp_path / "f.bin", 10_000)
        download_file(f"{url}/f.bin", tmp_path / "f.bin", md5=hashlib.md5(A).hexdigest(), progress=False)
    finally: server.shutdown(); server.server_close()
    assert handler.log == [("f.bin", "bytes=10000-")] and handler.if_range == [f'"{hashlib.md5(A).hexdigest()}"']
    assert (tmp_path / "f.bin").read_bytes() == A


def test_server_ignoring_range_is_not_appended(tmp_path):
    "Planted bug of the issue: _fetch appending a full 200 answer to a 1,000-byte .part. The bytes must equal the file."
    url, handler, server = serve({"f.bin": A}, ignore_range={"f.bin"})
    try:
        interrupted(url, handler, tmp_path / "f.bin", 1_000)
        download_file(f"{url}/f.bin", tmp_path / "f.bin", progress=False)  # --no_checksum: no MD5 to catch it
    finally: server.shutdown(); server.server_close()
    assert handler.log == [("f.bin", "bytes=1000-")]
    assert (tmp_path / "f.bin").read_bytes() == A


@pytest.mark.parametrize("case", ["no record", "another mirror"])
def test_part_of_unknown_origin_starts_again(tmp_path, case, capsys):
    "A .part with nothing saying which file it holds (an older version's), or from another URL: downloaded from the start."
    url, handler, server = serve({"f.bin": A})
    url2, handler2, server2 = serve({"f.bin": B})
    try:
        if case == "no record": (tmp_path / "f.bin.part").write_bytes(B[:5_000])  # from an older version
        else: interrupted(url2, handler2, tmp_path / "f.bin", 5_000)
        download_file(f"{url}/f.bin", tmp_path / "f.bin")
    finally:
        for s in (server, server2): s.shutdown(); s.server_close()
    assert handler.log == [("f.bin", None)]
    assert (tmp_path / "f.bin").read_bytes() == A
    why = "nothing says which file it holds" if case == "no record" else f"it came from {url2}/f.bin"
    assert capsys.readouterr().err.splitlines()[0] == f"{tmp_path / 'f.bin.part'}: not resumed ({why}); downloading from the start"


# --- 5. Clean up and explain -----------------------------------------------------------------------------------------

CLI = """
import shutil, signal, sys, time
import yolo_voc.cli
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, whatever the test runner inherited
signal.signal(signal.SIGHUP, signal.SIG_DFL)
if sys.argv[1] == "slow":  # each extracted file takes 0.2 s more: time to send a signal while extracting
    copy = shutil.copyfileobj
    def slow_copy(*args, **kwargs):
        copy(*args, **kwargs)
        time.sleep(0.2)
    shutil.copyfileobj = slow_copy
sys.exit(yolo_voc.cli.main(sys.argv[2:]))
"""


def start_cli(root: Path, url: str, slow: bool = False) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    args = ["download", "voc", str(root), "--years", "2007", "--base_url", url, "--no_checksum"]
    return subprocess.Popen([sys.executable, "-c", CLI, "slow" if slow else "fast", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    t0 = time.monotonic()
    while not condition():
        if proc.poll() is not None: raise AssertionError(f"the run ended before {what}: {proc.communicate()}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"no {what} after {timeout} s")
        time.sleep(0.01)


def extracting(root: Path) -> bool:
    "A temporary tree in `root` already holds a file."
    return any(p.is_file() for t in root.glob(".VOC*.tar.*") for p in t.rglob("*"))


@pytest.mark.parametrize("sig, status, last_line", [
    (signal.SIGINT, 130, "yolo-voc download: interrupted; run the same command again to go on (downloads resume)"),
    (signal.SIGTERM, -signal.SIGTERM, "stopped by SIGTERM: the temporary files are removed; run again to go on"),
    (signal.SIGHUP, -signal.SIGHUP, "stopped by SIGHUP: the temporary files are removed; run again to go on"),
])
def test_signal_during_extraction_leaves_nothing(tmp_path, mirror, sig, status, last_line):
    url, _ = mirror
    root = tmp_path / "root"
    proc = start_cli(root, url, slow=True)
    wait_for(lambda: extracting(root), proc, "extraction")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert err.splitlines()[-1] == last_line and "Traceback" not in err
    assert sorted(p.name for p in root.iterdir()) == [TEST, TRAINVAL]  # no temporary tree, no lock, no VOCdevkit
    assert run_cli(root, url=url)[0] == 0 and check_dataset(root).ok


def test_sigterm_during_download_keeps_the_part_to_resume(tmp_path, tars):
    url, handler, server = serve(tars, delay=0.3)
    root = tmp_path / "root"
    try:
        proc = start_cli(root, url)
        wait_for(lambda: (root / f"{TRAINVAL}.part").exists() and (root / f"{TRAINVAL}.part").stat().st_size > 0, proc, "download")
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGTERM
        assert sorted(p.name for p in root.iterdir()) == [f"{TRAINVAL}.part", f"{TRAINVAL}.part.json"]
        have = (root / f"{TRAINVAL}.part").stat().st_size
        handler.delay = 0
        assert run_cli(root, url=url)[0] == 0
    finally: server.shutdown(); server.server_close()
    assert (TRAINVAL, f"bytes={have}-") in handler.log
    assert (root / TRAINVAL).read_bytes() == tars[TRAINVAL] and check_dataset(root).ok


def test_sigkill_leftovers_removed_by_next_run(tmp_path, mirror, capsys):
    url, _ = mirror
    root = tmp_path / "root"
    proc = start_cli(root, url, slow=True)
    wait_for(lambda: extracting(root), proc, "extraction")
    proc.kill()
    proc.communicate(timeout=60)
    left = temporary_trees(root)
    assert len(left) == 1 and left[0].startswith(f".{TRAINVAL}.")
    assert (root / download.LOCK_NAME).exists()  # the dead run's lock file: its lock went with the process
    assert yolo_voc.cli.main(["download", "voc", str(root), "--years", "2007", "--base_url", url, "--no_checksum"]) == 0
    assert f"{root / left[0]}: removed, a temporary folder left by a run that was stopped" in capsys.readouterr().err.splitlines()
    assert temporary_trees(root) == [] and check_dataset(root).ok


def test_two_runs_on_one_root(tmp_path, tars, capsys):
    "A second run on the same ROOT is refused (exit 3) with the lock file and the other process; the first one finishes."
    url, handler, server = serve(tars, delay=0.3)
    root = tmp_path / "root"
    try:
        proc = start_cli(root, url)
        wait_for(lambda: (root / f"{TRAINVAL}.part").exists(), proc, "download")
        status, err = run_cli(root, url=url, capsys=capsys)
        handler.delay = 0
        out, first_err = proc.communicate(timeout=60)
    finally: server.shutdown(); server.server_close()
    assert status == 3
    assert err == (f"yolo-voc download: {root}: another yolo-voc download (process {proc.pid}) is working in this folder, "
                   f"it holds {root / download.LOCK_NAME}; wait for it to finish or stop it, then run again\n")
    assert proc.returncode == 0, first_err
    assert check_dataset(root).ok and not (root / download.LOCK_NAME).exists()


def test_lock_holder_and_stale_lock(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    with lock_root(root) as path:
        assert path.read_text() == f"{os.getpid()}\n"
        with pytest.raises(download.RootError, match=rf"\(process {os.getpid()}\) is working in this folder"):
            with lock_root(root): pass
    assert not path.exists()
    path.write_text("999999999\n")  # a lock file whose process is gone (no flock held): no obstacle
    with lock_root(root): pass


def test_disk_full_while_downloading(tmp_path, mirror, capsys):
    "ENOSPC from the kernel: the .part is a link to /dev/full, which fails every write with ENOSPC."
    if not os.path.exists("/dev/full"): pytest.skip("needs /dev/full (Linux)")
    url, _ = mirror
    root = tmp_path / "root"
    root.mkdir()
    (root / f"{TRAINVAL}.part").symlink_to("/dev/full")
    status, err = run_cli(root, url=url, capsys=capsys)
    assert status == 3
    assert err == (f"yolo-voc download: {root / TRAINVAL}.part: No space left on device; the disk is full: free some "
                   "space and run again (a download resumes where it stopped)\n")


def test_disk_full_while_extracting(tmp_path, tars, monkeypatch):
    "Simulated ENOSPC on the fourth file written: exit 3, the tree as it was, the temporary folder removed."
    root = tmp_path / "root"
    (tmp_path / "a.tar").write_bytes(tars[TRAINVAL])
    (tmp_path / "b.tar").write_bytes(tars[TEST])
    extract_tar(tmp_path / "a.tar", root)
    before = snapshot(root)
    calls, copy = [], shutil.copyfileobj

    def full(src, dst, *args):
        calls.append(dst.name)
        if len(calls) == 4: raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        copy(src, dst, *args)
    monkeypatch.setattr(shutil, "copyfileobj", full)
    with pytest.raises(download.RootError) as e: extract_tar(tmp_path / "b.tar", root)
    assert str(e.value) == (f"{root}: No space left on device; the disk is full: free some space and run again "
                            "(a download resumes where it stopped)")
    assert snapshot(root) == before


def test_root_is_a_file_or_under_one(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert run_cli(tmp_path / "f", capsys=capsys) == (3, f"yolo-voc download: {tmp_path / 'f'}: is a file, not a folder; "
                                                        "give a folder to download into\n")
    assert run_cli(tmp_path / "f" / "voc", capsys=capsys) == (3, f"yolo-voc download: {tmp_path / 'f' / 'voc'}: Not a directory\n")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder (the mount test covers it)")
def test_read_only_root(tmp_path, capsys):
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o500)
    try: status, err = run_cli(root, capsys=capsys)
    finally: root.chmod(0o700)
    assert (status, err) == (3, f"yolo-voc download: {root / download.LOCK_NAME}: Permission denied; choose a ROOT you may write to\n")


def test_rename_across_file_systems_is_one_line(tmp_path, tars, monkeypatch, capsys):
    "Simulated EXDEV from the rename that moves the extracted tree into place: exit 3, one line naming where it went."
    real_rename = os.rename

    def rename(src, dst):
        if ".VOC" in str(src): raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(src), str(dst))
        real_rename(src, dst)
    url, handler, server = serve(tars)
    monkeypatch.setattr(os, "rename", rename)
    try: status, err = run_cli(tmp_path / "root", url=url, capsys=capsys)
    finally: server.shutdown(); server.server_close()
    assert (status, err) == (3, f"yolo-voc download: {tmp_path / 'root' / 'VOCdevkit'}: Invalid cross-device link; the "
                                "extracted files are moved into place by renaming, which works only within one file "
                                "system: give a ROOT on the file system that holds VOCdevkit\n")
    assert temporary_trees(tmp_path / "root") == []


def can_mount() -> bool:
    "Whether this machine lets us mount a tmpfs in a private mount namespace (root in most containers and CI)."
    if shutil.which("unshare") is None or os.geteuid() != 0: return False
    return subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                          capture_output=True).returncode == 0


@pytest.mark.skipif(not can_mount(), reason="needs root and unshare to mount a small tmpfs")
@pytest.mark.parametrize("case", ["read-only ROOT", "full ROOT", "VOCdevkit on another file system"])
def test_real_file_systems(tmp_path, mirror, tars, case):
    "Real mounts in a private mount namespace: a read-only ROOT, a ROOT too small for the tars, VOCdevkit a mount point."
    url, _ = mirror
    root = tmp_path / "root"
    (root / "VOCdevkit").mkdir(parents=True)
    mount = {"read-only ROOT": f"mount -t tmpfs -o ro,size=1m tmpfs {root}",
             "full ROOT": f"mount -t tmpfs -o size=64k tmpfs {root}",
             "VOCdevkit on another file system": f"mount -t tmpfs -o size=4m tmpfs {root / 'VOCdevkit'}"}[case]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    cmd = f'{mount} && exec "$0" -c "$1" fast download voc {root} --years 2007 --base_url {url} --no_checksum --no_progress'
    r = subprocess.run(["unshare", "-m", "sh", "-c", cmd, sys.executable, CLI], env=env, capture_output=True, text=True, timeout=120)
    expected = {"read-only ROOT": f"{root / download.LOCK_NAME}: Read-only file system; choose a ROOT on a writable disk",
                "full ROOT": f"{root / TRAINVAL}.part: No space left on device; the disk is full: free some space and run "
                             "again (a download resumes where it stopped)",
                "VOCdevkit on another file system": f"{root / 'VOCdevkit'}: is on another file system than {root}; the "
                "extracted files are moved into place by renaming, which works only within one file system: give a ROOT "
                "on the file system that holds VOCdevkit"}[case]
    assert (r.returncode, r.stderr) == (3, f"yolo-voc download: {expected}\n")


def test_conflict_list_is_one_line_of_at_most_eight(tmp_path):
    root = tmp_path / "root"
    (root / "VOCdevkit").mkdir(parents=True)
    for i in range(10): (root / "VOCdevkit" / f"{i}.txt").write_text("mine")
    (tmp_path / "x.tar").write_bytes(make_tar({f"VOCdevkit/{i}.txt": b"theirs" for i in range(10)}))
    with pytest.raises(download.RootConflict) as e: extract_tar(tmp_path / "x.tar", root)
    listed = ", ".join(f"VOCdevkit/{i}.txt (differs from the tar's)" for i in range(8))
    assert str(e.value) == (f"{root}: 10 paths of yours would be replaced or written through by x.tar: {listed}, and 2 more; "
                            "nothing was extracted. Download into another folder (another ROOT), or move these away first")
    assert {p.read_text() for p in (root / "VOCdevkit").iterdir()} == {"mine"}


def test_tar_link_over_existing_folder(tmp_path, tars, capsys):
    "A later tar with a link where ROOT has a folder (today's main: IsADirectoryError traceback): one line, exit 1."
    url, handler, server = serve(tars)
    root = tmp_path / "root"
    try:
        assert run_cli(root, url=url)[0] == 0
        for p in [root / TRAINVAL, *(root / "VOCdevkit" / "VOC2007").glob(f".{TRAINVAL}.done")]: p.unlink()
        handler.files[TRAINVAL] = make_tar({"VOCdevkit/VOC2007/JPEGImages": ("link", "/tmp")})
        before = snapshot(root / "VOCdevkit")
        status, err = run_cli(root, url=url, capsys=capsys)
    finally: server.shutdown(); server.server_close()
    assert status == 1
    assert err == (f"yolo-voc download: {root / TRAINVAL}: member 'VOCdevkit/VOC2007/JPEGImages' is a symbolic link (to '/tmp'); "
                   f"{NO_LINKS}, and a link could lead a later member or tar out of ROOT, so a tar with links is refused; "
                   "nothing was extracted\n")
    assert snapshot(root / "VOCdevkit") == before
