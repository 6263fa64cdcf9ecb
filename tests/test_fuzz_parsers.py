"Fuzzing the annotation readers: whatever the bytes, the only exception is a DatasetError naming the file."
import string

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from yolo_voc.boxes import VOC_CLASSES
from yolo_voc.voc import DatasetError, Annotation, check_dataset, parse_voc_xml, parse_yolo_labels

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
XML_FILE, TXT_FILE = "VOC2007/Annotations/fuzz.xml", "labels/fuzz.txt"


def _check_voc(data, image_size=None):
    "Strict mode returns an Annotation or raises a DatasetError naming the file; lenient mode never raises."
    try:
        a = parse_voc_xml(data, XML_FILE, image_size=image_size)
        assert isinstance(a, Annotation)
        assert a.boxes.shape == (len(a), 4) and np.isfinite(a.boxes).all()
        assert ((a.boxes[:, 2:] > a.boxes[:, :2]).all() and (a.boxes >= 0).all()
                and (a.boxes[:, [0, 2]] <= a.width).all() and (a.boxes[:, [1, 3]] <= a.height).all())
        assert ((a.labels >= 0) & (a.labels < len(VOC_CLASSES))).all()
    except DatasetError as e:
        assert str(e).startswith(XML_FILE + ": ") and e.problems and all(p.file == XML_FILE for p in e.problems)
    probs = []
    parse_voc_xml(data, XML_FILE, image_size=image_size, problems=probs)
    assert all(p.file == XML_FILE for p in probs)


@FUZZ
@given(st.binary(max_size=300))
def test_voc_random_bytes(data):
    _check_voc(data)


_space = st.sampled_from(["", " ", "\n  ", "\t", " \n"])
_number = st.one_of(st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str),
                    st.sampled_from(["", "abc", "1e400", "-0", "0x10", "1_0", "٣", "273.5", "nan", " 5 "]),
                    st.text(string.printable.replace("<", "").replace("&", ""), max_size=6))
_name = st.one_of(st.sampled_from(VOC_CLASSES), st.sampled_from(["", "Dog", "unicorn", "per son"]),
                  st.text(string.ascii_letters, max_size=8))


@st.composite
def voc_xml(draw):
    "Well-formed VOC-like XML with odd values, optional and reordered tags, whitespace and <part>s."
    sp = lambda: draw(_space)
    def tag(t, v): return f"<{t}>{sp()}{v}{sp()}</{t}>"
    objs = []
    for _ in range(draw(st.integers(0, 4))):
        coords = [tag(t, draw(_number)) for t in ("xmin", "ymin", "xmax", "ymax") if draw(st.booleans()) or draw(st.booleans())]
        parts = [tag("name", draw(_name))]
        if draw(st.booleans()): parts.append("<bndbox>" + "".join(draw(st.permutations(coords))) + "</bndbox>")
        for flag in ("difficult", "truncated"):
            if draw(st.booleans()): parts.append(tag(flag, draw(st.sampled_from(["0", "1", "2", "", "yes", "1.0"]))))
        if draw(st.booleans()):
            parts.append("<part><name>head</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></part>")
        objs.append("<object>" + "".join(draw(st.permutations(parts))) + "</object>")
    top = objs[:]
    if draw(st.booleans()):
        top.append("<size>" + tag("width", draw(_number)) + tag("height", draw(_number)) + "<depth>3</depth></size>")
    if draw(st.booleans()): top.append(tag("filename", draw(st.text(string.ascii_letters + "./_", max_size=12))))
    root = draw(st.sampled_from(["annotation", "annotation", "annotation", "Annotation", "root"]))
    return f"<{root}>" + sp().join(draw(st.permutations(top))) + f"</{root}>"


@FUZZ
@given(voc_xml(), st.one_of(st.none(), st.tuples(st.integers(1, 2000), st.integers(1, 2000))))
def test_voc_wellformed_odd_values(xml, image_size):
    _check_voc(xml, image_size)
    _check_voc(xml.encode("utf-8"), image_size)


def _check_txt(data, w, h):
    try:
        boxes, labels = parse_yolo_labels(data, w, h, TXT_FILE)
        assert boxes.shape == (len(labels), 4) and np.isfinite(boxes).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all() and (boxes >= 0).all()
        assert (boxes[:, [0, 2]] <= w + 1e-3).all() and (boxes[:, [1, 3]] <= h + 1e-3).all()
    except DatasetError as e:
        assert str(e).startswith(TXT_FILE + ": ") and all(p.file == TXT_FILE for p in e.problems)
    probs = []
    parse_yolo_labels(data, w, h, TXT_FILE, problems=probs)
    assert all(p.file == TXT_FILE for p in probs)


_size = st.integers(-3, 5000)


@FUZZ
@given(st.binary(max_size=200), _size, _size)
def test_labels_random_bytes(data, w, h):
    _check_txt(data, w, h)


_token = st.one_of(st.integers(-3, 25).map(str), st.floats(-0.1, 1.1).map(lambda v: f"{v:.4f}"),
                   st.floats(allow_nan=True, allow_infinity=True).map(str), st.sampled_from(["x", "", "1e5", "0.5,"]))
_line = st.lists(_token, min_size=0, max_size=7).map(" ".join)


@FUZZ
@given(st.lists(_line, max_size=6).map("\n".join), _size, _size)
def test_labels_odd_lines(text, w, h):
    _check_txt(text, w, h)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(csv_data=st.binary(max_size=120), label=st.binary(max_size=80))
def test_kaggle_folder_never_crashes(tmp_path, csv_data, label):
    "A Kaggle folder with a random CSV and label file: check_dataset reports problems, never raises."
    (tmp_path / "images").mkdir(exist_ok=True); (tmp_path / "labels").mkdir(exist_ok=True)
    (tmp_path / "train.csv").write_bytes(csv_data)
    (tmp_path / "labels" / "a.txt").write_bytes(label)
    (tmp_path / "images" / "a.jpg").write_bytes(b"\xff\xd8\xff" + label)
    rep = check_dataset(tmp_path, "train")
    assert all(isinstance(p.file, str) and p.file for p in rep.problems)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(split=st.one_of(st.binary(max_size=60), st.lists(st.sampled_from(["a", "b", "\ufeffa", "a\r", "", "  b  ", "c d"]),
                                                        max_size=6).map(lambda l: "\n".join(l).encode())))
def test_voc_split_file_never_crashes(tmp_path, split):
    "A VOCdevkit with a random split file: check_dataset reports problems and warnings, each naming a file, never raises."
    y = tmp_path / "VOCdevkit" / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"): (y / sub).mkdir(parents=True, exist_ok=True)
    (y / "Annotations" / "a.xml").write_text("<annotation><object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
                                             "<xmax>2</xmax><ymax>2</ymax></bndbox></object></annotation>")
    (y / "ImageSets" / "Main" / "train.txt").write_bytes(split)
    rep = check_dataset(tmp_path, "train")
    assert all(isinstance(p.file, str) and p.file for p in rep.problems + rep.warnings)
    assert len(set(rep.problems)) == len(rep.problems)  # each problem once
