"""Regression (issue 10): every external program the required tiers run is found on a
PATH reduced to the system's defaults plus what setup.sh adds.

On a fresh machine `hadolint` went to the interpreter's own bin/, which pyenv did
not expose, and the docker tier skipped its lint test. setup.sh now puts the
interpreter's scripts folders on PATH; this checks that, through setup.sh's own
function, for the interpreter running the tests (the one setup.sh installed the
project into).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.integration.conftest import ROOT
from tests.tools import REQUIRED_PROGRAMS, find_program, python_scripts_dirs

# Debian's default PATH for root (login.defs ENV_SUPATH), without anything a shell
# profile, pyenv or an activated venv would add.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def lookup_with_setup_sh_path(names: list[str]) -> dict[str, str]:
    """Source setup.sh in a bare environment, let it extend PATH, and `command -v` each name."""
    script = (
        f'source "{ROOT}/setup.sh"\n'
        f'export_python_scripts_path "{sys.executable}"\n'
        'for n in "$@"; do printf "%s=%s\\n" "$n" "$(command -v "$n" || true)"; done\n'
    )
    env = {"PATH": SYSTEM_PATH, "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}
    done = subprocess.run(
        ["/bin/bash", "-c", script, "lookup", *names],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return dict(line.split("=", 1) for line in done.stdout.splitlines())


def test_setup_sh_puts_the_interpreters_scripts_folder_on_path() -> None:
    found = lookup_with_setup_sh_path(["pytest"])["pytest"]
    assert found, "pytest (installed by pip for this interpreter) is not on setup.sh's PATH"
    assert os.path.dirname(found) in {*python_scripts_dirs(), os.path.dirname(sys.executable)}


def test_every_required_program_is_found_with_setup_sh_path() -> None:
    found = lookup_with_setup_sh_path(sorted(REQUIRED_PROGRAMS))
    missing = [f"{name} ({REQUIRED_PROGRAMS[name]})" for name, path in found.items() if not path]
    if missing and not os.environ.get("HOMELAB_REQUIRE_TIERS"):
        pytest.skip("not installed here (./setup.sh deps installs them): " + ", ".join(missing))
    assert not missing, "not found on setup.sh's PATH: " + ", ".join(missing)
    for name in found:
        assert find_program(name), f"tests.tools.find_program does not find {name}"
