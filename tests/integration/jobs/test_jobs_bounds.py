"""Bounded work per request (issue 23), against a real proxy + manager + stand-in models:
a JSON-RPC batch capped by total work."""

from __future__ import annotations

import httpx

from tests.integration.jobs.jobs_stack import TEXT_A, JobsStack
from tests.integration.jobs.sse import rpc


def _call(method: str, params: dict, id_: int | None) -> dict:
    call = {"jsonrpc": "2.0", "method": method, "params": params}
    return call if id_ is None else {**call, "id": id_}


def _total(client: httpx.Client) -> int:
    return rpc(client, "tasks.list", {"limit": 1})["result"]["total"]


def test_an_rpc_batch_over_its_total_work_is_refused_before_any_call_runs(
    jobs_stack: JobsStack,
) -> None:
    with jobs_stack.client() as client:
        before = _total(client)
        # The probe of issue 23: 100 tasks.list {limit: 1000} in one 10 KB batch.
        probe = [_call("tasks.list", {"limit": 1000}, i) for i in range(100)]
        r = client.post("/rpc", json=probe)
        assert r.status_code == 200
        error = r.json()["error"]
        assert error["code"] == -32600 and "100000 records" in error["message"], error
        # A job creation in the same over-cap batch does not run: nothing was made.
        mixed = [
            _call("create_message", {"model": TEXT_A, "message": "hi"}, 1),
            _call("tasks.list", {"limit": 1000}, 2),
        ]
        error = client.post("/rpc", json=mixed).json()["error"]
        assert error["code"] == -32600 and "1001 records" in error["message"]
        # Notifications count as well (they would run all the same).
        notes = [_call("tasks.list", {}, None) for _ in range(21)]  # 21 x default 50
        assert client.post("/rpc", json=notes).json()["error"]["code"] == -32600
        assert _total(client) == before
        # At the cap it runs: 20 calls x limit 50 = 1000 records.
        fits = [_call("tasks.list", {"limit": 50}, i) for i in range(20)]
        replies = client.post("/rpc", json=fits).json()
        assert [x["id"] for x in replies] == list(range(20))
        assert all("tasks" in x["result"] for x in replies)
