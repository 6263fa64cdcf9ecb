"The real `yolo-voc` console script on clean and deliberately broken datasets."
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import contextlib
import io

import pytest

from yolo_voc.boxes import VOC_CLASSES
from yolo_voc.cli import main
from yolo_voc.synthetic import make_synthetic_voc
from yolo_voc.voc import load_annotations, voc_to_yolo_text

EXE = shutil.which("yolo-voc") or str(Path(sys.executable).parent / "yolo-voc")


def run(*args, tmp):
    "Run the real console script (a few seconds: it imports torch); the check cache goes to `tmp`."
    env = {**os.environ, "YOLO_VOC_CACHE": str(tmp / "cache")}
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, env=env, timeout=120)


def run_here(*args, tmp, monkeypatch):
    "The same command in-process through `main` (fast): a CompletedProcess-like result."
    monkeypatch.setenv("YOLO_VOC_CACHE", str(tmp / "cache"))
    with contextlib.redirect_stdout(io.StringIO()) as o, contextlib.redirect_stderr(io.StringIO()) as e:
        rc = main([str(a) for a in args])
    return subprocess.CompletedProcess(args, rc, o.getvalue(), e.getvalue())


def test_synth_then_check_clean(tmp_path, monkeypatch):
    r = run("synth", tmp_path / "out", "--images", "15", "--image_size", "128x96", "--classes", "5", "--seed", "2", tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    voc = tmp_path / "out" / "VOCdevkit" / "VOC2007"
    assert str(voc) in r.stdout and len(list((voc / "JPEGImages").glob("*.jpg"))) == 15
    r = run("check", tmp_path / "out", "--json", tmp=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    d = json.loads(r.stdout)  # exactly one JSON object
    assert sorted(d) == ["difficult", "images", "objects", "per_class", "problems", "warnings"]
    assert d["images"] == 15 and d["problems"] == [] and d["objects"] == sum(d["per_class"].values())
    assert set(k for k, v in d["per_class"].items() if v) <= {"aeroplane", "bicycle", "bird", "boat", "bottle"}
    r = run_here("check", voc, tmp=tmp_path, monkeypatch=monkeypatch)  # text, a second time: from the cache
    assert r.returncode == 0 and "images: 15" in r.stdout and "problems: 0" in r.stdout
    assert list((tmp_path / "cache").glob("check-*.json"))


def _set_first(xml: str, **values) -> str:
    "Replace the first <tag>..</tag> of each tag in `values`."
    for tag, v in values.items():
        xml = re.sub(rf"<{tag}>[^<]*</{tag}>", f"<{tag}>{v}</{tag}>", xml, count=1)
    return xml


def test_broken_voc(tmp_path, monkeypatch):
    voc = make_synthetic_voc(tmp_path / "d", n_images=16, image_size=(160, 120), seed=1)
    A, J, M = voc / "Annotations", voc / "JPEGImages", voc / "ImageSets" / "Main"
    ids = [f"{i:06d}" for i in range(1, 17)]
    (M / "train.txt").write_text("".join(f"{i}\n" for i in ids))
    (M / "trainval.txt").write_text("".join(f"{i}\n" for i in ids) + "999999\n")   # split names a missing id
    (M / "val.txt").write_text("\n")                                                # empty split
    (M / "test.txt").unlink()                                                       # missing split file
    jpg = (J / "000001.jpg").read_bytes()
    (J / "000001.jpg").write_bytes(jpg[: len(jpg) // 2])                            # truncated JPEG
    (J / "000002.jpg").write_text("this is not an image")                           # not an image
    (J / "000003.jpg").unlink()                                                     # missing image
    (A / "000004.xml").write_text((A / "000004.xml").read_text()[:150])             # malformed XML
    x = (A / "000005.xml").read_text()
    (A / "000005.xml").write_text(re.sub(r"<object>.*</object>\s*", "", x, flags=re.S))  # no objects
    (A / "000006.xml").write_text(_set_first((A / "000006.xml").read_text(), xmin=100, xmax=50))  # xmax < xmin
    (A / "000007.xml").write_text(_set_first((A / "000007.xml").read_text(), xmin=60, xmax=60))   # 1 px wide: valid
    (A / "000008.xml").write_text(_set_first((A / "000008.xml").read_text(), xmin=10, xmax=400))  # outside the image
    (A / "000009.xml").write_text(_set_first((A / "000009.xml").read_text(), name="unicorn"))     # unknown class
    r = run("check", tmp_path / "d", "--split", "2007-train+2007-val+2007-trainval+2007-test", "--json", tmp=tmp_path)
    assert r.returncode == 1, r.stderr
    probs = json.loads(r.stdout)["problems"]
    got = [(p["file"], p["problem"]) for p in probs]
    expected = [
        ("VOC2007/ImageSets/Main/test.txt", "missing split file"),
        ("VOC2007/ImageSets/Main/val.txt", "split is empty"),
        ("VOC2007/JPEGImages/000001.jpg", "truncated"),
        ("VOC2007/JPEGImages/000002.jpg", "not an image"),
        ("VOC2007/JPEGImages/000003.jpg", "missing image"),
        ("VOC2007/Annotations/000004.xml", "malformed XML"),
        ("VOC2007/Annotations/000005.xml", "no objects"),
        ("VOC2007/Annotations/000006.xml", "box 1 (.*) has xmax < xmin"),
        ("VOC2007/Annotations/000008.xml", "box 1 (.*) is outside the 160x120 image"),
        ("VOC2007/Annotations/000009.xml", "box 1: unknown class 'unicorn'"),
        ("VOC2007/ImageSets/Main/trainval.txt", "names '999999' but VOC2007/Annotations/999999.xml does not exist"),
    ]
    assert len(got) == len(expected), got  # each problem once, the good files (000007 included) not flagged
    for f, pat in expected:
        assert any(gf == f and re.search(pat, gp) for gf, gp in got), (f, pat, got)
    # the text report lists the same problems, one per line, each starting with its file
    r = run_here("check", voc, "--split", "2007-train+2007-val+2007-trainval+2007-test", "--no_cache", tmp=tmp_path,
                 monkeypatch=monkeypatch)
    assert r.returncode == 1
    lines = [l.strip() for l in r.stdout.splitlines()]
    for f, p in got: assert f"{f}: {p}" in lines


def kaggle_copy(voc: Path, kg: Path) -> list:
    "The Kaggle layout of `voc` in `kg` (images/, labels/*.txt, train.csv of every image); returns its records."
    (kg / "images").mkdir(parents=True); (kg / "labels").mkdir()
    recs = load_annotations(voc, None)
    for r in recs:
        shutil.copy(r.image_path, kg / "images")
        (kg / "labels" / f"{r.image_id}.txt").write_text(voc_to_yolo_text(r))
    (kg / "train.csv").write_text("image,label\n" + "".join(f"{r.image_id}.jpg,{r.image_id}.txt\n" for r in recs))
    return recs


def test_broken_kaggle(tmp_path, monkeypatch):
    voc = make_synthetic_voc(tmp_path / "v", n_images=8, image_size=(96, 64), seed=2)
    kg = tmp_path / "kaggle"
    kaggle_copy(voc, kg)
    (kg / "test.csv").write_text("000001.jpg,000001.txt\n")
    L = kg / "labels"
    (L / "000001.txt").write_text("3 0.5 0.5 0.2\n")                 # wrong field count
    (L / "000002.txt").write_text("3 0.5 half 0.2 0.2\n")            # not a number
    (L / "000003.txt").write_text("3 0.5 0.5 1.5 0.2\n")             # outside [0, 1]
    (L / "000004.txt").write_text("42 0.5 0.5 0.2 0.2\n")            # unknown class index
    (L / "000005.txt").unlink()                                      # missing label file
    r = run_here("check", kg, "--json", "--no_cache", tmp=tmp_path, monkeypatch=monkeypatch)
    assert r.returncode == 1
    got = [(p["file"], p["problem"]) for p in json.loads(r.stdout)["problems"]]
    expected = [("labels/000001.txt", "line 1: expected 5 fields"), ("labels/000002.txt", "line 1: 'half' is not a number"),
                ("labels/000003.txt", r"line 1: w 1.5 outside \[0, 1\]"), ("labels/000004.txt", "line 1: unknown class 42"),
                ("labels/000005.txt", "missing label file")]
    # 000001 is in both CSVs but is reported once
    assert len(got) == len(expected), got
    for f, pat in expected:
        assert any(gf == f and re.search(pat, gp) for gf, gp in got), (f, pat, got)
    assert json.loads(r.stdout)["images"] == 3


def test_not_a_dataset_and_usage(tmp_path, monkeypatch):
    r = run_here("check", tmp_path, "--json", tmp=tmp_path, monkeypatch=monkeypatch)
    assert r.returncode == 1
    d = json.loads(r.stdout)
    assert d["images"] == 0 and "not a dataset folder" in d["problems"][0]["problem"]
    r = run_here("check", tmp_path / "nope", tmp=tmp_path, monkeypatch=monkeypatch)
    assert r.returncode == 1 and "no such folder" in r.stdout
    r = run("frobnicate", tmp=tmp_path)  # usage errors answer without importing torch
    assert r.returncode == 2 and "unknown command" in r.stderr
    r = run("--help", tmp=tmp_path)
    assert r.returncode == 0 and "synth" in r.stdout and "check" in r.stdout
    assert run_here("synth", tmp_path / "x", "--classes", "99", tmp=tmp_path, monkeypatch=monkeypatch).returncode == 2


# --- issue 21: VOCdevkit trees are Pascal VOC; class lists read one way ---

def test_stray_class_in_a_devkit(tmp_path, monkeypatch):
    "A VOCdevkit with VOC names and one `unicorn` stays the 20 VOC classes: check and fit list the stray name with its file."
    voc = make_synthetic_voc(tmp_path / "d", n_images=8, image_size=(96, 64), seed=0)
    (voc.parent / "classes.txt").unlink()  # a devkit as VOC ships it
    x = voc / "Annotations" / "000003.xml"
    x.write_text(_set_first(x.read_text(), name="unicorn"))
    r = run_here("check", tmp_path / "d", "--no_cache", tmp=tmp_path, monkeypatch=monkeypatch)
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert lines[1] == (f"classes: the 20 Pascal VOC classes, as a VOCdevkit tree has (a classes.txt in {voc.parent} "
                        f"would name others)")
    assert lines[-2:] == ["problems: 1", "  VOC2007/Annotations/000003.xml: box 1: unknown class 'unicorn'"]
    assert sum(l.startswith("  ") and l.split()[0] in VOC_CLASSES for l in lines) == 20 and "unicorn" not in lines[3:-2]
    from yolo_voc.data import VOCDataModule
    from yolo_voc.voc import DatasetError
    dm = VOCDataModule(str(tmp_path / "d"), image_size=64, batch_size=2, num_workers=0)
    assert dm.class_names == VOC_CLASSES
    with pytest.raises(DatasetError, match=r"VOC2007/Annotations/000003.xml: box 1: unknown class 'unicorn'"):
        dm.setup("fit")


def test_classes_file_read_as_classes_txt(tmp_path, monkeypatch):
    "`check --classes FILE` reads FILE as a dataset's classes.txt: names with spaces, a BOM; bad lines are errors (exit 2)."
    voc = make_synthetic_voc(tmp_path / "d", n_images=6, image_size=(96, 64), seed=0, class_names=("traffic light", "cat"))
    assert (voc.parent / "classes.txt").read_text() == "traffic light\ncat\n"
    names = tmp_path / "names.txt"
    names.write_bytes("\ufefftraffic light\r\ncat\r\n".encode())  # as Windows Notepad writes it
    for extra in ([], ["--classes", names]):
        r = run_here("check", tmp_path / "d", "--json", "--no_cache", *extra, tmp=tmp_path, monkeypatch=monkeypatch)
        d = json.loads(r.stdout)
        assert (r.returncode, list(d["per_class"]), d["problems"]) == (0, ["traffic light", "cat"], [])
    names.write_text("traffic light\n\ncat\ncat\n")
    r = run_here("check", tmp_path / "d", "--classes", names, tmp=tmp_path, monkeypatch=monkeypatch)
    assert r.returncode == 2 and r.stdout == ""
    assert f"{names}: 2 problems:" in r.stderr and f"{names}: line 2 is blank" in r.stderr
    assert f"{names}: line 4 'cat' repeats line 3" in r.stderr
    r = run_here("check", tmp_path / "d", "--classes", tmp_path / "nmaes.txt", tmp=tmp_path, monkeypatch=monkeypatch)
    assert r.returncode == 2 and "nmaes.txt: no such file" in r.stderr


def test_names_that_differ_only_in_case(tmp_path, monkeypatch):
    "In a custom folder, `Cat` and `cat` are one problem naming both spellings and the files that use them."
    voc = make_synthetic_voc(tmp_path / "s", n_images=8, image_size=(96, 64), seed=0, class_names=("cat", "dog"))
    export = tmp_path / "labelimg_export"
    shutil.copytree(voc, export)  # Annotations/, JPEGImages/, ImageSets/ in a folder of any name, no classes.txt
    cats = sorted(x.name for x in (export / "Annotations").glob("*.xml") if "<name>cat</name>" in x.read_text())
    for name in cats[:2]:
        x = export / "Annotations" / name
        x.write_text(x.read_text().replace("<name>cat</name>", "<name>Cat</name>"))
    r = run_here("check", export, "--json", "--no_cache", tmp=tmp_path, monkeypatch=monkeypatch)
    d = json.loads(r.stdout)
    assert r.returncode == 1 and list(d["per_class"]) == ["Cat", "cat", "dog"]
    files = [f"labelimg_export/Annotations/{n}" for n in cats]
    rest = f" and {len(files) - 5} more" if len(files) > 5 else ""
    assert d["problems"] == [{"file": files[0], "problem": (
        f"class names that differ only in case: 'Cat' in {', '.join(files[:2])}; "
        f"'cat' in {', '.join(files[2:5])}{rest}; use one spelling")}]


def test_kaggle_layout_says_what_its_map_means(tmp_path):
    "The Kaggle copy has no difficult flags: the run's report says its mAP is not the VOC07 figure; VOC data and the synthetic set say nothing."
    from yolo_voc.callbacks import evaluation_note
    from yolo_voc.data import VOCDataModule
    voc = make_synthetic_voc(tmp_path / "v", n_images=4, image_size=(96, 64), seed=2)
    kg = tmp_path / "kaggle"
    recs = kaggle_copy(voc, kg)
    (kg / "test.csv").write_text("image,label\n" + "".join(f"{r.image_id}.jpg,{r.image_id}.txt\n" for r in recs))
    note = VOCDataModule(kg).evaluation_note()
    assert note.startswith("the Kaggle layout has no `difficult` flags") and "not the VOC07 figure" in note
    assert VOCDataModule(voc).evaluation_note() is None and VOCDataModule(None).evaluation_note() is None
    trainer = type("T", (), {"datamodule": VOCDataModule(kg)})()
    assert evaluation_note(trainer) == note and evaluation_note(object()) is None
