"""``python -m proxy hosts`` (proxy/hosts_cli.py): hosts added to the catalogue with their
tokens in 0600 files, the rest of the file kept, a bad result refused before it is written."""

from __future__ import annotations

import io
import json
import secrets
import stat
from pathlib import Path

import pytest

from proxy.catalogue import load_catalogue
from proxy.hosts_cli import run


def test_hosts_are_added_listed_and_removed_keeping_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "state" / "catalogue.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"fallbacks": {}, "endpoints": {}}))
    token = secrets.token_urlsafe(32)
    assert run(["--file", str(path), "add", "gpu-pc"]) == 0
    args = ["--file", str(path), "add", "laptop", "--url", "http://10.0.0.3:8090"]
    args += ["--token-stdin", "--mac", "aa:bb:cc:dd:ee:ff", "--sleepable"]
    assert run(args, stdin=io.StringIO(token + "\n")) == 0
    token_file = path.parent / "hosts" / "laptop.token"
    assert token_file.read_text().strip() == token
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    cat = load_catalogue(path)
    assert list(cat.hosts) == ["gpu-pc", "laptop"] and cat.hosts["laptop"].token == token
    assert cat.hosts["laptop"].sleepable and "endpoints" in json.loads(path.read_text())
    capsys.readouterr()
    assert run(["--file", str(path), "list"]) == 0
    listed = capsys.readouterr().out
    assert "laptop\thttp://10.0.0.3:8090 sleepable" in listed and token not in listed
    assert run(["--file", str(path), "remove", "laptop"]) == 0
    assert list(load_catalogue(path).hosts) == ["gpu-pc"] and not token_file.exists()


def test_a_bad_host_is_refused_and_the_file_left_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "catalogue.json"
    assert run(["--file", str(path), "add", "a"]) == 0
    before = path.read_text()
    assert run(["--file", str(path), "add", "b"]) == 2  # a second HOMELAB_MANAGER_URL host
    assert "only one host" in capsys.readouterr().err
    assert run(["--file", str(path), "add", "c", "--sleepable"]) == 2  # no MAC to wake it by
    weak = ["--file", str(path), "add", "d", "--url", "http://h:1", "--token-stdin"]
    assert run(weak, stdin=io.StringIO("short\n")) == 2
    assert path.read_text() == before
