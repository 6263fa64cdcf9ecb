"""The repository URL is settings.ini's (`git_url`, `user`, `lib_name`): the README, the index notebook, the tutorial's
`REPO` and every Colab badge name that one repository."""
import configparser
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def settings() -> dict:
    cfg = configparser.ConfigParser(); cfg.read(ROOT / "settings.ini")
    return dict(cfg["DEFAULT"])


def repo_urls(text: str) -> set[str]:
    "Every github.com/OWNER/NAME and colab.research.google.com/github/OWNER/NAME in `text`, as https://github.com/OWNER/NAME."
    found = re.findall(r"github\.com/([\w.-]+/[\w.-]+)", text) + re.findall(r"colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)", text)
    return {f"https://github.com/{m.removesuffix('.git')}" for m in found}


def test_settings_agree_with_themselves():
    s = settings()
    assert s["git_url"] == f"https://github.com/{s['user']}/{s['lib_name']}"


def test_readme_index_tutorial_and_badges_name_settings_repository():
    url = settings()["git_url"]
    tutorial = json.loads((ROOT / "nbs/tutorials/kaggle_colab.ipynb").read_text())
    tut_src = "\n".join("".join(c["source"]) for c in tutorial["cells"])
    assert f'REPO = "{url}"' in tut_src
    for name, text in [("README.md", (ROOT / "README.md").read_text()), ("nbs/index.ipynb", (ROOT / "nbs/index.ipynb").read_text()),
                       ("tutorial", tut_src)]:
        urls = {u for u in repo_urls(text) if "/" in u.removeprefix("https://github.com/")}
        ours = {u for u in urls if u.startswith(f"https://github.com/{settings()['user']}/")}
        assert ours <= {url}, (name, ours)
    badges = re.findall(r"colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)/blob/(\w+)/(\S+?\.ipynb)", (ROOT / "README.md").read_text())
    assert badges and all(f"https://github.com/{r}" == url and b == settings()["branch"] and (ROOT / p).is_file() for r, b, p in badges)
