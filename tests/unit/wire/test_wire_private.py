"""`wire.private`: files that hold secrets or people's data are 0600 in a 0700 folder,
whatever the umask, and an existing folder is tightened only when it is ours."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from wire.private import private_dir, private_file, write_private


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def loose_umask() -> Iterator[None]:
    """A umask that lets everything through: the modes must not come from it."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_a_new_folder_and_its_files_are_private(tmp_path: Path) -> None:
    folder = private_dir(tmp_path / "a" / "b")
    assert mode(folder) == 0o700
    write_private(folder / "data.json", b"{}")
    assert mode(folder / "data.json") == 0o600
    assert (folder / "data.json").read_bytes() == b"{}"
    assert [p.name for p in folder.iterdir()] == ["data.json"]  # no temporary file left


def test_a_replaced_file_stays_private_and_an_existing_one_is_tightened(tmp_path: Path) -> None:
    loose = tmp_path / "old.db"
    loose.write_bytes(b"x")
    loose.chmod(0o644)
    assert mode(private_file(loose)) == 0o600
    assert loose.read_bytes() == b"x"  # made private, not emptied
    target = tmp_path / "f"
    target.write_bytes(b"old")
    target.chmod(0o666)
    write_private(target, b"new")
    assert mode(target) == 0o600 and target.read_bytes() == b"new"


def test_an_existing_folder_is_tightened_only_when_it_is_ours(tmp_path: Path) -> None:
    ours, named = tmp_path / "ours", tmp_path / "named"
    for folder in (ours, named):
        folder.mkdir()
        folder.chmod(0o755)
    assert mode(private_dir(ours)) == 0o700
    assert mode(private_dir(named, tighten=False)) == 0o755  # someone's folder: left alone
    assert mode(private_dir(named / "new", tighten=False)) == 0o700  # what we make is private
