"""Several GPU hosts behind one proxy (docs/hosts.md), each host a real manager (process
runtime, the stand-in model server) in its own network namespace, made and removed here
(tests/integration/proxy/hosts_net.py):

- one catalogue: a model two hosts serve is listed once, with both;
- placement: the model is served from the host where it is resident;
- a host killed mid-run: its streams in flight are lost (counted), new requests are placed
  on the other host and none of them is lost; the host comes back and rejoins;
- a model only on a sleeping host: the magic packet is captured inside that host's
  namespace, the host "wakes" (its manager starts) and the waiting request is answered;
- every host away: a JSON-RPC job is accepted at once and runs when a host is back; a
  plain request gets 503 with Retry-After;
- two proxies on one Redis with two hosts: every job runs to one result, none lost when a
  proxy is killed;
- the warm tier on one host of two: a model asleep in h1's memory is woken there, not
  started on h2.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.wol import magic_packet
from tests.integration.jobs.jobs_stack import run_redis
from tests.integration.jobs.sse import read_events, rpc
from tests.integration.proxy.hosts_net import (
    Proxy,
    catalogue,
    chat_model,
    netns_problem,
    network,
    start_proxy,
)
from tests.integration.proxy.proxy_live import API_KEY
from tests.mcp_client import http_session

_problem = netns_problem()
pytestmark = pytest.mark.skipif(_problem is not None, reason=_problem or "")

LONG = " ".join(f"w{i}" for i in range(60))
"""A message whose streamed answer lasts a few seconds (STREAM_DELAY per word)."""


def _chat(client: httpx.Client, model: str, text: str = "hi") -> httpx.Response:
    return client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": text}]},
    )


def _stream(proxy: Proxy, model: str, started: concurrent.futures.Future[str]) -> str:
    """One streamed chat: 'ok' when it ended with [DONE], else 'lost'. Sets `started` to
    the host that serves it once the first chunk arrived."""
    with (
        proxy.client() as client,
        client.stream(
            "POST",
            "/v1/chat/completions",
            json={
                "model": model,
                "stream": True,
                "messages": [{"role": "user", "content": LONG}],
            },
        ) as resp,
    ):
        if resp.status_code != 200:
            started.set_result("refused")
            return "refused"
        served = resp.headers["x-homelab-served-by"]
        done = False
        try:
            for line in resp.iter_lines():
                if not started.done() and line.startswith("data:"):
                    started.set_result(served)
                if line.strip() == "data: [DONE]":
                    done = True
                if '"error"' in line:
                    return "lost"
        except httpx.HTTPError:
            return "lost"
        finally:
            if not started.done():
                started.set_result(served)
        return "ok" if done else "lost"


def _listed(proxy: Proxy) -> dict[str, dict]:
    with proxy.client() as client:
        return {m["id"]: m for m in client.get("/v1/models").json()["data"]}


def _wait(check, what: str, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_placement_fail_over_rejoin_wake_and_work_while_away(tmp_path: Path) -> None:
    both = chat_model("both")
    models = [
        {"both": both},
        {"both": both, "only-h2": chat_model("only-h2", 9101)},
        {"sleepy": chat_model("sleepy")},
    ]
    with network(tmp_path, models) as hosts:
        h1, h2, h3 = hosts
        for host in hosts:
            host.start()
        proxy = start_proxy(
            tmp_path,
            hosts,
            "p1",
            {
                "HOMELAB_CATALOGUE": str(catalogue(tmp_path, hosts, sleepable={"h3"})),
                "HOMELAB_MANAGER_OUTAGE_WINDOW": "4",
                "HOMELAB_WAKE_TIMEOUT": "120",
            },
        )
        try:
            proxy.wait_hosts({"h1": True, "h2": True, "h3": True})

            # One catalogue: each model once, with the hosts that serve it.
            listed = _listed(proxy)
            assert [m for m in listed if m == "both"] == ["both"]
            assert listed["both"]["hosts"] == ["h1", "h2"]
            assert listed["sleepy"]["hosts"] == ["h3"]
            enum = asyncio.run(_chat_tool_models(proxy))
            assert enum.count("both") == 1 and {"only-h2", "sleepy"} <= set(enum)

            # Resident on h2 (asked of h2's manager itself): served from h2.
            h2.ensure("both")
            _wait(lambda: _listed(proxy)["both"]["resident_on"] == ["h2"], "both on h2")
            with proxy.client() as client:
                r = _chat(client, "both")
            assert r.status_code == 200, r.text
            assert r.headers["x-homelab-served-by"] == "both@h2"
            text, rows = asyncio.run(_mcp_list_models(proxy))  # MCP says where, too
            row = next(r for r in rows if r["id"] == "both")
            assert row["hosts"] == ["h1", "h2"] and row["resident_on"] == ["h2"], row
            assert "both [text] ready on h1 h2*" in text, text

            # h2 loses power mid-run.
            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                started = [concurrent.futures.Future[str]() for _ in range(4)]
                streams = [pool.submit(_stream, proxy, "both", f) for f in started]
                assert [f.result(60) for f in started] == ["both@h2"] * 4
                h2.kill()
                outcomes = [s.result(120) for s in streams]
                lost = outcomes.count("lost")
                assert lost >= 1, outcomes  # streams in flight on h2 are lost...
                assert set(outcomes) <= {"ok", "lost"}, outcomes
                # ...and every new request is placed on h1: none is lost.
                after = [pool.submit(_chat_served, proxy, "both") for _ in range(6)]
                served = [a.result(120) for a in after]
            assert served == ["both@h1"] * 6, served
            print(f"h2 killed: {lost} of 4 streams in flight lost; 6 of 6 new requests on h1")

            # h2 comes back and rejoins: its own model is served again.
            h2.start()
            proxy.wait_hosts({"h2": True})
            with proxy.client() as client:
                r = _chat(client, "only-h2")
            assert r.status_code == 200 and r.headers["x-homelab-served-by"] == "only-h2@h2"

            # h3 goes to sleep; a request for its model wakes it.
            h3.kill()
            proxy.wait_hosts({"h3": False})
            with (
                h3.capture() as captured,
                concurrent.futures.ThreadPoolExecutor(1) as pool,
            ):
                waiting = pool.submit(_chat_served, proxy, "sleepy")
                _wait(lambda: len(captured.read_text().splitlines()) > 1, "the magic packet")
                packet = bytes.fromhex(captured.read_text().splitlines()[1])
                assert packet == magic_packet(h3.mac)
                assert not waiting.done()  # the request waits for the host
                h3.start()  # it wakes
                assert waiting.result(120) == "sleepy@h3"

            # Every host away: a job is accepted at once, a plain request gets a 503.
            for host in hosts:
                host.kill()
            proxy.wait_hosts({"h1": False, "h2": False, "h3": False})
            with proxy.client() as client:
                task = rpc(client, "create_message", {"model": "both", "message": "later"})
                assert "result" in task, task
                task_id = task["result"]["taskId"]
                refused = _chat(client, "both")
                assert refused.status_code == 503, refused.text
                assert refused.headers["retry-after"]
                assert refused.json()["error"]["code"] == "manager_unavailable"
                failed, text = asyncio.run(_mcp_chat(proxy, "both"))
                assert failed and "retry after" in text, text
                state = rpc(client, "tasks.get", {"taskId": task_id})["result"]["state"]
                assert state in ("PENDING", "STARTED")
                h1.start()
                events = list(read_events(client, task["result"]["stream"]))
                assert events[-1].data == {"state": "SUCCESS"}, events[-3:]
        finally:
            proxy.stop()


async def _chat_tool_models(proxy: Proxy) -> list[str]:
    """The models MCP's txt2txt tool offers (its ``model`` enum)."""
    async with http_session(proxy.url + "/mcp", API_KEY) as session:
        tools = await session.list_tools()
    chat = next(t for t in tools.tools if t.name == "txt2txt")
    return list(chat.input_schema["properties"]["model"]["enum"])


async def _mcp_list_models(proxy: Proxy) -> tuple[str, list[dict[str, Any]]]:
    """MCP's list_models tool: its text and its rows."""
    async with http_session(proxy.url + "/mcp", API_KEY) as session:
        result = await session.call_tool("list_models", {})
    text = " ".join(getattr(c, "text", "") for c in result.content)
    return text, (result.structured_content or {}).get("models", [])


async def _mcp_chat(proxy: Proxy, model: str) -> tuple[bool, str]:
    async with http_session(proxy.url + "/mcp", API_KEY) as session:
        result = await session.call_tool("txt2txt", {"model": model, "prompt": "hi"})
    text = " ".join(getattr(c, "text", "") for c in result.content)
    return bool(result.is_error), text


def _chat_served(proxy: Proxy, model: str) -> str:
    with proxy.client() as client:
        r = _chat(client, model)
    assert r.status_code == 200, r.text
    return r.headers["x-homelab-served-by"]


def test_two_proxies_on_one_redis_with_two_hosts_lose_no_job(tmp_path: Path) -> None:
    both = chat_model("both")
    with run_redis(tmp_path) as redis_url, network(tmp_path, [{"both": both}] * 2) as hosts:
        for host in hosts:
            host.start()
        cat = str(catalogue(tmp_path, hosts))
        extra = {
            "HOMELAB_CATALOGUE": cat,
            "HOMELAB_JOBS_URL": redis_url,
            "HOMELAB_JOB_WORKERS": "2",
        }
        p1 = start_proxy(tmp_path, hosts, "p1", extra)
        p2 = start_proxy(tmp_path, hosts, "p2", extra)
        try:
            with p1.client() as one:
                ids = [
                    rpc(one, "create_message", {"model": "both", "message": f"{i} {LONG}"})[
                        "result"
                    ]["taskId"]
                    for i in range(8)
                ]
                _wait(
                    lambda: any(
                        rpc(one, "tasks.get", {"taskId": i})["result"]["state"] == "STARTED"
                        for i in ids
                    ),
                    "a job started",
                )
            p1.stop(kill=True)
            with p2.client() as two:
                finals = [list(read_events(two, f"/stream/{i}"))[-1].data["state"] for i in ids]
                results = [rpc(two, "tasks.get", {"taskId": i})["result"] for i in ids]
            assert finals == ["SUCCESS"] * 8
            for i, result in enumerate(results):  # each its own answer, once
                assert result["result"]["text"] == f"[both] {i} {LONG}", json.dumps(result)[:300]
                assert result["attempt"] <= 2
            # some were p1's when it died: they ran again, as attempt 2, on p2
            assert any(r["attempt"] >= 2 for r in results), results
        finally:
            p2.stop()
            if p1.proc.poll() is None:
                p1.stop()


def test_a_model_asleep_in_one_hosts_memory_is_woken_there_not_started_on_another(
    tmp_path: Path,
) -> None:
    """The warm tier (issue 27) on one host of two: h1 put `warm` to sleep to make room for
    `cold` (its GPU budget holds one of them), h2 serves `warm` too, stopped there. The
    merged list shows it sleeping on h1, and a request wakes it on h1 (placement: a model
    in a host's memory before a start that stops nothing) while h2 is never asked to
    start it."""
    warm: dict[str, Any] = {
        "warm": {"level": 1},
        "gpu_memory_mib": 10,
        "env": {"FAKEVLLM_WEIGHTS_MIB": "16"},
    }
    models: list[dict[str, Any]] = [
        {
            "warm": chat_model("warm", **warm),
            "cold": chat_model("cold", 9101, gpu_memory_mib=10),
            "$gpu_budget_mib": 10,
        },
        {"warm": chat_model("warm", gpu_memory_mib=10)},
    ]
    with network(tmp_path, models) as hosts:
        h1, h2 = hosts
        h1.env = {**h1.env, "HOMELAB_HOST_BUDGET_MIB": "4096"}
        learned = tmp_path / "logs-h1"  # a cold start looks slow: keeping it warm pays
        learned.mkdir()
        seeded = {"models": {name: {"load_s": [60.0] * 5} for name in ("warm", "cold")}}
        (learned / "swaptimes.json").write_text(json.dumps(seeded))
        for host in hosts:
            host.start()
        proxy = start_proxy(
            tmp_path, hosts, "p1", {"HOMELAB_CATALOGUE": str(catalogue(tmp_path, hosts))}
        )
        try:
            proxy.wait_hosts({"h1": True, "h2": True})
            h1.ensure("warm")
            h1.ensure("cold")  # no room for both on h1: warm falls asleep there
            _wait(lambda: _listed(proxy)["warm"]["state"] == "sleeping", "warm asleep on h1")
            listed = _listed(proxy)["warm"]
            assert listed["hosts"] == ["h1", "h2"] and listed["resident_on"] == []
            with proxy.client() as client:
                r = _chat(client, "warm")
            assert r.status_code == 200, r.text
            assert r.headers["x-homelab-served-by"] == "warm@h1"
            _wait(lambda: _listed(proxy)["warm"]["resident_on"] == ["h1"], "warm awake on h1")
            on_h2 = httpx.get(
                h2.url + "/v1/models", headers={"Authorization": f"Bearer {h2.token}"}
            ).json()["data"]
            assert [m["state"] for m in on_h2 if m["id"] == "warm"] == ["stopped"]
        finally:
            proxy.stop()
