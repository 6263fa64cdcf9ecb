"Reading VOCdevkit and Kaggle datasets: path forms, years and splits, header detection, tolerances, skip_bad, cache."
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from yolo_voc.boxes import VOC_CLASSES
from yolo_voc.synthetic import make_synthetic_voc, synthetic_style
from yolo_voc.voc import (DatasetError, NORM_TOL, Problem, SPLIT_NAMES, check_dataset, dataset_class_names,
                          find_dataset, load_annotations, parse_voc_xml, voc_to_yolo_text)


def _ids(voc: Path, split: str) -> list[str]:
    return (voc / "ImageSets" / "Main" / f"{split}.txt").read_text().split()


@pytest.fixture
def two_years(tmp_path, synth_voc):
    "A VOCdevkit with VOC2007 (the synthetic set) and a VOC2012 copy with renamed ids and no test split."
    dk = tmp_path / "data" / "VOCdevkit"
    shutil.copytree(synth_voc, dk / "VOC2007")
    y12 = dk / "VOC2012"
    shutil.copytree(synth_voc, y12)
    (y12 / "ImageSets/Main/test.txt").unlink()
    for sub, ext in (("Annotations", "xml"), ("JPEGImages", "jpg")):
        for p in (y12 / sub).glob(f"*.{ext}"): p.rename(p.with_name("2012_" + p.name))
    for s in ("train", "val", "trainval"):
        f = y12 / "ImageSets/Main" / f"{s}.txt"
        f.write_text("".join(f"2012_{i}\n" for i in f.read_text().split()))
    return dk


def test_path_forms(synth_voc):
    n = len(_ids(synth_voc, "trainval"))
    for root in (synth_voc.parent.parent, synth_voc.parent, synth_voc):
        recs = load_annotations(root, "trainval")
        assert len(recs) == n
        assert all(r.image_path.is_file() for r in recs)
    assert find_dataset(synth_voc).base == synth_voc.parent


def test_years_and_splits(two_years):
    dk = two_years
    n07 = {s: len(_ids(dk / "VOC2007", s)) for s in SPLIT_NAMES}
    assert len(load_annotations(dk.parent, "trainval")) == 2 * n07["trainval"]
    assert len(load_annotations(dk, "2007-trainval+2012-trainval")) == 2 * n07["trainval"]
    assert len(load_annotations(dk, ["2007-trainval", "VOC2012-trainval"])) == 2 * n07["trainval"]
    assert len(load_annotations(dk, "trainval", years=["2012"])) == n07["trainval"]
    assert len(load_annotations(dk, "trainval", years=2007)) == n07["trainval"]
    assert len(load_annotations(dk, "test")) == n07["test"]  # only VOC2007 has a test split
    assert len(load_annotations(dk, "2007-test")) == n07["test"]
    assert len(load_annotations(dk, "train+val")) == 2 * n07["trainval"]
    assert len(load_annotations(dk, "trainval+train")) == 2 * n07["trainval"]  # deduplicated
    assert len(load_annotations(dk / "VOC2012", "trainval")) == n07["trainval"]
    assert len(load_annotations(dk, None)) == 2 * 40 - n07["test"]
    ids12 = {r.image_id for r in load_annotations(dk, "2012-train")}
    assert ids12 == {f"2012_{i}" for i in _ids(dk / "VOC2007", "train")}
    with pytest.raises(DatasetError, match="VOC2012/ImageSets/Main/test.txt: missing split file"):
        load_annotations(dk, "2012-test")
    with pytest.raises(DatasetError, match="VOC2010: year folder not found"):
        load_annotations(dk, "2010-trainval")
    with pytest.raises(DatasetError, match="not a split"):
        load_annotations(dk, "train val")


def test_not_a_dataset(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DatasetError) as e:
        load_annotations(tmp_path)
    msg = str(e.value)
    assert msg.startswith(str(tmp_path)) and "VOCdevkit" in msg and "labels" in msg and "stuff/" in msg
    with pytest.raises(DatasetError, match="no such folder"):
        check_dataset(tmp_path / "missing")


def test_voc_xml_details(tmp_path):
    xml = b"""<annotation>
      <object><name> person </name><truncated>1</truncated>
        <part><name>head</name><bndbox><xmin>5</xmin><ymin>5</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></part>
        <bndbox><ymax>80</ymax><xmax> 60.5 </xmax><ymin>11</ymin><xmin>2</xmin></bndbox></object>
      <size><height>100</height><width>120</width></size>
      <object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>120</xmax><ymax>100</ymax></bndbox><difficult>1</difficult><name>dog</name></object>
    </annotation>"""
    a = parse_voc_xml(xml, "Annotations/000009.xml")
    np.testing.assert_allclose(a.boxes, [[1, 10, 60.5, 80], [0, 0, 120, 100]])
    assert a.labels.tolist() == [14, 11] and a.difficult.tolist() == [False, True] and a.truncated.tolist() == [True, False]
    assert (a.width, a.height, a.image_path) == (120, 100, Path("000009.jpg"))


def test_size_from_image_header_and_mismatch(tmp_path):
    voc = make_synthetic_voc(tmp_path, n_images=4, image_size=(96, 64))
    x = voc / "Annotations" / "000001.xml"
    x.write_text(re.sub(r"<size>.*?</size>", "", x.read_text(), flags=re.S))
    y = voc / "Annotations" / "000002.xml"
    y.write_text(y.read_text().replace("<width>96</width>", "<width>64</width>").replace("<height>64</height>", "<height>96</height>"))
    rep = check_dataset(voc)
    assert [p.file for p in rep.problems] == ["VOC2007/Annotations/000002.xml"]
    assert rep.problems[0].problem == ("<size> 64x96 differs from the image VOC2007/JPEGImages/000002.jpg (96x64), only by "
                                       "swapped sides: was the image turned after it was annotated? Re-annotate it, or turn it back")
    recs = {r.image_id: r for r in load_annotations(voc, None, skip_bad=True, problems=[])}
    assert (recs["000001"].width, recs["000001"].height) == (96, 64)
    assert "000002" not in recs


def _kaggle(tmp_path, synth_voc, header: str | None, name="train.csv"):
    kg = tmp_path / "kaggle"
    (kg / "images").mkdir(parents=True, exist_ok=True); (kg / "labels").mkdir(exist_ok=True)
    recs = load_annotations(synth_voc, "trainval")
    for r in recs:
        shutil.copy(r.image_path, kg / "images" / r.image_path.name)
        (kg / "labels" / f"{r.image_id}.txt").write_text(voc_to_yolo_text(r))
    rows = "".join(f"{r.image_id}.jpg,{r.image_id}.txt\n" for r in recs)
    (kg / name).write_text((header + "\n" if header else "") + rows)
    return kg, recs


@pytest.mark.parametrize("header", [None, "img,label", "image,text", "filename,labels"])
def test_kaggle_header_detection(tmp_path, synth_voc, header):
    kg, recs = _kaggle(tmp_path, synth_voc, header)
    got = load_annotations(kg, "train")
    assert [r.image_id for r in got] == [r.image_id for r in recs]  # first image never taken for a header
    for g, r in zip(got, recs):
        np.testing.assert_allclose(g.boxes, r.boxes, atol=0.01)
        assert g.labels.tolist() == r.labels.tolist() and (g.width, g.height) == (r.width, r.height)
    assert len(load_annotations(kg, "trainval")) == len(recs)  # trainval falls back to Kaggle's train.csv


def test_kaggle_headerless_first_row_missing_image(tmp_path, synth_voc):
    kg, recs = _kaggle(tmp_path, synth_voc, None)
    (kg / "images" / f"{recs[0].image_id}.jpg").unlink()
    rep = check_dataset(kg, "train")
    assert [(p.file, p.problem.split(" (")[0]) for p in rep.problems] == [(f"images/{recs[0].image_id}.jpg", "missing image")]
    assert rep.images == len(recs) - 1


def test_tolerance_clipping(tmp_path, synth_voc):
    kg, recs = _kaggle(tmp_path, synth_voc, "img,label")
    r0, r1 = recs[0], recs[1]
    (kg / "labels" / f"{r0.image_id}.txt").write_text(f"0 0.5 0.5 {1 + NORM_TOL / 2} 0.5\n1 0.2 0.3 0.1 0.1\n")
    (kg / "labels" / f"{r1.image_id}.txt").write_text("0 0.5 0.5 1.01 0.5\n1 0.2 0.3 0.1 0.1\n0 0.99 0.5 0.1 0.1\n")
    probs = []
    got = {r.image_id: r for r in load_annotations(kg, "train", skip_bad=True, problems=probs)}
    np.testing.assert_allclose(got[r0.image_id].boxes[0], [0, r0.height / 4, r0.width, 3 * r0.height / 4], atol=1e-3)
    assert len(got[r1.image_id]) == 1
    assert [str(p) for p in probs] == [f"labels/{r1.image_id}.txt: line 1: w 1.01 outside [0, 1]",
                                       f"labels/{r1.image_id}.txt: line 3: box is outside the image (x1=0.94, y1=0.45, x2=1.04, y2=0.55)"]
    # VOC: one pixel over the border is clipped, more is a problem
    voc = make_synthetic_voc(tmp_path / "v", n_images=3, image_size=(96, 64))
    x = voc / "Annotations" / "000001.xml"
    t = x.read_text()
    x.write_text(t.replace(re.search(r"<xmax>\d+</xmax>", t).group(), "<xmax>97</xmax>", 1)
                  .replace(re.search(r"<xmin>\d+</xmin>", t).group(), "<xmin>0</xmin>", 1))
    a = [r for r in load_annotations(voc, None) if r.image_id == "000001"][0]
    assert a.boxes[0, 0] == 0 and a.boxes[0, 2] == 96
    x.write_text(t.replace(re.search(r"<xmax>\d+</xmax>", t).group(), "<xmax>99</xmax>", 1))
    with pytest.raises(DatasetError, match=r"VOC2007/Annotations/000001.xml: box 1 \(\w+\) is outside the 96x64 image"):
        load_annotations(voc, None)


def test_skip_bad(tmp_path):
    voc = make_synthetic_voc(tmp_path, n_images=8, image_size=(96, 64))
    A = voc / "Annotations"
    t = (A / "000001.xml").read_text()
    (A / "000001.xml").write_text(re.sub(r"<name>\w+</name>", "<name>unicorn</name>", t, count=1))
    (voc / "JPEGImages" / "000002.jpg").write_bytes(b"GIF89a nonsense")
    with pytest.raises(DatasetError) as e:
        load_annotations(voc, None)
    assert len(e.value.problems) == 2 and str(e.value).startswith(str(voc.parent))
    probs = []
    with pytest.warns(UserWarning, match="skipped 2 problems"):
        recs = load_annotations(voc, None, skip_bad=True, problems=probs)
    assert [p.file for p in probs] == ["VOC2007/Annotations/000001.xml", "VOC2007/JPEGImages/000002.jpg"]
    assert probs == e.value.problems
    ids = [r.image_id for r in recs]
    assert "000002" not in ids and len(ids) == 7
    n_objects = t.count("<object>")
    r1 = recs[ids.index("000001")]
    assert len(r1) == n_objects - 1 or (n_objects == 1 and "000001" not in ids)


def test_skip_bad_nothing_left(tmp_path):
    voc = make_synthetic_voc(tmp_path, n_images=2, image_size=(64, 64))
    for p in (voc / "JPEGImages").glob("*.jpg"): p.unlink()
    with pytest.raises(DatasetError, match="missing image"):
        load_annotations(voc, None, skip_bad=True)


def test_check_cache(tmp_path, monkeypatch):
    import yolo_voc.voc as voc_mod
    voc = make_synthetic_voc(tmp_path / "d", n_images=12, image_size=(96, 64))
    cache = tmp_path / "cache" / "check.json"
    calls = {"n": 0}
    real = voc_mod._raw_voc_xml
    def counting(data):
        calls["n"] += 1
        return real(data)
    monkeypatch.setattr(voc_mod, "_raw_voc_xml", counting)
    r1 = check_dataset(voc, cache=cache)
    assert cache.is_file() and r1.cache_hits == 0 and calls["n"] == 12
    r2 = check_dataset(voc, cache=cache)
    assert r2.cache_hits == 12 and calls["n"] == 12  # nothing re-read
    assert r2.to_dict() == r1.to_dict()
    # change one file: only it is read again, and its new problem is found
    x = voc / "Annotations" / "000005.xml"
    x.write_text(x.read_text().replace("<name>", "<name>x", 1))
    r3 = check_dataset(voc, cache=cache)
    assert r3.cache_hits == 11 and calls["n"] == 13
    assert [p.file for p in r3.problems] == ["VOC2007/Annotations/000005.xml"]
    # load_annotations shares the cache; a corrupt cache file is ignored
    cache.write_text("{not json")
    assert check_dataset(voc, cache=cache).cache_hits == 0
    # cache=True: a per-dataset file in $YOLO_VOC_CACHE
    monkeypatch.setenv("YOLO_VOC_CACHE", str(tmp_path / "env_cache"))
    check_dataset(voc, cache=True)
    assert len(list((tmp_path / "env_cache").glob("check-*.json"))) == 1
    assert check_dataset(voc, cache=True).cache_hits == 12


def test_torchvision_reads_synthetic(synth_voc):
    from torchvision.datasets import VOCDetection
    ds = VOCDetection(root=synth_voc.parent.parent, year="2007", image_set="trainval", download=False)
    recs = load_annotations(synth_voc, "trainval")
    assert len(ds) == len(recs)
    for i in (0, len(ds) - 1):
        img, target = ds[i]
        objs = target["annotation"]["object"]
        assert img.size == (recs[i].width, recs[i].height) and len(objs) == len(recs[i])
        tv = np.array([[float(o["bndbox"][k]) for k in ("xmin", "ymin", "xmax", "ymax")] for o in objs]) - [1, 1, 0, 0]
        np.testing.assert_allclose(tv, recs[i].boxes)
        assert [VOC_CLASSES.index(o["name"]) for o in objs] == recs[i].labels.tolist()


def test_synthetic_properties(synth_voc, tmp_path):
    rep = check_dataset(synth_voc)
    assert rep.ok and rep.images == 40 and rep.objects >= 40
    assert 0 < rep.difficult < rep.objects / 4
    recs = load_annotations(synth_voc, None)
    assert any(r.truncated.any() for r in recs)
    assert all(1 <= len(r) <= 6 for r in recs)
    # split files partition the images
    tr, va, te, tv = (set(_ids(synth_voc, s)) for s in ("train", "val", "test", "trainval"))
    assert tr | va == tv and not (tr & va) and not (tv & te) and len(tv | te) == 40
    # every class has a unique (shape, colour)
    assert len({synthetic_style(i) for i in range(20)}) == 20
    # deterministic per seed, different across seeds
    a = make_synthetic_voc(tmp_path / "a", n_images=3, image_size=(160, 120), seed=0)
    assert (a / "JPEGImages/000002.jpg").read_bytes() == (synth_voc / "JPEGImages/000002.jpg").read_bytes()
    b = make_synthetic_voc(tmp_path / "b", n_images=3, image_size=(160, 120), seed=1)
    assert (b / "Annotations/000001.xml").read_text() != (a / "Annotations/000001.xml").read_text()
    # a smaller class list
    c = make_synthetic_voc(tmp_path / "c", n_images=10, image_size=(64, 64), class_names=VOC_CLASSES[:3])
    assert max(r.labels.max() for r in load_annotations(c, None, class_names=VOC_CLASSES[:3])) < 3
    with pytest.raises(ValueError):
        make_synthetic_voc(tmp_path / "d", n_images=1, image_size=8)


def test_synthetic_scales(tmp_path):
    voc = make_synthetic_voc(tmp_path, n_images=60, image_size=(128, 96), seed=3)
    b = np.concatenate([r.boxes for r in load_annotations(voc, None)])
    side = np.sqrt((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])) / 96
    small, medium, large = np.histogram(side, [0, 0.12, 0.35, 2])[0]
    assert small > 0 and medium > 0 and large > 0


# --- issue 16: a box with xmax == xmin is one pixel wide in the devkit's 1-based inclusive corners ---

def test_one_pixel_box(tmp_path):
    xml = b"""<annotation><size><width>100</width><height>80</height></size>
      <object><name>dog</name><bndbox><xmin>60</xmin><ymin>10</ymin><xmax>60</xmax><ymax>20</ymax></bndbox></object>
      <object><name>cat</name><bndbox><xmin>5</xmin><ymin>7</ymin><xmax>9</xmax><ymax>7</ymax></bndbox></object>
    </annotation>"""
    a = parse_voc_xml(xml, "Annotations/000001.xml")
    np.testing.assert_array_equal(a.boxes, [[59, 9, 60, 20], [4, 6, 9, 7]])
    assert a.labels.tolist() == [11, 7]
    with pytest.raises(DatasetError, match=r"000001.xml: box 1 \(dog\) has xmax < xmin"):
        parse_voc_xml(xml.replace(b"<xmax>60</xmax>", b"<xmax>59</xmax>"), "Annotations/000001.xml")
    voc = make_synthetic_voc(tmp_path, n_images=3, image_size=(96, 64))
    x = voc / "Annotations" / "000001.xml"
    t = x.read_text()
    x.write_text(re.sub(r"<xmax>\d+</xmax>", re.search(r"<xmin>\d+</xmin>", t).group().replace("xmin", "xmax"), t, count=1))
    rep = check_dataset(voc)
    assert rep.ok, rep.problems
    r1 = [r for r in load_annotations(voc, None) if r.image_id == "000001"][0]
    assert r1.boxes[0, 2] - r1.boxes[0, 0] == 1


# --- issue 13: class names come from the data ---

def test_class_names_rules(tmp_path, synth_voc):
    # a synthetic set names its own classes, from any of the folders a user may point at
    five = make_synthetic_voc(tmp_path / "five", n_images=4, image_size=(64, 64), class_names=VOC_CLASSES[:5])
    assert (five.parent / "classes.txt").read_text() == "aeroplane\nbicycle\nbird\nboat\nbottle\n"
    for root in (tmp_path / "five", five.parent, five):
        assert dataset_class_names(root) == ("aeroplane", "bicycle", "bird", "boat", "bottle")
    # without classes.txt: a devkit (or a VOC2007 folder alone) with VOC names gives the 20 in devkit order
    dk = tmp_path / "dk" / "VOCdevkit"
    shutil.copytree(synth_voc, dk / "VOC2007")
    assert dataset_class_names(dk.parent) == VOC_CLASSES == dataset_class_names(dk / "VOC2007")
    # a LabelImg-style export (any folder name) with other names: the names used, sorted
    ex = tmp_path / "my_export"
    shutil.copytree(synth_voc, ex)
    for x in (ex / "Annotations").glob("*.xml"):
        x.write_text(re.sub(r"<name>(\w+)</name>", lambda m: "<name>" + ("Zebra" if m.group(1) < "d" else "apple") + "</name>",
                            x.read_text()))
    assert dataset_class_names(ex) == ("Zebra", "apple")
    # the same names in a VOCdevkit tree: it is Pascal VOC, and every other name is a problem with its file
    y = tmp_path / "dk2" / "VOCdevkit" / "VOC2007"
    shutil.copytree(ex, y)
    assert dataset_class_names(y) == VOC_CLASSES == dataset_class_names(y.parent.parent)
    rep = check_dataset(y, "trainval", dataset_class_names(y))
    assert not rep.ok and rep.images == 0 and {p.file for p in rep.problems} == {
        f"VOC2007/Annotations/{i}.xml" for i in _ids(synth_voc, "trainval")}
    assert all(re.fullmatch(r"box \d+: unknown class '(Zebra|apple)'", p.problem) for p in rep.problems)
    # classes.txt in the folder pointed at, or in the layout's base, wins (BOM and trailing blank lines ignored)
    (ex / "classes.txt").write_bytes("\ufeffapple\nZebra\ntraffic light\n\n\n".encode())
    assert dataset_class_names(ex) == ("apple", "Zebra", "traffic light")
    (y.parent / "classes.txt").write_text("one\ntwo\n")
    assert dataset_class_names(y) == ("one", "two") == dataset_class_names(y.parent.parent)
    (y.parent / "classes.txt").write_text("one\ntwo\none\n")
    with pytest.raises(DatasetError, match=r"VOCdevkit/classes.txt: line 3 'one' repeats line 1$"):
        dataset_class_names(y)
    (y.parent / "classes.txt").write_text("one\n\ntwo\n")  # a blank line would shift every later class index
    with pytest.raises(DatasetError, match=r"VOCdevkit/classes.txt: line 2 is blank"):
        dataset_class_names(y)
    (y.parent / "classes.txt").write_text("Cat\ndog\ncat\n\n\ndog\n")
    with pytest.raises(DatasetError) as e:
        dataset_class_names(y)
    assert [p.problem for p in e.value.problems] == [
        "line 3 'cat' differs from line 1 'Cat' only in case: use one spelling",
        "line 4 is blank (one class name per line, in class index order: remove it)",
        "line 5 is blank (one class name per line, in class index order: remove it)", "line 6 'dog' repeats line 2"]
    assert str(e.value).startswith(f"{y.parent / 'classes.txt'}: 4 problems:\n")
    (y.parent / "classes.txt").write_text("\n \n")
    with pytest.raises(DatasetError, match=r"VOCdevkit/classes.txt: no class names"):
        dataset_class_names(y)
    # Kaggle: numeric labels, the 20 VOC names (unless a classes.txt says otherwise)
    kg, _ = _kaggle(tmp_path, synth_voc, None)
    assert dataset_class_names(kg) == VOC_CLASSES
    (kg / "classes.txt").write_text("a\nb\n")
    assert dataset_class_names(kg) == ("a", "b")
    # only the named splits are read; no split files at all is a clear error
    (ex / "classes.txt").unlink()
    (ex / "ImageSets" / "Main" / "one.txt").write_text("000001\n")
    x = ex / "Annotations" / "000001.xml"
    x.write_text(re.sub(r"<name>\w+</name>", "<name>kiwi</name>", x.read_text()))
    assert dataset_class_names(ex, "one") == ("kiwi",)
    assert dataset_class_names(ex, ["one", "test"]) == ("Zebra", "apple", "kiwi") == dataset_class_names(ex)
    for f in (ex / "ImageSets" / "Main").glob("*.txt"): f.unlink()
    with pytest.raises(DatasetError, match="my_export/ImageSets/Main: no split files"):
        dataset_class_names(ex)


def test_class_names_share_the_check_cache(tmp_path, synth_voc, monkeypatch):
    import yolo_voc.voc as voc_mod
    root = tmp_path / "d"
    shutil.copytree(synth_voc.parent.parent, root)
    (root / "VOCdevkit" / "classes.txt").unlink()
    parsed = []
    real = voc_mod._raw_voc_xml
    monkeypatch.setattr(voc_mod, "_raw_voc_xml", lambda data: parsed.append(1) or real(data))
    cache = tmp_path / "check.json"
    assert dataset_class_names(root, cache=cache) == VOC_CLASSES and parsed == []  # a devkit: VOC, nothing read
    export = root / "VOCdevkit" / "VOC2007"
    export.rename(tmp_path / "export")  # the same files as a LabelImg export: named by its annotations
    names = dataset_class_names(tmp_path / "export", cache=cache)
    assert set(names) <= set(VOC_CLASSES) and len(parsed) == 40
    rep = check_dataset(tmp_path / "export", None, names, cache=cache)
    assert (len(parsed), rep.cache_hits, rep.images) == (40, 40, 40)  # each XML parsed once between the two


# --- issue 15 / fit: several splits in one check, each problem once ---

def test_check_several_splits_once(tmp_path, synth_voc):
    dk = tmp_path / "VOCdevkit"
    shutil.copytree(synth_voc, dk / "VOC2007")
    M = dk / "VOC2007" / "ImageSets" / "Main"
    tv, te = _ids(dk / "VOC2007", "trainval"), _ids(dk / "VOC2007", "test")
    (M / "test.txt").write_text("".join(f"{i}\n" for i in te + [tv[0]]))  # one image in both splits
    (dk / "VOC2007" / "JPEGImages" / f"{tv[0]}.jpg").unlink()
    missing = Problem(f"VOC2007/JPEGImages/{tv[0]}.jpg", f"missing image for VOC2007/Annotations/{tv[0]}.xml")
    rep = check_dataset(dk, ["trainval", "test"])
    assert rep.problems == [missing] and rep.images == 39
    assert check_dataset(dk, "trainval+test").to_dict() == rep.to_dict()
    # no validation split named: [train, None] means every split file, as None does
    assert check_dataset(dk, ["trainval", None]).to_dict() == check_dataset(dk, None).to_dict()
    # a problem about the splits themselves is listed once too
    rep = check_dataset(dk, ["2010-trainval", "2010-test"])
    assert [str(p) for p in rep.problems] == ["VOC2010: year folder not found (have VOC2007)"]


# --- issue 17: split files and pairing ---

def test_split_file_bom_and_duplicates(tmp_path, synth_voc):
    dk = tmp_path / "VOCdevkit"
    shutil.copytree(synth_voc, dk / "VOC2007")
    ids = _ids(dk / "VOC2007", "train")
    f = dk / "VOC2007" / "ImageSets" / "Main" / "train.txt"
    f.write_bytes(b"\xef\xbb\xbf" + "".join(f"{i}\r\n" for i in ids + [ids[3], ids[0], ids[3]]).encode())
    rep = check_dataset(dk, "train")
    assert rep.ok and rep.images == len(ids)  # the first id kept, duplicates read once
    assert [str(w) for w in rep.warnings] == [
        f"VOC2007/ImageSets/Main/train.txt: lists 2 ids more than once ({ids[3]!r}, {ids[0]!r}); each is used once"]
    assert [r.image_id for r in load_annotations(dk, "train")] == ids
    d = rep.to_dict()
    assert d["warnings"] == [{"file": "VOC2007/ImageSets/Main/train.txt", "problem": rep.warnings[0].problem}]
    assert str(rep).splitlines()[-2:] == ["warnings: 1", f"  {rep.warnings[0]}"]
    # Kaggle CSVs: the same
    kg, recs = _kaggle(tmp_path, synth_voc, None)
    rows = (kg / "train.csv").read_text()
    (kg / "train.csv").write_bytes(b"\xef\xbb\xbf" + (rows + rows.splitlines(keepends=True)[1]).encode())
    rep = check_dataset(kg, "train")
    assert rep.ok and rep.images == len(recs)
    assert [str(w) for w in rep.warnings] == [f"train.csv: lists 1 images more than once ('{recs[1].image_id}.jpg'); each is used once"]


def test_filename_tag_does_not_pair(tmp_path):
    voc = make_synthetic_voc(tmp_path, n_images=4, image_size=(96, 64))
    x = voc / "Annotations" / "000002.xml"
    x.write_text(x.read_text().replace("<filename>000002.jpg", "<filename>000003.jpg"))
    # parse_voc_xml and the dataset reader both read JPEGImages/<id>.jpg
    assert parse_voc_xml(x.read_bytes(), "Annotations/000002.xml", image_dir=voc / "JPEGImages").image_path == voc / "JPEGImages/000002.jpg"
    rep = check_dataset(voc)
    assert rep.ok and rep.images == 4
    assert [str(w) for w in rep.warnings] == ["VOC2007/Annotations/000002.xml: <filename> is '000003.jpg', not '000002.jpg'; "
                                              "the image read is VOC2007/JPEGImages/000002.jpg, as the VOC devkit pairs them"]
    recs = {r.image_id: r for r in load_annotations(voc, None)}
    assert recs["000002"].image_path == voc / "JPEGImages" / "000002.jpg"
    # the image <id>.jpg missing: a problem, even though <filename> names an existing image
    (voc / "JPEGImages" / "000002.jpg").unlink()
    assert [str(p) for p in check_dataset(voc).problems] == [
        "VOC2007/JPEGImages/000002.jpg: missing image for VOC2007/Annotations/000002.xml"]
    # a path or another slash in <filename> is not a mismatch
    x.write_text(x.read_text().replace("<filename>000003.jpg", "<filename>C:\\data\\000002.jpg"))
    assert check_dataset(voc).warnings == []


# --- the Kaggle mount: /kaggle/input/<slug>/PASCAL_VOC ---

def test_kaggle_nested(tmp_path, synth_voc):
    kg, recs = _kaggle(tmp_path, synth_voc, None)
    slug = tmp_path / "input" / "pascal-voc-dataset-used-in-yolov3-video"
    shutil.move(kg, slug / "PASCAL_VOC")
    layout = slug / "PASCAL_VOC"
    rows = (layout / "train.csv").read_text().splitlines(keepends=True)
    (layout / "train.csv").write_text("".join(rows[:-5]))
    (layout / "test.csv").write_text("".join(rows[-5:]))
    (layout / "100examples.csv").write_text("".join(rows[:10]))
    (layout / "8examples.csv").write_text("".join(rows[:8]))
    for root in (layout, slug, slug.parent):
        assert find_dataset(root).kind == "kaggle" and find_dataset(root).base == layout
        assert [len(load_annotations(root, s)) for s in ("train", "test", "100examples", "8examples")] == [len(recs) - 5, 5, 10, 8]
    rep = check_dataset(slug)
    assert rep.ok and rep.images == len(recs)
    with pytest.raises(DatasetError, match="'2007-train'|no VOC years"):
        load_annotations(slug, "2007-train")
    # two copies below the root: refused, naming both
    shutil.copytree(layout, tmp_path / "input" / "copy" / "PASCAL_VOC")
    with pytest.raises(DatasetError, match=r"2 Kaggle-layout folders below it \(copy/PASCAL_VOC, pascal-voc"):
        find_dataset(tmp_path / "input")
    # three levels down is too far
    deep = tmp_path / "deep"
    shutil.copytree(layout, deep / "a" / "b" / "PASCAL_VOC")
    with pytest.raises(DatasetError, match="not a dataset folder"):
        find_dataset(deep)
