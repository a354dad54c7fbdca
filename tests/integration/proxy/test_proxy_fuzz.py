"""schemathesis over the proxy's own OpenAPI document, against the live stack.

For every operation (but the endless /api/events stream) it generates valid
and deliberately invalid requests and sends them to the running proxy, with the
API key and without, and to a second proxy on the same manager that has no keys
(HOMELAB_API_KEYS=off). The proxy must never answer 500, and every error must be
an OpenAI envelope naming its source. The run is bounded (examples per
operation and mode), deterministic (derandomized), and keeps no database.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from proxy_live import LiveStack
from schemathesis import GenerationMode

EXAMPLES = 25
SKIP = {("GET", "/api/events")}
SOURCES = {"proxy", "manager", "model_server"}


@pytest.fixture(scope="module")
def schema(live_stack: LiveStack):
    return schemathesis.openapi.from_url(live_stack.proxy_url + "/openapi.json")


def operations(schema, mode: GenerationMode = GenerationMode.POSITIVE) -> list:
    ops = [result.ok() for result in schema.get_all_operations()]
    ops = [op for op in ops if (op.method.upper(), op.path) not in SKIP]
    if mode is GenerationMode.NEGATIVE:
        # Invalid input needs something with a schema to break: a request body.
        # (A free-form string path parameter has no invalid values.)
        ops = [op for op in ops if len(op.body)]
    return ops


def test_openapi_document_describes_every_endpoint(schema) -> None:
    paths = {(op.method.upper(), op.path) for op in operations(schema)}
    for expected in [
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("POST", "/v1/embeddings"),
        ("POST", "/v1/images/generations"),
        ("POST", "/v1/images/edits"),
        ("POST", "/v1/audio/transcriptions"),
        ("POST", "/v1/audio/translations"),
        ("POST", "/v1/audio/speech"),
        ("GET", "/v1/audio/voices"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
    ]:
        assert expected in paths


@pytest.mark.parametrize(
    ("mode", "with_key", "real_models"),
    [
        (GenerationMode.POSITIVE, True, False),
        (GenerationMode.NEGATIVE, True, False),
        (GenerationMode.POSITIVE, False, False),
        (GenerationMode.NEGATIVE, False, False),
        (GenerationMode.POSITIVE, True, True),
        (GenerationMode.NEGATIVE, True, True),
    ],
    ids=[
        "valid",
        "invalid",
        "valid-nokey",
        "invalid-nokey",
        "valid-real-model",
        "invalid-real-model",
    ],
)
def test_generated_requests_never_get_a_500(
    schema, live_stack: LiveStack, mode, with_key: bool, real_models: bool
) -> None:
    """With `real_models`, a generated body's model is replaced by a served model of the
    right type, so the request goes all the way to a model server (and swaps models)."""
    headers = {"Authorization": f"Bearer {live_stack.api_key}"} if with_key else {}
    text, image = live_stack.text, live_stack.image
    known = {
        "/v1/chat/completions": text,
        "/v1/completions": text,
        "/v1/embeddings": live_stack.embedding,
        "/v1/images/generations": image,
        "/v1/images/edits": image,
    }
    seen: list[tuple[str, int]] = []
    secret = () if with_key else live_stack.internal
    for op in operations(schema, mode):
        model = known.get(op.path) if real_models else None
        fuzz(op, mode, live_stack.proxy_url, headers, model, seen, secret)
    # Every path was exercised (some paths have several methods: /v1/files, /v1/batches).
    assert {path for path, _ in seen} == {op.path for op in operations(schema, mode)}
    if not with_key:
        assert all(status == 401 for path, status in seen if path.startswith("/v1/")), seen


def fuzz(
    op,
    mode,
    base_url: str,
    headers: dict,
    model: str | None,
    seen: list,
    secret: tuple[str, ...] = (),
) -> None:
    """Send EXAMPLES generated requests for `op`; with `model`, bodies name that model. No
    answer may name an address in `secret` (the manager's, a model server's)."""

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=op.as_strategy(generation_mode=mode))
    def check(case) -> None:
        case.headers = {**(case.headers or {}), **headers}
        if model is not None and isinstance(case.body, dict):
            case.body = {**case.body, "model": model}
        response = case.call(base_url=base_url, timeout=60)
        seen.append((op.path, response.status_code))
        told = [address for address in secret if address in response.text]
        assert not told, f"{case.method} {case.formatted_path} told {told}: {response.text[:500]}"
        assert response.status_code != 500, (
            f"{case.method} {case.formatted_path}: {response.text[:500]}"
        )
        if response.status_code >= 400:
            error = response.json()["error"]
            assert set(error) >= {"message", "type", "param", "code", "source"}, response.text
            assert error["source"] in SOURCES
            # Nothing is down, so no request may fail as a gateway error either.
            assert response.status_code < 500, response.text

    check()


@pytest.mark.parametrize(
    "mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"]
)
def test_an_open_proxy_never_answers_a_500_either(
    schema, live_stack: LiveStack, open_proxy_url: str, mode
) -> None:
    """Keys off: every request reaches the routes (and real models), none gets a 500, and
    no error tells a keyless client an internal address."""
    known = {
        "/v1/chat/completions": live_stack.text,
        "/v1/completions": live_stack.text,
        "/v1/embeddings": live_stack.embedding,
        "/v1/images/generations": live_stack.image,
        "/v1/images/edits": live_stack.image,
    }
    seen: list[tuple[str, int]] = []
    for op in operations(schema, mode):
        fuzz(op, mode, open_proxy_url, {}, known.get(op.path), seen, live_stack.internal)
    assert live_stack.internal  # the check above had addresses to look for
    assert {path for path, _ in seen} == {op.path for op in operations(schema, mode)}
    assert not any(status == 401 for _, status in seen), seen
