"""Shared fixtures: the built book (built once per test session, as the README's command does)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class BuiltBook:
    returncode: int
    log: str
    html: Path


@pytest.fixture(scope="session")
def built_book() -> BuiltBook:
    """``jupyter-book build .`` from a clean _build, with warnings reported (-n) and fatal (-W)."""
    shutil.rmtree(ROOT / "_build", ignore_errors=True)
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    result = subprocess.run([str(jupyter_book), "build", ".", "-W", "-n", "--keep-going"], cwd=ROOT,
                            capture_output=True, text=True, timeout=900)
    return BuiltBook(result.returncode, result.stdout + result.stderr, ROOT / "_build" / "html")
