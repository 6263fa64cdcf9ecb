"""This library's decoding of a Darknet file against an implementation it did not write: OpenCV 4's Darknet importer.

`benchmarks/darknet_opencv.py` writes a narrow YOLOv3 (3 classes, width 0.125, depth 0.33) as `.weights` + cfg,
runs it through `cv2.dnn.readNetFromDarknet` in an OpenCV 4 Python (`$YOLO_VOC_OPENCV4_PYTHON`, which `.ci/run`
makes; else a venv in ~/.cache/yolo_voc, made here) and compares every box, objectness and class score with
`load_detector(path.weights, image_size=S)` and `decode.decode_outputs` at 416 and 608. The full-width 80-class
figures come from the same script (`python benchmarks/darknet_opencv.py --json`).
"""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import darknet_opencv as D  # noqa: E402  (benchmarks/darknet_opencv.py)

ROWS = {416: 3 * (13 ** 2 + 26 ** 2 + 52 ** 2), 608: 3 * (19 ** 2 + 38 ** 2 + 76 ** 2)}  # anchors x cells, 3 heads


@pytest.fixture(scope="module")
def opencv():
    try: return D.opencv4_python()
    except D.OpenCVUnavailable as e:
        if D.pypi_unreachable(str(e)): pytest.skip(f"the OpenCV 4 comparison needs {D.OPENCV_REQUIREMENT} and PyPI is unreachable: {e}")
        raise


@pytest.fixture(scope="module")
def case(tmp_path_factory, opencv):
    folder = tmp_path_factory.mktemp("darknet_opencv")
    D.write_case(folder, num_classes=3, width_mult=0.125, depth_mult=0.33, sizes=(416, 608), n_images=1, n_calibration=4)
    assert D.run_opencv(folder, opencv).startswith("4.")
    return folder


@pytest.mark.parametrize("size", [416, 608])
def test_darknet_decoding_equals_opencv(case, size):
    "Every box, objectness and class score of every anchor agrees with OpenCV's at both sizes."
    r = D.compare(case, size)
    assert r["decoding"].startswith("logistic classes") and "px" in r["decoding"]
    assert (r["rows"], r["scores"]) == (ROWS[size], 3 * ROWS[size])
    assert r["scores_above_0_2"] > 0.1 * r["scores"]  # the calibrated model's scores are not all near 0
    # two float32 forward passes of 60-odd layers: their logits differ by up to ~1e-3; a decoding difference (softmax
    # for logistic, 416 for the input size) moves scores by 0.1-0.9 and sizes by 46%
    assert r["centre_px"] < 0.05 and r["size_relative"] < 5e-3 and abs(r["box_size_ratio_median"] - 1) < 1e-4
    assert r["objectness"] < 2e-3 and r["class_score"] < 2e-3


def test_pypi_unreachable_is_told_apart():
    assert D.pypi_unreachable("ERROR: Could not find a version that satisfies the requirement x (from versions: none)")
    assert not D.pypi_unreachable("ERROR: No space left on device")
