"""The test tree itself: pytest (rootdir import mode "prepend") imports a test file that is
not inside a package by its bare name, so two such files with one name stop the whole run
at collection ("import file mismatch"). Found by CI on a fresh clone, where no
__pycache__ hid it."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _module_name(path: Path) -> str:
    """The name pytest imports `path` under: its dotted path from the first folder up
    that is not a package."""
    parts = [path.stem]
    folder = path.parent
    while (folder / "__init__.py").is_file():
        parts.insert(0, folder.name)
        folder = folder.parent
    return ".".join(parts)


def test_no_two_test_files_import_under_one_name() -> None:
    seen: dict[str, list[str]] = defaultdict(list)
    for top in ("tests", "bench/tests"):
        for path in sorted((ROOT / top).rglob("test_*.py")):
            seen[_module_name(path)].append(str(path.relative_to(ROOT)))
    clashes = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not clashes, f"test files that pytest would import under one name: {clashes}"
