"""`manager.exit_watch.ExitWatch` on plain host processes (the container case is in
tests/integration/test_docker_runtime.py): only a process whose cgroup names the
container is watched, and `wait` sees its exit."""

from __future__ import annotations

import subprocess
import sys

import pytest

from manager.exit_watch import ExitWatch


def _own_cgroup_word() -> str:
    with open("/proc/self/cgroup", encoding="utf-8") as fh:
        return fh.read().strip().splitlines()[-1].rsplit("/", 1)[-1] or "/"


@pytest.mark.parametrize("pid", [None, 0, -1, "12", 2**22 + 7])
def test_no_watch_on_a_pid_that_is_not_one(pid: object) -> None:
    assert ExitWatch.open(pid, "abc") is None


def test_a_process_outside_the_container_is_not_watched() -> None:
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as proc:
        try:
            assert ExitWatch.open(proc.pid, "f" * 64) is None
            assert ExitWatch.open(proc.pid, "") is None
        finally:
            proc.kill()


def test_wait_and_send_on_a_process_of_the_named_cgroup() -> None:
    # A child shares this process's cgroup, so the last segment of its path stands in for
    # a container id here.
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as proc:
        watch = ExitWatch.open(proc.pid, _own_cgroup_word())
        assert watch is not None
        with watch:
            assert not watch.wait(0.05)  # still running
            assert watch.send("SIGTERM")
            assert watch.wait(10)
            assert proc.wait(10) == -15
        assert not watch.send("SIGTERM")  # closed: nothing is signalled
