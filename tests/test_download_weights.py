"""`yolo-voc download darknet53|yolov3` (issue 25): Darknet's weights from mirrors tried in order, resumed (across mirrors
only with a published MD5), checked by size, MD5 and Darknet's own reader, and written into ROOT only when checked.

The real files are 160 and 250 MB, so a mirror on 127.0.0.1 serves stand-ins: real Darknet files of a YOLOv3 32 times
narrower and 100 times shallower. The table is simulated as the VOC tests simulate theirs: `WEIGHTS_FILES` gets the
stand-ins' sizes, MD5 (for yolov3.weights; darknet53.conv.74 has none published) and model shape."""
import dataclasses
import hashlib

import pytest
import torch
from voc_mirror import serve

import yolo_voc.cli
from yolo_voc import download
from yolo_voc.darknet import darknet_layout, save_darknet
from yolo_voc.download import WEIGHTS_FILES, DownloadError, download_file, download_weights
from yolo_voc.model import YOLOv3

SHAPE = dict(width_mult=1 / 32, depth_mult=0.01)
BACKBONE, FULL = "darknet53.conv.74", "yolov3.weights"


def md5(data: bytes) -> str: return hashlib.md5(data).hexdigest()


@pytest.fixture(scope="module")
def standins(tmp_path_factory) -> dict[str, bytes]:
    "The stand-ins: a tiny YOLOv3's backbone and full file (seed 0), and another full file of the same shape (seed 1)."
    folder = tmp_path_factory.mktemp("standins")
    torch.manual_seed(0)
    tiny = YOLOv3(80, **SHAPE)
    save_darknet(tiny, folder / BACKBONE, backbone_only=True)
    save_darknet(tiny, folder / FULL)
    torch.manual_seed(1)
    save_darknet(YOLOv3(80, **SHAPE), folder / "other.weights")
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.fixture
def table(monkeypatch, standins):
    "Simulated: WEIGHTS_FILES with the stand-ins' sizes, MD5 (where one is published) and model shape."
    for key, wf in WEIGHTS_FILES.items():
        data = standins[wf.name]
        monkeypatch.setitem(WEIGHTS_FILES, key, dataclasses.replace(wf, size=len(data), md5=wf.md5 and md5(data), **SHAPE))


@pytest.fixture
def mirror(standins):
    url, handler, server = serve({BACKBONE: standins[BACKBONE], FULL: standins[FULL]})
    yield url, handler
    server.shutdown()
    server.server_close()


def cli(*argv: str, capsys) -> tuple[int, str, str]:
    "`yolo-voc download ...` in this process: (exit status, stdout, stderr)."
    status = yolo_voc.cli.main(["download", *argv])
    out = capsys.readouterr()
    return status, out.out, out.err


def wrong_header(data: bytes) -> bytes:
    "`data` with header version 0.0.0, whose `seen` is an int32: a 16-byte header, so one float too many for the size."
    return bytes(12) + data[12:]


# --- the published table -----------------------------------------------------------------------------------------

def test_published_table():
    "The figures of the notebook's sources, and the sizes as Darknet's reader sees them (backbone; 80 classes)."
    got = {k: (w.name, w.size, w.md5, w.kind, w.num_classes, w.urls[0]) for k, w in WEIGHTS_FILES.items()}
    assert got == {"darknet53": (BACKBONE, 162_482_580, None, "backbone", None, "https://data.pjreddie.com/files/darknet53.conv.74"),
                   "yolov3": (FULL, 248_007_048, "c84e5b99d0e52cd466ae710cadf6d84c", "full", 80,
                              "https://data.pjreddie.com/files/yolov3.weights")}
    assert WEIGHTS_FILES["yolov3"].urls[1:] == (
        "https://pjreddie.com/media/files/yolov3.weights",
        "https://github.com/AlexeyAB/darknet/releases/download/darknet_yolo_v3_optimal/yolov3.weights",
        "https://github.com/hank-ai/darknet/releases/download/v2.0/yolov3.weights")
    assert [(lay.kind, lay.num_classes, lay.num_floats) for lay in (darknet_layout(w.size) for w in WEIGHTS_FILES.values())] == \
        [("backbone", None, 40_620_640), ("full", 80, 62_001_757)]
    assert all((w.width_mult, w.depth_mult) == (1.0, 1.0) for w in WEIGHTS_FILES.values())


# --- downloads -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("what, name", [("darknet53", BACKBONE), ("yolov3", FULL)])
def test_download_from_mirror(tmp_path, mirror, table, standins, what, name, capsys):
    url, handler = mirror
    root = tmp_path / "w"
    status, out, err = cli(what, str(root), "--base_url", url, "--no_progress", capsys=capsys)
    assert (status, err) == (0, "")
    assert (root / name).read_bytes() == standins[name]
    assert sorted(p.name for p in root.iterdir()) == [name]  # no .part, no record, no lock
    check = ("no MD5 is published for this file: its size and layout were checked instead" if what == "darknet53"
             else "as published")
    first = out.splitlines()[0]
    assert first.startswith(f"{root / name}: ") and first.endswith(
        f"; {len(standins[name]):,} bytes, MD5 {md5(standins[name])} ({check}); from {url}/{name}")
    assert handler.log == [(name, None)]
    # a second run finds the file, checks it, and sends no request
    status, out, _ = cli(what, str(root), "--base_url", url, "--no_progress", capsys=capsys)
    assert status == 0 and out.splitlines()[0].endswith("; there already") and handler.log == [(name, None)]


def test_mirrors_in_order_the_default_list(tmp_path, mirror, table, standins, monkeypatch, capsys):
    "Without --base_url, the table's mirrors in order: a dead one, one without the file, then one that serves it."
    url, handler = mirror
    wf = WEIGHTS_FILES["yolov3"]
    dead = "http://127.0.0.1:9/yolov3.weights"  # port 9 (discard): nothing listens
    monkeypatch.setitem(WEIGHTS_FILES, "yolov3", dataclasses.replace(wf, urls=(dead, f"{url}/nowhere/{FULL}", f"{url}/{FULL}")))
    got = download_weights("yolov3", tmp_path, progress=True)
    err = capsys.readouterr().err
    assert got.source == f"{url}/{FULL}" and got.md5 == md5(standins[FULL])
    assert f"trying the next mirror, {url}/nowhere/{FULL}" in err and f"trying the next mirror, {url}/{FULL}" in err
    assert handler.log == [(f"nowhere/{FULL}", None), (FULL, None)]


def test_md5_mismatch_leaves_nothing(tmp_path, mirror, table, standins, capsys):
    "Another model of the same shape and size: its MD5 is not the published one; exit 1, ROOT holds nothing."
    url, handler = mirror
    handler.files[FULL] = standins["other.weights"]
    root = tmp_path / "w"
    status, out, err = cli("yolov3", str(root), "--base_url", url, "--no_progress", capsys=capsys)
    assert status == 1 and out == ""
    assert err == (f"yolo-voc download: {url}/{FULL}: MD5 {md5(standins['other.weights'])} does not match the expected "
                   f"{md5(standins[FULL])}; the file was deleted, nothing was kept\n")
    assert list(root.iterdir()) == []


def test_md5_mismatch_then_next_mirror(tmp_path, mirror, table, standins):
    "A mirror with the wrong file is given up after its MD5 fails; the next one's file is the published one."
    url, handler = mirror
    bad_url, bad, bad_server = serve({FULL: standins["other.weights"]})
    try: got = download_weights("yolov3", tmp_path, [bad_url, url], progress=False)
    finally: bad_server.shutdown(); bad_server.server_close()
    assert got.source == f"{url}/{FULL}" and (tmp_path / FULL).read_bytes() == standins[FULL]
    assert bad.log == [(FULL, None)] and handler.log == [(FULL, None)]  # the second starts from the first byte
    assert sorted(p.name for p in tmp_path.iterdir()) == [FULL]


@pytest.mark.parametrize("what, name, extra", [("darknet53", BACKBONE, []), ("yolov3", FULL, ["--no_checksum"])])
def test_layout_refused_at_the_right_size(tmp_path, mirror, table, standins, what, name, extra, capsys):
    """A file of the right size whose header says Darknet 0.0 (a 16-byte header): the reader finds one float too many.
    darknet53 has no MD5 to catch it; yolov3 with --no_checksum skips its MD5: the layout check refuses both."""
    url, handler = mirror
    handler.files[name] = wrong_header(standins[name])
    root = tmp_path / "w"
    status, _, err = cli(what, str(root), "--base_url", url, "--no_progress", *extra, capsys=capsys)
    want = "the Darknet-53 backbone" if what == "darknet53" else "a full YOLOv3 for 80 classes"
    n = (len(standins[name]) - 16) // 4
    assert status == 1
    assert err.startswith(f"yolo-voc download: {url}/{name}: not {want} in Darknet's layout ({len(standins[name]):,} bytes "
                          f"hold {n:,} floats after the 16-byte header; ")
    assert err.endswith("; the file was deleted, nothing was kept\n")
    assert list(root.iterdir()) == []


def test_layout_of_another_kind_refused(tmp_path, mirror, table, standins, monkeypatch):
    "A table that wants a full model of the backbone's size: the reader finds a backbone, and says so."
    url, _ = mirror
    wf = WEIGHTS_FILES["yolov3"]
    monkeypatch.setitem(WEIGHTS_FILES, "yolov3", dataclasses.replace(wf, name=BACKBONE, md5=None, size=len(standins[BACKBONE])))
    with pytest.raises(DownloadError) as e: download_weights("yolov3", tmp_path, url, progress=False)
    assert str(e.value) == (f"{url}/{BACKBONE}: Darknet's reader finds a backbone in it, not a full YOLOv3 for 80 classes; "
                            "the file was deleted, nothing was kept")
    assert list(tmp_path.iterdir()) == []


def test_wrong_size_mirror_skipped_before_writing(tmp_path, mirror, table, standins, capsys):
    url, handler = mirror
    small_url, small, small_server = serve({FULL: standins[FULL][:1000]})
    try: got = download_weights("yolov3", tmp_path, [small_url, url])
    finally: small_server.shutdown(); small_server.server_close()
    err = capsys.readouterr().err
    assert (f"{small_url}/{FULL}: the server's file has 1,000 bytes, not the expected {len(standins[FULL]):,}; not downloaded; "
            f"trying the next mirror, {url}/{FULL}") in err
    assert got.source == f"{url}/{FULL}" and small.log == [(FULL, None)] and handler.log == [(FULL, None)]


# --- resuming across mirrors -------------------------------------------------------------------------------------

def test_resume_across_mirrors_with_published_md5(tmp_path, standins, table, capsys):
    """Mirror A breaks after 50,000 bytes and then goes down (503); mirror B sends the rest with one Range request,
    without A's validator (If-Range), and the published MD5 accepts the whole."""
    data = standins[FULL]
    a_url, a, a_server = serve({FULL: data}, down_after=1)
    b_url, b, b_server = serve({FULL: data})
    a.cut[FULL] = 50_000
    try: got = download_weights("yolov3", tmp_path, [a_url, b_url])
    finally:
        for s in (a_server, b_server): s.shutdown(); s.server_close()
    assert a.log == [(FULL, None), (FULL, "bytes=50000-")]  # the retry got a 503
    assert b.log == [(FULL, "bytes=50000-")] and b.if_range == []
    assert (tmp_path / FULL).read_bytes() == data and got.source == f"{b_url}/{FULL}"
    assert f"{tmp_path / FULL}.part: resumed from {b_url}/{FULL}, another mirror of the same file" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == [FULL]


def test_wrong_size_mirror_keeps_what_the_first_sent(tmp_path, standins, table):
    "A breaks after 50,000 bytes; B's file has another size (refused, the .part untouched); C sends the rest."
    data = standins[FULL]
    a_url, a, a_server = serve({FULL: data}, down_after=1)
    b_url, b, b_server = serve({FULL: data + b"more"})
    c_url, c, c_server = serve({FULL: data})
    a.cut[FULL] = 50_000
    try: got = download_weights("yolov3", tmp_path, [a_url, b_url, c_url], progress=False)
    finally:
        for s in (a_server, b_server, c_server): s.shutdown(); s.server_close()
    assert b.log == [(FULL, "bytes=50000-")] and c.log == [(FULL, "bytes=50000-")]
    assert got.source == f"{c_url}/{FULL}" and (tmp_path / FULL).read_bytes() == data


def test_no_resume_across_mirrors_without_md5(tmp_path, standins, table, capsys):
    "darknet53.conv.74 has no published MD5: nothing could tell two servers' bytes apart, so B starts from byte 0."
    data = standins[BACKBONE]
    a_url, a, a_server = serve({BACKBONE: data}, down_after=1)
    b_url, b, b_server = serve({BACKBONE: data})
    a.cut[BACKBONE] = 20_000
    try: download_weights("darknet53", tmp_path, [a_url, b_url])
    finally:
        for s in (a_server, b_server): s.shutdown(); s.server_close()
    assert b.log == [(BACKBONE, None)] and (tmp_path / BACKBONE).read_bytes() == data
    assert f"{tmp_path / BACKBONE}.part: not resumed (it came from {a_url}/{BACKBONE}); downloading from the start" in \
        capsys.readouterr().err


def test_mixture_failing_md5_is_deleted_even_where_files_are_kept(tmp_path, standins):
    """VOC keeps a file whose MD5 fails (to accept a repack with --no_checksum), but never a mixture of two mirrors'
    bytes: A sends the first 50,000 bytes of one file, B the rest of another of the same size."""
    data, other = standins[FULL], standins["other.weights"]
    a_url, a, a_server = serve({"f.bin": data}, down_after=1)
    b_url, b, b_server = serve({"f.bin": other})
    a.cut["f.bin"] = 50_000
    dest = tmp_path / "f.bin"
    try:
        with pytest.raises(DownloadError) as e:
            download.fetch_from_mirrors([f"{a_url}/f.bin", f"{b_url}/f.bin"], dest, md5(data), len(data), progress=False)
    finally:
        for s in (a_server, b_server): s.shutdown(); s.server_close()
    mixed = md5(data[:50_000] + other[50_000:])
    assert str(e.value) == (f"{dest}: MD5 {mixed} does not match the expected {md5(data)}; its bytes came from more than one "
                            "mirror, so it was deleted: run again to download it whole")
    assert list(tmp_path.iterdir()) == [] and b.log == [("f.bin", "bytes=50000-")]


def test_single_mirror_mismatch_is_still_kept_for_no_checksum(tmp_path, standins):
    "The VOC behaviour, unchanged: one server's whole file with another MD5 stays as dest, and the error says so."
    url, _, server = serve({"f.bin": standins["other.weights"]})
    try:
        with pytest.raises(DownloadError, match="accept a repacked mirror with checksum=False"):
            download_file(f"{url}/f.bin", tmp_path / "f.bin", md5(standins[FULL]), progress=False)
    finally: server.shutdown(); server.server_close()
    assert (tmp_path / "f.bin").read_bytes() == standins["other.weights"]


# --- ROOT: nothing of the user's replaced ---------------------------------------------------------------------------

def test_users_file_is_never_replaced(tmp_path, mirror, table, capsys):
    url, handler = mirror
    (tmp_path / FULL).write_bytes(b"my own weights")
    status, _, err = cli("yolov3", str(tmp_path), "--base_url", url, "--no_progress", capsys=capsys)
    assert status == 2 and handler.log == []
    assert err == (f"yolo-voc download: {tmp_path / FULL}: is there, and it is not the published {FULL} (14 bytes, not the "
                   f"expected {WEIGHTS_FILES['yolov3'].size:,}); nothing was replaced: move it away, or give another ROOT\n")
    assert (tmp_path / FULL).read_bytes() == b"my own weights"


def test_dangling_link_is_not_written_through(tmp_path, mirror, table, capsys):
    url, handler = mirror
    (tmp_path / BACKBONE).symlink_to(tmp_path / "elsewhere" / BACKBONE)
    status, _, err = cli("darknet53", str(tmp_path), "--base_url", url, "--no_progress", capsys=capsys)
    assert (status, err) == (2, f"yolo-voc download: {tmp_path / BACKBONE}: is a symbolic link to nothing; nothing is written "
                                "through links\n")
    assert not (tmp_path / "elsewhere").exists() and handler.log == []


def test_leftover_copy_removed(tmp_path, mirror, table, capsys):
    "A temporary copy left by a killed run (.yolov3.weights.XXXXXXXX) is removed by the next run."
    url, _ = mirror
    (tmp_path / f".{FULL}.0a1b2c3d").write_bytes(b"half a copy")
    assert cli("yolov3", str(tmp_path), "--base_url", url, capsys=capsys)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [FULL]


# --- the cache -------------------------------------------------------------------------------------------------------

def test_cache_keeps_the_file_for_the_next_session(tmp_path, table, standins, capsys):
    "Session 1 downloads into the cache and copies into its ROOT; session 2, with no server, copies from the cache."
    url, handler, server = serve({FULL: standins[FULL]})
    cache = tmp_path / "drive" / "cache"
    try: first = download_weights("yolov3", tmp_path / "s1", url, cache=cache, progress=False)
    finally: server.shutdown(); server.server_close()
    second = download_weights("yolov3", tmp_path / "s2", url, cache=cache, progress=False)
    assert [first.source, second.source] == [f"{url}/{FULL}", f"the cache {cache}"]
    for root in ("s1", "s2"): assert (tmp_path / root / FULL).read_bytes() == standins[FULL]
    assert sorted(p.name for p in cache.iterdir()) == [FULL] and handler.log == [(FULL, None)]
    assert (tmp_path / "s2" / FULL).stat().st_ino != (cache / FULL).stat().st_ino  # a copy, not a link


def test_usage_errors(tmp_path, capsys):
    for argv in (["darknet53", str(tmp_path), "--years", "2007"], ["yolov3", str(tmp_path), "--delete_tars"],
                 ["voc", str(tmp_path), "--delete_tars", "--keep_tars"], ["resnet", str(tmp_path)]):
        assert cli(*argv, capsys=capsys)[0] == 2, argv
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DownloadError, match="resnet: no such weights file; choose from darknet53, yolov3"):
        download_weights("resnet", tmp_path)


def test_help_lists_the_weights(capsys):
    assert yolo_voc.cli.main(["download", "--help"]) == 0
    out = capsys.readouterr().out
    assert "darknet53: darknet53.conv.74" in " ".join(out.split()) and "--cache DIR" in out and "--keep_tars" in out


def test_writing_root_fails_in_one_line(tmp_path, mirror, table, capsys):
    "ROOT under a file: exit 3, one line naming the path."
    url, _ = mirror
    (tmp_path / "f").write_text("x")
    status, _, err = cli("yolov3", str(tmp_path / "f" / "w"), "--base_url", url, capsys=capsys)
    assert (status, err) == (3, f"yolo-voc download: {tmp_path / 'f' / 'w'}: Not a directory\n")

