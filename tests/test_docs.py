"""The documentation site (`python .ci/docs.py`): nbdev's processing, then the pages rendered from `_proc/`.

A tiny made-up nbdev project checks what the build does with each kind of cell and each nbdev problem; the real
site is checked as a reader meets it: every page parses, every picture and internal link resolves, no page shows
a docstring twice, `load_detector` has its parameter table, every source link points at the line of the right
module on `git_url`, the search finds a known name and links to its section, and headless Chromium loads every
page with no broken picture. The browser checks are skipped only when no Chromium binary is installed
(Debian: `apt-get install chromium`)."""
import ast
import base64
import html
import importlib.util
import json
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
import yaml
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
    """The parts of an HTML page the checks need: title, ids, pictures, links, scripts, stylesheets, and `doc_text`: the
    page's prose and API documentation, without navigation, code, or code cells' printed output."""
    VOID = {"img", "br", "hr", "input", "meta", "link", "source", "wbr", "col", "area", "base", "embed", "param", "track"}
    NOT_DOC = re.compile(r"\b(input_area|output_text|output_stream|output_html)\b")

    def __init__(self, text: str):
        super().__init__()
        self.title, self.ids, self.imgs, self.links, self.scripts, self.styles = "", set(), [], [], [], []
        self._text, self._stack = [], []  # (tag, not documentation text) of the open elements
        self.feed(text)
        self.close()
        self.doc_text = re.sub(r"\s+", " ", "".join(self._text))

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a: self.ids.add(a["id"])
        if tag == "img": self.imgs.append(a.get("src", ""))
        if tag == "a" and "href" in a: self.links.append(a["href"])
        if tag == "script": self.scripts.append(a.get("src"))
        if tag == "link": self.styles.append(a.get("href"))
        if tag not in self.VOID:
            self._stack.append((tag, tag in ("nav", "script", "style", "title") or bool(self.NOT_DOC.search(a.get("class") or ""))))

    def handle_endtag(self, tag):
        if any(t == tag for t, _ in self._stack):
            while self._stack and self._stack.pop()[0] != tag:
                pass

    def handle_data(self, data):
        if self._stack and self._stack[-1][0] == "title": self.title += data
        if not any(skip for _, skip in self._stack): self._text.append(data)


def check_site(out: Path) -> dict[str, Page]:
    "Parse every page; assert every picture, internal link (with its #fragment), script and stylesheet resolves, and nothing is remote."
    pages = {p.relative_to(out).as_posix(): Page(p.read_text(encoding="utf-8")) for p in sorted(out.rglob("*.html"))}
    assert pages, f"no pages in {out}"
    for name, page in pages.items():
        here = Path(name).parent
        assert page.title.strip(), f"{name}: no <title>"
        for src in page.imgs:
            if src.startswith("data:"):
                kind, _, payload = src.partition(",")
                raw = base64.b64decode(payload) if kind.endswith(";base64") else unquote(payload).encode()
                assert raw[:8] == PNG[:8] or raw[:3] == b"\xff\xd8\xff" or b"<svg" in raw[:500], f"{name}: broken data image"
            else:
                assert "://" not in src and (out / here / src).is_file(), f"{name}: image {src} does not resolve"
        for href in page.links:
            if re.match(r"^[a-z][\w+.-]*:", href):  # http(s), mailto: leaves the site
                continue
            path, _, frag = href.partition("#")
            target = name if not path else (here / path).as_posix()
            target = os.path.normpath(target)
            assert target in pages, f"{name}: link {href} points to no page"
            assert not frag or frag in pages[target].ids, f"{name}: link {href}: no id {frag!r} in {target}"
        for ref in page.scripts + page.styles:
            assert ref is None or ("//" not in ref and (out / here / ref).is_file()), f"{name}: {ref} is remote or missing"
    return pages


# ---------------------------------------------------------------- a tiny nbdev project: what the build does with each cell

SETTINGS = """[DEFAULT]
repo = tinylib
lib_name = tinylib
lib_path = tinylib
nbs_path = nbs
doc_path = _docs
recursive = True
branch = main
custom_sidebar = False
doc_host = https://tiny.example.org
doc_baseurl = /tinylib
git_url = https://github.com/tiny/tinylib
title = tinylib
description = A tiny library
version = 0.0.1
user = tiny
author = tiny
author_email = tiny@example.org
copyright = tiny
keywords = tiny
language = English
status = 1
license = apache2
min_python = 3.10
"""


def _nb(*cells):
    nb = new_notebook(cells=list(cells))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


@pytest.fixture
def tiny(tmp_path):
    "A made-up nbdev project: an index, a notebook exporting `tinylib.geo`, a tutorial in a folder, a picture."
    nbs = tmp_path / "nbs"
    (nbs / "pics").mkdir(parents=True)
    (nbs / "tutorials").mkdir()
    (tmp_path / "settings.ini").write_text(SETTINGS)
    (nbs / "pics" / "dot.png").write_bytes(PNG)
    index = _nb(new_markdown_cell("# tinylib\n\n> A tiny library."), new_markdown_cell("## Quick start\n\nSee [the geometry](00_geo.ipynb#areas)."))
    geo = _nb(
        new_markdown_cell("# Geometry\n\n> Areas of things."),
        new_code_cell("#| default_exp geo"),
        new_code_cell("#| hide\nSECRET_SETUP = 1"),
        new_code_cell("#| export\ndef area(r: float, # the radius of the circle\n         scale: float = 1.0, # a factor for the area\n"
                      "        ) -> float:\n    \"Area of a circle of radius `r`.\"\n    return 3.0 * r * r * scale"),
        new_markdown_cell("## Areas\n\nBack to [the index](index.ipynb); a picture: ![dot](pics/dot.png)\n\n"
                          "::: {.callout-note}\nA note in a fenced div.\n:::"),
        new_code_cell("#| exports\nclass Box:\n    \"An axis-aligned box.\"\n    def __init__(self, w: float, h: float): self.w, self.h = w, h"),
        new_code_cell("#| echo: false\nprint('hidden input')", outputs=[new_output("stream", name="stdout", text="visible output\n")]),
        new_code_cell("#| include: false\nprint('left out')", outputs=[new_output("stream", name="stdout", text="left out too\n")]),
        new_code_cell("#| output: false\nprint('shown code')", outputs=[new_output("stream", name="stdout", text="hidden output\n")]),
        new_code_cell("area(1.0)", outputs=[new_output("display_data", data={"image/png": base64.b64encode(PNG).decode(), "text/plain": "<Figure>"})]),
        new_markdown_cell("## Areas\n\nThe same heading twice gets a second id."),
    )
    walk = _nb(new_markdown_cell("# A walk\n\n> Through the library."),
               new_markdown_cell("## Start\n\nFirst [the areas](../00_geo.ipynb#areas).\n\nmarmalade"))
    nbformat.write(index, nbs / "index.ipynb")
    nbformat.write(geo, nbs / "00_geo.ipynb")
    nbformat.write(walk, nbs / "tutorials" / "walk.ipynb")
    return nbs, tmp_path / "_docs"


def search_index(site: Path) -> list[dict]:
    text = (site / "search_index.js").read_text(encoding="utf-8")
    assert text.startswith("window.SEARCH_INDEX = ") and text.rstrip().endswith(";")
    return json.loads(text.strip()[len("window.SEARCH_INDEX = "):-1])


def test_tiny_site(tiny):
    nbs, out = tiny
    written = docs.build(nbs, out, force=True)
    assert sorted(p.relative_to(out).as_posix() for p in written) == ["geo.html", "index.html", "tutorials/walk.html"]
    assert (nbs.parent / "_proc" / "00_geo.ipynb").exists()  # nbdev's own processing made what was rendered
    pages = check_site(out)
    assert pages["geo.html"].title == "Geometry – tinylib" and pages["index.html"].title == "tinylib – tinylib"
    geo = (out / "geo.html").read_text()
    text = pages["geo.html"].doc_text
    # nbdev's processing: directives gone, hidden and exported cells out, show_doc with a parameter table from the comments
    assert "#|" not in geo and "SECRET_SETUP" not in geo and "default_exp" not in geo
    assert 'id="area"' in geo and "return 3.0" not in geo
    assert text.count("Area of a circle of radius r.") == 1
    table = geo.split('id="area"')[1].split("</table>")[0]
    assert re.search(r"<td>r</td>\s*<td>float</td>\s*<td></td>\s*<td>the radius of the circle</td>", table)
    assert re.search(r"<td>scale</td>\s*<td>float</td>\s*<td>1.0</td>\s*<td>a factor for the area</td>", table)
    # `#| exports`: the doc, then the source folded open under "Exported source" (Quarto's code-fold: show)
    assert 'id="box"' in geo and re.search(r'<details class="code-fold" open(?:="")?><summary>Exported source</summary>.*class.*Box', geo, re.S)
    assert geo.index('id="box"') < geo.index("Exported source")
    # Quarto cell options
    assert "hidden input" not in geo and "visible output" in geo
    assert "left out" not in geo
    assert "shown code" in geo and "hidden output" not in geo
    # Pandoc: heading ids (unique on the page), fenced divs; pictures copied, notebook links to pages
    assert 'id="areas"' in geo and 'id="areas-1"' in geo
    assert '<div class="callout-note">' in geo and "A note in a fenced div." in text
    assert (out / "pics" / "dot.png").read_bytes() == PNG and "pics/dot.png" in pages["geo.html"].imgs
    assert "index.html" in pages["geo.html"].links and "geo.html#areas" in pages["index.html"].links
    assert "../geo.html#areas" in pages["tutorials/walk.html"].links
    # the title block comes from nbdev's front matter
    assert '<h1 class="title">Geometry</h1>' in geo and '<p class="description">Areas of things.</p>' in geo
    # the sidebar of nbdev's sidebar.yml: index first, then the notebooks, then the tutorials section, on every page
    for name in pages:
        side = (out / name).read_text().split('<nav class="sidebar">')[1].split("</nav>")[0]
        prefix = "../" if "/" in name else ""
        order = [side.index(f'href="{prefix}{p}"') for p in ("index.html", "geo.html", "tutorials/walk.html")]
        assert order == sorted(order) and '<li class="section"><span>tutorials</span>' in side, name
    # the search index: one entry per section, with its words
    entries = {e["url"]: e for e in search_index(out)}
    assert "the radius of the circle" in entries["geo.html#area"]["text"] and entries["geo.html#area"]["page"] == "Geometry"
    assert "marmalade" in entries["tutorials/walk.html#start"]["text"]


def test_tiny_site_nbdev_problems(tiny):
    "What nbdev warns about or cannot process stops the build, naming the notebook and cell; the previous site stays."
    nbs, out = tiny
    docs.build(nbs, out, force=True)
    before = (out / "geo.html").read_text()
    nb = nbformat.read(nbs / "00_geo.ipynb", as_version=4)
    good = list(nb.cells)
    # a cell that mixes imports with other code: nbdev warns (and would run the code while processing)
    nb.cells = good + [new_code_cell("import math\nRADIUS = math.pi")]
    nbformat.write(nb, nbs / "00_geo.ipynb")
    with pytest.raises(docs.DocsError, match=r"nbs/00_geo\.ipynb cell 11: nbdev: Found cells containing imports and other code"):
        docs.build(nbs, out)
    assert (out / "geo.html").read_text() == before and not (out.parent / "_docs.partial").exists()
    # a helper defined in a cell nbdev does not run, used by one it runs (a show_doc): the NameError that stopped the real notebooks
    nb.cells = good + [new_code_cell("_helper = 'twice'"), new_code_cell("from nbdev.showdoc import show_doc"),
                       new_code_cell("show_doc(area, name=_helper)")]
    nbformat.write(nb, nbs / "00_geo.ipynb")
    with pytest.raises(docs.DocsError, match=r"nbs/00_geo\.ipynb cell 13: nbdev could not process it \(NameError: name '_helper' is not defined\)"):
        docs.build(nbs, out)
    # a title cell with more than nbdev keeps: nbdev would drop the paragraph without a word
    nb.cells = [new_markdown_cell("# Geometry\n\n> Areas of things.\n\nAn introduction nbdev would lose.")] + good[1:]
    nbformat.write(nb, nbs / "00_geo.ipynb")
    with pytest.raises(docs.DocsError, match=r"00_geo\.ipynb: nbdev keeps only the title .* \('An introduction nbdev would lose.'\)"):
        docs.build(nbs, out)
    # a page without a title
    nb.cells = [new_markdown_cell("No heading here.")] + good[1:]
    nbformat.write(nb, nbs / "00_geo.ipynb")
    with pytest.raises(docs.DocsError, match=r"00_geo\.ipynb: no title"):
        docs.build(nbs, out)
    assert docs.main(["--nbs", str(nbs), "--out", str(out)]) == 1
    assert (out / "geo.html").read_text() == before


def test_slug_is_pandocs():
    "Pandoc's auto identifiers, which nbdev's doc links (`boxes.html#postprocess`, `predict.html#detector.predict`) rely on."
    assert docs.slug("Detector.predict") == "detector.predict"
    assert docs.slug("From head outputs to detections") == "from-head-outputs-to-detections"
    assert docs.slug("1. What's new? (v2)") == "whats-new-v2"
    assert docs.slug("YOLOv3_loss") == "yolov3_loss" and docs.slug("??") == "section"


# ---------------------------------------------------------------- the real site

@pytest.fixture(scope="module")
def site(tmp_path_factory):
    "The real site, built by the documented command (or, with YOLO_VOC_DOCS_SITE=_docs, the one CI just built)."
    if os.environ.get("YOLO_VOC_DOCS_SITE"):
        return ROOT / os.environ["YOLO_VOC_DOCS_SITE"]
    out = tmp_path_factory.mktemp("site") / "_docs"
    r = subprocess.run([sys.executable, str(DOCS), "--force", "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"built \d+ pages into .* in [\d.]+ s", r.stdout), r.stdout
    return out


def notebooks():
    "Every notebook nbdev documents, with the page nbdev names for it (`output-file`: 00_boxes -> boxes.html)."
    out = {}
    for nb in sorted(ROOT.joinpath("nbs").rglob("*.ipynb")):
        rel = nb.relative_to(ROOT / "nbs")
        if any(part.startswith((".", "_")) for part in rel.parts):
            continue
        name = rel.stem if rel.stem == "index" else re.sub(r"^\d+[a-z]?_", "", rel.stem)
        out[rel.as_posix()] = (rel.parent / f"{name}.html").as_posix()
    return out


def sidebar_notebooks() -> list[str]:
    "The notebooks of the committed nbs/sidebar.yml, in its order (the YOLO story, then engineering, then tutorials)."
    def walk(items):
        for it in items:
            if isinstance(it, str): yield it
            else: yield from walk(it["contents"])
    return list(walk(yaml.safe_load((ROOT / "nbs" / "sidebar.yml").read_text())["website"]["sidebar"]["contents"]))


def test_sidebar_sections():
    "The sidebar has the YOLO story first, then the engineering section, then the tutorials; settings.ini keeps it."
    contents = yaml.safe_load((ROOT / "nbs" / "sidebar.yml").read_text())["website"]["sidebar"]["contents"]
    assert contents[0] == "index.ipynb"
    assert [c["section"] for c in contents[1:]] == ["The YOLO story", "Engineering", "Tutorials"]
    assert all(n.startswith("engineering/") for n in contents[2]["contents"])
    assert "custom_sidebar = True" in (ROOT / "settings.ini").read_text()


def test_site_pages_and_links(site):
    pages = check_site(site)
    want = notebooks()
    assert sorted(pages) == sorted(want.values())
    # every page has the same navigation: the committed nbs/sidebar.yml (custom_sidebar), which lists every notebook once
    order = [want[k] for k in sidebar_notebooks()]
    assert sorted(sidebar_notebooks()) == sorted(want), "nbs/sidebar.yml must list every notebook exactly once"
    for name in pages:
        side = (site / name).read_text().split('<nav class="sidebar">')[1].split("</nav>")[0]
        prefix = "../" * name.count("/")
        links = [h[len(prefix):] for h in re.findall(r'<li(?: class="current")?><a href="([^"#]+)"', side)]
        assert links == order, name


def _docstrings() -> dict[str, str]:
    "The first paragraph of every docstring of a public function, class or method in yolo_voc, as a page shows it (no backticks or stars)."
    out = {}
    for py in (ROOT / "yolo_voc").glob("*.py"):
        for node in ast.walk(ast.parse(py.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                first = (ast.get_docstring(node) or "").split("\n\n")[0]
                if len(first) > 30:
                    out[f"{py.stem}.{node.name}"] = re.sub(r"\s+", " ", re.sub(r"[`*]", "", first)).strip()
    return out


def test_each_docstring_once(site):
    "No page documents a name twice: each docstring's first paragraph once (the old builder printed YoloModule's four times)."
    pages = check_site(site)
    docstrings = _docstrings()
    shown = 0
    for name, page in pages.items():
        for sym, doc in docstrings.items():
            n = page.doc_text.count(doc)
            assert n <= 1, f"{name}: the docstring of {sym} appears {n} times"
            shown += n
    assert shown >= 150, shown  # most docstrings are found on some page, so the count above means something
    assert pages["train.html"].doc_text.count(docstrings["train.YoloModule"]) == 1
    assert pages["engineering/runtime.html"].doc_text.count(docstrings["runtime.load_detector"]) == 1


def test_parameter_table_from_docments(site):
    "`load_detector` documents its parameters with comments (docments): the page shows them as a table, in order."
    from fastcore.docments import docments
    from yolo_voc.runtime import load_detector
    page = (site / "engineering" / "runtime.html").read_text()
    section = page.split('id="load_detector"')[1].split("<hr")[0]
    table = section.split("<table>")[1].split("</table>")[0]
    assert re.search(r"<th><strong>Type</strong></th>\s*<th><strong>Default</strong></th>\s*<th><strong>Details</strong></th>", table)
    rows = [re.findall(r"<t[dh]>(.*?)</t[dh]>", row, re.S) for row in re.findall(r"<tr>(.*?)</tr>", table, re.S)]
    params = [(cells[0], html.unescape(re.sub(r"<[^>]+>", "", cells[3]))) for cells in rows[1:] if not cells[0].startswith("<strong>")]
    want = [(k, v.replace("`", "")) for k, v in docments(load_detector).items() if k != "return" and v]
    assert params == want and len(want) == 7, params  # path, device, weights_only, image_size, width_mult, depth_mult, precision
    assert re.search(r"<td><strong>Returns</strong></td>\s*<td><strong>Detector</strong></td>", table)


def test_source_links_point_at_the_definition(site):
    "Each [source] link goes to git_url/blob/branch/yolo_voc/<module>.py#L<n>, where line n defines the documented name."
    from nbdev.config import get_config
    cfg = get_config(path=ROOT)
    pattern = re.compile(re.escape(f"{cfg.git_url}/blob/{cfg.branch}/") + r"(yolo_voc/\w+\.py)#L(\d+)$")
    checked = 0
    for name in notebooks().values():
        html = (site / name).read_text()
        for href, heading_id, heading in re.findall(
                r'<a href="([^"]+)"[^>]*>source</a></p>\s*<h[34] id="([^"]+)">(.*?)<a class="anchor-link"', html):
            m = pattern.match(href)
            assert m, f"{name}: source link {href} is not on {cfg.git_url}"
            lines = (ROOT / m.group(1)).read_text().splitlines()
            symbol = re.sub(r"<[^>]+>", "", heading).split(".")[-1]
            line = lines[int(m.group(2)) - 1]
            # (a dunder's `__name__` reads as bold markdown in the heading nbdev writes, so its underscores are gone there)
            assert re.match(rf"\s*(async def|def|class) (__)?{re.escape(symbol)}(__)?\b", line), f"{name}: {href} is line {line!r}, not {symbol}"
            checked += 1
    assert checked >= 150, checked


def test_search_index_and_box(site, tmp_path):
    "The index has a section per documented name; the box (index.html?q=...) finds `load_detector` and links to it."
    entries = {e["url"]: e for e in search_index(site)}
    assert entries["engineering/runtime.html#load_detector"]["title"] == "load_detector"
    assert "Darknet files only" in entries["engineering/runtime.html#load_detector"]["text"]
    assert {e["url"].split("#")[0] for e in entries.values()} == set(notebooks().values())
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; or set CHROMIUM=/path/to/chrome)")
    dom = chromium("--dump-dom", (site / "index.html").as_uri() + "?q=load_detector", user_dir=tmp_path / "q")
    results = dom.split('<ol id="search-results">')[1].split("</ol>")[0]
    first = re.search(r'<a href="([^"]+)">([^<]+)</a>', results)
    assert first and first.group(1) == "engineering/runtime.html#load_detector", results[:500]
    assert "Runtime" in first.group(2)
    dom = chromium("--dump-dom", (site / "tutorials" / "kaggle_colab.html").as_uri() + "?q=letterbox%20inverse",
                   user_dir=tmp_path / "q2")
    hits = re.findall(r'<a href="([^"]+)">', dom.split('<ol id="search-results">')[1].split("</ol>")[0])
    assert hits and all(h.startswith("../") for h in hits), hits  # from a page in a folder, links go up
    assert "no results" in chromium("--dump-dom", (site / "index.html").as_uri() + "?q=zqxjkv", user_dir=tmp_path / "q3")


def test_quarto_config_is_nbdevs(tmp_path):
    "nbs/nbdev.yml is what nbdev_docs writes from settings.ini, and _quarto.yml is nbdev's template (for users with Quarto)."
    import yaml
    from nbdev.config import get_config
    from nbdev.quarto import refresh_quarto_yml
    shutil.copy(ROOT / "settings.ini", tmp_path / "settings.ini")
    (tmp_path / "nbs").mkdir()
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        get_config.cache_clear()
        refresh_quarto_yml()  # writes nbs/nbdev.yml, and nbs/_quarto.yml where there is none
    finally:
        os.chdir(cwd)
        get_config.cache_clear()
    assert (ROOT / "nbs" / "nbdev.yml").read_text() == (tmp_path / "nbs" / "nbdev.yml").read_text()
    assert not (ROOT / "nbs" / "_quarto.yml").is_symlink()  # a symlink is a text file in a Windows checkout
    assert yaml.safe_load((ROOT / "nbs" / "_quarto.yml").read_text()) == yaml.safe_load((tmp_path / "nbs" / "_quarto.yml").read_text())


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
    pages = sorted(site.rglob("*.html"))
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


def test_execute_command_line(tmp_path):
    "`python .ci/docs.py --execute NB` (what contributors run) keeps outputs in place and reports the cells it ran."
    nb = _nb(new_code_cell("print(2 + 2)"), new_code_cell("#| eval: false\nraise SystemExit(3)"))
    nbformat.write(nb, tmp_path / "x.ipynb")
    r = subprocess.run([sys.executable, str(DOCS), "--execute", str(tmp_path / "x.ipynb")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert re.search(r"x\.ipynb: ran 1 cells in [\d.]+ s", r.stdout)
    assert nbformat.read(tmp_path / "x.ipynb", as_version=4).cells[0].outputs[0]["text"] == "4\n"
