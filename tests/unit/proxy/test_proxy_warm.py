"""The warm tier seen from the proxy: MCP progress says a model wakes from host memory
(with the manager's usual wake time), and the jobs dispatcher counts a waking model as
resident (batches may follow the wake)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

from proxy.feed import EventFeed
from proxy.jobs.dispatcher import residents_of
from proxy.mcp.progress import Progress, _queued_text, wait_for_lease
from wire.events import StateEvent, SwapEvent
from wire.models import ModelStatus


def status(name: str, state: str, **extra: object) -> ModelStatus:
    return ModelStatus(id=name, type="text", state=state, since=0.0, **extra)  # type: ignore[arg-type]


class _Wake:
    """A manager whose "chat" sleeps until the lease request wakes it (events published
    while the caller waits), and a lease pool that grants once it is awake."""

    def __init__(self, feed: EventFeed) -> None:
        self.feed = feed
        self.awake = asyncio.Event()

    async def acquire(self) -> str:
        await asyncio.sleep(0.3)  # past the first look: the caller is reporting
        now = time.time()
        self.feed.publish(
            StateEvent(model="other", state="falling_asleep", previous="ready", at=now)
        )
        self.feed.publish(SwapEvent(from_model="other", to="chat", at=now))
        self.feed.publish(StateEvent(model="chat", state="waking", previous="sleeping", at=now))
        await asyncio.sleep(0.05)
        self.feed.publish(StateEvent(model="chat", state="ready", previous="waking", at=now))
        await asyncio.sleep(0.05)
        return "the lease"

    async def models(self, max_age: float = 0.0) -> dict[str, ModelStatus]:
        return {
            "chat": status("chat", "sleeping", wake_seconds=0.8, warm_level=1),
            "other": status("other", "ready"),
        }


async def test_mcp_progress_says_the_model_wakes_from_host_memory() -> None:
    feed = EventFeed()
    manager = _Wake(feed)
    ctx = SimpleNamespace(feed=feed, manager=manager)
    progress = Progress(None)
    lease = await wait_for_lease(ctx, "chat", progress, manager.acquire())  # type: ignore[arg-type]
    assert lease == "the lease"
    assert "waking chat from host memory, usually 0.8 s" in progress.messages, progress.messages
    assert any(m.startswith("putting other to sleep") for m in progress.messages)
    assert progress.messages[-1].startswith("loaded chat in ")


async def test_a_waking_model_is_reported_as_waking_not_queued() -> None:
    async def models(max_age: float = 0.0) -> dict[str, ModelStatus]:
        return {"chat": status("chat", "waking", wake_seconds=2.5)}

    ctx = SimpleNamespace(manager=SimpleNamespace(models=models))
    text, loading = await _queued_text(ctx, "chat")  # type: ignore[arg-type]
    assert (text, loading) == ("waking chat from host memory, usually 2.5 s", True)


def test_jobs_count_a_waking_model_as_resident_but_not_a_sleeping_one() -> None:
    models = {
        name: status(name, state)
        for name, state in (
            ("a", "ready"),
            ("b", "sleeping"),
            ("c", "waking"),
            ("d", "stopped"),
            ("e", "falling_asleep"),
        )
    }
    assert residents_of(models) == {"a", "c"}
