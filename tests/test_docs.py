"""The static documentation site (`python .ci/docs.py`): built from a tiny made-up project, then from the real notebooks.

The tiny project checks what the builder does with each kind of cell; the real site is checked as a reader would
meet it: every page parses, every picture and internal link resolves, and headless Chromium loads every page, finds
no broken picture, and shows the README's heading and quick start on the index (screenshot not blank). The browser
part is skipped only when no Chromium binary is installed (Debian: `apt-get install chromium`)."""
import base64
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / ".ci" / "docs.py"
CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium")
_spec = importlib.util.spec_from_file_location("docs_builder", DOCS)
docs = sys.modules["docs_builder"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(docs)

# a 2 x 2 red PNG
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGP4z8DAwMDAxMDAwMDAAAANHQEDasKb6QAAAABJRU5ErkJggg==")


class Page(HTMLParser):
    "The parts of an HTML page the checks need: title, ids, image sources, link targets, scripts, stylesheets."
    def __init__(self, text: str):
        super().__init__()
        self.title, self.ids, self.imgs, self.hrefs, self.scripts, self.links, self._in_title = "", set(), [], [], [], [], False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a: self.ids.add(a["id"])
        if tag == "img": self.imgs.append(a.get("src", ""))
        if tag == "a" and "href" in a: self.hrefs.append(a["href"])
        if tag == "script": self.scripts.append(a.get("src"))
        if tag == "link": self.links.append(a.get("href"))
        self._in_title = tag == "title"

    def handle_endtag(self, tag):
        if tag == "title": self._in_title = False

    def handle_data(self, data):
        if self._in_title: self.title += data


def check_site(out: Path) -> dict[str, Page]:
    "Parse every page; assert every <img src> and internal <a href> (with its #fragment) resolves, and nothing is remote."
    pages = {p.name: Page(p.read_text(encoding="utf-8")) for p in sorted(out.glob("*.html"))}
    assert pages, f"no pages in {out}"
    for name, page in pages.items():
        assert page.title.strip(), f"{name}: no <title>"
        for src in page.imgs:
            if src.startswith("data:"):
                kind, _, payload = src.partition(",")
                raw = base64.b64decode(payload) if kind.endswith(";base64") else unquote(payload).encode()
                assert raw[:8] == PNG[:8] or raw[:3] == b"\xff\xd8\xff" or b"<svg" in raw[:500], f"{name}: broken data image"
            else:
                assert "://" not in src and (out / src).is_file(), f"{name}: image {src} does not resolve"
        for href in page.hrefs:
            if re.match(r"^[a-z][\w+.-]*:", href):  # http(s), mailto: leaves the site
                continue
            path, _, frag = href.partition("#")
            target = name if not path else path
            assert target in pages, f"{name}: link {href} points to no page"
            assert not frag or frag in pages[target].ids, f"{name}: link {href}: no id {frag!r} in {target}"
        assert all(s is None for s in page.scripts), f"{name}: external script {page.scripts}"
        assert not [h for h in page.links if h and "//" in h], f"{name}: remote stylesheet"
    return pages


# ---------------------------------------------------------------- a tiny project: what the builder does with each cell

@pytest.fixture
def tiny(tmp_path):
    "A made-up nbdev project: index, one notebook exporting `tinylib.geo`, and the exported module."
    nbs, lib = tmp_path / "nbs", tmp_path / "tinylib"
    nbs.mkdir(); lib.mkdir()
    (nbs / "pics").mkdir()
    (nbs / "pics" / "dot.png").write_bytes(PNG)
    index = new_notebook(cells=[new_markdown_cell("# tinylib\n\n> A tiny library.\n\n## Quick start\n\nSee [the geometry](00_geo.ipynb#Areas)."),
                                new_code_cell("1 + 1")])
    shown = new_code_cell("#| eval: false\nprint('shown source')", outputs=[new_output("stream", name="stdout", text="printed output\n")])
    geo = new_notebook(cells=[
        new_markdown_cell("# Geometry\n\n> Areas of things."),
        new_code_cell("#| default_exp geo"),
        new_code_cell("#| hide\nSECRET_SETUP = 1"),
        new_code_cell("#|export\n#: The circle constant, roughly.\nPI: float = 3.14\n\n"
                      "def area(r: float, # the radius\n         scale: float = 1.0) -> float:\n"
                      "    \"Area of a circle of radius `r`.\"\n    return PI * r * r * scale\n\n"
                      "class Box:\n    \"An axis-aligned box.\"\n    def __init__(self, w: float, h: float): self.w, self.h = w, h\n"
                      "    def area(self) -> float:\n        \"Its area.\"\n        return self.w * self.h\n"
                      "    def _private(self): pass\n\ndef _helper(): pass\n\n"
                      "#: exit codes\nOK, FAIL = 0, 1\n\n_all_ = ['Lazy']\ndef _make():\n"
                      "    class Lazy:\n        \"Made on first use.\"\n    return Lazy"),
        new_markdown_cell("## Areas\n\n`area` and `geo.Box` are linked, `Box.area` too. A picture: ![dot](pics/dot.png)"),
        shown,
        new_code_cell("area(1.0)", outputs=[new_output("display_data", data={"image/png": base64.b64encode(PNG).decode(), "text/plain": "<Figure>"})]),
        new_code_cell("#| echo: false\nprint('hidden input')", outputs=[new_output("stream", name="stdout", text="visible output\n")]),
    ])
    nbformat.write(index, nbs / "index.ipynb")
    nbformat.write(geo, nbs / "00_geo.ipynb")
    (lib / "__init__.py").write_text("")
    src = "\n".join(c.source for c in geo.cells if "#|export" in c.source).replace("#|export\n", "")
    (lib / "geo.py").write_text(f"__all__ = ['PI', 'area', 'Box', 'OK', 'FAIL', 'Lazy']\n\n{src}\n")
    return nbs, lib, tmp_path / "_docs"


def test_tiny_site(tiny):
    nbs, lib, out = tiny
    written = docs.build(nbs, lib, out)
    test_names = [p.name for p in written]
    assert test_names == ["index.html", "00_geo.html"]
    pages = check_site(out)
    assert pages["00_geo.html"].title == "Geometry – tinylib" and pages["index.html"].title == "tinylib – tinylib"
    geo = (out / "00_geo.html").read_text()
    # directives are stripped; #| hide cells and the default_exp cell are gone; #| echo: false hides the input only
    assert "#|" not in geo and "#| " not in geo and "SECRET_SETUP" not in geo and "default_exp" not in geo
    assert "shown source" in geo and "printed output" in geo
    assert "hidden input" not in geo and "visible output" in geo
    # the export cell became the documentation of its public names, source folded below; private names stay out
    assert geo.count('id="area"') == 1 and 'id="Box"' in geo and 'id="PI"' in geo and 'id="Box.area"' in geo
    assert "area(r: float, scale: float=1.0) -&gt; float" in geo and "Area of a circle of radius <code>r</code>." in geo
    assert "The circle constant, roughly." in geo and "_private" not in geo.split("<details")[0]
    assert '<details class="source"><summary>exported source</summary>' in geo
    # API section: all of __all__, linked to the entries
    api = geo.split('id="api"')[1]
    assert all(f'href="#{n}"' in api for n in ("PI", "area", "Box", "OK", "FAIL"))
    assert "OK = 0" in geo and "exit codes" in geo
    # a name made on first use (nbdev's `_all_`, a module __getattr__) is documented from its nested definition
    assert geo.count('id="Lazy"') == 1 and "Made on first use." in geo and 'href="#Lazy"' in api
    # doclinks and notebook links; the markdown picture is copied next to the pages
    assert '<a class="doclink" href="00_geo.html#area"><code>area</code></a>' in geo
    assert 'href="00_geo.html#Box"><code>geo.Box</code>' in geo and 'href="00_geo.html#Box.area"' in geo
    assert 'href="00_geo.html#Areas"' in (out / "index.html").read_text()
    assert (out / "media" / "dot.png").read_bytes() == PNG
    # the sidebar lists every page in order with its title; the current page lists its sections
    side = geo.split('<nav class="sidebar">')[1].split("</nav>")[0]
    assert side.index(">tinylib<") < side.index(">Geometry<") and 'href="#Areas"' in side
    assert "<p>DOCSBLOCK" not in geo


def test_tiny_site_errors(tiny, capsys):
    "Bad notebooks stop the build with the file and the problem, and leave the previous site as it was."
    nbs, lib, out = tiny
    docs.build(nbs, lib, out)
    before = (out / "00_geo.html").read_text()
    good = (lib / "geo.py").read_text()
    (lib / "geo.py").write_text(good.replace("'Box'", "'Box', 'Circle'"))
    with pytest.raises(docs.DocsError, match=r"geo\.py: __all__ names 'Circle', which it does not define"):
        docs.build(nbs, lib, out)
    assert (out / "00_geo.html").read_text() == before and not (out.parent / "_docs.partial").exists()
    (lib / "geo.py").write_text(good)
    nb = nbformat.read(nbs / "00_geo.ipynb", as_version=4)
    nb.cells = [new_markdown_cell("No heading here.")] + [c for c in nb.cells if c.cell_type == "code"]
    nbformat.write(nb, nbs / "00_geo.ipynb")
    with pytest.raises(docs.DocsError, match=r"00_geo\.ipynb: no markdown heading"):
        docs.build(nbs, lib, out)
    (nbs / "00_geo.ipynb").write_text("{not json")
    assert docs.main(["--nbs", str(nbs), "--lib", str(lib), "--out", str(out)]) == 1
    assert re.search(r"00_geo\.ipynb: not a readable notebook", capsys.readouterr().out)
    (nbs / "00_geo.ipynb").unlink()
    (nbs / "index.ipynb").unlink()
    with pytest.raises(docs.DocsError, match=r"index\.ipynb: missing"):
        docs.build(nbs, lib, out)


def test_split_directives():
    assert docs.split_directives("#| export\n#|eval: false\n# |hide\nx = 1\n#| not a directive") == (
        {"export": "", "eval": "false", "hide": ""}, "x = 1\n#| not a directive")
    assert docs.split_directives("#| export other.mod\n\ny") == ({"export": "other.mod"}, "y")


# ---------------------------------------------------------------- the real site

@pytest.fixture(scope="module")
def site(tmp_path_factory):
    "The real site, built by the documented command (or, with YOLO_VOC_DOCS_SITE=_docs, the one CI just built)."
    if os.environ.get("YOLO_VOC_DOCS_SITE"):
        return ROOT / os.environ["YOLO_VOC_DOCS_SITE"]
    out = tmp_path_factory.mktemp("site") / "_docs"
    r = subprocess.run([sys.executable, str(DOCS), "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"built \d+ pages into .* in [\d.]+ s", r.stdout), r.stdout
    return out


def notebooks():
    nbs = ROOT / "nbs"
    return [nbs / "index.ipynb", *sorted(p for p in nbs.glob("*.ipynb") if p.name != "index.ipynb"),
            *sorted((nbs / "tutorials").glob("*.ipynb"))]


def test_site_pages_and_links(site):
    pages = check_site(site)
    want = ["index.html"] + ["-".join(p.relative_to(ROOT / "nbs").with_suffix(".html").parts) for p in notebooks()[1:]]
    assert sorted(pages) == sorted(want)
    # every page has the same navigation, in notebook order
    navs = {name: re.findall(r'<li(?: class="current")?><a href="([^"#]+)"', (site / name).read_text()) for name in pages}
    assert all(nav == want for nav in navs.values()), navs["index.html"]


def test_site_api_sections(site):
    "Every exported module's page documents every name of its `__all__`, with an anchor."
    checked = 0
    for nb_path in notebooks():
        nb = nbformat.read(nb_path, as_version=4)
        exp = [docs.split_directives(c.source)[0].get("default_exp") for c in nb.cells if c.cell_type == "code"]
        module = next((m for m in exp if m), None)
        if module is None:
            continue
        names = docs.module_all(ROOT / "yolo_voc" / f"{module}.py")
        page = (site / f"{nb_path.stem}.html").read_text()
        api = page.split('<section class="api" id="api">')[1]
        missing = [n for n in names if f'id="{n}"' not in page or f"<code>{n}</code>" not in api]
        assert not missing, f"{nb_path.stem}.html: {missing}"
        checked += 1
    assert checked >= 10


def test_boxes_page_has_the_overview_figure(site):
    page = (site / "00_boxes.html").read_text()
    assert re.search(r'<img [^>]*src="data:image/png;base64,', page), "00_boxes.html: no picture"
    assert "arXiv:1804.02767" in page and "#|" not in page


def chromium(*args: str, user_dir: Path, timeout: int = 60) -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={user_dir}", "--window-size=1200,900", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_site_in_chromium(site, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; or set CHROMIUM=/path/to/chrome)")
    from concurrent.futures import ThreadPoolExecutor
    from PIL import Image
    pages = sorted(site.glob("*.html"))
    with ThreadPoolExecutor(2) as pool:
        doms = dict(zip(pages, pool.map(lambda p: chromium("--dump-dom", p.as_uri(), user_dir=tmp_path / p.stem), pages)))
    for p, dom in doms.items():
        title = Page(p.read_text()).title
        assert f"<title>{title}</title>" in dom, f"{p.name}: Chromium did not load it"
        assert 'data-broken-images="0"' in dom, f"{p.name}: a picture failed to load in Chromium"
    # the index shows the README: its first heading and the quick start's commands
    readme = (ROOT / "README.md").read_text()
    heading = re.search(r"^# (.+)$", readme, re.M).group(1)
    quick = readme.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0].strip().splitlines()[0]
    index = re.sub(r"<[^>]+>", "", doms[site / "index.html"])
    assert "<h1" in doms[site / "index.html"] and heading in index
    assert quick.split("&&")[0].strip() in index and "yolo-voc fit" in index
    shot = tmp_path / "index.png"
    chromium(f"--screenshot={shot}", (site / "index.html").as_uri(), user_dir=tmp_path / "shot")
    img = Image.open(shot).convert("L")
    assert img.size == (1200, 900)
    lo, hi = img.getextrema()
    assert hi - lo > 100 and sum(n > 0 for n in img.histogram()) > 20, "the index screenshot is blank"


def test_execute_notebook_keeps_outputs_and_skips_eval_false(tmp_path):
    nb = new_notebook(cells=[new_code_cell("x = 6 * 7\nx"), new_code_cell("#| eval: false\nraise RuntimeError('needs a GPU')"),
                             new_code_cell("print(x + 1)")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "run.ipynb")
    assert docs.execute_notebook(tmp_path / "run.ipynb") == 2
    out = nbformat.read(tmp_path / "run.ipynb", as_version=4)
    assert out.cells[0].outputs[0]["data"]["text/plain"] == "42"
    assert out.cells[1].outputs == [] and "tags" not in out.cells[1].metadata
    assert out.cells[2].outputs[0]["text"] == "43\n"
