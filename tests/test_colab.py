"""Every chapter runs the way Colab runs it, and every "Open in Colab" link on the site opens a real notebook.

Colab, simulated: a fresh virtual environment holding only torch and the libraries a Colab runtime has
(sympy, matplotlib, numpy, scikit-learn, ipykernel, nbclient), convbook installed into it with a plain
``pip install`` of this checkout (not editable, not on ``sys.path``), and each chapter notebook copied alone
into an empty folder and executed top to bottom there. A chapter that reads a file from the repository,
edits ``sys.path`` or needs anything not installed fails here.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# Every notebook of the book: the numbered chapters and the appendices.
CHAPTERS = sorted((ROOT / "book").glob("*.ipynb"))
COLAB_LIBRARIES = ["torch", "sympy", "matplotlib", "numpy", "scikit-learn", "ipykernel", "nbclient", "nbformat"]
COLAB = "https://colab.research.google.com/"
BADGE_IMAGE = COLAB + "assets/colab-badge.svg"
# Executed inside the fresh environment: run one notebook in its folder, then report where convbook came from.
RUNNER = r"""
import json, sys
import nbformat
from nbclient import NotebookClient
notebook_path, folder = sys.argv[1], sys.argv[2]
notebook = nbformat.read(notebook_path, as_version=4)
# Appended to the in-memory copy only: which convbook and which Python the chapter ran with.
notebook.cells.append(nbformat.v4.new_code_cell(
    "import convbook, sys, json; print(json.dumps({'convbook': convbook.__file__, 'python': sys.executable}))"))
NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": folder}}).execute()
print("PROVENANCE " + notebook.cells[-1].outputs[0]["text"].strip())
"""


def _repository() -> tuple[str, str]:
    """(owner/name, branch) from ``repository`` in _config.yml."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    url = config["repository"]["url"].rstrip("/")
    match = re.fullmatch(r"https://github\.com/([^/]+/[^/]+?)(\.git)?", url)
    assert match, f"repository.url is not a GitHub repository: {url}"
    return match.group(1), config["repository"].get("branch", "main")


def colab_url(notebook: Path) -> str:
    """The Colab address that opens ``notebook`` from the repository named in _config.yml."""
    repository, branch = _repository()
    return f"{COLAB}github/{repository}/blob/{branch}/{notebook.relative_to(ROOT).as_posix()}"


def _pinned(names: list[str]) -> list[str]:
    """The requirement lines of requirements.txt for ``names`` (so the simulated runtime matches CI's versions)."""
    pins = {}
    for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines():
        match = re.match(r"([A-Za-z0-9_.\-]+)\s*==\s*(\S+)", line.strip())
        if match:
            pins[match.group(1).lower()] = f"{match.group(1)}=={match.group(2)}"
    return [pins.get(name, name) for name in names]


def _clean_environment(jupyter_dir: Path) -> dict[str, str]:
    """The environment of a fresh runtime: no PYTHONPATH, and no kernels other than the venv's own."""
    env = {key: value for key, value in os.environ.items()
           if key not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "JUPYTER_PATH", "JUPYTER_CONFIG_DIR"}}
    env.update(JUPYTER_DATA_DIR=str(jupyter_dir / "data"), JUPYTER_CONFIG_DIR=str(jupyter_dir / "config"),
               JUPYTER_RUNTIME_DIR=str(jupyter_dir / "runtime"), MPLBACKEND="agg", PYTHONNOUSERSITE="1")
    return env


@pytest.fixture(scope="session")
def colab_runtime(tmp_path_factory) -> Iterator[tuple[Path, dict[str, str]]]:
    """A fresh venv with torch, the book's libraries and convbook pip-installed from a copy of this checkout."""
    where = tmp_path_factory.mktemp("colab")
    venv = where / "venv"
    env = _clean_environment(where / "jupyter")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env)
    python = venv / "bin" / "python"
    # A copy, so that the build leaves nothing behind in the checkout; `pip install <checkout>`, not -e.
    checkout = where / "checkout"
    shutil.copytree(ROOT, checkout, ignore=shutil.ignore_patterns(
        ".git", ".venv", "_build", "build", "*.egg-info", ".pytest_cache", ".hypothesis", "__pycache__"))
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", *_pinned(COLAB_LIBRARIES), str(checkout)],
                             capture_output=True, text=True, env=env, cwd=where, timeout=900)
    if install.returncode:
        pytest.fail(f"pip install into the fresh venv failed:\n{install.stdout[-3000:]}\n{install.stderr[-3000:]}")
    shutil.rmtree(checkout)
    yield python, env
    shutil.rmtree(venv, ignore_errors=True)  # about 1.5 GB: not left behind in pytest's kept temp folders


@pytest.fixture(scope="session")
def colab_runs(colab_runtime, tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Each chapter, copied alone into an empty folder and executed top to bottom (two at a time)."""
    python, env = colab_runtime
    runner = tmp_path_factory.mktemp("runner") / "run_notebook.py"
    runner.write_text(RUNNER, encoding="utf-8")

    def run(chapter: Path) -> subprocess.CompletedProcess:
        folder = tmp_path_factory.mktemp(chapter.stem)
        notebook = folder / chapter.name
        shutil.copy(chapter, notebook)
        return subprocess.run([str(python), str(runner), str(notebook), str(folder)], cwd=folder, env=env,
                              capture_output=True, text=True, timeout=900)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip((chapter.name for chapter in CHAPTERS), pool.map(run, CHAPTERS)))


def test_the_book_has_chapters():
    assert len([chapter for chapter in CHAPTERS if chapter.name[:2].isdigit()]) >= 7, CHAPTERS


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda chapter: chapter.stem)
def test_chapter_runs_top_to_bottom_in_a_fresh_colab_like_runtime(chapter, colab_runs, colab_runtime):
    result = colab_runs[chapter.name]
    assert result.returncode == 0, f"{chapter.name} failed in the fresh runtime:\n{result.stderr[-6000:]}"
    provenance = json.loads(result.stdout.split("PROVENANCE ", 1)[1])
    python, _ = colab_runtime
    venv = python.parents[1]
    # The kernel was the fresh venv's Python, and convbook came from its site-packages, not from the checkout.
    assert Path(provenance["python"]).is_relative_to(venv), provenance
    assert Path(provenance["convbook"]).is_relative_to(venv / "lib"), provenance
    assert "site-packages" in Path(provenance["convbook"]).parts, provenance


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda chapter: chapter.stem)
def test_chapter_opens_with_a_colab_badge_for_itself(chapter):
    first = nbformat.read(chapter, as_version=4).cells[0]
    assert first.cell_type == "markdown" and first.source.lstrip().startswith("# "), chapter.name
    badge = f"[![Open In Colab]({BADGE_IMAGE})]({colab_url(chapter)})"
    assert badge in first.source, f"{chapter.name}: first cell lacks {badge}"


def test_every_colab_link_on_the_site_opens_a_notebook_in_the_repository(built_book):
    html = built_book.html
    assert (html / "index.html").is_file(), built_book.log[-3000:]
    repository, branch = _repository()
    prefix = f"{COLAB}github/{repository}/blob/{branch}/"
    tracked = None
    if (ROOT / ".git").exists():
        listing = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
        tracked = set(listing.stdout.splitlines())
    links: dict[str, list[str]] = {}
    for page in html.rglob("*.html"):
        if page.relative_to(html).parts[0] == "_static":
            continue
        for href in re.findall(r'href="(https://colab\.research\.google\.com/[^"]*)"', page.read_text(encoding="utf-8")):
            links.setdefault(page.relative_to(html).as_posix(), []).append(href)
    problems = []
    for page, hrefs in sorted(links.items()):
        for href in hrefs:
            path = href.removeprefix(prefix)
            if not href.startswith(prefix):
                problems.append(f"{page}: {href} does not start with {prefix}")
            elif "./" in path or path.startswith("/") or "//" in path:
                problems.append(f"{page}: {href} has a non-canonical path")
            elif not path.endswith(".ipynb") or not (ROOT / path).is_file():
                problems.append(f"{page}: {href} names no notebook in the repository")
            elif tracked is not None and path not in tracked:
                problems.append(f"{page}: {href} names a notebook git does not track")
    assert not problems, "\n".join(problems)
    # Each chapter page carries two: the badge under its title and the theme's launch button.
    for chapter in CHAPTERS:
        page = f"book/{chapter.stem}.html"
        assert links.get(page, []).count(colab_url(chapter)) >= 2, (page, links.get(page))


def test_the_site_shows_the_bundled_colab_badge_not_the_remote_image(built_book):
    html = built_book.html
    for chapter in CHAPTERS:
        text = (html / "book" / f"{chapter.stem}.html").read_text(encoding="utf-8")
        assert BADGE_IMAGE not in text, chapter.name
        assert re.search(r'<img alt="Open In Colab" src="\.\./_images/colab-badge[^"]*\.svg"', text), chapter.name
