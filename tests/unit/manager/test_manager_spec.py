"""models.json: the repo's file is valid, bad files name file + key + reason, the schema file is current."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from manager.errors import CatalogueError
from manager.spec import json_schema, load_catalogue, parse_catalogue

ROOT = Path(__file__).resolve().parents[3]
SCHEMA_FILE = ROOT / "docs" / "models.schema.json"

TEXT = {
    "type": "text",
    "container": "vllm-a",
    "port": 8001,
    "image": "vllm/vllm-openai:v0.32.0",
    "model": "org/a",
}
IMAGE = {
    "type": "image",
    "container": "img-b",
    "port": 8002,
    "image": "homelab-ai/imageserver:0.1.0",
    "model": "org/b",
}
EMBED = {
    "type": "embedding",
    "container": "emb-c",
    "port": 8003,
    "image": "vllm/vllm-openai:v0.32.0",
    "model": "sentence-transformers/all-MiniLM-L6-v2",
}


def test_the_repository_models_json_is_valid():
    catalogue = load_catalogue(ROOT / "models.json")
    assert catalogue.names()
    types = {spec.type for spec in catalogue.models.values()}
    assert types == {"text", "image", "embedding", "stt", "tts"}


def test_schema_file_is_up_to_date():
    current = json.loads(SCHEMA_FILE.read_text())
    assert current == json_schema(), (
        "docs/models.schema.json is out of date; regenerate it with: "
        "python -m manager schema > docs/models.schema.json"
    )


def test_schema_key_is_allowed_and_ignored():
    catalogue = parse_catalogue({"$schema": "./x.json", "a": TEXT})
    assert catalogue.names() == ["a"]


def test_vision_is_an_optional_flag_of_text_models_only():
    catalogue = parse_catalogue(
        {"a": TEXT, "v": TEXT | {"vision": True, "container": "v", "port": 8003}}
    )
    assert catalogue.models["a"].vision is False and catalogue.models["v"].vision is True
    with pytest.raises(CatalogueError) as info:
        parse_catalogue({"b": IMAGE | {"vision": True}}, source="models.json")
    assert info.value.key == "b.vision"
    with pytest.raises(CatalogueError) as info:
        parse_catalogue({"a": TEXT | {"vision": "maybe"}}, source="models.json")
    assert info.value.key == "a.vision"


def test_an_embedding_model_is_its_own_type_without_runner_or_vision():
    catalogue = parse_catalogue({"a": TEXT, "e": EMBED | {"args": ["--max-model-len", "256"]}})
    spec = catalogue.models["e"]
    assert spec.type == "embedding" and spec.args == ["--max-model-len", "256"]
    for extra, key in (
        ({"args": ["--runner", "generate"]}, "e.args"),
        ({"args": ["--runner=pooling"]}, "e.args"),
        ({"vision": True}, "e.vision"),
        ({"sizes": ["64x64"]}, "e.sizes"),
    ):
        with pytest.raises(CatalogueError) as info:
            parse_catalogue({"e": EMBED | extra}, source="models.json")
        assert info.value.key == key, extra
    with pytest.raises(CatalogueError, match="pooling runner"):
        parse_catalogue({"e": EMBED | {"args": ["--runner", "pooling"]}})


def test_image_defaults():
    spec = parse_catalogue({"b": IMAGE}).models["b"]
    assert spec.sizes == ["1024x1024"] and spec.max_n == 4 and spec.start_timeout == 1200


@pytest.mark.parametrize(
    ("data", "key", "reason"),
    [
        ({"a": TEXT | {"prot": 1}}, "a.prot", "Extra inputs are not permitted"),
        ({"a": TEXT | {"port": 80}}, "a.port", "greater than or equal to 1024"),
        ({"a": TEXT | {"image": "vllm/vllm-openai:latest"}}, "a.image", "latest"),
        ({"a": TEXT | {"image": "vllm/vllm-openai"}}, "a.image", "pinned"),
        ({"a": TEXT | {"container": "bad name"}}, "a.container", "pattern"),
        ({"a": TEXT | {"type": "audio"}}, "a", "tag"),
        ({"a": IMAGE | {"sizes": ["1000x1001"]}}, "a.sizes", "divisible by 8"),
        ({"a": TEXT | {"env": {"1BAD": "x"}}}, "a.env", "not valid"),
        ({"bad name!": TEXT}, "bad name!", "pattern"),
        ({"a": TEXT, "b": TEXT | {"container": "other"}}, "b.port", "already used by model 'a'"),
        ({"a": TEXT, "b": TEXT | {"port": 8009}}, "b.container", "already used"),
    ],
)
def test_bad_entries_name_file_key_and_reason(data, key, reason):
    with pytest.raises(CatalogueError) as info:
        parse_catalogue(data, source="models.json")
    assert info.value.key == key
    assert reason in info.value.reason
    assert str(info.value).startswith(f"models.json: key '{key}': ")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{not json", "is not valid JSON"),
        ("[]", "top level must be a JSON object"),
        ("{}", "no models are defined"),
    ],
)
def test_bad_files(tmp_path, text, reason):
    path = tmp_path / "models.json"
    path.write_text(text)
    with pytest.raises(CatalogueError) as info:
        load_catalogue(path)
    assert str(info.value).startswith(str(path))
    assert reason in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(CatalogueError, match="cannot be read"):
        load_catalogue(tmp_path / "absent.json")
