"""Pure pieces: settings, error normalisation, multipart re-encoding."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError
from starlette.datastructures import FormData, Headers, UploadFile

from proxy.errors import MANAGER, MODEL_SERVER, ModelNotFound, WrongModelType, normalise_error_body
from proxy.parsing import encode_form
from proxy.settings import ProxySettings

GOOD = "Zq8-r4Lm2Vx7Np3Kd"


def test_settings_defaults_and_key_list(monkeypatch) -> None:
    monkeypatch.setenv("HOMELAB_MANAGER_TOKEN", GOOD)
    monkeypatch.setenv("HOMELAB_API_KEYS", " k-9Fq2Lm7Xc4VbNw1 ,k-Ab3Cd5Ef7Gh9Jk2,")
    monkeypatch.setenv("HOMELAB_MANAGER_URL", "http://gpu-pc:8090/")
    s = ProxySettings()
    assert [k.get_secret_value() for k in s.api_keys] == ["k-9Fq2Lm7Xc4VbNw1", "k-Ab3Cd5Ef7Gh9Jk2"]
    assert s.manager_url == "http://gpu-pc:8090"
    assert s.proxy_port == 8080 and s.public_url is None


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"HOMELAB_MANAGER_TOKEN": "short"},
        {"HOMELAB_MANAGER_TOKEN": "changeme-changeme-123"},
        {"HOMELAB_MANAGER_TOKEN": GOOD, "HOMELAB_API_KEYS": "sk-1"},
        {"HOMELAB_MANAGER_TOKEN": GOOD, "HOMELAB_MANAGER_URL": "gpu-pc:8090"},
        {"HOMELAB_MANAGER_TOKEN": GOOD, "HOMELAB_PROXY_MAX_BODY_BYTES": "0"},
    ],
)
def test_settings_refuse_bad_values(monkeypatch, env) -> None:
    for key in ("HOMELAB_MANAGER_TOKEN", "HOMELAB_API_KEYS", "HOMELAB_MANAGER_URL"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError):
        ProxySettings()


@pytest.mark.parametrize(
    ("raw", "status", "want"),
    [
        (
            b'{"object":"error","message":"m","type":"BadRequestError","param":null,"code":400}',
            400,
            (400, "m", "invalid_request_error", "400"),
        ),
        (
            b'{"error":{"message":"m","type":"NotFoundError","param":"model","code":404}}',
            404,
            (404, "m", "invalid_request_error", "404"),
        ),
        (
            b'{"detail":"Not Found"}',
            404,
            (404, "Not Found", "invalid_request_error", "model_server_error"),
        ),
        (
            b"<html>oops</html>",
            500,
            (
                502,
                "HTTP 500 from the model server: <html>oops</html>",
                "server_error",
                "model_server_error",
            ),
        ),
        (b"", 503, (503, "HTTP 503 from the model server", "server_error", "model_server_error")),
    ],
)
def test_normalise_error_body(raw, status, want) -> None:
    err = normalise_error_body(raw, status, MODEL_SERVER)
    assert (err.status, err.message, err.type, err.code) == want
    assert err.envelope()["error"]["source"] == "model_server"


def test_manager_errors_keep_their_source() -> None:
    err = normalise_error_body(
        b'{"error":{"message":"busy","type":"rate_limit_error","code":"busy"}}', 429, MANAGER
    )
    assert err.status == 429 and err.type == "rate_limit_error" and err.source == "manager"


def test_not_found_and_wrong_type_messages_help_the_client() -> None:
    assert "Known models: a, b" in ModelNotFound("x", ["a", "b"]).message
    msg = WrongModelType("sdxl", "image", "/v1/chat/completions").message
    assert "image model" in msg and "/v1/images/generations" in msg
    msg = WrongModelType("chat", "text", "/v1/embeddings", ["e1", "e2"]).message
    assert "a text model and cannot serve /v1/embeddings" in msg
    assert "it serves /v1/chat/completions and /v1/completions" in msg
    assert msg.endswith("Models for /v1/embeddings: e1, e2.")
    msg = WrongModelType("e1", "embedding", "/v1/chat/completions", []).message
    assert "an embedding model" in msg and "it serves /v1/embeddings" in msg


async def test_encode_form_round_trips_through_starlettes_parser() -> None:
    upload = UploadFile(
        io.BytesIO(b"\x89PNGdata"),
        filename='a"b.png',
        headers=Headers({"content-type": "image/png"}),
    )
    form = FormData(
        [("model", "img"), ("image", upload), ("response_format", "url"), ("prompt", "p")]
    )
    body, ctype = await encode_form(form, {"response_format": "b64_json"})
    from starlette.requests import Request

    sent = False

    async def receive():
        nonlocal sent
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": "POST", "headers": [(b"content-type", ctype.encode())]}
    parsed = await Request(scope, receive).form()
    assert (
        parsed["model"] == "img"
        and parsed["response_format"] == "b64_json"
        and parsed["prompt"] == "p"
    )
    assert await parsed["image"].read() == b"\x89PNGdata"
    assert parsed["image"].content_type == "image/png"
    assert [k for k, _ in parsed.multi_items()] == ["model", "image", "response_format", "prompt"]


def _run_proxy(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HOMELAB_")}
    return subprocess.run(
        [sys.executable, "-m", "proxy"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[3],
    )


def test_bad_settings_are_named_without_their_values() -> None:
    """The settings error goes to the log: it must not carry the token or the keys."""
    token, key = "Sh0rt-t0ken", "k3y-Only-9"
    done = _run_proxy({"HOMELAB_MANAGER_TOKEN": token, "HOMELAB_API_KEYS": key})
    assert done.returncode == 2
    assert "HOMELAB_MANAGER_TOKEN" in done.stderr and "HOMELAB_API_KEYS" in done.stderr
    assert token not in done.stderr + done.stdout and key not in done.stderr + done.stdout


def test_the_proxy_does_not_start_without_keys_unless_told_to_be_open() -> None:
    done = _run_proxy({"HOMELAB_MANAGER_TOKEN": GOOD})
    assert done.returncode == 2 and "HOMELAB_API_KEYS=off" in done.stderr
    settings = ProxySettings(manager_token=GOOD, api_keys="off")
    assert settings.api_keys == [] and settings.keys() == []
