"""The fault kinds, each a coroutine that runs one fault against a started `FaultStack` and
returns a `FaultResult`: what every client got, and what was seen of the system meanwhile.

Used by tests/integration/test_faults.py (which asserts counts) and bench/faults.py (which
reports counts and times). Times are measured here but asserted nowhere in tests.

* `model_kill`: a storm of streamed and plain chat requests; the resident model server is
  SIGKILLed mid-storm.
* `manager_restart(outage)`: long streams and a steady arrival of requests; the manager is
  SIGKILLed and started again `outage` seconds later; then another model is asked for.
* `spawn_kill`: the manager is SIGKILLed after it spawned a model server and before its
  registry names it (its registry write is held on a FIFO), started again, and another model
  is asked for.
* `image_flood`: 20 image requests at once on a model server that accepts 1 + 8.
* `mcp_model_kill`: MCP ``txt2txt`` calls on one session; the resident model server is
  SIGKILLed while some are under way (the MCP path's retry and dead-server report).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.integration.faults.load import Load, Outcome, expected_reply, lost, tally, words
from tests.integration.faults.stack import IMAGE, OTHER, STREAM_DELAY, TEXT, FaultStack


@dataclass
class FaultResult:
    fault: str
    outcomes: list[Outcome]
    facts: dict[str, Any] = field(default_factory=dict)
    """What was seen besides the clients' answers (times in seconds, counts)."""

    @property
    def counts(self) -> dict[str, int]:
        return tally(self.outcomes)

    @property
    def lost(self) -> int:
        return len(lost(self.outcomes))

    def summary(self) -> dict[str, Any]:
        return {
            "fault": self.fault,
            "requests": len(self.outcomes),
            "lost": self.lost,
            "counts": self.counts,
            **self.facts,
        }


class Watch:
    """Samples the stack every `every` s in the background: the manager's view of a model and
    the live model servers (to count models resident at once and servers' deaths)."""

    def __init__(self, stack: FaultStack, every: float = 0.02) -> None:
        self.stack, self.every = stack, every
        self.max_resident = 0
        self.states: list[tuple[float, str, str]] = []
        self.deaths: dict[int, float] = {}
        self.last_seen: dict[int, float] = {}
        """When each server was last seen alive (a death lies between this and `deaths`)."""
        self._seen: set[int] = set()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Watch:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.stack.token}"}
        async with httpx.AsyncClient(headers=headers, timeout=1.0, trust_env=False) as http:
            while True:
                servers = await asyncio.to_thread(self.stack.servers)
                now = time.monotonic()
                self.max_resident = max(self.max_resident, len({s.model for s in servers}))
                pids = {s.pid for s in servers}
                for pid in pids:
                    self.last_seen[pid] = now
                for pid in self._seen - pids:
                    self.deaths.setdefault(pid, now)
                self._seen |= pids
                with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                    r = await http.get(self.stack.manager_url + "/v1/models")
                    for m in r.json()["data"]:
                        self.states.append((time.monotonic(), m["id"], m["state"]))
                await asyncio.sleep(self.every)

    def first_state(self, model: str, states: set[str], after: float) -> float | None:
        for at, name, state in self.states:
            if at >= after and name == model and state in states:
                return at
        return None


async def _warm(load: Load, model: str) -> None:
    outcome = load.image(model) if model == IMAGE else load.chat(model, 2, stream=False)
    await load.drain(60)
    if not outcome.ok:
        raise RuntimeError(f"warm-up request for {model} failed: {outcome.result}")
    load.outcomes.remove(outcome)


async def _kill_under_load(
    stack: FaultStack, send: Callable[[int], object], duration: float, kill_at: float
) -> float:
    """`send(i)` every 0.1 s for `duration` s; the model server of `ft-text` is SIGKILLed
    `kill_at` s in. Returns when it was killed (time.monotonic())."""
    start = time.monotonic()
    killed_at = None
    i = 0
    while time.monotonic() - start < duration:
        if killed_at is None and time.monotonic() - start >= kill_at:
            await asyncio.to_thread(stack.kill_server, TEXT)
            killed_at = time.monotonic()
        send(i)
        i += 1
        await asyncio.sleep(0.1)
    assert killed_at is not None
    return killed_at


async def model_kill(stack: FaultStack, duration: float = 3.5, kill_at: float = 1.0) -> FaultResult:
    """Streams (15 words) and plain chats alternate every 0.1 s; the model server of `ft-text`
    is SIGKILLed `kill_at` s in."""
    load = Load(stack.proxy_url, stack.api_key)
    try:
        await _warm(load, TEXT)
        async with Watch(stack) as watch:
            killed_at = await _kill_under_load(
                stack, lambda i: load.chat(TEXT, 15, stream=i % 2 == 0), duration, kill_at
            )
            await load.drain(60)
        noticed = watch.first_state(TEXT, {"failed", "stopping", "stopped", "starting"}, killed_at)
        after_notice = [o for o in load.outcomes if noticed is not None and o.sent >= noticed]
        back = [o.ended for o in load.outcomes if o.sent >= killed_at and o.ok]
        facts = {
            "noticed_s": None if noticed is None else round(noticed - killed_at, 3),
            "recovered_s": round(min(back) - killed_at, 3) if back else None,
            "streams_under_way_lost": sum(
                1 for o in lost(load.outcomes) if o.kind == "stream" and o.sent < killed_at
            ),
            "plain_lost": sum(1 for o in lost(load.outcomes) if o.kind == "plain"),
            "sent_after_kill_lost": sum(1 for o in lost(load.outcomes) if o.sent >= killed_at),
            "lost_after_death_noticed": len(lost(after_notice)),
            "max_resident": watch.max_resident,
        }
        return FaultResult("model_kill", list(load.outcomes), facts)
    finally:
        await load.aclose()


async def manager_restart(stack: FaultStack, outage: float, kill_at: float = 1.0) -> FaultResult:
    """Four long streams (running past the restart), then a plain chat or a short stream every
    0.1 s for `outage` + 3 s; the manager is SIGKILLed `kill_at` s in and started again
    `outage` s later; once it answers, two requests for `ft-other` arrive."""
    load = Load(stack.proxy_url, stack.api_key)
    try:
        await _warm(load, TEXT)
        text_pid = next(s.pid for s in stack.servers() if s.model == TEXT)
        # Long enough to outlast the restart (the manager's start-up time, doubled) by 3 s.
        long_words = int((kill_at + outage + 2 * stack.manager_start_s + 3.0) / STREAM_DELAY)
        async with Watch(stack) as watch:
            start = time.monotonic()
            long_streams = [load.chat(TEXT, long_words, stream=True) for _ in range(4)]
            killed_at = back_at = None
            restart: asyncio.Task[None] | None = None
            i = 0
            while time.monotonic() - start < kill_at + outage + 3.0:
                now = time.monotonic()
                if killed_at is None and now - start >= kill_at:
                    await asyncio.to_thread(stack.kill_manager)
                    killed_at = time.monotonic()
                if killed_at is not None and restart is None and now - killed_at >= outage:
                    restart = asyncio.get_running_loop().create_task(
                        asyncio.to_thread(stack.start_manager)
                    )
                if restart is not None and restart.done() and back_at is None:
                    restart.result()
                    back_at = time.monotonic()
                    for _ in range(2):
                        load.chat(OTHER, 2, stream=False)
                load.chat(TEXT, 5, stream=i % 2 == 1)
                i += 1
                await asyncio.sleep(0.1)
            if restart is not None:
                await restart
                if back_at is None:
                    back_at = time.monotonic()
                    for _ in range(2):
                        load.chat(OTHER, 2, stream=False)
            await load.drain(60)
        assert killed_at is not None and back_at is not None
        # Requests lost while in flight on ft-text when its server went (nothing kills it here:
        # only a manager can stop it): sent before it was last seen alive, ended after that.
        seen = watch.last_seen.get(text_pid) if text_pid in watch.deaths else None
        # A request that waited in the queue meanwhile and was answered later was not cut.
        under_lease = [
            o
            for o in lost(load.outcomes)
            if o.model == TEXT and seen is not None and o.sent < seen < o.ended
        ]
        outage_lost = [o for o in lost(load.outcomes) if killed_at <= o.sent <= back_at]
        facts = {
            "outage_s": outage,
            "manager_back_s": round(back_at - killed_at, 3),
            "sent_during_outage": sum(1 for o in load.outcomes if killed_at <= o.sent <= back_at),
            "sent_during_outage_lost": len(outage_lost),
            "long_streams_lost": len(lost(long_streams)),
            "other_model_lost": sum(1 for o in lost(load.outcomes) if o.model == OTHER),
            "stopped_with_requests_in_flight": len(under_lease),
            "retry_after_on_503": sorted(
                {str(o.retry_after) for o in load.outcomes if o.result.startswith("http_503")}
            ),
            "max_resident": watch.max_resident,
        }
        return FaultResult(f"manager_restart_{outage:g}s", list(load.outcomes), facts)
    finally:
        await load.aclose()


async def spawn_kill(stack: FaultStack) -> FaultResult:
    """The manager is SIGKILLed while it writes its registry after spawning `ft-text` (the
    write is held on a FIFO in place of its temporary file), started again; then `ft-other`
    is asked for."""
    load = Load(stack.proxy_url, stack.api_key)
    fifo = stack.log_dir / "registry.tmp"
    stack.log_dir.mkdir(parents=True, exist_ok=True)
    await stop_all(stack)  # a stop writes the registry too: nothing may be resident
    try:
        async with Watch(stack) as watch:
            os.mkfifo(fifo)
            first = load.chat(TEXT, 2, stream=False)
            spawned = False
            for _ in range(100):  # the server appears, or the write blocks before any spawn
                await asyncio.sleep(0.05)
                if any(s.model == TEXT for s in stack.servers()):
                    spawned = True
                    await asyncio.sleep(LOAD_WAIT)  # let it load and bind its port
                    break
            # Live servers the registry does not name, just before the kill: the case under
            # test needs one (spawned, its registry write still held on the FIFO).
            unregistered = len(stack.orphans())
            await asyncio.to_thread(stack.kill_manager)
            fifo.unlink()
            await asyncio.to_thread(stack.start_manager)
            await asyncio.sleep(1.0)  # adoption and a liveness round
            second = load.chat(OTHER, 2, stream=False)
            await load.drain(60)
            await asyncio.sleep(0.5)
            servers = stack.servers()
        facts = {
            "spawned_before_kill": spawned,
            "unregistered_at_kill": unregistered,
            "first_request": first.result,
            "second_request": second.result,
            "servers_after": sorted(s.model for s in servers),
            "orphans": len(stack.orphans()),
            "max_resident": watch.max_resident,
        }
        return FaultResult("spawn_kill", list(load.outcomes), facts)
    finally:
        with contextlib.suppress(FileNotFoundError):
            fifo.unlink()
        await load.aclose()


async def stop_all(stack: FaultStack) -> None:
    """Stop every model through the manager's API (each waits for its leases)."""
    headers = {"Authorization": f"Bearer {stack.token}"}
    async with httpx.AsyncClient(headers=headers, timeout=60, trust_env=False) as http:
        for model in (TEXT, OTHER, IMAGE):
            r = await http.post(f"{stack.manager_url}/v1/models/{model}/stop")
            r.raise_for_status()


LOAD_WAIT = 1.0
"""Seconds for a stand-in server to load (0.5 s) and bind."""


async def image_flood(stack: FaultStack, count: int = 20) -> FaultResult:
    """`count` image requests at once on `ft-image` (its server runs one at a time, 8 wait)."""
    load = Load(stack.proxy_url, stack.api_key)
    try:
        await _warm(load, IMAGE)
        for _ in range(count):
            load.image(IMAGE)
        await load.drain(60)
        facts = {
            "http_429": sum(1 for o in load.outcomes if o.result.startswith("http_429")),
        }
        return FaultResult("image_flood", list(load.outcomes), facts)
    finally:
        await load.aclose()


async def mcp_model_kill(
    stack: FaultStack, duration: float = 2.5, kill_at: float = 1.0
) -> FaultResult:
    """MCP ``txt2txt`` calls on `ft-text` (not streamed: 0.3 s each), one every 0.1 s on one
    MCP session; the model server is SIGKILLed `kill_at` s in. A call under way then is
    asked again once the manager, told by the proxy, has started the model afresh."""
    from tests.mcp_client import http_session, text_of

    load = Load(stack.proxy_url, stack.api_key)
    outcomes: list[Outcome] = []
    try:
        await _warm(load, TEXT)
        async with http_session(stack.proxy_url + "/mcp", stack.api_key) as session:

            async def call(outcome: Outcome, prompt: str) -> None:
                try:
                    result = await session.call_tool("txt2txt", {"model": TEXT, "prompt": prompt})
                    if result.is_error:
                        outcome.result = "tool_error"
                    elif text_of(result) == expected_reply(TEXT, prompt):
                        outcome.result = "ok"
                    else:
                        outcome.result = "wrong_answer"
                except Exception as exc:  # noqa: BLE001 (every failure is counted)
                    outcome.result = f"exception_{type(exc).__name__}"
                finally:
                    outcome.ended = time.monotonic()

            tasks = []

            def send(i: int) -> None:
                outcome = Outcome("mcp", TEXT, time.monotonic())
                outcomes.append(outcome)
                tasks.append(asyncio.create_task(call(outcome, f"{words(3)} n{i}")))

            killed_at = await _kill_under_load(stack, send, duration, kill_at)
            await asyncio.wait_for(asyncio.gather(*tasks), 90)
        facts = {
            "under_way_at_kill": sum(1 for o in outcomes if o.sent < killed_at < o.ended),
            "under_way_at_kill_lost": sum(
                1 for o in lost(outcomes) if o.sent < killed_at < o.ended
            ),
        }
        return FaultResult("mcp_model_kill", outcomes, facts)
    finally:
        await load.aclose()
