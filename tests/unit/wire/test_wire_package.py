"""The wire package itself: what it may import, the token rules and their command,
SSE framing round trips, the error envelope and its one `param` rule, the body limit,
the disconnect helper and the process registry."""

from __future__ import annotations

import ast
import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel

from wire.disconnect import ClientDisconnected, watch_disconnect
from wire.errors import MANAGER, ApiError, install_error_handlers
from wire.events import (
    KEEPALIVE,
    SseParser,
    StateEvent,
    SwapEvent,
    event_frame,
    frame,
    parse_event,
    snapshot_frame,
)
from wire.limits import BodyLimit
from wire.models import ModelStatus
from wire.procs import ProcessRecord, read_registry, start_time, write_registry
from wire.tokens import check_token, new_token, token_problem

ROOT = Path(__file__).resolve().parents[3]
WIRE = ROOT / "wire"
ALLOWED_THIRD_PARTY = {"pydantic", "pydantic_settings", "starlette", "uvicorn"}
"""What every program that imports wire has anyway: uvicorn because each of our servers
(proxy, manager, image and audio server) runs under it, with `wire.http_server`'s
protocol."""


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", sorted(WIRE.glob("*.py")), ids=lambda p: p.name)
def test_wire_imports_only_the_stdlib_and_the_servers_own_stack(path: Path) -> None:
    roots = _imported_roots(path) - {"__future__", "wire"}
    foreign = {r for r in roots if r not in sys.stdlib_module_names} - ALLOWED_THIRD_PARTY
    assert not foreign, f"{path.name} imports {sorted(foreign)}"


def test_importing_wire_loads_none_of_the_programs() -> None:
    code = (
        "import sys, pkgutil, importlib, wire\n"
        "for m in pkgutil.iter_modules(wire.__path__): importlib.import_module('wire.' + m.name)\n"
        "print(sorted(m for m in ('manager', 'proxy', 'imageserver', 'fastapi', 'docker')"
        " if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == "[]"


PROGRAMS = ("manager", "proxy", "imageserver", "audioserver")
CONTRACT_NAMES = {"HOMELAB_IMAGE_API_KEY", "HOMELAB_AUDIO_API_KEY", "VLLM_API_KEY"}
"""Spelled in `wire.model_server` only."""
FRAMING = ("event: ", "id: ", ": keepalive", "retry: ")
"""How an SSE frame begins: written by `wire.events` only."""
STANDALONE = {"manager/model_guard.py"}
"""Run inside vLLM's Python, where `wire` is not: it spells `VLLM_API_KEY` itself, and
tests/unit/manager/test_manager_model_guard.py checks it equals the contract's."""


def _literals(path: Path) -> list[tuple[int, str]]:
    """The string and bytes constants of a module, docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and id(node) not in docstrings:
            if isinstance(node.value, bytes):
                found.append((node.lineno, node.value.decode("latin-1")))
            elif isinstance(node.value, str):
                found.append((node.lineno, node.value))
    return found


@pytest.mark.parametrize("program", PROGRAMS)
def test_the_programs_leave_the_contract_to_wire(program: str) -> None:
    """The upstream-key variables and SSE framing have one home (`wire`): a program that
    spells them again would drift from it unseen."""
    spelled = []
    for path in sorted((ROOT / program).rglob("*.py")):
        if path.relative_to(ROOT).as_posix() in STANDALONE:
            continue
        for line, text in _literals(path):
            if text in CONTRACT_NAMES or text.lstrip("\n").startswith(FRAMING):
                spelled.append(f"{path.relative_to(ROOT)}:{line}: {text!r}")
    assert not spelled, "\n".join(spelled)


# ---------------------------------------------------------------- tokens


def test_a_new_token_passes_the_rules_and_placeholders_do_not() -> None:
    token = new_token()
    assert len(token) == 43 and check_token(token) == token
    assert token_problem("short") is not None
    assert "placeholder" in (token_problem("changeme-changeme-1") or "")
    assert "characters" in (token_problem("has spaces in it 12345") or "")
    with pytest.raises(ValueError, match="python -m wire.tokens new"):
        check_token("xxxxxxxxxxxxxxxxxxxxxxxx")


def _tokens(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "wire.tokens", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )


def test_the_token_command_makes_and_checks_tokens_without_echoing_them() -> None:
    made = _tokens("new")
    assert made.returncode == 0
    token = made.stdout.strip()
    assert token_problem(token) is None
    assert _tokens("check", stdin=f"{token}\n{new_token()}\n").returncode == 0
    bad = _tokens("check", stdin=f"{token}\nsecret-secret-secret\n")
    assert bad.returncode == 1
    assert "token 2 of 2 looks like a placeholder" in bad.stderr
    assert "secret-secret-secret" not in bad.stderr
    assert _tokens("check", stdin=f"{token} \n").returncode == 1  # a trailing space is not kept
    assert _tokens("check").returncode == 1
    assert _tokens("frobnicate").returncode == 2


# ---------------------------------------------------------------- events


def test_sse_frames_parse_back_to_the_same_types() -> None:
    status = ModelStatus(id="a", type="image", state="ready", since=1.0, sizes=["8x8"], max_n=1)
    state = StateEvent(model="a", state="failed", previous="starting", at=2.0, error="boom")
    swap = SwapEvent(from_model=None, to="a", at=3.0)
    stream = snapshot_frame([status]) + KEEPALIVE + event_frame(state) + event_frame(swap)
    parser = SseParser()
    frames = [f for line in stream.splitlines(keepends=True) if (f := parser.feed(line))]
    assert [name for name, _ in frames] == ["snapshot", "state", "swap"]
    assert parse_event(*frames[0]) == [status]
    assert parse_event(*frames[1]) == state
    assert parse_event(*frames[2]) == swap
    assert b'"from":null' in event_frame(swap)
    assert parse_event("state", '{"model": "a"}') is None  # not the contract: skipped
    assert parse_event("later", "{}") is None


def test_a_resumable_frame_carries_its_id_and_utf8_data() -> None:
    """The jobs stream's frames (``id:`` for ``Last-Event-ID``) are framed here too."""
    assert frame("token", {"text": "héllo"}, 7) == (
        'id: 7\nevent: token\ndata: {"text":"héllo"}\n\n'.encode()
    )
    assert frame("end", {}) == b"event: end\ndata: {}\n\n"


def test_text_models_carry_no_image_fields_on_the_wire() -> None:
    text = ModelStatus(id="t", type="text", state="stopped", since=0.0)
    assert "sizes" not in text.to_wire() and "max_n" not in text.to_wire()


# ---------------------------------------------------------------- errors and limits


class Body(BaseModel):
    model: str
    n: int = 1


def _app() -> FastAPI:
    app = FastAPI()

    class Teapot(ApiError):
        status, type, code = 418, "invalid_request_error", "teapot"

    @app.post("/things")
    async def things(body: Body) -> dict[str, str]:
        if body.model == "teapot":
            raise Teapot("short and stout", param="model", headers={"X-Why": "tea"})
        if body.model == "boom":
            raise RuntimeError("secret detail")
        return {"model": body.model}

    install_error_handlers(app, MANAGER, validation_error=RequestValidationError)
    app.add_middleware(BodyLimit, max_bytes=64, source=MANAGER, per_path={"/big": 1024})
    return app


async def _post(content: bytes | object, path: str = "/things") -> httpx.Response:
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.post(
            path, content=content, headers={"content-type": "application/json"}
        )  # type: ignore[arg-type]


def _error(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code", "source"}
    assert error["code"] == code and error["source"] == "manager"
    return error


async def test_an_api_error_answers_with_its_own_status_code_param_and_headers() -> None:
    response = await _post(b'{"model": "teapot"}')
    assert _error(response, 418, "teapot")["param"] == "model"
    assert response.headers["x-why"] == "tea"


@pytest.mark.parametrize(
    ("content", "param"),
    [(b'{"n": 1}', "model"), (b'{"model": "a", "n": "x"}', "n"), (b"{nope", None), (b"[]", None)],
)
async def test_validation_errors_are_400_with_one_param_rule(
    content: bytes, param: str | None
) -> None:
    assert _error(await _post(content), 400, "invalid_request")["param"] == param


async def test_unexpected_errors_are_500_without_details() -> None:
    error = _error(await _post(b'{"model": "boom"}'), 500, "internal_error")
    assert "secret detail" not in str(error["message"])


async def test_too_large_is_413_request_too_large_declared_or_chunked() -> None:
    _error(await _post(b'{"model": "' + b"x" * 100 + b'"}'), 413, "request_too_large")

    async def chunks():  # no Content-Length: counted as it is read
        yield b'{"model": "'
        for _ in range(10):
            yield b"x" * 10
        yield b'"}'

    _error(await _post(chunks()), 413, "request_too_large")
    # A per-path limit: the same body fits under /big (then 404: no such route).
    _error(await _post(b'{"model": "' + b"x" * 100 + b'"}', "/big"), 404, "not_found")


# ---------------------------------------------------------------- disconnects


def _receive_then_disconnect(after: asyncio.Event):
    async def receive() -> dict[str, object]:
        await after.wait()
        return {"type": "http.disconnect"}

    return receive


async def test_a_disconnect_cancels_the_work_and_raises_client_disconnected() -> None:
    gone = asyncio.Event()
    cancelled = False

    async def work() -> None:
        nonlocal cancelled
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled = True
            raise

    async def serve() -> None:
        async with watch_disconnect(_receive_then_disconnect(gone)):
            gone.set()
            await work()

    with pytest.raises(ClientDisconnected) as info:
        await serve()
    assert cancelled and info.value.status == 499
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_after_finish_a_disconnect_cancels_nothing() -> None:
    gone = asyncio.Event()
    async with watch_disconnect(_receive_then_disconnect(gone)) as watch:
        watch.finish()
        gone.set()
        await asyncio.sleep(0.01)
    assert not watch.disconnected


# ---------------------------------------------------------------- process registry


def test_the_registry_round_trips_and_start_times_identify_processes(tmp_path: Path) -> None:
    me = ProcessRecord(
        pid=os.getpid(), spec_hash="h", started=start_time(os.getpid()), argv=["x"], log="l"
    )
    write_registry(tmp_path, {"m": me})
    assert read_registry(tmp_path) == {"m": me}
    assert me.started is not None and start_time(os.getpid()) == me.started
    (tmp_path / "registry.json").write_text('{"bad": {"pid": 1}}')
    assert read_registry(tmp_path) == {}
    assert read_registry(tmp_path / "none") == {}
