"""docs/models-json.md: generated from docs/models.schema.json, and fails a test when they drift.

The other half of the chain (manager/spec.py -> docs/models.schema.json) is checked by
tests/unit/manager/test_manager_spec.py::test_schema_file_is_up_to_date.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from manager.spec import json_schema
from scripts.models_json_doc import DOC_FILE, SCHEMA_FILE, SchemaNotDocumented, main, render

SCHEMA = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


def rows(doc: str, section: str) -> dict[str, list[str]]:
    """The table rows under a `## section` heading, by field name."""
    part = doc.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    found = {}
    for line in part.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            found[cells[0].strip("`")] = cells[1:]
    return found


def test_the_doc_is_up_to_date_with_the_schema() -> None:
    assert DOC_FILE.read_text(encoding="utf-8") == render(SCHEMA), (
        "docs/models-json.md is out of date; regenerate it with: python -m scripts.models_json_doc"
    )


def test_every_field_of_every_kind_has_a_row_with_its_default_and_an_example() -> None:
    doc = render(json_schema())
    every = rows(doc, "Fields of every model")
    for tag, ref in (("text", "TextModel"), ("image", "ImageModel")):
        body = SCHEMA["$defs"][ref]
        own = rows(doc, f'Fields of `"type": "{tag}"` models')
        for name, prop in body["properties"].items():
            row = own.get(name) or every.get(name)
            assert row, f"{tag}.{name} has no row"
            _type, default, what, example = row
            if name in body.get("required", []):
                assert default == "required"
            else:
                assert json.loads(default.strip("`")) == prop["default"], (tag, name)
            assert what == prop["description"].replace("|", "\\|")
            assert json.loads("{" + example.strip("`") + "}") == {name: prop["examples"][0]}
    # A field whose default differs between the kinds is in each kind's table, not shared.
    assert "start_timeout" not in every
    assert rows(doc, 'Fields of `"type": "text"` models')["start_timeout"][1] == "`900`"
    assert rows(doc, 'Fields of `"type": "image"` models')["start_timeout"][1] == "`1200`"


def test_types_are_described_with_their_limits() -> None:
    doc = render(SCHEMA)
    every = rows(doc, "Fields of every model")
    image = rows(doc, 'Fields of `"type": "image"` models')
    assert every["port"][0] == "whole number, 1024 to 65535"
    assert every["idle_ttl"][0] == "number, more than 0, at most 86400, or null"
    assert every["env"][0] == "object of strings"
    assert image["dtype"][0] == 'one of `"bf16"`, `"fp16"`, `"fp32"`'
    # A | inside a pattern does not split the Markdown table.
    assert image["device"][0] == r"string, matching `^(cuda(:[0-9]+)?\|cpu\|mps)$`"
    assert image["sizes"][0].startswith("list of strings, each matching")


def test_a_field_without_a_description_or_an_example_is_refused() -> None:
    for missing in ("description", "examples"):
        schema = copy.deepcopy(SCHEMA)
        del schema["$defs"]["ImageModel"]["properties"]["steps"][missing]
        with pytest.raises(SchemaNotDocumented, match="image: steps"):
            render(schema)


def test_a_type_it_cannot_describe_is_refused() -> None:
    schema = copy.deepcopy(SCHEMA)
    schema["$defs"]["TextModel"]["properties"]["args"] = {
        "type": "array",
        "items": {"type": "object", "properties": {"flag": {"type": "string"}}},
        "description": "d",
        "examples": [[]],
    }
    with pytest.raises(SchemaNotDocumented, match="text: args"):
        render(schema)


def test_check_fails_when_the_schema_changed_and_passes_once_regenerated(tmp_path: Path) -> None:
    schema_file = tmp_path / "models.schema.json"
    doc_file = tmp_path / "models-json.md"
    schema_file.write_text(json.dumps(SCHEMA))
    doc_file.write_text(render(SCHEMA))
    args = ["--schema", str(schema_file), "--out", str(doc_file)]
    assert main([*args, "--check"]) == 0

    changed = copy.deepcopy(SCHEMA)
    changed["$defs"]["ImageModel"]["properties"]["max_n"]["maximum"] = 32
    schema_file.write_text(json.dumps(changed))
    assert main([*args, "--check"]) == 1
    assert main(args) == 0
    assert main([*args, "--check"]) == 0
    assert "whole number, 1 to 32" in doc_file.read_text()
