"""Write README.md from nbs/index.ipynb (Quarto's `nbdev_readme` does this where Quarto is installed).

`python .ci/readme.py` writes it; `python .ci/readme.py --check` exits 1 when README.md is out of date.
The README is the notebook's markdown cells, in order; code cells of the index are not part of it.
"""
import sys
from pathlib import Path

import nbformat

root = Path(__file__).resolve().parents[1]

def render() -> str:
    nb = nbformat.read(root / "nbs" / "index.ipynb", as_version=4)
    cells = [c.source.strip() for c in nb.cells if c.cell_type == "markdown"]
    return "\n\n".join(cells) + "\n"

if __name__ == "__main__":
    text, readme = render(), root / "README.md"
    if "--check" in sys.argv:
        ok = readme.exists() and readme.read_text() == text
        print("README.md matches nbs/index.ipynb" if ok else "README.md is out of date: run python .ci/readme.py")
        sys.exit(0 if ok else 1)
    readme.write_text(text)
    print(f"wrote {readme}")
