"""Build the documentation site from the executed notebooks without Quarto: `python .ci/docs.py`.

`nbdev_docs` (Quarto) stays the way to build the site wherever Quarto is installed. This script is for machines
without it: nbconvert renders every `nbs/*.ipynb` (then `nbs/tutorials/*.ipynb`) with its saved outputs into
`_docs/<name>.html`; `nbs/index.ipynb` becomes `_docs/index.html`. Like nbdev's own docs processors, it drops
`#| hide`, `#| include: false` and `#| default_exp` cells, strips the other `#|` directives, shows an
`#| export` cell as the documentation of the public names it defines (signature and docstring, the source folded
below) and adds an API section listing the module's `__all__`. Every page shares one sidebar (every page, in
notebook order, titled by the notebook's first heading, with the current page's sections). CSS is inline and
nothing is fetched from the network; pictures are embedded as data URIs by nbconvert, files referenced from
markdown are copied. Backticked public names (`boxes.decode_outputs`, `load_detector`) and notebook names
(`03_data`) link to their documentation, as nbdev's doclinks do.

Usage: `python .ci/docs.py [--nbs nbs] [--lib yolo_voc] [--out _docs]`; it prints the pages and the build time.
`python .ci/docs.py --execute nbs/00_boxes.ipynb` runs a notebook in place so that it keeps its outputs, skipping
`#| eval: false` cells as `nbdev_test` does (plain `jupyter nbconvert --execute` would run them); then run
`nbdev_clean --fname nbs/00_boxes.ipynb`.
"""
from __future__ import annotations

import argparse
import ast
import html
import re
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter
from nbformat.warnings import MissingIDFieldWarning
from nbconvert.preprocessors import TagRemovePreprocessor
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

ROOT = Path(__file__).resolve().parents[1]
_DIRECTIVE = re.compile(r"^\s*#\s*\|\s*([\w-]+)\s*:?\s*(.*?)\s*$")
_EXPORT = {"export", "exports", "exporti"}


class DocsError(Exception):
    "A notebook or module the site cannot be built from; the message names the file."


# ---------------------------------------------------------------- directives

def split_directives(source: str) -> tuple[dict[str, str], str]:
    "The leading `#| name value` lines of a code cell as `{name: value}`, and the source without them."
    lines, directives = source.splitlines(), {}
    while lines and (m := _DIRECTIVE.match(lines[0])):
        directives[m.group(1).lower()] = m.group(2)
        lines.pop(0)
    return directives, "\n".join(lines).strip("\n")


def _is_false(value: str) -> bool:
    return value.strip().lower() in ("false", "no", "0")


# ---------------------------------------------------------------- API from the exported modules

@dataclass
class ApiEntry:
    "One public name of a module: how it is called and what it does."
    name: str
    kind: str                                 # "function", "class" or "constant"
    signature: str
    doc: str
    members: list[ApiEntry] = field(default_factory=list)  # public methods and properties of a class


def _doc_comment(lines: list[str], lineno: int) -> str:
    "The `#:` comment lines right above line `lineno` (1-based), Sphinx-style documentation of a constant."
    out, i = [], lineno - 2
    while i >= 0 and lines[i].lstrip().startswith("#:"):
        out.insert(0, lines[i].lstrip()[2:].strip())
        i -= 1
    return " ".join(out)


def _function_signature(node: ast.FunctionDef | ast.AsyncFunctionDef, drop_self: bool = False) -> str:
    args = node.args
    if drop_self and (args.posonlyargs or args.args):
        args = ast.arguments(**{**{k: getattr(args, k) for k in args._fields}})
        if args.posonlyargs:
            args.posonlyargs = args.posonlyargs[1:]
        else:
            args.args = args.args[1:]
    ret = f" -> {ast.unparse(node.returns)}" if node.returns else ""
    return f"({ast.unparse(args)}){ret}"


def _class_entry(node: ast.ClassDef) -> ApiEntry:
    is_dataclass = any("dataclass" in ast.unparse(d) for d in node.decorator_list)
    init = next((b for b in node.body if isinstance(b, ast.FunctionDef) and b.name == "__init__"), None)
    if init is not None:
        sig = _function_signature(init, drop_self=True)
    elif is_dataclass:
        fields = [f"{ast.unparse(b.target)}: {ast.unparse(b.annotation)}" + (f" = {ast.unparse(b.value)}" if b.value else "")
                  for b in node.body if isinstance(b, ast.AnnAssign) and "ClassVar" not in ast.unparse(b.annotation)]
        sig = f"({', '.join(fields)})"
    else:
        bases = ", ".join(ast.unparse(b) for b in node.bases)
        sig = f"({bases})" if bases else ""
    members = []
    for b in node.body:
        if isinstance(b, (ast.FunctionDef, ast.AsyncFunctionDef)) and not b.name.startswith("_"):
            decos = [ast.unparse(d) for d in b.decorator_list]
            kind = "property" if "property" in decos else "method"
            static = "staticmethod" in decos
            msig = "" if kind == "property" else _function_signature(b, drop_self=not static)
            if kind == "property" and b.returns is not None:
                msig = f": {ast.unparse(b.returns)}"
            if ast.get_docstring(b):  # like show_doc, only what has something to say (not every bare `forward`)
                members.append(ApiEntry(b.name, kind, msig, ast.get_docstring(b)))
    return ApiEntry(node.name, "class", sig, ast.get_docstring(node) or "", members)


def definitions(source: str, fname: str) -> dict[str, ApiEntry]:
    "Every top-level function, class and constant defined in Python `source`, documented (`fname` for errors)."
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise DocsError(f"{fname}: cannot parse the code ({e.msg}, line {e.lineno})") from e
    lines, out = source.splitlines(), {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out[node.name] = ApiEntry(node.name, "function", _function_signature(node), ast.get_docstring(node) or "")
        elif isinstance(node, ast.ClassDef):
            out[node.name] = _class_entry(node)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            value = ast.unparse(node.value) if node.value is not None else ""
            if len(value) > 160:
                value = value[:150] + " ..."
            ann = f": {ast.unparse(node.annotation)}" if isinstance(node, ast.AnnAssign) else ""
            for t in targets:
                if isinstance(t, ast.Name):
                    out[t.id] = ApiEntry(t.id, "constant", f"{ann} = {value}" if value else ann,
                                         _doc_comment(lines, node.lineno))
                elif isinstance(t, ast.Tuple):  # `A, B = 2, 3`
                    values = node.value.elts if isinstance(node.value, ast.Tuple) and len(node.value.elts) == len(t.elts) \
                        else [None] * len(t.elts)
                    for el, v in zip(t.elts, values):
                        if isinstance(el, ast.Name):
                            out[el.id] = ApiEntry(el.id, "constant", f" = {ast.unparse(v)}" if v is not None else "",
                                                  _doc_comment(lines, node.lineno))
        elif isinstance(node, ast.ImportFrom) and node.level and node.module:  # `from .synthetic import x`: a re-export
            for a in node.names:
                out.setdefault(a.asname or a.name, ApiEntry(a.asname or a.name, "alias", "",
                                                            f"Re-exported from `{node.module}.{a.name}`."))
    # a class or function made on first use (a module `__getattr__`, nbdev's `_all_`): its nested definition
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name not in out \
                and node not in tree.body:
            out[node.name] = (_class_entry(node) if isinstance(node, ast.ClassDef) else
                              ApiEntry(node.name, "function", _function_signature(node), ast.get_docstring(node) or ""))
    return out


def module_all(path: Path) -> list[str]:
    "The names in a module's `__all__`, read without importing it."
    tree = ast.parse(path.read_text(), str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            try:
                return list(ast.literal_eval(node.value))
            except ValueError as e:
                raise DocsError(f"{path}: __all__ is not a literal list of names") from e
    return []


# ---------------------------------------------------------------- rendering helpers

def _md(text: str) -> str:
    "Docstring text to HTML: paragraphs, with `code` spans."
    paras = [p.strip() for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    out = []
    for p in paras:
        p = html.escape(re.sub(r"\s*\n\s*", " ", p), quote=False)
        p = re.sub(r"`([^`]+)`", r"<code>\1</code>", p)
        p = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", p)
        out.append(f"<p>{p}</p>")
    return "\n".join(out)


def _py(code: str) -> str:
    return highlight(code, PythonLexer(), HtmlFormatter(cssclass="highlight"))


def render_entry(e: ApiEntry, module: str, level: int = 3, anchor: str | None = None) -> str:
    "The HTML documentation block of one public name (nbdev `show_doc` style)."
    anchor = anchor or e.name
    kind = {"function": "", "class": "class ", "constant": ""}.get(e.kind, "")
    sig = f"{kind}{e.name}{e.signature}"
    parts = [f'<div class="doc doc-{e.kind}" id="{html.escape(anchor)}">',
             f'<h{level} class="doc-name"><code>{html.escape(e.name)}</code>'
             f'<a class="anchor-link" href="#{html.escape(anchor)}">¶</a></h{level}>',
             f'<pre class="signature"><code>{html.escape(sig)}</code></pre>']
    if e.doc:
        parts.append(f'<div class="docstring">{_md(e.doc)}</div>')
    parts.append(f'<div class="doc-origin"><code>{html.escape(module)}.{html.escape(e.name)}</code></div>')
    for m in e.members:
        parts.append(render_entry(m, f"{module}.{e.name}", level + 1, f"{anchor}.{m.name}"))
    parts.append("</div>")
    return "\n".join(parts)


# ---------------------------------------------------------------- pages

@dataclass
class Page:
    "One notebook and the page it becomes."
    nb_path: Path
    out_name: str                  # e.g. "00_boxes.html"
    title: str
    module: str | None = None      # the `#| default_exp` module, dotted under the library
    nb: nbformat.NotebookNode | None = None


def notebook_title(nb: nbformat.NotebookNode, path: Path) -> str:
    "The first markdown heading of a notebook."
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            if m := re.search(r"^#{1,6}\s+(.+?)\s*#*\s*$", cell.source, re.M):
                return re.sub(r"[`*]", "", m.group(1))
    raise DocsError(f"{path}: no markdown heading to title its page (start the notebook with '# Title')")


def find_notebooks(nbs: Path) -> list[Path]:
    "Notebooks in site order: index, the numbered notebooks by name, then tutorials."
    if not (nbs / "index.ipynb").exists():
        raise DocsError(f"{nbs / 'index.ipynb'}: missing; the site's index page is made from it")
    main = sorted(p for p in nbs.glob("*.ipynb") if p.name != "index.ipynb" and not p.name.startswith("_"))
    tutorials = sorted((nbs / "tutorials").glob("*.ipynb")) if (nbs / "tutorials").is_dir() else []
    return [nbs / "index.ipynb", *main, *tutorials]


def load_pages(nbs: Path, lib: Path) -> list[Page]:
    "Read every notebook and find its title and exported module."
    pages = []
    for p in find_notebooks(nbs):
        try:
            with warnings.catch_warnings():  # nbdev_clean drops cell ids on purpose (clean_ids in settings.ini)
                warnings.simplefilter("ignore", MissingIDFieldWarning)
                nb = nbformat.read(p, as_version=4)
        except Exception as e:  # nbformat raises several kinds for broken JSON / schema
            raise DocsError(f"{p}: not a readable notebook ({type(e).__name__}: {e})") from e
        rel = p.relative_to(nbs).with_suffix(".html")
        out_name = "index.html" if p == nbs / "index.ipynb" else "-".join(rel.parts)
        module = None
        for cell in nb.cells:
            if cell.cell_type == "code":
                d, _ = split_directives(cell.source)
                if "default_exp" in d:
                    module = d["default_exp"].split()[0]
                    if not (lib / (module.replace(".", "/") + ".py")).exists():
                        raise DocsError(f"{p}: exports to {module!r} but {lib / (module.replace('.', '/') + '.py')} "
                                        "does not exist: run nbdev_export")
                    break
        pages.append(Page(p, out_name, notebook_title(nb, p), module, nb))
    return pages


_PLACEHOLDER = "DOCSBLOCK{}X"


def _html_cell(text: str, blocks: list[str]) -> nbformat.NotebookNode:
    "A markdown cell holding a placeholder for `text`, put back after rendering (nbconvert sanitizes raw HTML slowly)."
    blocks.append(text)
    return nbformat.v4.new_markdown_cell(_PLACEHOLDER.format(len(blocks) - 1))


def prepare(page: Page, lib: Path, api: dict[str, list[str]]) -> tuple[nbformat.NotebookNode, list[str], list[str]]:
    "The notebook as the page shows it (hidden cells dropped, directives stripped), its documented names and HTML blocks."
    nb = nbformat.from_dict(page.nb)
    for i, cell in enumerate(nb.cells):  # nbdev_clean drops cell ids; nbformat's validation wants them
        cell.setdefault("id", f"cell-{i}")
    cells, documented, html_blocks = [], [], []
    for cell in nb.cells:
        if cell.cell_type != "code":
            cells.append(cell)
            continue
        d, src = split_directives(cell.source)
        if "hide" in d or "default_exp" in d or _is_false(d.get("include", "true")):
            continue
        tags = set(cell.metadata.get("tags", []))
        if "hide_input" in d or _is_false(d.get("echo", "true")):
            tags.add("remove_input")
        if "hide_output" in d or _is_false(d.get("output", "true")):
            tags.add("remove_output")
        exp = _EXPORT & d.keys()
        if exp:
            module = d[next(iter(exp))].split()[0] if d[next(iter(exp))] else page.module
            if module is None:
                raise DocsError(f"{page.nb_path}: an exported cell but no '#| default_exp' module")
            public = set(api.get(module, []))
            defs = definitions(src, str(page.nb_path))
            blocks = [render_entry(e, f"{lib.name}.{module}") for n, e in defs.items() if n in public]
            documented += [n for n in defs if n in public]
            folded = "exports" not in exp  # `#| exports` shows its source, like nbdev
            code = (f'<details class="source"><summary>exported source</summary>{_py(src)}</details>' if folded
                    else _py(src))
            if exp != {"exporti"}:  # internal-only cells stay out of the docs, as in nbdev
                cells.append(_html_cell("\n".join(blocks) + code, html_blocks))
            continue
        cell.source = src
        cell.metadata["tags"] = sorted(tags)
        cells.append(cell)
    nb.cells = cells
    return nb, documented, html_blocks


def api_section(page: Page, lib: Path, names: list[str], documented: list[str], defs: dict[str, ApiEntry]) -> str:
    "The page's API section: every public name of its module with its signature and first docstring line."
    mod = f"{lib.name}.{page.module}"
    rows = []
    for n in names:
        e = defs.get(n)
        if e is None:
            raise DocsError(f"{lib / (page.module.replace('.', '/') + '.py')}: __all__ names {n!r}, which it does not define")
        first = e.doc.strip().split("\n\n")[0] if e.doc else ""
        target = f'<a href="#{html.escape(n)}"><code>{html.escape(n)}</code></a>' if n in documented else f"<code>{html.escape(n)}</code>"
        rows.append(f"<tr><td>{target}</td><td><code>{html.escape(e.signature[:120])}</code></td><td>{_md(first)}</td></tr>")
    missing = [defs[n] for n in names if n not in documented]
    extra = "\n".join(render_entry(e, mod) for e in missing)
    return (f'<section class="api" id="api"><h2>API<a class="anchor-link" href="#api">¶</a></h2>'
            f"<p>The public names of <code>{html.escape(mod)}</code> (its <code>__all__</code>).</p>"
            f'<table class="api-table"><thead><tr><th>name</th><th>signature</th><th>what it does</th></tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>{extra}</section>")


_HEADING = re.compile(r'<h2 id="([^"]+)">(.*?)(?:<a class="anchor-link"[^>]*>.*?</a>)?</h2>', re.S)


def site_title(nbs: Path, lib: Path) -> str:
    "The website title of `nbs/nbdev.yml` (the Quarto site's), else the library's name."
    yml = nbs / "nbdev.yml"
    m = re.search(r'^\s*title:\s*"?([^"\n]+?)"?\s*$', yml.read_text(), re.M) if yml.exists() else None
    return m.group(1) if m else lib.name


def sidebar(pages: list[Page], current: Page, body: str, title: str) -> str:
    "Navigation: every page in order; under the current one, its sections."
    items = []
    for p in pages:
        cls = ' class="current"' if p is current else ""
        item = f'<li{cls}><a href="{p.out_name}">{html.escape(p.title)}</a>'
        if p is current:
            subs = [(a, re.sub(r"<[^>]+>", "", t)) for a, t in _HEADING.findall(body)]
            if subs:
                item += "<ul>" + "".join(f'<li><a href="#{a}">{t}</a></li>' for a, t in subs) + "</ul>"
        items.append(item + "</li>")
    return (f'<nav class="sidebar"><a class="brand" href="index.html">{html.escape(title)}</a>'
            f'<ul class="pages">{"".join(items)}</ul></nav>')


def link_names(body: str, symbols: dict[str, str], self_name: str) -> str:
    "Turn `<code>name</code>` of a documented public name or notebook into a link (not inside links or code blocks)."
    def repl(m):
        target = symbols.get(html.unescape(m.group(1)))
        if target is None or target == self_name:
            return m.group(0)
        return f'<a class="doclink" href="{target}">{m.group(0)}</a>'
    parts = re.split(r"(<a\b.*?</a>|<pre\b.*?</pre>|<h\d\b.*?</h\d>)", body, flags=re.S)
    return "".join(p if i % 2 else re.sub(r"<code>([\w.]+)</code>", repl, p) for i, p in enumerate(parts))


def fix_links(body: str, nb_dir: Path, out: Path, nbs: Path) -> str:
    "Point `.ipynb` links at pages; copy local images referenced from markdown next to the page."
    def href(m):
        url = m.group(2)
        if not re.match(r"^[a-z][\w+.-]*:|^#", url) and ".ipynb" in url:
            path, _, frag = url.partition("#")
            target = (nb_dir / path).resolve()
            if not target.exists() and (nbs.parent / path).exists():  # a link written for the README, from the repo root
                target = (nbs.parent / path).resolve()
            try:
                rel = target.relative_to(nbs.resolve()).with_suffix(".html")
            except ValueError:
                return m.group(0)
            name = "index.html" if rel.as_posix() == "index.html" else "-".join(rel.parts)
            url = name + (f"#{frag}" if frag else "")
        return f'{m.group(1)}"{url}"'

    def img(m):
        url = m.group(2)
        if not re.match(r"^[a-z][\w+.-]*:", url):
            src = (nb_dir / url).resolve()
            if src.is_file():
                dest = out / "media" / src.name
                dest.parent.mkdir(exist_ok=True)
                shutil.copy2(src, dest)
                url = f"media/{src.name}"
        return f'{m.group(1)}"{url}"'

    body = re.sub(r'(<a\s[^>]*?href=)"([^"]*)"', href, body)
    return re.sub(r'(<img\s[^>]*?src=)"([^"]*)"', img, body)


def strip_remote(body: str) -> str:
    "Drop scripts and stylesheets that would be fetched from the network (require.js, MathJax, widget managers)."
    body = re.sub(r'<script\b[^>]*\bsrc="(?:https?:)?//[^"]*"[^>]*>\s*</script>', "", body)
    return re.sub(r'<link\b[^>]*\bhref="(?:https?:)?//[^"]*"[^>]*>', "", body)


# after load, the body records how many pictures failed to load (the browser check in tests/test_docs.py reads it)
_IMAGE_CHECK = ("<script>addEventListener('load', () => { document.body.dataset.brokenImages = "
                "[...document.images].filter(i => !i.complete || !i.naturalWidth).length; });</script>")

CSS = """
:root { --side: 15rem; --fg: #1d2430; --muted: #5b6575; --accent: #2c6bb3; --code-bg: #f6f8fa; --border: #dde3ea; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.55 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: var(--fg); }
a { color: var(--accent); text-decoration: none; } a:hover { text-decoration: underline; }
.sidebar { position: fixed; top: 0; bottom: 0; left: 0; width: var(--side); overflow-y: auto; padding: 1.2rem 1rem;
  background: #f3f5f8; border-right: 1px solid var(--border); font-size: 14px; }
.sidebar .brand { display: block; font-weight: 700; font-size: 1.25rem; margin-bottom: 1rem; color: var(--fg); }
.sidebar ul { list-style: none; margin: 0; padding: 0; } .sidebar li { margin: .15rem 0; }
.sidebar li.current > a { font-weight: 700; color: var(--fg); }
.sidebar li ul { margin: .2rem 0 .5rem .8rem; font-size: 13px; } .sidebar li ul a { color: var(--muted); }
main { margin-left: var(--side); padding: 1.5rem 2.5rem 4rem; max-width: calc(var(--side) + 62rem); }
h1 { font-size: 2rem; margin: .3rem 0 .5rem; } h2 { margin-top: 2rem; border-bottom: 1px solid var(--border); padding-bottom: .2rem; }
h1 + blockquote { margin: 0 0 1.2rem; padding: 0; border: 0; font-size: 1.2rem; font-style: italic; color: var(--muted); }
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
.output_area pre, .output_subarea pre { background: none; border-left: 2px solid lightsalmon; border-radius: 0; max-height: 32rem; overflow: auto; }
.output_stderr pre { background: #fff3f0; }
.output_png img, .output_area img { max-width: 100%; height: auto; }
.doc { border-left: 3px solid var(--accent); padding: .1rem 0 .1rem .9rem; margin: 1.2rem 0 .4rem; }
.doc .doc { border-left-color: var(--border); margin: .6rem 0; }
.doc-name { margin: .2rem 0; font-size: 1.1rem; } .doc-name code { background: none; padding: 0; font-size: 1.05em; }
pre.signature { margin: .2rem 0; white-space: pre-wrap; } .doc-origin { font-size: 12px; color: var(--muted); }
.doc-origin code { background: none; padding: 0; } .docstring p { margin: .3rem 0; }
details.source { margin: .2rem 0 1rem; } details.source summary { cursor: pointer; color: var(--muted); font-size: 13px; }
.api-table td:nth-child(2) { font-size: 12px; } .api-table td p { margin: 0; }
a.doclink code { color: var(--accent); }
footer { margin-top: 3rem; color: var(--muted); font-size: 13px; }
"""


def build(nbs: Path = ROOT / "nbs", lib: Path = ROOT / "yolo_voc", out: Path = ROOT / "_docs") -> list[Path]:
    "Render every notebook to `out` as a static HTML site; return the pages written."
    pages = load_pages(nbs, lib)
    modules = {p.module for p in pages if p.module}
    api = {m: module_all(lib / (m.replace(".", "/") + ".py")) for m in modules}
    mod_defs = {m: definitions((lib / (m.replace(".", "/") + ".py")).read_text(), str(lib / (m.replace(".", "/") + ".py")))
                for m in modules}
    prepared = {p.out_name: prepare(p, lib, api) for p in pages}
    # doclinks: public names (bare when unique, always as module.name) and notebook names
    symbols, seen = {}, {}
    for p in pages:
        if not p.module:
            continue
        documented = prepared[p.out_name][1]
        for n in api[p.module]:
            symbols[f"{p.module}.{n}"] = symbols[f"{lib.name}.{p.module}.{n}"] = f"{p.out_name}#{n}"
            seen.setdefault(n, []).append(f"{p.out_name}#{n}")
        for n in documented:
            for m in [e for e in mod_defs[p.module].get(n, ApiEntry(n, "", "", "")).members]:
                symbols[f"{n}.{m.name}"] = f"{p.out_name}#{n}.{m.name}"
    symbols.update({n: t[0] for n, t in seen.items() if len(t) == 1})
    symbols.update({p.nb_path.stem: p.out_name for p in pages if p.out_name != "index.html"})

    exporter = HTMLExporter(template_name="basic", exclude_input_prompt=True, exclude_output_prompt=True)
    exporter.log.setLevel("ERROR")  # not the warning about output pictures without alt text
    # the notebooks are this project's own source: skip bleach's sanitizing of every highlighted cell (half the time)
    exporter.register_filter("clean_html", lambda text: text.decode() if isinstance(text, bytes) else str(text))
    exporter.register_preprocessor(TagRemovePreprocessor(remove_input_tags={"remove_input"},
                                                         remove_all_outputs_tags={"remove_output"}), enabled=True)
    title = site_title(nbs, lib)
    style = CSS + HtmlFormatter(style="friendly").get_style_defs(".highlight")
    # render every page before touching `out`, so that an error leaves the previous site as it was
    staging = out.with_name(out.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    rendered = []
    try:
        for p in pages:
            nb, documented, html_blocks = prepared[p.out_name]
            try:
                body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": p.nb_path.stem}})
            except Exception as e:
                raise DocsError(f"{p.nb_path}: nbconvert could not render it ({type(e).__name__}: {e})") from e
            body = re.sub(r"<p>DOCSBLOCK(\d+)X</p>", lambda m: html_blocks[int(m.group(1))], body)
            if p.module:
                body += api_section(p, lib, api[p.module], documented, mod_defs[p.module])
            body = link_names(strip_remote(body), symbols, p.out_name)
            body = fix_links(body, p.nb_path.parent, staging, nbs)
            source = p.nb_path.relative_to(nbs.parent).as_posix()
            page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                    f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                    f"<title>{html.escape(p.title)} – {html.escape(title)}</title><style>{style}</style></head>\n<body>"
                    f"{sidebar(pages, p, body, title)}\n<main>{body}\n<footer>Generated from <code>{html.escape(source)}</code> "
                    f"by <code>python .ci/docs.py</code>.</footer></main>{_IMAGE_CHECK}</body></html>\n")
            rendered.append((p.out_name, page))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for name, page in rendered:
        (staging / name).write_text(page, encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return [out / name for name, _ in rendered]


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


def screenshots(site: Path, dest: Path, page: str = "00_boxes.html", chromium: str = "/usr/bin/chromium") -> list[Path]:
    "Screenshots (1200 x 900) of the site's index and of `page` scrolled to its first picture, with Playwright."
    from playwright.sync_api import sync_playwright
    dest.mkdir(parents=True, exist_ok=True)
    shots = [dest / "index.png", dest / page.replace(".html", ".png")]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu"])
        tab = browser.new_page(viewport={"width": 1200, "height": 900})
        tab.goto((site / "index.html").as_uri())
        tab.screenshot(path=str(shots[0]))
        tab.goto((site / page).as_uri())
        img = tab.locator("main img").first
        img.evaluate("e => e.scrollIntoView({block: 'center'})")
        tab.screenshot(path=str(shots[1]))
        browser.close()
    return shots


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--execute", type=Path, nargs="+", metavar="NOTEBOOK",
                    help="instead of building: run these notebooks in place so they keep their outputs (then nbdev_clean them)")
    ap.add_argument("--nbs", type=Path, default=ROOT / "nbs", help="folder of the notebooks")
    ap.add_argument("--lib", type=Path, default=ROOT / "yolo_voc", help="the exported package")
    ap.add_argument("--out", type=Path, default=ROOT / "_docs", help="output folder (replaced)")
    ap.add_argument("--screenshots", type=Path, metavar="DIR",
                    help="after building, save screenshots of the index and of 00_boxes (Playwright and Chromium)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.execute:
        for nb_path in args.execute:
            print(f"{nb_path}: ran {execute_notebook(nb_path)} cells in {time.perf_counter() - t0:.1f} s")
        return 0
    try:
        written = build(args.nbs, args.lib, args.out)
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
