"""The book: it builds from a clean checkout with zero warnings, every chapter executed, and its
notebooks are committed without outputs (the build executes them)."""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def toc_files():
    return re.findall(r"file:\s*(\S+)", (ROOT / "_toc.yml").read_text())


def chapter_notebooks():
    return [ROOT / f"{f}.ipynb" for f in toc_files() if (ROOT / f"{f}.ipynb").exists()]


@pytest.mark.parametrize("notebook", chapter_notebooks(), ids=lambda p: p.name)
def test_notebooks_are_committed_without_outputs(notebook):
    cells = json.loads(notebook.read_text())["cells"]
    for cell in cells:
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None, notebook.name


@pytest.mark.parametrize("notebook", chapter_notebooks(), ids=lambda p: p.name)
def test_every_chapter_installs_convbook_only_when_missing(notebook):
    cells = json.loads(notebook.read_text())["cells"]
    first_code = next("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    assert "import convbook" in first_code and "except ImportError" in first_code
    # What it installs is the repository the site's Colab links point at.
    repository = re.search(r"^repository:\s*\n\s+url:\s*(\S+)", (ROOT / "_config.yml").read_text(), re.M).group(1)
    assert f'"git+{repository}"' in first_code, (notebook.name, repository)
    assert "sys.path" not in "".join("".join(c["source"]) for c in cells)


def test_book_builds_with_zero_warnings(built_book):
    sphinx_warnings = [line for line in built_book.log.splitlines() if "WARNING:" in line or "ERROR:" in line]
    assert sphinx_warnings == []
    assert built_book.returncode == 0, built_book.log[-3000:]


def test_every_chapter_is_rendered_with_executed_outputs(built_book):
    assert built_book.returncode == 0, built_book.log[-3000:]
    for notebook in chapter_notebooks():
        page = (built_book.html / notebook.relative_to(ROOT)).with_suffix(".html")
        html = page.read_text()
        assert "cell_output" in html, f"{page.name} has no executed output"
        assert "Traceback (most recent call last)" not in html, f"{page.name} shows a traceback"
