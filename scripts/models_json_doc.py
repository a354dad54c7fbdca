"""Write docs/models-json.md, the reference of every models.json field, from the schema.

    python -m scripts.models_json_doc            rewrite docs/models-json.md
    python -m scripts.models_json_doc --check    exit 1 if it differs from what the schema gives

The chain is manager/spec.py (the pydantic models, with each field's description and
example) -> `python -m manager schema` -> docs/models.schema.json -> this script ->
docs/models-json.md. Unit tests check both steps, so the doc cannot drift from the
schema. `render` refuses a field without a description or an example, and any schema
construct it does not know how to describe, rather than writing a vague row.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_FILE = ROOT / "docs" / "models.schema.json"
DOC_FILE = ROOT / "docs" / "models-json.md"

Schema = dict[str, Any]

HEADER = """\
# models.json reference

<!-- Generated from docs/models.schema.json by `python -m scripts.models_json_doc`; do not
     edit. A field's text and example live in manager/spec.py: change them there, then run
     `python -m manager schema > docs/models.schema.json` and this script. -->"""


class SchemaNotDocumented(ValueError):
    """The schema has something this reference cannot describe (a field without text, say)."""


def render(schema: Schema) -> str:
    """The Markdown reference for `schema` (the JSON Schema of models.json).

    Raises SchemaNotDocumented naming the field when one lacks a description or an
    example, or uses a construct the renderer does not know.
    """
    defs: dict[str, Schema] = schema.get("$defs", {})
    pattern, kinds = _entry_kinds(schema, defs)
    shared = _shared_fields(kinds)
    out = [HEADER]
    out.append(
        f"{schema.get('description', '')} `models.json` is one JSON object: each key is a "
        f'model\'s name, the name clients send as `"model"` (it must match `{pattern}`), and '
        'its value describes that model. A `"$schema"` key is allowed (editors use it to '
        "check the file against [models.schema.json](models.schema.json)) and ignored."
    )
    out.append(
        "The manager refuses unknown fields and bad values at start-up, naming the file, the "
        "key and the reason; check a file without starting anything with "
        "`python -m manager check models.json`. A step-by-step guide with whole entries is "
        "[adding-models.md](adding-models.md)."
    )
    out.append(
        "A model's `type` decides which fields it has, besides those of every model:\n\n"
        + "\n".join(
            f'- `"type": "{tag}"`: {_text(body.get("description", ""), tag)}'
            for tag, body in kinds.items()
        )
    )
    settings = {
        k: v
        for k, v in schema.get("properties", {}).items()
        if k.startswith("$") and k != "$schema"
    }
    if settings:
        out.append(
            "## Settings of the file\n\nKeys starting with `$` are settings of the whole file, "
            "not models (any other `$` key is refused):\n\n"
            + _table(settings, "the file", set(), defs)
        )
    first = next(iter(kinds.values()))
    out.append(
        "## Fields of every model\n\n"
        + _table(shared, "every model", set(first.get("required", [])), defs)
    )
    for tag, body in kinds.items():
        own = {k: v for k, v in body["properties"].items() if k not in shared}
        own = {"type": own.pop("type"), **own}
        required = set(body.get("required", []))
        out.append(f'## Fields of `"type": "{tag}"` models\n\n' + _table(own, tag, required, defs))
    return "\n\n".join(out) + "\n"


def _entry_kinds(schema: Schema, defs: dict[str, Schema]) -> tuple[str, dict[str, Schema]]:
    """The model-name pattern and, by `type` tag, the schema of each kind of model."""
    entries = schema.get("patternProperties", {})
    if len(entries) != 1:
        raise SchemaNotDocumented("expected one patternProperties entry (the model names)")
    ((pattern, entry),) = entries.items()
    if entry.get("discriminator", {}).get("propertyName") != "type":
        raise SchemaNotDocumented("expected the kinds of model to be told apart by `type`")
    kinds = {}
    for option in entry.get("oneOf", []):
        body = _resolve(option, defs)
        kinds[body["properties"]["type"]["const"]] = body
    return pattern, kinds


def _shared_fields(kinds: dict[str, Schema]) -> dict[str, Schema]:
    """Fields every kind has with the same schema (and equally required), in the first
    kind's order."""
    first, *rest = kinds.values()

    def same(name: str, other: Schema) -> bool:
        return first["properties"][name] == other["properties"].get(name) and (
            name in first.get("required", [])
        ) == (name in other.get("required", []))

    return {
        name: prop
        for name, prop in first["properties"].items()
        if all(same(name, other) for other in rest)
    }


def _table(
    fields: dict[str, Schema], where: str, required: set[str], defs: dict[str, Schema]
) -> str:
    rows = [
        "| field | type | default | what it does | example |",
        "|---|---|---|---|---|",
    ]
    for name, prop in fields.items():
        label = f"{where}: {name}"
        if "description" not in prop:
            raise SchemaNotDocumented(f"{label}: no description (add one in manager/spec.py)")
        if not prop.get("examples"):
            raise SchemaNotDocumented(f"{label}: no example (add examples= in manager/spec.py)")
        default = "required" if name in required else _value(prop.get("default"))
        key = name.rsplit(".", 1)[-1]  # `tool_calls.parser`'s example reads `"parser": ...`
        nested = _object_fields(prop, defs)
        nullable = any(p.get("type") == "null" for p in prop.get("anyOf", []))
        cells = [
            f"`{name}`",
            ("object (its fields follow)" + (", or null" if nullable else ""))
            if nested
            else type_text(prop, defs, label),
            default,
            _text(prop["description"], label),
            f"`{json.dumps({key: prop['examples'][0]}, ensure_ascii=False)[1:-1]}`",
        ]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        if nested:  # an object's own fields follow as `name.field` rows
            sub = _table(
                {f"{name}.{k}": v for k, v in nested["properties"].items()},
                where,
                {f"{name}.{k}" for k in nested.get("required", [])},
                defs,
            )
            rows += sub.splitlines()[2:]
    return "\n".join(rows)


def _object_fields(prop: Schema, defs: dict[str, Schema]) -> Schema | None:
    """The schema of an object with named fields that `prop` holds (perhaps or null), or None."""
    for option in [prop, *prop.get("anyOf", [])]:
        body = _resolve(option, defs)
        if body.get("type") == "object" and "properties" in body:
            return body
    return None


def _value(value: object) -> str:
    if value is None:
        return "`null`"
    return f"`{json.dumps(_tidy(value), ensure_ascii=False)}`"


def _tidy(value: object) -> object:
    """900.0 reads as 900."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _text(text: str, label: str) -> str:
    if "\n" in text.strip():
        raise SchemaNotDocumented(f"{label}: the description must be one paragraph")
    return text.strip()


def _resolve(prop: Schema, defs: dict[str, Schema]) -> Schema:
    ref = prop.get("$ref")
    if ref is None:
        return prop
    name = ref.removeprefix("#/$defs/")
    if name not in defs:
        raise SchemaNotDocumented(f"unknown reference {ref}")
    return defs[name]


def type_text(prop: Schema, defs: dict[str, Schema], label: str) -> str:
    """A short English description of a value's type and limits (also used by
    scripts.settings_doc). Raises SchemaNotDocumented for a type it does not know."""
    prop = _resolve(prop, defs)
    if "anyOf" in prop:
        options = [p for p in prop["anyOf"] if p.get("type") != "null"]
        text = " or ".join(type_text(p, defs, label) for p in options)
        return text + (", or null" if len(options) < len(prop["anyOf"]) else "")
    if "const" in prop:
        return f"`{json.dumps(prop['const'])}`"
    if "enum" in prop:
        return "one of " + ", ".join(f"`{json.dumps(v)}`" for v in prop["enum"])
    kind = prop.get("type")
    if kind == "string":
        limits = []
        if "minLength" in prop or "maxLength" in prop:
            limits.append(_range(prop.get("minLength"), prop.get("maxLength"), "characters"))
        if "pattern" in prop:
            limits.append(f"matching `{prop['pattern']}`")
        return ", ".join(["string", *limits])
    if kind in ("integer", "number"):
        name = "whole number" if kind == "integer" else "number"
        if "exclusiveMinimum" in prop:
            low = f"more than {_tidy(prop['exclusiveMinimum'])}"
            high = f", at most {_tidy(prop['maximum'])}" if "maximum" in prop else ""
            return f"{name}, {low}{high}"
        if "minimum" in prop or "maximum" in prop:
            return f"{name}, {_range(prop.get('minimum'), prop.get('maximum'), '')}".rstrip()
        return name
    if kind == "boolean":
        return "`true` or `false`"
    if kind == "array":
        item = type_text(prop["items"], defs, label)
        text = "list of strings" + item.removeprefix("string").replace(", ", ", each ", 1)
        if not item.startswith("string"):
            text = f"list of: {item}"
        if prop.get("minItems"):
            text = f"{text} (at least {prop['minItems']})"
        return text
    if kind == "object" and isinstance(prop.get("additionalProperties"), dict):
        value = type_text(prop["additionalProperties"], defs, label)
        return "object of strings" if value == "string" else f"object, each value: {value}"
    raise SchemaNotDocumented(f"{label}: cannot describe the type {json.dumps(prop)}")


def _range(low: object, high: object, unit: str) -> str:
    unit = f" {unit}" if unit else ""
    if low is not None and high is not None:
        return f"{_tidy(low)} to {_tidy(high)}{unit}"
    if low is not None:
        return f"at least {_tidy(low)}{unit}"
    return f"at most {_tidy(high)}{unit}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the doc is current")
    parser.add_argument("--schema", type=Path, default=SCHEMA_FILE)
    parser.add_argument("--out", type=Path, default=DOC_FILE)
    args = parser.parse_args(argv)
    text = render(json.loads(args.schema.read_text(encoding="utf-8")))
    return write_or_check(args.out, text, check=args.check, script="scripts.models_json_doc")


def write_or_check(out: Path, text: str, *, check: bool, script: str) -> int:
    """Write `text` to `out` (0), or with `check` only compare: 1, saying so on stderr,
    when `out` differs (also used by scripts.settings_doc)."""
    if check:
        current = out.read_text(encoding="utf-8") if out.exists() else ""
        if current != text:
            print(f"{out} is out of date: run python -m {script}", file=sys.stderr)
            return 1
        return 0
    out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
