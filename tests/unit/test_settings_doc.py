"""docs/settings.md: generated from the settings classes, and fails a test when they drift."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from audioserver.settings import Settings as AudioServerSettings
from imageserver.settings import Settings as ImageServerSettings
from manager.settings import ManagerSettings
from proxy.settings import McpBridgeSettings, ProxySettings
from scripts.settings_doc import DOC_FILE, SECTIONS, SettingsNotDocumented, main, render
from wire.settings import HomelabSettings, ServiceSettings

CLASSES = [
    ServiceSettings,
    ManagerSettings,
    ProxySettings,
    McpBridgeSettings,
    ImageServerSettings,
    AudioServerSettings,
]


def rows(doc: str) -> dict[str, list[str]]:
    """Every settings row, by variable. A variable has one row, but the manager token,
    which the manager and the proxy are both given (both rows say the same)."""
    found: dict[str, list[str]] = {}
    for line in doc.split("## Renamed", 1)[0].splitlines():
        if line.startswith("| `HOMELAB_"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            name = cells[0].strip("`")
            assert name not in found or name == "HOMELAB_MANAGER_TOKEN", f"{name}: two rows"
            found.setdefault(name, cells[1:])
    return found


def test_the_doc_is_up_to_date_with_the_classes() -> None:
    assert DOC_FILE.read_text(encoding="utf-8") == render(), (
        "docs/settings.md is out of date; regenerate it with: python -m scripts.settings_doc"
    )


def test_every_setting_of_every_program_has_a_row_with_its_default_and_text() -> None:
    doc = rows(render())
    assert [cls for _, cls, _ in SECTIONS] == CLASSES
    for cls in CLASSES:
        for name, info in cls.model_fields.items():
            row = doc.get(cls.env_name(name))
            assert row, f"{cls.__name__}.{name} ({cls.env_name(name)}) has no row"
            _type, default, what = row
            if name != "manager_token":
                assert what == (info.description or "").replace("|", "\\|")
            if info.is_required():
                assert default == "required"
            elif info.default is None:
                assert default == "unset"
            elif isinstance(info.default, (int, float)) and not isinstance(info.default, bool):
                assert float(default.split("`")[1]) == info.default, (cls.__name__, name)
    assert doc["HOMELAB_PROXY_MAX_BODY_BYTES"][1] == "`33554432` (32 MiB)"
    assert doc["HOMELAB_QUEUE_TIMEOUT"][0] == "number, more than 0"
    assert doc["HOMELAB_MANAGER_PORT"][0] == "whole number, 1 to 65535"
    assert doc["HOMELAB_API_KEYS"][0] == "comma list of secrets"
    assert doc["HOMELAB_MANAGER_TOKEN"][:2] == ["secret", "required"]


def test_each_variable_names_one_setting() -> None:
    """A variable two programs read is the same field of the same base (it means one thing)."""
    owners: dict[str, set[type]] = {}
    for cls in CLASSES:
        for name in cls.model_fields:
            owner = next(c for c in reversed(cls.__mro__) if name in getattr(c, "model_fields", {}))
            owners.setdefault(cls.env_name(name), set()).add(owner)
    shared = {v: o for v, o in owners.items() if len(o) > 1}
    # The manager token is the one value both the manager and the proxy are given.
    assert set(shared) == {"HOMELAB_MANAGER_TOKEN"}


def test_old_names_are_listed_with_what_replaced_them() -> None:
    doc = render().split("## Renamed and retired variables", 1)[1]
    for cls in CLASSES:
        for old, field in cls.renamed.items():
            assert f"| `{old}` |" in doc and cls.env_name(field) in doc
        for old in cls.retired:
            assert f"| `{old}` |" in doc


def test_a_setting_without_a_description_is_refused() -> None:
    class Undocumented(HomelabSettings):
        knob: int = 3

    with pytest.raises(SettingsNotDocumented, match=r"Undocumented\.knob: no description"):
        render([("Test", Undocumented, "A test program.")])


def test_a_type_it_cannot_describe_is_refused() -> None:
    class Point(BaseModel):
        x: int

    class Odd(HomelabSettings):
        table: Point = Field(default=Point(x=1), description="d")

    with pytest.raises(SettingsNotDocumented, match=r"Odd\.table: cannot describe"):
        render([("Test", Odd, "A test program.")])


def test_check_fails_on_a_stale_doc_and_passes_once_regenerated(tmp_path: Path) -> None:
    out = tmp_path / "settings.md"
    out.write_text(render().replace("`900`", "`600`"))
    assert main(["--out", str(out), "--check"]) == 1
    assert main(["--out", str(out)]) == 0
    assert main(["--out", str(out), "--check"]) == 0


def test_no_doc_names_an_old_variable_but_the_reference() -> None:
    """Docs name the settings that are read today (docs/settings.md lists the old names)."""
    root = DOC_FILE.parents[1]
    old = {name for cls in CLASSES for name in (*cls.renamed, *cls.retired)}
    docs = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    pattern = re.compile(r"\b(" + "|".join(sorted(old)) + r")\b")
    stale = [
        f"{path.relative_to(root)}: {found}"
        for path in docs
        if path != DOC_FILE
        for found in pattern.findall(path.read_text(encoding="utf-8"))
    ]
    assert not stale, stale
