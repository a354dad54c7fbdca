"""The one model call (proxy/modelcall.py): nothing else in the proxy reaches a model
server, and MCP tool calls and jobs get the same retry and dead-server report as HTTP
forwarding (test_proxy_failures.py), on the unit stack (proxy_stack.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import orjson
import pytest
from mcp import types
from proxy_fakes import dead_port
from proxy_stack import API_KEY, Stack

from proxy import keys
from proxy.errors import UpstreamError
from proxy.jobs.records import Job
from proxy.jobs.runner import run_job
from proxy.keys import Principal, simple_name
from tests.mcp_client import http_session, text_of

PROXY = Path(__file__).resolve().parents[3] / "proxy"

MODEL_CALL = "modelcall.py"
CLIENT_LIBRARIES = {"aiohttp", "httpx", "httpx2", "requests", "urllib.request", "http.client"}
ALLOWED_CLIENTS = {
    "manager_client.py": "the manager's HTTP API",
    "app.py": "builds the manager's aiohttp session",
    "event_hub.py": "reads the manager's event stream",
    "mcp/relay.py": "relays a stdio MCP client to a proxy's /mcp",
}
SENDERS = {"upstream", "_upstream", "http", "_http", "session", "_session"}
"""Receivers of a ``.post`` / ``.get`` / ``.request`` that would send an HTTP request."""


def _receiver(node: ast.expr) -> str | None:
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return None


def model_server_callers(root: Path) -> list[str]:
    """Where a module under `root` (the proxy package) could call a model server other
    than through proxy/modelcall.py: the lean client (the one client for model servers)
    used, a lease's upstream key read, an HTTP client library imported, or a request
    sent on a client session (the manager client sends the manager's requests)."""
    found: list[str] = []
    for path in sorted(root.rglob("*.py")):
        name = path.relative_to(root).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module == "proxy.upstream":
                imported = {alias.name for alias in node.names}
                if name not in (MODEL_CALL, "app.py") or (
                    name == "app.py" and "UpstreamPool" not in imported
                ):
                    found.append(f"{name}:{node.lineno} imports {sorted(imported)} of the client")
            if isinstance(node, ast.Import | ast.ImportFrom):
                modules = (
                    [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                )
                for module in modules:
                    if module in CLIENT_LIBRARIES and name not in ALLOWED_CLIENTS:
                        found.append(f"{name}:{node.lineno} imports the HTTP client {module}")
            if isinstance(node, ast.Attribute) and node.attr == "upstream_headers":
                if name != MODEL_CALL:
                    found.append(f"{name}:{node.lineno} uses a lease's upstream key")
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("post", "get", "request")
                and _receiver(node.func.value) in SENDERS
                and name not in (MODEL_CALL, "manager_client.py")
            ):
                found.append(f"{name}:{node.lineno} sends a request on a client")
    return found


def test_only_the_model_call_module_reaches_model_servers() -> None:
    found = model_server_callers(PROXY)
    assert not found, "only proxy/modelcall.py may call a model server:\n" + "\n".join(found)


OLD_MCP_CALL = """
import aiohttp
from proxy.upstream import UpstreamPool

async def _post(ctx, lease, body):
    async with ctx.http.post(lease.base_url, data=body, headers=lease.upstream_headers()) as r:
        return await r.read()
"""


def test_the_scan_finds_a_model_call_outside_the_module(tmp_path: Path) -> None:
    """The check above can fail: MCP's own aiohttp call, as it was, is found four ways."""
    (tmp_path / "mcp").mkdir()
    (tmp_path / "mcp" / "calls.py").write_text(OLD_MCP_CALL)
    (tmp_path / MODEL_CALL).write_text(OLD_MCP_CALL.replace("import aiohttp", ""))  # it may
    found = model_server_callers(tmp_path)
    assert [f.split(" ", 1)[1] for f in found] == [
        "imports the HTTP client aiohttp",
        "imports ['UpstreamPool'] of the client",
        "sends a request on a client",
        "uses a lease's upstream key",
    ], found
    assert all(f.startswith("mcp/calls.py:") for f in found)


# -- MCP: the same faults as /v1 (test_proxy_failures.py) --------------------------------


async def _txt2txt(stack: Stack, prompt: str = "hi") -> types.CallToolResult:
    async with http_session(stack.url + "/mcp", API_KEY) as session:
        return await session.call_tool("txt2txt", {"model": "chat-a", "prompt": prompt})


@pytest.fixture
async def keyed(make_stack):  # noqa: ANN001, ANN201
    async with make_stack(api_keys=[API_KEY]) as stack:
        yield stack


async def test_an_mcp_call_to_a_dead_server_is_retried_once_after_the_manager_checked(
    keyed: Stack,
) -> None:
    live = keyed.manager.base_url
    with dead_port() as port:
        keyed.manager.base_url = f"http://127.0.0.1:{port}"  # the server died
        keyed.manager.restart_on_check = live  # the manager's check restarts it
        result = await _txt2txt(keyed)
    assert not result.is_error, text_of(result)
    assert text_of(result) == "echo hi"
    assert keyed.manager.checked == ["chat-a"] and keyed.manager.granted == 2


async def test_an_mcp_call_whose_server_is_killed_mid_answer_is_retried_and_reported(
    keyed: Stack,
) -> None:
    keyed.upstream.break_next = 1  # the answer breaks off half-sent, once
    result = await _txt2txt(keyed)
    assert not result.is_error, text_of(result)
    assert text_of(result) == "echo hi"
    assert keyed.manager.checked == ["chat-a"], "the manager was told"
    assert keyed.manager.granted == 2, "the retry ran on a fresh lease"
    assert len(keyed.upstream.requests) == 2


async def test_an_mcp_call_to_a_server_that_stays_dead_is_a_tool_error_reported_twice(
    keyed: Stack,
) -> None:
    with dead_port() as port:
        keyed.manager.base_url = f"http://127.0.0.1:{port}"
        result = await _txt2txt(keyed)
    assert result.is_error
    assert "cannot be reached" in text_of(result)
    assert keyed.manager.checked == ["chat-a", "chat-a"]


async def test_no_mcp_retry_for_endpoints_left_out_of_the_setting(make_stack) -> None:  # noqa: ANN001
    async with make_stack(api_keys=[API_KEY], retry_endpoints="") as stack:
        stack.upstream.break_next = 1
        result = await _txt2txt(stack)
        assert result.is_error
        assert stack.manager.checked == ["chat-a"] and stack.manager.granted == 1


# -- jobs: the model call directly, no captured ASGI send -------------------------------


def _job(text: str, *, stream: bool = False) -> Job:
    body = {"model": "chat-a", "messages": [{"role": "user", "content": text}], "stream": stream}
    return Job(
        id="t1", method="create_message", model="chat-a", endpoint="/v1/chat/completions", body=body
    )


async def test_a_job_whose_server_is_killed_mid_answer_is_retried_and_reported(
    stack: Stack,
) -> None:
    stack.upstream.break_next = 1
    outcome = await run_job(stack.app.state.ctx, _job("hi"))
    assert outcome.ok, outcome
    assert outcome.result["choices"][0]["message"]["content"] == "echo hi"
    assert stack.manager.checked == ["chat-a"] and stack.manager.granted == 2


async def test_a_streamed_job_reads_the_model_servers_events(stack: Stack) -> None:
    deltas: list[str] = []
    outcome = await run_job(stack.app.state.ctx, _job("one two", stream=True), deltas.append)
    assert outcome.ok, outcome
    assert outcome.result["text"] == "echo one two" and deltas == ["echo", " one", " two"]
    assert outcome.result["finish_reason"] is None


async def test_a_streamed_job_that_breaks_off_is_an_error_and_reported(stack: Stack) -> None:
    deltas: list[str] = []
    outcome = await run_job(stack.app.state.ctx, _job("die now please", stream=True), deltas.append)
    assert outcome.status == 502 and outcome.error is not None
    assert outcome.error["code"] == "stream_interrupted"
    assert outcome.error["source"] == "model_server"
    assert deltas == ["echo", " die"], "what came before the break was passed on"
    assert stack.manager.checked == ["chat-a"]


async def test_a_jobs_model_server_error_is_its_outcome(stack: Stack) -> None:
    outcome = await run_job(stack.app.state.ctx, _job("bad"))
    assert outcome.status == 400 and outcome.error is not None
    assert outcome.error["param"] == "messages"
    assert orjson.loads(orjson.dumps(outcome.result))["error"] == outcome.error
    assert stack.manager.checked == []


async def test_a_whole_answer_over_the_limit_is_refused_and_the_lease_ended(stack: Stack) -> None:
    ctx = stack.app.state.ctx
    body = orjson.dumps(_job("hi").body)
    with pytest.raises(UpstreamError) as refused:
        async with ctx.model_calls.call(
            "chat-a", "/v1/chat/completions", body, "application/json", answer_limit=10
        ):
            raise AssertionError("an answer over the limit was taken")
    assert refused.value.code == "answer_too_large" and refused.value.status == 502
    assert all(shared.refs == 0 for shared in ctx.leases._live), "the share was ended"
    assert stack.manager.checked == [], "a server that answered is not reported"
    async with ctx.model_calls.call(
        "chat-a", "/v1/chat/completions", body, "application/json", answer_limit=10_000
    ) as call:
        assert call.body is not None and orjson.loads(call.body)["object"] == "chat.completion"


# -- jobs run as their owner (issue 22) ----------------------------------------------------


async def test_a_job_calls_the_model_as_its_owner_and_a_revoked_keys_job_not_at_all(
    make_stack,  # noqa: ANN001
) -> None:
    """Inside `proxy.modelcall`, `proxy.keys.current()` is the job's owner (as the ring has
    it now), as it is the caller for /v1 and MCP; a key revoked since fails its job."""
    async with make_stack(api_keys=[API_KEY]) as stack:
        ctx = stack.app.state.ctx
        seen: list[Principal] = []
        real = ctx.model_calls.call

        def call(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            seen.append(keys.current())
            return real(*args, **kwargs)

        ctx.model_calls.call = call
        owner = simple_name(API_KEY)
        job = _job("hi")
        job.owner = owner
        outcome = await run_job(ctx, job)
        assert outcome.ok, outcome
        assert seen == [Principal(name=owner)]
        assert keys.current() == keys.OPEN  # set for the call only

        job.owner = simple_name("a-key-revoked-since")
        outcome = await run_job(ctx, job)
        assert outcome.status == 401 and outcome.error is not None
        assert outcome.error["code"] == "key_revoked"
        assert job.owner in outcome.error["message"]
        assert len(seen) == 1 and stack.manager.granted == 1, "no model call, no lease"
