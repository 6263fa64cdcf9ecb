"Tests of yolo_voc.download (and `yolo-voc download voc`) against a local HTTP mirror on 127.0.0.1."
import dataclasses
import hashlib
import re
import socket

import pytest
from voc_mirror import TEST, TRAINVAL, make_tar, pack_voc, serve

import yolo_voc.cli
from yolo_voc import download
from yolo_voc.download import DownloadError, download_file, download_voc, extract_tar
from yolo_voc.voc import check_dataset

@pytest.fixture(scope="module")
def tars(synth_voc):
    "The synthetic set (40 images) packed as the two official VOC2007 tars, and as VOC2012 trainval."
    return {TRAINVAL: pack_voc(synth_voc, ["train", "val", "trainval"]), TEST: pack_voc(synth_voc, ["test"]),
            "VOCtrainval_11-May-2012.tar": pack_voc(synth_voc, ["train", "val", "trainval"], "2012")}


@pytest.fixture
def mirror(tars):
    "A mirror of the synthetic tars on 127.0.0.1: (base URL, handler class with `files`, `cut`, `log`)."
    url, handler, server = serve(tars)
    yield url, handler
    server.shutdown()
    server.server_close()


@pytest.fixture
def simulated_md5(monkeypatch, tars):
    "Simulated: the table's sizes and MD5s set to the synthetic tars' (the real table holds the official values)."
    for year, files in download.VOC_FILES.items():
        monkeypatch.setitem(download.VOC_FILES, year, tuple(dataclasses.replace(
            f, md5=hashlib.md5(tars[f.name]).hexdigest(), size=len(tars[f.name])) for f in files))


@pytest.fixture
def simulated_size(monkeypatch, tars):
    "Simulated: the table's sizes set to the synthetic tars', the MD5s left official (a same-size file with other bytes)."
    for year, files in download.VOC_FILES.items():
        monkeypatch.setitem(download.VOC_FILES, year, tuple(dataclasses.replace(f, size=len(tars[f.name])) for f in files))


def md5(data: bytes) -> str: return hashlib.md5(data).hexdigest()


def test_official_table():
    names = {f.name: (f.md5, f.size) for files in download.VOC_FILES.values() for f in files}
    assert names == {TRAINVAL: ("c52e279531787c972589f7e41ab4ae64", 460_032_000),
                     TEST: ("b6e924de25625d8de591ea690078ad9f", 451_020_800),
                     "VOCtrainval_11-May-2012.tar": ("6cd6e144f989b92b3379bac3b3de84fd", 1_999_639_040)}
    assert download.voc_files("2007")[1][1] == "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtest_06-Nov-2007.tar"
    with pytest.raises(DownloadError, match="VOC2010: no official detection files"): download.voc_files(["2007", "2010"])


def test_size_mismatch_refused_before_downloading(tmp_path, mirror, tars):
    "The official table: the synthetic tar's size differs, so it is refused from its headers, and nothing is written."
    url, handler = mirror
    with pytest.raises(DownloadError) as e: download_voc(tmp_path, "2007", base_url=url, progress=False)
    assert str(e.value) == (f"{url}/{TRAINVAL}: the server's file has {len(tars[TRAINVAL]):,} bytes, not the expected "
                            "460,032,000; not downloaded")
    assert list(tmp_path.iterdir()) == [] and handler.log == [(TRAINVAL, None)]


def test_md5_mismatch_refused(tmp_path, mirror, tars, simulated_size):
    url, handler = mirror
    with pytest.raises(DownloadError) as e: download_voc(tmp_path, "2007", base_url=url, progress=False)
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / TRAINVAL}: MD5 {md5(tars[TRAINVAL])} does not match the expected "
                          "c52e279531787c972589f7e41ab4ae64")
    assert "--no_checksum" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == [TRAINVAL]  # kept for --no_checksum; nothing extracted
    # the kept file is checked again, not downloaded again
    handler.log.clear()
    with pytest.raises(DownloadError, match="does not match"): download_voc(tmp_path, "2007", base_url=url, progress=False)
    assert handler.log == []


def test_no_checksum_passes_check(tmp_path, mirror, synth_voc):
    url, _ = mirror
    devkit = download_voc(tmp_path, ["2007"], base_url=url, checksum=False, progress=False)
    assert devkit == tmp_path / "VOCdevkit"
    report = check_dataset(tmp_path)
    assert report.ok, report.problems
    assert report.images == 40
    assert report.to_dict() == check_dataset(synth_voc).to_dict()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


def test_checked_download_both_years_and_rerun(tmp_path, mirror, simulated_md5):
    url, handler = mirror
    download_voc(tmp_path, ("2007", "2012"), base_url=url + "/", progress=False)
    assert sorted(p.name for p in (tmp_path / "VOCdevkit").iterdir()) == ["VOC2007", "VOC2012"]
    report = check_dataset(tmp_path, "2007-trainval+2012-trainval")
    assert report.ok and report.images == 2 * 32  # 24 train + 8 val images in each year
    assert check_dataset(tmp_path, "2007-test").images == 8
    handler.log.clear()
    for t in tmp_path.glob("*.tar"): t.unlink()
    download_voc(tmp_path, ("2007", "2012"), base_url=url, progress=False)  # done markers: no request, no tar needed
    assert handler.log == []


def test_interrupted_download_resumes(tmp_path, mirror, tars):
    url, handler = mirror
    dest, data = tmp_path / TRAINVAL, tars[TRAINVAL]
    handler.cut[TRAINVAL] = 10_000
    with pytest.raises(DownloadError, match=rf"closed after 10,000 of {len(data):,} bytes.*run again to resume"):
        download_file(f"{url}/{TRAINVAL}", dest, md5=md5(data), progress=False, retries=0)
    assert not dest.exists() and (tmp_path / f"{TRAINVAL}.part").stat().st_size == 10_000
    download_file(f"{url}/{TRAINVAL}", dest, md5=md5(data), progress=False)
    assert handler.log == [(TRAINVAL, None), (TRAINVAL, "bytes=10000-")]
    assert download.file_md5(dest) == md5(data) and not (tmp_path / f"{TRAINVAL}.part").exists()


def test_interrupted_download_voc_resumes_in_one_call(tmp_path, mirror, simulated_md5, tars):
    url, handler = mirror
    handler.cut[TEST] = 5_000
    download_voc(tmp_path, "2007", base_url=url, progress=False)
    assert (TEST, "bytes=5000-") in handler.log
    assert download.file_md5(tmp_path / TEST) == md5(tars[TEST])
    assert check_dataset(tmp_path).ok


def test_complete_part_file_is_finished(tmp_path, mirror, tars):
    "A .part that already holds the whole file (killed before the rename): the server answers 416, nothing is re-sent."
    url, handler = mirror
    handler.cut[TEST] = 10_000
    with pytest.raises(DownloadError, match="run again to resume"):
        download_file(f"{url}/{TEST}", tmp_path / TEST, progress=False, retries=0)
    (tmp_path / f"{TEST}.part").write_bytes(tars[TEST])  # all of it arrived, the run was killed before the rename
    handler.log.clear()
    download_file(f"{url}/{TEST}", tmp_path / TEST, md5=md5(tars[TEST]), progress=False)
    assert handler.log == [(TEST, f"bytes={len(tars[TEST])}-")]
    assert handler.if_range == [f'"{md5(tars[TEST])}"']  # the ETag the first answer gave
    assert download.file_md5(tmp_path / TEST) == md5(tars[TEST])


def test_http_and_network_errors(tmp_path, mirror):
    url, _ = mirror
    with pytest.raises(DownloadError, match=rf"^{re.escape(url)}/nowhere/VOCtrainval_11-May-2012.tar: HTTP error 404"):
        download_voc(tmp_path, "2012", base_url=url + "/nowhere", progress=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match=rf"^http://127.0.0.1:{port}/{TRAINVAL}: server not reachable"):
        download_voc(tmp_path, "2007", base_url=f"http://127.0.0.1:{port}", progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("member, data, problem", [
    ("../evil", b"gotcha", "goes up with '..'"),
    ("VOCdevkit/VOC2007/../../evil", b"gotcha", "goes up with '..'"),
    ("/tmp/evil", b"gotcha", "has an absolute path"),
    ("VOCdevkit/VOC2007/link", ("link", "../../../evil"), "is a symbolic link (to '../../../evil'); the official VOC tars hold no links"),
    ("VOCdevkit/VOC2007/link", ("link", "/etc/passwd"), "is a symbolic link (to '/etc/passwd'); the official VOC tars hold no links"),
    ("VOCdevkit/VOC2007/link", ("hardlink", "VOCdevkit/VOC2007/ImageSets/Main/train.txt"), "is a hard link (to 'VOCdevkit/"),
])
def test_unsafe_tar_refused(tmp_path, mirror, member, data, problem):
    url, handler = mirror
    handler.files[TRAINVAL] = make_tar({"VOCdevkit/VOC2007/ImageSets/Main/train.txt": b"000001\n", member: data})
    root = tmp_path / "root"
    with pytest.raises(DownloadError) as e: download_voc(root, "2007", base_url=url, checksum=False, progress=False)
    assert str(e.value).startswith(f"{root / TRAINVAL}: member {member!r} {problem}")
    assert sorted(p.name for p in root.iterdir()) == [TEST, TRAINVAL]  # no VOCdevkit, no temporary folder
    assert not (tmp_path / "evil").exists()


def test_truncated_tar_leaves_no_tree(tmp_path, tars):
    tar = tmp_path / TRAINVAL
    tar.write_bytes(tars[TRAINVAL][: len(tars[TRAINVAL]) // 2])
    with pytest.raises(DownloadError, match=rf"^{re.escape(str(tar))}: not a complete tar file"):
        extract_tar(tar, tmp_path / "root")
    assert list((tmp_path / "root").iterdir()) == []


def test_file_and_folder_clash_refused_before_writing(tmp_path, tars):
    "A tar with a file where its other members need a folder is refused while its members are read: nothing changes."
    root = tmp_path / "root"
    (tmp_path / "a.tar").write_bytes(tars[TRAINVAL])
    extract_tar(tmp_path / "a.tar", root)
    before = sorted((str(p), p.stat().st_size) for p in root.rglob("*"))
    bad = make_tar({"VOCdevkit/VOC2007/ImageSets/Main/test.txt": b"000001\n", "VOCdevkit/VOC2007/JPEGImages/new.jpg": b"x",
                    "VOCdevkit/VOC2007/x": b"file", "VOCdevkit/VOC2007/x/y": b"needs x to be a folder"})
    (tmp_path / "bad.tar").write_bytes(bad)
    with pytest.raises(DownloadError, match=rf"^{re.escape(str(tmp_path / 'bad.tar'))}: member 'VOCdevkit/VOC2007/x' is a file, "
                                            "and other members lie inside it; nothing was extracted"):
        extract_tar(tmp_path / "bad.tar", root)
    assert sorted((str(p), p.stat().st_size) for p in root.rglob("*")) == before


def test_extract_merges_into_existing_tree(tmp_path, tars):
    (tmp_path / "a.tar").write_bytes(tars[TRAINVAL])
    (tmp_path / "b.tar").write_bytes(tars[TEST])
    extract_tar(tmp_path / "a.tar", tmp_path / "root")
    extract_tar(tmp_path / "b.tar", tmp_path / "root")
    main = tmp_path / "root" / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main"
    assert sorted(p.name for p in main.iterdir()) == ["test.txt", "train.txt", "trainval.txt", "val.txt"]
    assert len(list((tmp_path / "root" / "VOCdevkit" / "VOC2007" / "JPEGImages").iterdir())) == 40


def test_progress_line_and_output(tmp_path, mirror, tars, capsys):
    assert download.format_progress("x.tar", 50_000_000, 200_000_000, 2.5e6) == \
        "x.tar  [#####               ] 50.0/200.0 MB   25%  2.5 MB/s"
    url, _ = mirror
    download_file(f"{url}/{TEST}", tmp_path / TEST)  # progress on, stderr not a terminal: a line at start and end
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"{TEST}: downloading ({len(tars[TEST]) / 1e6:.1f} MB)" and err[1].startswith(f"{TEST}: ")
    download_file(f"{url}/{TRAINVAL}", tmp_path / TRAINVAL, progress=False)
    assert capsys.readouterr().err == ""


needs_cli = pytest.mark.skipif("download" not in yolo_voc.cli.COMMANDS,
                               reason="`yolo-voc download` is not wired into yolo_voc.cli yet")


@needs_cli
def test_cli_no_checksum_then_check(tmp_path, mirror):
    url, _ = mirror
    root = tmp_path / "data"
    assert yolo_voc.cli.main(["download", "voc", str(root), "--years", "2007", "--base_url", url, "--no_checksum"]) == 0
    assert yolo_voc.cli.main(["check", str(root)]) == 0


@needs_cli
def test_cli_mismatch_exit_1(tmp_path, mirror, capsys, simulated_size):
    url, _ = mirror
    root = tmp_path / "data"
    assert yolo_voc.cli.main(["download", "voc", str(root), "--years", "2007", "--base_url", url]) == 1
    err = capsys.readouterr().err
    assert TRAINVAL in err and "does not match the expected c52e279531787c972589f7e41ab4ae64" in err
    assert not (root / "VOCdevkit").exists()


@needs_cli
def test_cli_bad_year_is_a_usage_error(tmp_path):
    assert yolo_voc.cli.main(["download", "voc", str(tmp_path), "--years", "2010"]) == 2
