"""Nothing of the user's is destroyed by an output (issue 22): `export` never writes over its own checkpoint (however
the path is spelled) or, without --exist_ok, over any file, and writes every format atomically; `predict` refuses an
--out that overlaps an input however either is spelled; `atomic_write` puts the data on the disk before the name."""
import errno
import os
import warnings
from pathlib import Path

import pytest
import torch

from yolo_voc import checkpoint
from yolo_voc.checkpoint import atomic_write, save_weights
from yolo_voc.cli import EXIT_OUTPUT, EXIT_USAGE, export_main, predict_main
from yolo_voc.export import check_export_out, export_model
from yolo_voc.predict import UnsafeOutputError, check_output
from yolo_voc.runtime import load_detector
from yolo_voc.synthetic import make_synthetic_voc

from tiny_models import CFG, NAMES, tiny_model

SIZE = 128


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return save_weights(tiny_model(), tmp_path_factory.mktemp("w") / "tiny.pt", class_names=NAMES, image_size=SIZE, **CFG)


@pytest.fixture
def user(tmp_path, weights, monkeypatch) -> Path:
    "A user's folder: their checkpoint model.pt, a notes file and a link to the checkpoint; the working directory."
    (tmp_path / "model.pt").write_bytes(weights.read_bytes())
    (tmp_path / "notes.txt").write_text("my notes")
    (tmp_path / "link.pt").symlink_to("model.pt")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def export(*args) -> int:
    return export_main([*map(str, args)])


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


# -- export: the checkpoint itself -------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "weights"])
@pytest.mark.parametrize("ckpt, out", [("model.pt", "model.pt"), ("model.pt", "./model.pt"), ("./model.pt", "model.pt"),
                                       ("model.pt", "ABS/model.pt"), ("ABS/model.pt", "model.pt"),
                                       ("model.pt", "link.pt"), ("link.pt", "model.pt"), ("model.pt", "sub/../model.pt"),
                                       ("model.pt", "HARD")])
def test_export_never_writes_over_its_checkpoint(user, capsys, fmt, ckpt, out):
    "`export --ckpt_path model.pt --out model.pt` replaced the checkpoint with the export (exit 0). Now: exit 2, --exist_ok or not."
    (user / "sub").mkdir()
    if out == "HARD": os.link(user / "model.pt", user / "hard.pt"); out = "hard.pt"  # the same inode by another name
    ckpt, out = (s.replace("ABS", str(user)) for s in (ckpt, out))
    before = (user / "model.pt").read_bytes()
    for extra in ([], ["--exist_ok"]):
        assert export("--ckpt_path", ckpt, "--format", fmt, "--out", out, *extra) == EXIT_USAGE
        line = one_line(capsys)
        assert line == f"yolo-voc export: {Path(out)}: is the checkpoint being exported ({ckpt}); choose another --out"
    assert (user / "model.pt").read_bytes() == before and (user / "link.pt").is_symlink()
    assert sorted(p.name for p in user.iterdir()) == sorted(["model.pt", "notes.txt", "link.pt", "sub"] + (["hard.pt"] if out == "hard.pt" else []))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "weights"])
def test_export_refuses_an_existing_file_unless_exist_ok(user, capsys, fmt):
    assert export("--ckpt_path", "model.pt", "--format", fmt, "--out", "notes.txt") == EXIT_USAGE
    assert one_line(capsys) == "yolo-voc export: notes.txt: exists; choose another --out, or pass --exist_ok to replace it"
    assert (user / "notes.txt").read_text() == "my notes"
    # --exist_ok replaces it with a complete export, and leaves no temporary file
    assert export("--ckpt_path", "model.pt", "--format", fmt, "--out", "notes.txt", "--exist_ok") == 0
    assert load_detector(user / "model.pt").class_names == NAMES
    if fmt == "weights": assert load_detector(user / "notes.txt").class_names == NAMES
    elif fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
            assert len(torch.jit.load(str(user / "notes.txt"))(torch.zeros(1, 3, SIZE, SIZE))) == 3
    else: assert (user / "notes.txt").read_bytes()[:1] == b"\x08"  # a protobuf ModelProto
    assert not [p for p in user.iterdir() if p.name.endswith(".partial")]


def test_export_under_a_file_names_the_path(user, capsys):
    "Before: `model_backup.ckpt: File exists`, naming the wrong file. Now the path, and the file in its way; exit 3."
    (user / "model_backup.ckpt").write_text("backup")
    assert export("--ckpt_path", "model.pt", "--format", "onnx", "--out", "model_backup.ckpt/e.onnx") == EXIT_OUTPUT
    assert one_line(capsys) == ("yolo-voc export: model_backup.ckpt/e.onnx: cannot be written: model_backup.ckpt is a "
                                "file, not a folder")
    assert export("--ckpt_path", "model.pt", "--format", "weights", "--out", "model_backup.ckpt/deeper/w.pt") == EXIT_OUTPUT
    assert "model_backup.ckpt/deeper/w.pt: cannot be written: model_backup.ckpt is a file" in one_line(capsys)
    assert (user / "model_backup.ckpt").read_text() == "backup"


def test_export_model_checks_the_output_too(user):
    "The library function refuses what the command refuses (and checks before any work)."
    det = load_detector(user / "model.pt")
    with pytest.raises(UnsafeOutputError, match="is the checkpoint being exported"): export_model(det, "weights", user / "link.pt")
    with pytest.raises(UnsafeOutputError, match="exists"): export_model(det, "weights", "notes.txt")
    with pytest.raises(NotADirectoryError): check_export_out("notes.txt/x.onnx")
    assert check_export_out("new.onnx", ["model.pt"]) == Path("new.onnx")


def test_export_race_never_replaces_a_file(user, monkeypatch):
    "A file that appears at --out while the export runs is not replaced either (hard link, not rename); nothing is left."
    det = load_detector(user / "model.pt")
    real = checkpoint.save_weights
    def slow_save(*a, **kw):
        (user / "late.pt").write_text("someone else's")  # appears after the check, before the name is given
        return real(*a, **kw)
    import yolo_voc.export
    monkeypatch.setattr(yolo_voc.export, "save_weights", slow_save)
    with pytest.raises(FileExistsError) as e: export_model(det, "weights", user / "late.pt")
    assert (e.value.errno, e.value.filename) == (errno.EEXIST, str(user / "late.pt"))
    assert (user / "late.pt").read_text() == "someone else's"
    assert not [p for p in user.iterdir() if p.name.endswith(".partial")]


@pytest.mark.parametrize("fmt, int8", [("onnx", False), ("torchscript", False), ("weights", False), ("onnx", True)])
def test_export_is_atomic_for_every_format(user, monkeypatch, fmt, int8):
    "Every format (int8 too) is written under a temporary name, fsynced, then given the name by one link or rename."
    steps = []
    real_link, real_replace, real_fsync = os.link, os.replace, os.fsync
    def link(a, b):
        steps.append(("link", Path(a).suffix, Path(b).name, Path(b).exists())); real_link(a, b)
    def replace(a, b):
        steps.append(("replace", Path(a).suffix, Path(b).name, Path(b).exists())); real_replace(a, b)
    def fsync(fd): steps.append(("fsync",)); real_fsync(fd)
    monkeypatch.setattr(os, "link", link); monkeypatch.setattr(os, "replace", replace); monkeypatch.setattr(os, "fsync", fsync)
    args = ["--int8", "--data", str(make_synthetic_voc(user / "data", 8, (96, 72), class_names=NAMES).parent.parent),
            "--calib_images", "2", "--no_eval"] if int8 else []
    assert export("--ckpt_path", "model.pt", "--format", fmt, "--out", "out.bin", *args) == 0
    final = [s for s in steps if s[0] != "fsync" and s[2] == "out.bin"]
    assert final == [("link", ".partial", "out.bin", False)]  # the only step that touched the name: one hard link
    i = steps.index(final[0])
    assert steps[i - 1] == ("fsync",) and steps[i + 1] == ("fsync",)  # data on disk before, folder after
    assert load_detector(user / "model.pt").class_names == NAMES


# -- predict: an --out that overlaps an input, however it is spelled ------------------------------------------------
@pytest.mark.parametrize("inputs, out, how", [
    (["imgs"], "imgs/det", "lies inside the input folder"),
    (["imgs"], "ABS/imgs/det", "lies inside the input folder"),
    (["ABS/imgs"], "imgs/det", "lies inside the input folder"),
    (["./imgs"], "imgs/det", "lies inside the input folder"),
    (["link"], "imgs/det", "lies inside the input folder"),
    (["imgs"], "link/det", "lies inside the input folder"),
    (["imgs/../imgs"], "imgs/det", "lies inside the input folder"),
    (["./imgs"], "imgs", "is the input folder"),
    (["imgs"], "./imgs/", "is the input folder"),
    (["ABS/imgs"], "imgs", "is the input folder"),
    (["imgs"], "ABS/imgs", "is the input folder"),
    (["link"], "imgs", "is the input folder"),
    (["imgs/a.png"], "ABS/imgs", "holds the input"),
    (["ABS/imgs/a.png"], "imgs", "holds the input"),
    (["link/a.png"], ".", "holds the input"),
])
def test_predict_out_overlapping_an_input_is_refused_however_spelled(user, capsys, inputs, out, how):
    "A `check_output` that compared paths as written let `predict imgs --out imgs/det` and `predict ./imgs --out imgs` through."
    from PIL import Image
    (user / "imgs").mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(user / "imgs" / "a.png")
    (user / "link").symlink_to("imgs")
    inputs, out = [s.replace("ABS", str(user)) for s in inputs], out.replace("ABS", str(user))
    before = sorted(p.relative_to(user) for p in user.rglob("*"))
    assert predict_main(["--ckpt_path", "model.pt", "--out", out, "--device", "cpu", "--exist_ok", *inputs]) == EXIT_USAGE
    line = one_line(capsys)
    assert line.startswith(f"yolo-voc predict: {Path(out)}: {how}") and "--allow_input_overlap" in line
    assert sorted(p.relative_to(user) for p in user.rglob("*")) == before  # nothing written, no folder made
    with pytest.raises(UnsafeOutputError, match=how): check_output(out, inputs, exist_ok=True)


# -- atomic_write: data, then name, then folder --------------------------------------------------------------------
@pytest.mark.parametrize("exist_ok", [True, False])
def test_atomic_write_fsyncs_the_data_before_the_name(tmp_path, monkeypatch, exist_ok):
    "The order a power cut needs: fsync(the temporary file), then link/rename, then fsync(the folder); the bytes arrive."
    calls = []
    real = dict(fsync=os.fsync, replace=os.replace, link=os.link)
    folder = tmp_path / "out"
    folder.mkdir()
    def fsync(fd):
        st = os.fstat(fd)
        what = "folder" if os.path.samestat(st, os.stat(folder)) else f"file:{st.st_ino}:{st.st_size}"
        calls.append(("fsync", what)); real["fsync"](fd)
    def replace(a, b): calls.append(("replace", Path(a).parent == folder, Path(a).suffix, str(b))); real["replace"](a, b)
    def link(a, b): calls.append(("link", Path(a).parent == folder, Path(a).suffix, str(b))); real["link"](a, b)
    monkeypatch.setattr(os, "fsync", fsync); monkeypatch.setattr(os, "replace", replace); monkeypatch.setattr(os, "link", link)
    data = bytes(range(256)) * 64
    path = atomic_write(folder / "w.ckpt", lambda p: p.write_bytes(data), exist_ok=exist_ok)
    st = path.stat()
    name_op = "replace" if exist_ok else "link"
    assert calls == [("fsync", f"file:{st.st_ino}:{len(data)}"), (name_op, True, ".partial", str(folder / "w.ckpt")),
                     ("fsync", "folder")]
    assert path.read_bytes() == data and [p.name for p in folder.iterdir()] == ["w.ckpt"]


def test_atomic_write_without_hard_links_checks_then_renames(tmp_path, monkeypatch):
    "On a file system without hard links (EPERM from link), exist_ok=False still refuses an existing file."
    def no_link(a, b): raise PermissionError(errno.EPERM, "Operation not permitted")
    monkeypatch.setattr(os, "link", no_link)
    path = atomic_write(tmp_path / "a.bin", lambda p: p.write_bytes(b"one"), exist_ok=False)
    assert path.read_bytes() == b"one"
    with pytest.raises(FileExistsError): atomic_write(tmp_path / "a.bin", lambda p: p.write_bytes(b"two"), exist_ok=False)
    assert path.read_bytes() == b"one" and sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]

