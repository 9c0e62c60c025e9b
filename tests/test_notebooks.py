"""The tutorial notebooks run (fast mode: DDPMKIT_FAST=1), are committed without outputs, and their
executed copies in docs/notebooks/ are of the current code; the documentation site builds strict."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
EXECUTED = ROOT / "docs" / "notebooks"


def _runner():
    spec = importlib.util.spec_from_file_location("run_notebooks", ROOT / "benchmarks" / "run_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_there_are_seven_lessons():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06", "07"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip the outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_executed_copy_is_of_the_current_notebook(path):
    """docs/notebooks/ holds the full-mode run of exactly these cells (`make notebooks` refreshes it)."""
    executed = nbformat.read(EXECUTED / path.name, as_version=4)
    source = nbformat.read(path, as_version=4)
    assert [c.source for c in executed.cells] == [c.source for c in source.cells], path.name
    errors = [o for c in executed.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_fast_mode(path, shared_data, monkeypatch):
    monkeypatch.setenv("DDPMKIT_DATA", str(shared_data))
    _runner().execute(path, fast=True, timeout=600)  # raises on any cell error


def test_docs_build_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (tmp_path / "site" / "cli" / "index.html").is_file()
    assert "ddpmkit.train" in (tmp_path / "site" / "api" / "index.html").read_text()
