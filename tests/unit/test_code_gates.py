"""The code gates as tests, so CI fails on a regression: ruff's linter, ruff's formatter
and mypy over the repository, as pyproject.toml configures them (mypy: the pydantic
plugin; strict on wire/, manager/ and proxy/; imageserver/ checked). The programs come
from the dev extra, pinned there; `tests.tools.find_program` finds them as setup.sh does."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.tools import find_program

ROOT = Path(__file__).resolve().parents[2]


def _passes(program: str, *args: str) -> None:
    path = find_program(program)
    assert path, f"{program} is not installed: pip install -e '.[dev]' (the dev extra pins it)"
    result = subprocess.run(
        [path, *args], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, f"{program} {' '.join(args)}:\n{result.stdout}{result.stderr}"


def test_ruff_check_finds_nothing() -> None:
    _passes("ruff", "check", ".")


def test_ruff_format_leaves_every_file_as_it_is() -> None:
    _passes("ruff", "format", "--check", ".")


def test_mypy_finds_no_type_errors() -> None:
    _passes("mypy")
