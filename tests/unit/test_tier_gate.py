"""The tier gate of tests/conftest.py (HOMELAB_REQUIRE_TIERS) fails a run that skipped a
required tier, including a module skipped while it loads (a module-level importorskip):
pytest never collects such a module's tests, so nothing else would notice them missing.

Each case runs pytest in a subprocess on a small generated suite whose conftest is ours."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import module_tiers

ROOT = Path(__file__).resolve().parents[2]

CONFTEST = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from tests.conftest import *  # noqa: F403 (the hooks under test)
"""

PASSING_BROWSER = """
import pytest
pytestmark = pytest.mark.browser

def test_runs():
    pass
"""

SKIPPED_WHILE_LOADING = """
import pytest
pytestmark = [pytest.mark.browser]

expect = pytest.importorskip("no_such_module_for_the_gate", reason="the browser is missing")

def test_never_collected():
    pass
"""

UNMARKED_SKIPPED_WHILE_LOADING = """
import pytest
pytest.importorskip("no_such_module_for_the_gate")

def test_never_collected():
    pass
"""


def run_suite(tmp_path: Path, files: dict[str, str], required: str) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "HOMELAB_REQUIRE_TIERS"}
    if required:
        env["HOMELAB_REQUIRE_TIERS"] = required
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_module_of_a_required_tier_skipped_while_loading_fails_the_run(tmp_path: Path) -> None:
    files = {"test_ok.py": PASSING_BROWSER, "test_gone.py": SKIPPED_WHILE_LOADING}
    result = run_suite(tmp_path, files, "browser")
    out = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, out
    assert "HOMELAB_REQUIRE_TIERS not met" in out
    assert "test_gone.py (the whole module, while loading)" in out
    assert "the browser is missing" in out


def test_the_same_suite_passes_when_the_tier_is_not_required(tmp_path: Path) -> None:
    files = {"test_ok.py": PASSING_BROWSER, "test_gone.py": SKIPPED_WHILE_LOADING}
    result = run_suite(tmp_path, files, "")
    assert result.returncode == pytest.ExitCode.OK, result.stdout + result.stderr


def test_an_unmarked_module_skipped_while_loading_is_no_tiers_business(tmp_path: Path) -> None:
    files = {"test_ok.py": PASSING_BROWSER, "test_unit.py": UNMARKED_SKIPPED_WHILE_LOADING}
    result = run_suite(tmp_path, files, "browser")
    assert result.returncode == pytest.ExitCode.OK, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("module", "tiers"),
    [
        ("tests/e2e/browser/test_terminal_ui.py", {"browser"}),
        ("tests/e2e/browser/test_image_jobs.py", {"browser"}),
        ("tests/e2e/browser/test_real_models.py", {"browser", "vllm", "diffusers"}),
        ("tests/integration/imageserver/test_imageserver_dockerfile.py", {"docker", "diffusers"}),
        ("tests/unit/manager/test_manager_docker_clock.py", set()),
    ],
)
def test_module_tiers_reads_pytestmark_from_the_source(module: str, tiers: set[str]) -> None:
    assert module_tiers(ROOT / module) == tiers
