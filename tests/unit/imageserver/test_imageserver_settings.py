"""HOMELAB_IMAGE_* settings: what the manager passes, parsed strictly."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from imageserver.settings import Settings


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch):
    for key in [k for k in __import__("os").environ if k.startswith("HOMELAB_IMAGE_")]:
        monkeypatch.delenv(key)

    def set_env(**values: str) -> None:
        for key, value in values.items():
            monkeypatch.setenv(f"HOMELAB_IMAGE_{key.upper()}", value)

    return set_env


def test_the_manager_contract_variables_are_read(env) -> None:
    env(
        model="stabilityai/sdxl-turbo",
        served_name="sdxl",
        host="127.0.0.1",
        port="18350",
        dtype="fp16",
        device="cuda:1",
        cpu_offload="true",
        attention_slicing="1",
        vae_tiling="false",
        sizes="1024x1024, 768x768",
        max_n="2",
        steps="4",
        queue_limit="3",
        max_upload_bytes="2048",
        warmup_steps="0",
    )
    s = Settings()
    assert (s.model, s.served_name, s.host, s.port) == (
        "stabilityai/sdxl-turbo",
        "sdxl",
        "127.0.0.1",
        18350,
    )
    assert (s.dtype, s.device, s.cpu_offload, s.attention_slicing, s.vae_tiling) == (
        "fp16",
        "cuda:1",
        True,
        True,
        False,
    )
    assert s.sizes == ["1024x1024", "768x768"]
    assert s.size_pairs == [(1024, 1024), (768, 768)]
    assert (s.max_n, s.steps, s.queue_limit, s.max_upload_bytes, s.warmup_steps) == (
        2,
        4,
        3,
        2048,
        0,
    )


def test_defaults(env) -> None:
    env(model="/models/sd15")
    s = Settings()
    assert s.served_name == "/models/sd15"
    assert (s.host, s.port, s.dtype, s.device) == ("0.0.0.0", 8000, "bf16", "cuda")
    assert s.sizes == ["1024x1024"] and s.max_n == 4 and s.steps == 30
    assert s.max_body_bytes > 2 * s.max_upload_bytes


@pytest.mark.parametrize(
    "key,value",
    [
        ("sizes", "1000x1001"),
        ("sizes", "big"),
        ("sizes", ""),
        ("dtype", "int8"),
        ("device", "tpu"),
        ("device", "cuda;rm"),
        ("max_n", "0"),
        ("max_n", "17"),
        ("steps", "0"),
        ("port", "70000"),
        ("cpu_offload", "maybe"),
    ],
)
def test_bad_values_are_refused(env, key: str, value: str) -> None:
    env(model="m", **{key: value})
    with pytest.raises(ValidationError) as info:
        Settings()
    assert key in str(info.value)


def test_model_is_required(env) -> None:
    with pytest.raises(ValidationError, match="model"):
        Settings()
