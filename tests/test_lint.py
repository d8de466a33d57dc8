"""The house style is checked where CI runs: ruff lint and ruff format over the code, and mypy
over ``src/`` (its settings: ``[tool.mypy]`` in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUFF = shutil.which("ruff", path=str(Path(sys.executable).parent)) or "ruff"


def test_ruff_lint_is_clean() -> None:
    proc = subprocess.run(
        [RUFF, "check", "src", "tests", "benchmarks"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-4000:]


def test_ruff_format_is_clean() -> None:
    proc = subprocess.run(
        [RUFF, "format", "--check", "src", "tests", "benchmarks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-4000:]


def test_mypy_is_clean() -> None:
    # mypy keeps its cache in .mypy_cache: a run after a small change takes seconds, a clean
    # one about a minute on 2 cores
    proc = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=540
    )
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    shown = "\n".join(errors[:200]) if errors else proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, f"{len(errors)} mypy error(s):\n{shown}"
