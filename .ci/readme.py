"""Write README.md from nbs/index.ipynb (Quarto's `nbdev_readme` does this where Quarto is installed).

`python .ci/readme.py` writes it; `python .ci/readme.py --check` exits 1 when README.md is out of date.
The README is the notebook's markdown cells, in order; code cells of the index are not part of it, except the
results cell (the code cell with a line starting `# README: the results table`): in its place goes the results table that
`.ci/results.py` renders from `benchmarks/results/*.json`, between its markers, the table the cell shows in the
notebook.
"""
import sys
from pathlib import Path

import nbformat

root = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import results  # noqa: E402  (.ci/results.py)

RESULTS_CELL = "# README: the results table"


def render(notebook: Path = root / "nbs" / "index.ipynb", results_dir: Path = results.RESULTS_DIR) -> str:
    "README.md's text: the notebook's markdown cells, and the results table where the results cell is."
    nb = nbformat.read(notebook, as_version=4)
    parts = []
    for c in nb.cells:
        if c.cell_type == "markdown": parts.append(c.source.strip())
        elif c.cell_type == "code" and any(line.startswith(RESULTS_CELL) for line in c.source.splitlines()):
            parts.append(results.readme_block(results_dir))
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    text, readme = render(), root / "README.md"
    if "--check" in sys.argv:
        ok = readme.exists() and readme.read_text() == text
        print("README.md matches nbs/index.ipynb and benchmarks/results/" if ok else
              "README.md is out of date: run python .ci/readme.py")
        sys.exit(0 if ok else 1)
    readme.write_text(text)
    print(f"wrote {readme}")
