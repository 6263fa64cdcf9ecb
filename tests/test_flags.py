"""One spelling for each shared flag: every option of every argparse command is spelled with underscores, as fit's are
(`--ckpt_path`, `--image_size`, `--batch_size`); its hyphenated spelling and `--ckpt` still parse to the same values,
and a flag that is neither is still a usage error (exit 2)."""
import contextlib
import io
import json

import pytest

from yolo_voc.cli import check, download, export_parser, main, predict_main, predict_parser, app_parser, synth

REQUIRED = {"predict": ["--ckpt_path", "m.pt", "--out", "o", "x.jpg"],
            "export": ["--ckpt_path", "m.pt", "--out", "m.onnx", "--format", "onnx"],
            "app": ["--ckpt_path", "m.pt"]}
PARSERS = {"predict": predict_parser, "export": export_parser, "app": app_parser}


def value_for(action):
    "A command-line value for `action` that differs from its default, or None for a flag without one."
    if action.nargs == 0: return None
    if action.choices: return [c for c in action.choices if c != action.default][0]
    if action.type in (int, float): return "7"
    return "some_value"


def underscore_options(parser):
    "(option, action) for each option of `parser` whose name has an underscore."
    return [(o, a) for a in parser._actions for o in a.option_strings if o.startswith("--") and "_" in o]


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_hyphenated_spelling_parses_as_the_underscore_one(name):
    parser = PARSERS[name]()
    options = underscore_options(parser)
    assert len(options) >= 4, options  # the commands do have such options
    for option, action in options:
        v = value_for(action)
        extra = [] if v is None else [v]
        base = parser.parse_args(REQUIRED[name])
        a = parser.parse_args(REQUIRED[name] + [option] + extra)
        b = parser.parse_args(REQUIRED[name] + [option.replace("_", "-")] + extra)
        c = parser.parse_args(REQUIRED[name] + [option.replace("_", "-") + "=" + v] if v is not None else REQUIRED[name] + [option])
        assert vars(a) == vars(b) == vars(c), (name, option)
        assert getattr(a, action.dest) != getattr(base, action.dest), (name, option)  # the option did something


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_ckpt_is_the_old_spelling_of_ckpt_path(name):
    parser = PARSERS[name]()
    args = REQUIRED[name][2:]
    new, old = parser.parse_args(["--ckpt_path", "a/b.ckpt"] + args), parser.parse_args(["--ckpt", "a/b.ckpt"] + args)
    assert vars(new) == vars(old) and new.ckpt_path == "a/b.ckpt"
    assert parser.parse_args(["--ckpt-path", "a/b.ckpt"] + args).ckpt_path == "a/b.ckpt"
    helptext = parser.format_help()
    assert "--ckpt_path CKPT, --ckpt CKPT" in helptext and "(--ckpt: the old spelling)" in " ".join(helptext.split())


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_help_shows_only_underscore_spellings(name):
    helptext = PARSERS[name]().format_help()
    options = [w.strip("[],") for w in helptext.split() if w.startswith(("--", "[--"))]
    assert "--image_size" in options or name == "app"
    assert [o for o in options if "-" in o[2:].split("=")[0]] == []


def test_shared_flags_are_spelled_alike():
    "`--ckpt_path` in every command that loads a model; `--image_size` wherever an input size is set."
    for name in PARSERS: assert "--ckpt_path" in PARSERS[name]()._option_string_actions
    for name in ("predict", "export"): assert "--image_size" in PARSERS[name]()._option_string_actions


def test_unknown_flags_still_exit_2(capsys):
    for bad in (["--bogus-flag"], ["--bogus_flag"], ["--batch-sizes", "3"], ["--ckpt-paths", "x"]):
        assert predict_main(["--ckpt_path", "m.pt", "--out", "o", *bad, "x.jpg"]) == 2, bad
    assert "unrecognized arguments: --bogus-flag" in capsys.readouterr().err
    assert main(["export", "--ckpt", "m.pt", "--format", "onnx", "--out", "m.onnx", "--dynamic-h-w"]) == 2


def test_values_after_double_dash_are_left_alone():
    "After `--` every word is a value: a file named --batch-size is an image, not the option."
    a = predict_parser().parse_args(["--ckpt_path", "m.pt", "--out", "o", "--", "--batch-size"])
    assert a.images == ["--batch-size"] and a.batch_size == 16


def test_synth_and_check_take_both_spellings(tmp_path):
    "synth's --image_size (and --image-size) give the same images; check's --no_cache (and --no-cache) the same report."
    with contextlib.redirect_stdout(io.StringIO()):
        assert synth([str(tmp_path / "a"), "--images", "3", "--image_size", "64x48", "--classes", "2"]) == 0
        assert synth([str(tmp_path / "b"), "--images", "3", "--image-size", "64x48", "--classes", "2"]) == 0
    a, b = (sorted((tmp_path / d / "VOCdevkit/VOC2007/JPEGImages").iterdir()) for d in "ab")
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b] and len(a) == 3
    from PIL import Image
    assert Image.open(a[0]).size == (64, 48)
    reports = []
    for flag in ("--no_cache", "--no-cache"):
        out = io.StringIO()
        with contextlib.redirect_stdout(out): assert check([str(tmp_path / "a"), "--json", flag]) == 0
        reports.append(json.loads(out.getvalue()))
    assert reports[0] == reports[1] and not list((tmp_path / "a").rglob("*cache*"))


def test_download_refuses_tar_options_for_weights_in_both_spellings(tmp_path, capsys):
    for flag in ("--delete_tars", "--delete-tars", "--keep_tars", "--keep-tars"):
        assert download(["yolov3", str(tmp_path), flag]) == 2, flag
        assert "--years, --delete_tars and --keep_tars are for voc, not yolov3" in capsys.readouterr().err
