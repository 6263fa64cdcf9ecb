"""The OpenVINO tests (`openvino_cases.py`), run by pytest in a process of their own.

In one pytest process with the rest of the suite, the process died with a segmentation fault at the next
`subprocess.run` after these tests had compiled OpenVINO models (seen twice, in different tests: the first process
started after them). OpenVINO keeps its CPU plugin's threads alive for the life of the process; starting processes
from a process that holds them is what crashed. Running these tests in a child keeps the main test process free of
them; a failure there fails this test with the child's report."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                    reason="the OpenVINO tests need the optional extra: pip install 'yolo_voc[openvino]'")
def test_openvino_cases_in_their_own_process():
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(HERE / "openvino_cases.py")],
                       cwd=HERE.parent, capture_output=True, text=True, timeout=1800,
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))))
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    assert " passed" in r.stdout and " failed" not in r.stdout, r.stdout[-3000:]
