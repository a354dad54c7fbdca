"""Leases without round trips (issue 16): while no other model waits, the proxy keeps
one unbounded lease for a whole run of requests, and when another model starts waiting
the manager's ``contention`` event makes the proxy release it at once.

Real programs on loopback: `python -m manager` (process runtime, fakevllm servers) and
a proxy of our own on it with a lease linger of 60 s (the longest allowed), so a lease
released by its linger and one released by the contention event cannot be confused.
Grants and releases are counted by the proxy (/metrics) and the leases held by the
manager (its /v1/models ``in_flight``).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
from proxy_live import LiveStack, run_open_proxy

REQUESTS = 200


def lease_counts(client: httpx.Client, model: str) -> tuple[int, int]:
    """(grants, releases) the proxy counted for `model`."""
    text = client.get("/metrics").text

    def value(name: str) -> int:
        found = re.search(rf'^{name}_total{{model="{re.escape(model)}"}} ([0-9.e+]+)$', text, re.M)
        return int(float(found.group(1))) if found else 0

    return value("homelab_proxy_lease_grants"), value("homelab_proxy_lease_releases")


def manager_leases(stack: LiveStack, model: str) -> int:
    r = httpx.get(
        stack.manager_url + "/v1/models",
        headers={"Authorization": f"Bearer {stack.manager_token}"},
        timeout=10,
    )
    return next(m["in_flight"] for m in r.json()["data"] if m["id"] == model)


def following_events(url: str) -> None:
    """Wait until the proxy follows the manager's event stream (/api/events answers)."""
    for _ in range(300):
        with httpx.stream("GET", url + "/api/events", timeout=10) as r:
            if r.status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError("the proxy never connected to the manager's event stream")


def chat(model: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def test_one_lease_serves_a_whole_run_and_contention_releases_it_at_once(
    live_stack: LiveStack, tmp_path: Path
) -> None:
    a, b = live_stack.text, live_stack.other_text
    with (
        run_open_proxy(live_stack, tmp_path, {"HOMELAB_LEASE_LINGER": "60"}) as url,
        httpx.Client(base_url=url, timeout=120) as client,
    ):
        following_events(url)
        for _ in range(REQUESTS):
            r = client.post("/v1/chat/completions", json=chat(a))
            assert r.status_code == 200, r.text
        assert lease_counts(client, a) == (1, 0), "one grant for the whole run, still held"
        assert manager_leases(live_stack, a) == 1

        # b needs a's memory (one model resident at a time): the manager says contention,
        # the proxy releases a's idle lease without waiting out its 60 s linger.
        t0 = time.perf_counter()
        r = client.post("/v1/chat/completions", json=chat(b), timeout=45)
        took = time.perf_counter() - t0
        assert r.status_code == 200, r.text
        assert lease_counts(client, a) == (1, 1), "released once, by the contention event"
        assert manager_leases(live_stack, a) == 0
        assert lease_counts(client, b)[0] == 1
        print(f"\n{REQUESTS} requests on {a}: 1 grant; {b} answered after {took:.2f} s (swap)")
