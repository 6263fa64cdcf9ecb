"""Build the documentation site without Quarto, on nbdev's own processing: `python .ci/docs.py`.

Where Quarto is installed, `nbdev_docs` builds the site. This script builds it everywhere else, from the same first
stage as `nbdev_docs`:

1. nbdev writes the sidebar (`nbdev_sidebar` into `nbs/sidebar.yml`, unless settings.ini says `custom_sidebar`) and
   processes every notebook into `_proc/` (`nbdev.serve.proc_nbs`): its directives, hidden and exported cells,
   `show_doc` for each exported name (signature, docstring, a parameter table from the docments comments and a link
   to the source on `git_url`) and doc links. An nbdev warning or error stops the build and names the notebook.
2. Where Quarto would render `_proc/`, this script does: nbconvert lays out the cells and their saved outputs,
   markdown-it reads the markdown (with the Pandoc attributes nbdev writes), the Quarto cell options nbdev leaves
   (`echo`, `output`, `include`, `code-fold`) are applied, headings get Pandoc's ids (so nbdev's doc links such as
   `boxes.html#postprocess` resolve), and each page goes where its `output-file` says, with the title block from its
   front matter and the sidebar of `sidebar.yml` in nbdev's order.
3. A search index of every section's text (`search_index.js`) and a small search box (`search.js`): no network.
   `index.html?q=letterbox` opens with the results for a term.

Usage: `python .ci/docs.py [--force] [--nbs nbs] [--out _docs]`; it prints the pages and the build time. `--force`
processes every notebook again (nbdev's cache otherwise reprocesses only the notebooks changed since the last run).
`python .ci/docs.py --execute nbs/00_boxes.ipynb` runs a notebook in place so that it keeps its outputs, skipping
`#| eval: false` cells as `nbdev_test` does (plain `jupyter nbconvert --execute` would run them); then run
`nbdev_clean --fname nbs/00_boxes.ipynb`.
"""
from __future__ import annotations

import argparse
import contextlib
import html
import json
import os
import posixpath
import re
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
_DIRECTIVE = re.compile(r"^\s*#\s*\|\s*([\w-]+)\s*:?\s*(.*?)\s*$")


class DocsError(Exception):
    "A notebook the site cannot be built from; the message names the file."


# ---------------------------------------------------------------- directives (for --execute)

def split_directives(source: str) -> tuple[dict[str, str], str]:
    "The leading `#| name value` lines of a code cell as `{name: value}`, and the source without them."
    lines, directives = source.splitlines(), {}
    while lines and (m := _DIRECTIVE.match(lines[0])):
        directives[m.group(1).lower()] = m.group(2)
        lines.pop(0)
    return directives, "\n".join(lines).strip("\n")


def _is_false(value: str) -> bool:
    return value.strip().lower() in ("false", "no", "0")


# ---------------------------------------------------------------- stage 1: nbdev

def _code(source: str) -> str:
    "A cell's source without its leading `#|` lines (nbdev adds some while processing)."
    return split_directives(source)[1].strip()


def _locate(message: str, nbs: Path) -> str:
    "The notebook and cell whose source an nbdev message quotes, as `nbs/x.ipynb cell N`."
    quoted = message.split("\n---\n")[1] if "\n---\n" in message else message.split(":\n", 1)[-1]
    quoted = _code(quoted)
    for p in sorted(nbs.rglob("*.ipynb")):
        if ".ipynb_checkpoints" in p.parts:
            continue
        for i, c in enumerate(json.loads(p.read_text(encoding="utf-8")).get("cells", [])):
            if c.get("cell_type") == "code" and quoted and _code("".join(c.get("source", ""))) == quoted:
                return f"{p.relative_to(nbs.parent).as_posix()} cell {i}"
    return "a notebook"


@contextlib.contextmanager
def in_project(nbs: Path):
    "Work in the nbdev project of `nbs`: nbdev finds settings.ini from the working folder and caches it, so both are reset."
    from nbdev.config import get_config
    cwd = Path.cwd()
    get_config.cache_clear()
    try:
        os.chdir(nbs)
        os.chdir(get_config().config_path)
        yield get_config()
    finally:
        os.chdir(cwd)
        get_config.cache_clear()


def nbdev_process(nbs: Path, force: bool = False) -> Path:
    "nbdev's first docs stage, as `nbdev_docs` runs it: the sidebar, then `proc_nbs` into `_proc/`; warnings are errors."
    import nbdev
    from nbdev.quarto import nbdev_sidebar
    from nbdev.serve import proc_nbs
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            nbdev_sidebar.__wrapped__(path=nbs)  # writes nbs/sidebar.yml unless settings.ini has custom_sidebar = True
            cache = proc_nbs(str(nbs), n_workers=0, force=force)  # in this process, so that its warnings are caught here
        except Exception as e:
            if not str(e).startswith("Error"):
                raise
            cause = f"{type(e.__cause__).__name__}: {e.__cause__}" if e.__cause__ else str(e).split("\n")[0]
            raise DocsError(f"{_locate(str(e), nbs)}: nbdev could not process it ({cause})") from e
    nbdev_dir = str(Path(nbdev.__file__).parent)
    problems = [f"{_locate(str(w.message), nbs)}: nbdev: {str(w.message).splitlines()[0]}"
                for w in caught if w.filename.startswith(nbdev_dir)]
    if problems:
        raise DocsError("\n".join(problems))
    return Path(cache)


# ---------------------------------------------------------------- stage 2: render the processed notebooks

def slug(text: str) -> str:
    "Pandoc's automatic heading identifier: lower case, punctuation but `_-.` dropped, spaces to `-`, from the first letter."
    s = re.sub(r"[^\w\s.-]", "", text).strip().lower()
    s = re.sub(r"\s+", "-", s)
    s = re.sub(r"^[^a-z\u00c0-\uffff]+", "", s)
    return s or "section"


def _highlight(src: str, lang: str, _attrs) -> str:
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import get_lexer_by_name
    from pygments.util import ClassNotFound
    try:
        return highlight(src, get_lexer_by_name(lang or "text"), HtmlFormatter(cssclass="highlight"))
    except ClassNotFound:
        return ""


def _div(_renderer, tokens, idx, _options, _env) -> str:
    "A Pandoc fenced div `::: {.callout-note}` as `<div class=\"callout-note\">`."
    if tokens[idx].nesting != 1:
        return "</div>\n"
    classes = " ".join(re.findall(r"[.]([\w-]+)", tokens[idx].info))
    return f'<div class="{classes}">\n'


def _heading_close(_renderer, tokens, idx, _options, _env) -> str:
    hid = tokens[idx].meta.get("id")
    anchor = f'<a class="anchor-link" href="#{hid}">¶</a>' if hid else ""
    return f"{anchor}</{tokens[idx].tag}>\n"


@dataclass
class Page:
    "One processed notebook and the page it becomes."
    src: Path       # the notebook in nbs/
    proc: Path      # the same notebook processed by nbdev, in _proc/
    url: str        # the page's path in the site, e.g. "boxes.html" or "tutorials/kaggle_colab.html"
    title: str
    description: str
    nb: nbformat.NotebookNode


class PageRenderer:
    """Markdown (cells, and the markdown outputs of `show_doc`) to HTML for one page at a time, as Quarto would:
    Pandoc's heading ids, site links made relative, local pictures copied; it collects the page's sections."""

    def __init__(self, pages: list[Page], nbs: Path, proc: Path, out: Path, site_url: str):
        from markdown_it import MarkdownIt
        from mdit_py_plugins.attrs import attrs_plugin
        from mdit_py_plugins.container import container_plugin
        self.md = MarkdownIt("commonmark", {"html": True, "highlight": _highlight}).enable(["table", "strikethrough"])
        self.md.use(attrs_plugin).use(container_plugin, name="div", marker=":", validate=lambda *_: True, render=_div)
        self.md.add_render_rule("heading_close", _heading_close)
        self.by_src = {p.src.resolve(): p.url for p in pages}
        self.nbs, self.proc, self.out, self.site_url = nbs.resolve(), proc.resolve(), out, site_url

    def start(self, page: Page) -> None:
        "Begin a page: no ids taken yet, one section (the page's top)."
        self.page, self.ids = page, set()
        self.toc: list[tuple[int, str, str]] = []
        self.sections = [{"page": page.title, "title": page.title, "url": page.url, "text": []}]

    def rel(self, url: str) -> str:
        "`url` (a path in the site) relative to the current page."
        return posixpath.relpath(url, posixpath.dirname(self.page.url) or ".")

    def _link(self, href: str) -> str:
        if href.startswith(self.site_url):  # nbdev's doc links point at the published site
            path, _, frag = href[len(self.site_url):].partition("#")
            return self.rel(path or "index.html") + (f"#{frag}" if frag else "")
        if re.match(r"^[a-z][\w+.-]*:|^#", href) or ".ipynb" not in href:
            return href
        path, _, frag = href.partition("#")
        target = (self.page.src.parent / path).resolve()
        if target not in self.by_src and (self.nbs.parent / path).resolve() in self.by_src:  # written for the README
            target = (self.nbs.parent / path).resolve()
        return self.rel(self.by_src[target]) + (f"#{frag}" if frag else "") if target in self.by_src else href

    def _picture(self, src: str) -> str:
        if re.match(r"^[a-z][\w+.-]*:", src):
            return src
        file = (self.page.proc.parent / src).resolve()
        if not file.is_file():
            raise DocsError(f"{self.page.src}: picture {src} not found")
        dest = self.out / (file.relative_to(self.proc) if file.is_relative_to(self.proc) else Path("media") / file.name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(file, dest)
        return self.rel(dest.relative_to(self.out).as_posix())

    def _heading(self, tokens, i) -> None:
        inline = tokens[i + 1]
        if m := re.search(r"\s*\{#([\w.:-]+)[^}]*\}\s*$", inline.content):  # Pandoc's `## Title {#id}`
            inline.children[-1].content = inline.children[-1].content[:-len(m.group(0))] if inline.children[-1].type == "text" else ""
            wanted = m.group(1)
        else:
            wanted = None
        text = "".join(c.content for c in inline.children if c.type in ("text", "code_inline")).strip()
        base = hid = wanted or slug(text)
        n = 0
        while hid in self.ids:
            n += 1
            hid = f"{base}-{n}"
        self.ids.add(hid)
        tokens[i].attrSet("id", hid)
        tokens[i + 2].meta["id"] = hid
        level = int(tokens[i].tag[1])
        self.toc.append((level, hid, text))
        if level <= 4:
            self.sections.append({"page": self.page.title, "title": text, "url": f"{self.page.url}#{hid}", "text": []})

    def render(self, text: str) -> str:
        tokens = self.md.parse(text or "")
        for i, t in enumerate(tokens):
            if t.type == "heading_open":
                self._heading(tokens, i)
            elif t.type == "inline" and tokens[i - 1].type != "heading_open":
                words = []
                for c in t.children or []:
                    if c.type == "link_open":
                        c.attrSet("href", self._link(c.attrGet("href")))
                    elif c.type == "image":
                        c.attrSet("src", self._picture(c.attrGet("src")))
                    elif c.type in ("text", "code_inline"):
                        words.append(c.content)
                    elif c.type in ("softbreak", "hardbreak"):
                        words.append(" ")
                self.sections[-1]["text"].append("".join(words))
        return self.md.renderer.render(tokens, self.md.options, {})

    def search_entries(self) -> list[dict]:
        "The page's sections with their words, for the search index."
        out = []
        for s in self.sections:
            text = re.sub(r"\s+", " ", " ".join(s["text"])).strip()[:4000]  # enough to find a section by its words
            if text or s["title"] != self.page.title:
                out.append({**s, "text": text})
        return out


# the code-fold of `#| exports` cells; everything else is nbconvert's classic layout
TEMPLATE = """{%- extends 'classic/base.html.j2' -%}
{% block input_group -%}
{%- if cell.metadata.get('code_fold') -%}
<details class="code-fold"{% if cell.metadata.code_fold != 'true' %} open{% endif %}><summary>{{ cell.metadata.code_summary }}</summary>
{{ super() }}
</details>
{%- else -%}{{ super() }}{%- endif -%}
{% endblock input_group %}
"""


def _exporter(markdown2html):
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor
    exp = HTMLExporter(template_name="classic", template_file="site.html.j2", extra_loaders=[DictLoader({"site.html.j2": TEMPLATE})],
                       exclude_input_prompt=True, exclude_output_prompt=True, filters={"markdown2html": markdown2html})
    exp.log.setLevel("ERROR")  # not the warning about output pictures without alt text
    # the notebooks are this project's own source: skip bleach's sanitizing of every highlighted cell
    exp.register_filter("clean_html", lambda text: text.decode() if isinstance(text, bytes) else str(text))
    exp.register_preprocessor(TagRemovePreprocessor(remove_input_tags={"remove_input"}, remove_all_outputs_tags={"remove_output"}),
                              enabled=True)
    return exp


def _front_matter(nb) -> dict:
    "The YAML front matter nbdev writes as the first raw cell."
    if nb.cells and nb.cells[0].cell_type == "raw" and nb.cells[0].source.startswith("---"):
        return yaml.safe_load(nb.cells[0].source.strip().strip("-")) or {}
    return {}


def check_title_cell(src: Path) -> None:
    "nbdev turns the first markdown cell into the front matter and drops it: it may hold only `# Title`, one `> description` line and `- key: value` lines."
    cells = json.loads(src.read_text(encoding="utf-8")).get("cells", [])
    first = next((c for c in cells if c.get("cell_type") in ("markdown", "raw")), None)
    if first is None or first["cell_type"] != "markdown":
        return
    lines = [ln for ln in "".join(first["source"]).splitlines() if ln.strip()]
    lost = [ln for ln in lines if not re.match(r"^#\s+\S|^>\s+\S|^-\s+\S.*:", ln)] + [ln for ln in lines if ln.startswith(">")][1:]
    if lost and re.match(r"^#\s+\S", lines[0]):
        raise DocsError(f"{src}: nbdev keeps only the title and one '> description' line of the first markdown cell and drops "
                        f"the rest ({lost[0][:60]!r}): move it into a cell of its own, or the description onto one line")


def load_pages(nbs: Path, proc: Path) -> list[Page]:
    "The processed notebooks (every notebook nbdev lists, in its order) with their titles and page paths."
    from nbdev.doclinks import nbglob
    pages = []
    for src in nbglob(nbs, func=Path):
        rel = src.relative_to(nbs)
        check_title_cell(src)
        try:
            raw = json.loads((proc / rel).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DocsError(f"{proc / rel}: missing; nbdev did not process {src}") from None
        for cell in raw["cells"]:
            cell.pop("has_sd", None)  # nbdev's mark on the show_doc cells it added; not notebook format
        with warnings.catch_warnings():  # nbdev_clean drops cell ids on purpose (clean_ids in settings.ini)
            warnings.simplefilter("ignore")
            nb = nbformat.reads(json.dumps(raw), as_version=4)
        fm = _front_matter(nb)
        if not fm.get("title"):
            raise DocsError(f"{src}: no title (start the notebook with a markdown cell '# Title' and '> description')")
        out = fm.get("output-file") or rel.with_suffix(".html").name
        pages.append(Page(src, proc / rel, (rel.parent / out).as_posix(), str(fm["title"]), str(fm.get("description") or ""), nb))
    if not any(p.url == "index.html" for p in pages):
        raise DocsError(f"{nbs / 'index.ipynb'}: missing; the site's index page is made from it")
    return pages


def apply_cell_options(nb) -> None:
    "Apply the Quarto cell options nbdev leaves in code cells (`#| echo: false`...) and drop their lines."
    from nbdev.process import first_code_ln
    cells = []
    for cell in nb.cells[1:] if _front_matter(nb) else nb.cells:
        if cell.cell_type == "code":
            lines = cell.source.splitlines(True)
            n = first_code_ln(lines) if lines else 0
            n = len(lines) if n is None else n
            opts = {}
            for line in lines[:n]:
                if m := _DIRECTIVE.match(line):
                    opts[m.group(1).lower()] = m.group(2).strip().strip("\"'")
            cell.source = "".join(lines[n:]).strip("\n")
            tags = set(cell.metadata.get("tags", []))
            if _is_false(opts.get("include", "true")):
                continue
            if _is_false(opts.get("echo", "true")) or not cell.source:
                tags.add("remove_input")
            if _is_false(opts.get("output", "true")):
                tags.add("remove_output")
            if opts.get("code-fold"):
                cell.metadata["code_fold"] = opts["code-fold"].lower()
                cell.metadata["code_summary"] = opts.get("code-summary", "Code")
            if re.match(r"show_doc\(", cell.source):
                tags.add("show-doc")
            cell.metadata["tags"] = sorted(tags)
        cells.append(cell)
    nb.cells = cells


def resolve_fragments(pages: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Point links at anchors that exist. nbdev links every exported name (`Video.open` to `predict.html#video.open`),
    but only the names it documents have a heading: a method without one links to its class, anything else to the page."""
    ids = {url: set(re.findall(r'\bid="([^"]+)"', page)) for url, page in pages}

    def fix(url, m):
        path, frag = m.group(1), m.group(2)
        target = posixpath.normpath(posixpath.join(posixpath.dirname(url), path)) if path else url
        if target not in ids or frag in ids[target]:
            return m.group(0)
        owner = frag.rpartition(".")[0]
        return f'href="{path}#{owner}"' if owner in ids[target] else f'href="{path or "#"}"'
    return [(url, re.sub(r'href="([^"#:]*)#([^"]+)"', lambda m: fix(url, m), page)) for url, page in pages]


def _site_url(cfg) -> str:
    "Where nbdev's doc links point: doc_host + doc_baseurl, e.g. https://yolo-voc.github.io/yolo_voc/."
    return f"{cfg.doc_host.rstrip('/')}/{cfg.doc_baseurl.strip('/')}/".replace("//", "/").replace(":/", "://")


def sidebar_entries(proc: Path, pages: list[Page], nbs: Path) -> list:
    "The sidebar as nbdev wrote it (`sidebar.yml`): pages and `section`s of pages, in its order."
    yml = proc / "sidebar.yml"
    if not yml.exists():
        yml = nbs / "sidebar.yml"
    by_rel = {p.src.relative_to(nbs).as_posix(): p for p in pages}
    if not yml.exists():
        return list(pages)

    def walk(items):
        out = []
        for it in items or []:
            if isinstance(it, str):
                if it in by_rel:
                    out.append(by_rel[it])
            elif isinstance(it, dict) and "section" in it:
                out.append((str(it["section"]), walk(it.get("contents"))))
            elif isinstance(it, dict) and it.get("href") in by_rel:
                out.append(by_rel[it["href"]])
        return out
    return walk(yaml.safe_load(yml.read_text())["website"]["sidebar"]["contents"])


def sidebar_html(entries, current: Page, toc: list[tuple[int, str, str]], site_title: str) -> str:
    "Navigation: the sidebar entries, the current page's sections under it, and the search box."
    up = posixpath.relpath(".", posixpath.dirname(current.url) or ".")
    root = "" if up == "." else up + "/"

    def items(entries):
        out = []
        for e in entries:
            if isinstance(e, tuple):
                out.append(f'<li class="section"><span>{html.escape(e[0])}</span><ul>{items(e[1])}</ul></li>')
                continue
            cls = ' class="current"' if e is current else ""
            li = f'<li{cls}><a href="{root}{e.url}">{html.escape(e.title)}</a>'
            if e is current:
                subs = "".join(f'<li><a href="#{i}">{html.escape(t)}</a></li>' for lvl, i, t in toc if lvl == 2)
                li += f"<ul>{subs}</ul>" if subs else ""
            out.append(li + "</li>")
        return "".join(out)

    return (f'<nav class="sidebar"><a class="brand" href="{root}index.html">{html.escape(site_title)}</a>'
            f'<div class="search"><input id="search" type="search" placeholder="Search" aria-label="Search the site" autocomplete="off">'
            f'<ol id="search-results"></ol></div><ul class="pages">{items(entries)}</ul></nav>')


# after load, the body records how many pictures failed to load (the browser check in tests/test_docs.py reads it)
_IMAGE_CHECK = ("<script>addEventListener('load', () => { document.body.dataset.brokenImages = "
                "[...document.images].filter(i => !i.complete || !i.naturalWidth).length; });</script>")

SEARCH_JS = r"""// The site's search: every section's text is in search_index.js (window.SEARCH_INDEX); no network.
(() => {
  const root = document.currentScript.dataset.root, box = document.getElementById("search"),
        list = document.getElementById("search-results"), docs = window.SEARCH_INDEX || [];
  function run() {
    const terms = box.value.toLowerCase().split(/\s+/).filter(Boolean);
    list.replaceChildren();
    if (!terms.length || terms.join("").length < 2) return;
    const hits = [];
    for (const d of docs) {
      const title = d.title.toLowerCase(), text = d.text.toLowerCase();
      if (!terms.every(w => title.includes(w) || text.includes(w))) continue;
      hits.push([terms.reduce((s, w) => s + (title.includes(w) ? 20 : 0) + Math.min(text.split(w).length - 1, 10), 0), d]);
    }
    hits.sort((a, b) => b[0] - a[0]);
    for (const [, d] of hits.slice(0, 15)) {
      const li = document.createElement("li"), a = document.createElement("a"), p = document.createElement("p");
      a.href = root + d.url;
      a.textContent = d.title === d.page ? d.page : `${d.page} › ${d.title}`;
      const at = Math.max(0, d.text.toLowerCase().indexOf(terms[0]) - 60);
      p.textContent = (at ? "…" : "") + d.text.slice(at, at + 160) + "…";
      li.append(a, p);
      list.append(li);
    }
    if (!hits.length) list.innerHTML = "<li>no results</li>";
  }
  box.addEventListener("input", run);
  box.addEventListener("keydown", e => { const a = list.querySelector("a"); if (e.key === "Enter" && a) location.href = a.href; });
  const q = new URLSearchParams(location.search).get("q");
  if (q) { box.value = q; run(); }
})();
"""

CSS = """
:root { --side: 16rem; --fg: #1d2430; --muted: #5b6575; --accent: #2c6bb3; --code-bg: #f6f8fa; --border: #dde3ea; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.55 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: var(--fg); }
a { color: var(--accent); text-decoration: none; } a:hover { text-decoration: underline; }
.sidebar { position: fixed; top: 0; bottom: 0; left: 0; width: var(--side); overflow-y: auto; padding: 1.2rem 1rem;
  background: #f3f5f8; border-right: 1px solid var(--border); font-size: 14px; }
.sidebar .brand { display: block; font-weight: 700; font-size: 1.25rem; margin-bottom: .6rem; color: var(--fg); }
.sidebar ul { list-style: none; margin: 0; padding: 0; } .sidebar li { margin: .15rem 0; }
.sidebar li.current > a { font-weight: 700; color: var(--fg); }
.sidebar li ul { margin: .2rem 0 .5rem .8rem; font-size: 13px; } .sidebar li ul a { color: var(--muted); }
.sidebar li.section > span { display: block; margin-top: .6rem; font-weight: 600; color: var(--muted); text-transform: capitalize; }
.search { margin-bottom: 1rem; } .search input { width: 100%; padding: .3rem .5rem; border: 1px solid var(--border); border-radius: 4px; font: inherit; }
#search-results { list-style: none; padding: 0; margin: .3rem 0 0; max-height: 60vh; overflow-y: auto; }
#search-results li { background: #fff; border: 1px solid var(--border); border-radius: 4px; padding: .3rem .5rem; margin: .3rem 0; }
#search-results p { margin: .1rem 0 0; font-size: 12px; color: var(--muted); }
main { margin-left: var(--side); padding: 1.5rem 2.5rem 4rem; max-width: calc(var(--side) + 62rem); }
h1 { font-size: 2rem; margin: .3rem 0 .5rem; } h2 { margin-top: 2rem; border-bottom: 1px solid var(--border); padding-bottom: .2rem; }
p.description { margin: 0 0 1.2rem; font-size: 1.2rem; font-style: italic; color: var(--muted); }
blockquote { border-left: 3px solid var(--border); margin-left: 0; padding-left: 1rem; color: var(--muted); }
.anchor-link { visibility: hidden; margin-left: .3rem; font-size: .8em; } :hover > .anchor-link { visibility: visible; }
code { font-family: "SFMono-Regular", Menlo, Consolas, "Liberation Mono", monospace; font-size: .88em;
  background: var(--code-bg); padding: .05rem .25rem; border-radius: 3px; }
pre { background: var(--code-bg); padding: .6rem .8rem; overflow-x: auto; border-radius: 4px; margin: .4rem 0; font-size: 13px; line-height: 1.4; }
pre code { background: none; padding: 0; font-size: inherit; }
table { border-collapse: collapse; margin: .6rem 0; font-size: 14px; }
th, td { border: 1px solid var(--border); padding: .25rem .6rem; text-align: left; vertical-align: top; }
th { background: #eef2f6; }
.cell { margin: .4rem 0; } .prompt { display: none; }
.output_area pre { background: none; border-left: 2px solid lightsalmon; border-radius: 0; max-height: 32rem; overflow: auto; }
.output_stderr pre { background: #fff3f0; }
.output_area img { max-width: 100%; height: auto; }
.show-doc .output_area { margin: 1.2rem 0 .4rem; } .show-doc hr { border: 0; border-top: 1px solid var(--border); }
.show-doc h3, .show-doc h4 { margin: .2rem 0; font-family: "SFMono-Regular", Menlo, Consolas, monospace; }
.show-doc blockquote { border-left: 3px solid var(--accent); color: var(--fg); padding-left: .6rem; }
.show-doc blockquote pre, .show-doc .output_area blockquote pre { margin: 0; padding: .3rem .4rem; border: 0; white-space: pre-wrap; }
details.code-fold summary { cursor: pointer; color: var(--muted); font-size: 13px; }
footer { margin-top: 3rem; color: var(--muted); font-size: 13px; }
"""


def build(nbs: Path = ROOT / "nbs", out: Path = ROOT / "_docs", force: bool = False) -> list[Path]:
    "Process the notebooks with nbdev, render `_proc/` into `out` as a static site; return the pages written."
    nbs, out = nbs.resolve(), out.resolve()
    with in_project(nbs) as cfg:
        return _build(nbs, out, force, cfg)


def _build(nbs: Path, out: Path, force: bool, cfg) -> list[Path]:
    from pygments.formatters import HtmlFormatter
    proc = nbdev_process(nbs, force)
    pages = load_pages(nbs, proc)
    site = yaml.safe_load((nbs / "nbdev.yml").read_text())["website"] if (nbs / "nbdev.yml").exists() else {}
    site_title = str(site.get("title") or cfg.lib_name)
    entries = sidebar_entries(proc, pages, nbs)
    # render every page before touching `out`, so that an error leaves the previous site as it was
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    md = PageRenderer(pages, nbs, proc, staging, _site_url(cfg))
    exporter = _exporter(md.render)
    written, index = [], []
    try:
        for p in pages:
            apply_cell_options(p.nb)
            md.start(p)
            head = f'<h1 class="title">{html.escape(p.title)}</h1>'
            if p.description:
                head += f'<p class="description">{md.md.renderInline(p.description)}</p>'
            try:
                body, _ = exporter.from_notebook_node(p.nb, resources={"metadata": {"name": p.proc.stem}})
            except DocsError:
                raise
            except Exception as e:
                raise DocsError(f"{p.src}: nbconvert could not render it ({type(e).__name__}: {e})") from e
            index += md.search_entries()
            root = md.rel(".") + "/" if md.rel(".") != "." else ""
            source = p.src.relative_to(cfg.config_path).as_posix()
            footer = (f'<footer>Made from <a href="{cfg.git_url}/blob/{cfg.branch}/{source}">{html.escape(source)}</a> '
                      "by nbdev's processing and <code>python .ci/docs.py</code>.</footer>")
            page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                    f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                    f"<title>{html.escape(p.title)} – {html.escape(site_title)}</title>"
                    f'<link rel="stylesheet" href="{root}site.css"><link rel="stylesheet" href="{root}styles.css"></head>\n<body>'
                    f"{sidebar_html(entries, p, md.toc, site_title)}\n<main><header>{head}</header>\n{body}\n{footer}</main>"
                    f'<script src="{root}search_index.js"></script><script src="{root}search.js" data-root="{root}"></script>'
                    f"{_IMAGE_CHECK}</body></html>\n")
            written.append((p.url, page))
        written = resolve_fragments(written)
        for url, page in written:
            dest = staging / url
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(page, encoding="utf-8")
        (staging / "site.css").write_text(CSS + HtmlFormatter(style="friendly").get_style_defs(".highlight"), encoding="utf-8")
        styles = nbs / "styles.css"  # nbdev's, as Quarto's `css: styles.css` uses it
        (staging / "styles.css").write_text(styles.read_text() if styles.exists() else "", encoding="utf-8")
        (staging / "search_index.js").write_text("window.SEARCH_INDEX = " + json.dumps(index, ensure_ascii=False) + ";\n",
                                                 encoding="utf-8")
        (staging / "search.js").write_text(SEARCH_JS, encoding="utf-8")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return [out / url for url, _ in written]


# ---------------------------------------------------------------- --execute and --screenshots

def execute_notebook(path: Path, timeout: int = 600) -> int:
    "Run a notebook in place so it keeps its outputs, skipping `#| eval: false` cells as nbdev_test does; return the cells run."
    from nbclient import NotebookClient
    nb = nbformat.read(path, as_version=4)
    skipped = []
    for cell in nb.cells:
        if cell.cell_type == "code" and _is_false(split_directives(cell.source)[0].get("eval", "true")):
            cell.metadata.setdefault("tags", []).append("skip-execution")  # nbclient's own skip tag
            skipped.append(cell)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    for cell in skipped:
        cell.metadata["tags"].remove("skip-execution")
        if not cell.metadata["tags"]:
            del cell.metadata["tags"]
    nbformat.write(nb, path)
    return sum(c.cell_type == "code" for c in nb.cells) - len(skipped)


SHOTS = [("search.png", "index.html?q=letterbox", None),     # the index, searching
         ("predict.png", "predict.html", "#load_eager_detector")]  # a documented function: signature, docstring, parameter table


def screenshots(site: Path, dest: Path, shots=SHOTS, chromium: str = "/usr/bin/chromium") -> list[Path]:
    "Screenshots (1200 x 900) with Playwright: (file name, page, CSS selector scrolled to the top or None) for each of `shots`."
    from playwright.sync_api import sync_playwright
    site = site.resolve()
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu"])
        tab = browser.new_page(viewport={"width": 1200, "height": 900})
        for name, page, selector in shots:
            path, _, query = page.partition("?")
            tab.goto((site / path).as_uri() + (f"?{query}" if query else ""))
            if selector:
                tab.locator(selector).first.evaluate("e => { e.scrollIntoView({block: 'start'}); window.scrollBy(0, -60); }")
            tab.screenshot(path=str(dest / name))
            out.append(dest / name)
        browser.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--execute", type=Path, nargs="+", metavar="NOTEBOOK",
                    help="instead of building: run these notebooks in place so they keep their outputs (then nbdev_clean them)")
    ap.add_argument("--nbs", type=Path, default=ROOT / "nbs", help="folder of the notebooks (of an nbdev project)")
    ap.add_argument("--out", type=Path, default=ROOT / "_docs", help="output folder (replaced)")
    ap.add_argument("--force", action="store_true", help="process every notebook again, not only those changed since the last build")
    ap.add_argument("--screenshots", type=Path, metavar="DIR",
                    help="after building, save screenshots of a search and of predict.html (Playwright and Chromium)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.execute:
        for nb_path in args.execute:
            print(f"{nb_path}: ran {execute_notebook(nb_path)} cells in {time.perf_counter() - t0:.1f} s")
        return 0
    try:
        written = build(args.nbs, args.out, args.force)
    except DocsError as e:
        print(f"docs: {e}")
        return 1
    for w in written:
        print(f"  {w.relative_to(args.out.parent) if w.is_relative_to(args.out.parent) else w}")
    print(f"built {len(written)} pages into {args.out} in {time.perf_counter() - t0:.1f} s")
    if args.screenshots:
        for shot in screenshots(args.out, args.screenshots):
            print(f"  screenshot {shot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
