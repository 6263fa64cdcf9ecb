"The README is generated from nbs/index.ipynb and its quick start is what CI runs."
import subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def test_readme_matches_index_notebook():
    r = subprocess.run([sys.executable, str(ROOT / ".ci" / "readme.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr

def test_quick_start_has_two_commands():
    text = (ROOT / "README.md").read_text()
    block = text.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [l for l in block.strip().splitlines() if l.strip() and not l.startswith("#")]
    assert len(commands) == 2, commands
    assert commands[0].startswith("pip install -e .") and "yolo-voc fit" in commands[0]
    assert "nbdev_test" in commands[1] and "pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "nbdev_test" in ci and "README.md" in ci
