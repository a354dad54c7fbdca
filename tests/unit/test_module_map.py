"""docs/architecture.md's module map names every module of manager/, proxy/ (with its
subpackages), wire/ and imageserver/, and no module that does not exist.

The map is the tables from "The shared contract" to the next section: a table row names
its modules (in backticks) in its first cell, relative to the package the text above
the table names last (`` `proxy/mcp/` ``); `wire/` rows give the whole path."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
PACKAGES = ("manager", "proxy", "wire", "imageserver", "audioserver")
START = "## The shared contract"
END = "## One request"


def modules_on_disk() -> set[str]:
    return {
        path.relative_to(ROOT).as_posix()
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if path.name != "__init__.py" and "__pycache__" not in path.parts
    }


def modules_in_map(text: str) -> set[str]:
    section = text[text.index(START) : text.index(END)]
    package = ""
    named: set[str] = set()
    for line in section.splitlines():
        if not line.startswith("|"):
            found = re.findall(rf"`((?:{'|'.join(PACKAGES)})(?:/\w+)*/)`", line)
            if found:
                package = found[-1]
            continue
        first = line.split("|")[1]
        for name in re.findall(r"`([\w/]+\.py)`", first):
            named.add(name if name.split("/")[0] in PACKAGES else package + name)
    return named


def test_the_module_map_names_every_module() -> None:
    missing = sorted(modules_on_disk() - modules_in_map(DOC.read_text()))
    assert not missing, f"docs/architecture.md's module map leaves out: {missing}"


def test_the_module_map_names_no_module_that_is_gone() -> None:
    gone = sorted(modules_in_map(DOC.read_text()) - modules_on_disk())
    assert not gone, f"docs/architecture.md's module map names modules that do not exist: {gone}"


def test_a_row_is_read_relative_to_the_package_named_above_it() -> None:
    text = (
        f"{START}\n| `wire/a.py` | x |\nThe proxy (`proxy/`):\n| `b.py`, `c.py` | x |\n"
        f"Jobs (`proxy/jobs/`):\n| `d.py` | mentions `e.py` |\n{END}\n"
    )
    assert modules_in_map(text) == {"wire/a.py", "proxy/b.py", "proxy/c.py", "proxy/jobs/d.py"}
