"""The fair share of the GPU, with real processes: the manager (process runtime), a
fakevllm model server that takes one request at a time (``max_in_flight: 1``), and a
proxy with two keys (docs/architecture.md, "Fair share").

One key floods the model with 200 jobs over /rpc; the other key's interactive chats
(``/v1/chat/completions``) still get answered, each after at most a couple of the flood's
requests. Counted, not timed: the model server's access log lists the requests it
started, in order, and the test counts how many of them came between sending a chat and
its answer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.jobs.jobs_stack import TEXT_A, JobsStack, run_jobs_stack

KEY_B = "fair-share-second-key-" + "b" * 24
FLOOD = 200
CHATS = 8
BOUND = 3
"""The flood's requests the model server may start between a chat's send and its start:
the one in flight, one handed on before the manager's contention event reaches the
proxy, and one for slack on a loaded machine. Without the fair order a chat waits behind
every request of the flood queued at the manager (the job workers: 16)."""


@pytest.fixture(scope="module")
def fair_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobsStack]:
    work = tmp_path_factory.mktemp("fair")
    with run_jobs_stack(work, fields={TEXT_A: {"max_in_flight": 1}}) as stack:
        stack.start_proxy(
            "p1",
            str(work / "jobs.db"),
            {
                "HOMELAB_JOB_WORKERS": "16",
                "HOMELAB_API_KEYS": f"{stack.api_key},{KEY_B}",
            },
        )
        yield stack


def started(log: Path) -> int:
    """Requests the model server started so far (its access log, one line each)."""
    if not log.exists():
        return 0
    return sum(
        1 for line in log.read_text(errors="replace").splitlines() if "POST /v1/chat" in line
    )


def test_a_flood_of_jobs_from_one_key_does_not_starve_another_keys_chats(
    fair_stack: JobsStack,
) -> None:
    stack = fair_stack
    log = stack.work / "logs" / f"{TEXT_A}.log"
    url = stack.proxies["p1"].url
    key_b = {"Authorization": f"Bearer {KEY_B}"}
    with stack.client() as a, httpx.Client(base_url=url, headers=key_b, timeout=60) as b:
        warm = b.post(
            "/v1/chat/completions",
            json={"model": TEXT_A, "messages": [{"role": "user", "content": "warm up"}]},
        )
        assert warm.status_code == 200, warm.text
        calls = [
            {
                "jsonrpc": "2.0",
                "method": "create_message",
                "params": {"model": TEXT_A, "message": f"flood {i}"},
                "id": i,
            }
            for i in range(FLOOD)
        ]
        for batch in (calls[:100], calls[100:]):  # at most 100 calls per /rpc batch
            accepted = a.post("/rpc", json=batch)
            assert accepted.status_code == 200
            assert all("result" in r for r in accepted.json()), accepted.text[:500]
        # Wait (by count) until the flood has the model: its jobs are running.
        for _ in range(600):
            if started(log) >= 1 + 4:
                break
            time.sleep(0.05)
        waited = []
        for i in range(CHATS):
            before = started(log)
            r = b.post(
                "/v1/chat/completions",
                json={"model": TEXT_A, "messages": [{"role": "user", "content": f"chat {i}"}]},
            )
            assert r.status_code == 200, r.text
            waited.append(started(log) - before - 1)
        flood_left = a.post(
            "/rpc",
            json={
                "jsonrpc": "2.0",
                "method": "tasks.list",
                "params": {"state": "PENDING"},
                "id": 1,
            },
        ).json()["result"]["total"]
    assert flood_left > 0, "the chats were tested while the flood still queued"
    assert max(waited) <= BOUND, f"flood requests started before each chat: {waited}"
