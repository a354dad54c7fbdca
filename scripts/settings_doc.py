"""Write docs/settings.md, the reference of every `HOMELAB_*` setting, from the settings classes.

    python -m scripts.settings_doc            rewrite docs/settings.md
    python -m scripts.settings_doc --check    exit 1 if it differs from what the classes give

The classes (wire.settings.ServiceSettings, manager.settings.ManagerSettings,
proxy.settings.ProxySettings and McpBridgeSettings, imageserver.settings.Settings,
audioserver.settings.Settings) hold
each setting's type, limits, default and text; this script only lays them out, and a
unit test (tests/unit/test_settings_doc.py) fails when the doc drifts from them.
`render` refuses a setting without a description, and a type it cannot describe, rather
than writing a vague row.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo

from audioserver.settings import Settings as AudioServerSettings
from imageserver.settings import Settings as ImageServerSettings
from manager.settings import ManagerSettings
from proxy.settings import McpBridgeSettings, ProxySettings
from scripts.models_json_doc import SchemaNotDocumented, type_text, write_or_check
from wire.settings import HomelabSettings, ServiceSettings

ROOT = Path(__file__).resolve().parents[1]
DOC_FILE = ROOT / "docs" / "settings.md"

Schema = dict[str, Any]

HEADER = """\
# Settings reference

<!-- Generated from the settings classes by `python -m scripts.settings_doc`; do not edit.
     A setting's type, default and text live in its class (wire/settings.py,
     manager/settings.py, proxy/settings.py, imageserver/settings.py, audioserver/settings.py): change them there,
     then run this script. tests/unit/test_settings_doc.py checks that they agree. -->

Every program reads its settings from environment variables when it starts, and refuses
to start on a bad value, naming the variable and the reason (never the value). A
variable means one thing wherever it is read: where the manager and the proxy each have
a knob of the same kind, the names differ (`HOMELAB_MANAGER_PORT`,
`HOMELAB_PROXY_PORT`). A list is written as one comma-separated value."""


class SettingsNotDocumented(ValueError):
    """A setting this reference cannot describe (one without a description, say)."""


SECTIONS: list[tuple[str, type[HomelabSettings], str]] = [
    (
        "Manager and proxy",
        ServiceSettings,
        "Settings both services have, with the same meaning in each (each program reads "
        "its own environment: on the GPU PC the manager's, on the server the proxy's).",
    ),
    (
        "Manager (GPU PC)",
        ManagerSettings,
        "`python -m manager` (the manager image, `./setup.sh gpu-pc`; the demo).",
    ),
    (
        "Proxy (server)",
        ProxySettings,
        "`python -m proxy` (the proxy image, `./setup.sh server`; the demo).",
    ),
    (
        "MCP relay",
        McpBridgeSettings,
        "`python -m proxy.mcp`, the stdio relay an MCP client launches (docs/mcp.md).",
    ),
    (
        "Image server",
        ImageServerSettings,
        "`python -m imageserver`, inside an image model's container or process. The "
        "manager sets these from the model's models.json entry (docs/models-json.md) and "
        "makes the upstream key for each start; set `env` in models.json only for the "
        "server's own knobs (`HOMELAB_IMAGE_QUEUE_LIMIT`, say).",
    ),
    (
        "Audio server",
        AudioServerSettings,
        "`python -m audioserver`, inside a speech model's (stt or tts) container or "
        "process. The manager sets these from the model's models.json entry "
        "(docs/models-json.md) and makes the upstream key for each start; set `env` in "
        "models.json only for the server's own knobs (`HOMELAB_AUDIO_MAX_UPLOAD_BYTES`, say).",
    ),
]


def render(sections: Sequence[tuple[str, type[HomelabSettings], str]] = SECTIONS) -> str:
    """The Markdown reference of `sections` (title, settings class, one line about it).

    A class's fields that a class of an earlier section has too are left out (they are
    described there). Raises SettingsNotDocumented naming the setting when one lacks a
    description or has a type the renderer does not know.
    """
    out = [HEADER]
    seen: set[str] = set()
    renames: list[tuple[str, str, str]] = []
    for title, cls, about in sections:
        inherited = {
            name
            for base in cls.__mro__[1:]
            if isinstance(base, type) and issubclass(base, HomelabSettings)
            for name in base.model_fields
            if base is not HomelabSettings and base.__name__ in seen
        }
        seen.add(cls.__name__)
        fields = {n: f for n, f in cls.model_fields.items() if n not in inherited}
        schema = cls.model_json_schema()
        out.append(f"## {title}\n\n{about}\n\n" + _table(cls, fields, schema))
        for old, field in cls.renamed.items():
            now = f"`{cls.env_name(field)}` (the old name is read this release, with a warning)"
            renames.append((old, title, now))
        renames += [(old, title, f"no longer read: {why}") for old, why in cls.retired.items()]
    if renames:
        rows = ["| old variable | program | now |", "|---|---|---|"]
        rows += [f"| `{old}` | {where} | {now} |" for old, where, now in sorted(renames)]
        out.append(
            "## Renamed and retired variables\n\nA program that finds one of these set says "
            "so in a warning at start.\n\n" + "\n".join(rows)
        )
    return "\n\n".join(out) + "\n"


def _table(cls: type[HomelabSettings], fields: dict[str, FieldInfo], schema: Schema) -> str:
    rows = ["| variable | type | default | what it does |", "|---|---|---|---|"]
    props = schema.get("properties", {})
    for name, info in fields.items():
        label = f"{cls.__name__}.{name}"
        if not info.description:
            raise SettingsNotDocumented(f"{label}: no description (add one in its class)")
        if "\n" in info.description.strip():
            raise SettingsNotDocumented(f"{label}: the description must be one paragraph")
        alias = info.validation_alias
        prop = props.get(alias if isinstance(alias, str) else name)
        if prop is None:
            raise SettingsNotDocumented(f"{label}: not in the class's JSON schema")
        cells = [
            f"`{cls.env_name(name)}`",
            _type(prop, schema.get("$defs", {}), label),
            default_text(name, info),
            info.description.strip(),
        ]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)


def default_text(name: str, info: FieldInfo) -> str:
    """How a field's default reads in the table ("required", "unset", `64`, `32 MiB`...)."""
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if value == "":
        return "empty"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, Path):
        return f"`{_path(value)}`"
    if isinstance(value, list):
        return f"`{','.join(str(v) for v in value)}`" if value else "empty"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if name.endswith("_bytes") and isinstance(value, int) and value % 1024 == 0:
        for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
            if value % size == 0:
                return f"`{value}` ({value // size} {unit})"
    return f"`{value}`"


def _path(value: Path) -> str:
    """A default path as a reader's machine would have it (the repository or home relative)."""
    if value.is_absolute():
        if value.is_relative_to(ROOT):
            return f"{value.relative_to(ROOT)}/ (in the repository)"
        if value.is_relative_to(Path.home()):
            return f"~/{value.relative_to(Path.home())}"
    return str(value)


def _type(prop: Schema, defs: dict[str, Schema], label: str) -> str:
    """A short English description of a setting's type and limits: secrets, paths and
    comma lists here, the rest as models-json.md describes them (`type_text`)."""
    if "$ref" in prop:
        prop = defs[prop["$ref"].removeprefix("#/$defs/")]
    if "anyOf" in prop:
        options = [p for p in prop["anyOf"] if p.get("type") != "null"]
        return " or ".join(_type(p, defs, label) for p in options)
    if "enum" in prop:  # as written in the environment: no JSON quotes
        return "one of " + ", ".join(f"`{value}`" for value in prop["enum"])
    if prop.get("format") in ("password", "path"):
        return "secret" if prop["format"] == "password" else "path"
    if prop.get("type") == "array" and "items" in prop:
        item = _type(prop["items"], defs, label)
        for one in ("string", "secret"):
            if item.startswith(one):
                item = f"{one}s{item.removeprefix(one)}"
        return f"comma list of {item}"
    try:
        return type_text(prop, defs, label)
    except SchemaNotDocumented as exc:
        raise SettingsNotDocumented(str(exc)) from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the doc is current")
    parser.add_argument("--out", type=Path, default=DOC_FILE)
    args = parser.parse_args(argv)
    return write_or_check(args.out, render(), check=args.check, script="scripts.settings_doc")


if __name__ == "__main__":
    sys.exit(main())
