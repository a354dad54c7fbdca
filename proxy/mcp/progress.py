"""Progress notifications for one MCP tool call, from the manager's events.

A call goes through three phases: *queued* (waiting for the manager while another
model is resident or other requests are ahead), *loading* (the manager is starting
the model: which one, seconds so far, the usual load time from this proxy's
history; or waking it from host memory, the warm tier: "waking smollm2 from host
memory, usually 0.8 s", the manager's learned `wake_seconds`) and *running* (the model
server works on it). `wait_for_lease` runs the
lease request and, while it waits, turns the manager's ``state`` / ``swap`` events
(`proxy.feed`) and a one-second tick into notifications.

Progress values only rise within a call, across all phases (MCP clients drop or
reject a value that goes back): queued stays below 10, loading runs from 10 to 80
(by elapsed / usual load time), running is 80 and up, and the end is 100
(``total`` is always 100).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from proxy.context import ProxyContext
from proxy.keys import current
from proxy.lease_pool import LeaseUse
from wire.events import StateEvent, SwapEvent

log = logging.getLogger("proxy.mcp")

Report = Callable[[float, float | None, str | None], Awaitable[None]]
TOTAL = 100.0
TICK = 1.0
RESIDENT = ("starting", "ready", "stopping", "falling_asleep", "waking")


class Progress:
    """Sends rising progress values through `report` (the SDK session's report_progress).

    A failing report (client gone) is logged and ignored: progress never fails a call.
    """

    def __init__(self, report: Report | None) -> None:
        self._report = report
        self.last = 0.0
        self.messages: list[str] = []
        self.loaded: float | None = None
        """Seconds the load this call waited for took (None: it waited for none)."""

    async def say(self, value: float, message: str) -> None:
        self.messages.append(message)
        value = min(max(value, 0.0), TOTAL)
        if value <= self.last:
            value = self.last + (TOTAL - self.last) * 0.01  # strictly rising, never past 100
        value = round(value, 4)
        if value <= self.last:
            return  # no room left to rise: the message is kept, not sent
        self.last = value
        if self._report is None:
            return
        try:
            await self._report(value, TOTAL, message)
        except Exception as exc:  # the client may be gone; the call goes on
            log.debug("progress notification failed: %s", exc)


def _loading_value(elapsed: float, usual: float | None) -> float:
    fraction = elapsed / usual if usual else elapsed / (elapsed + 30.0)
    return 10.0 + 70.0 * min(fraction, 0.97)


def _loading_text(model: str, elapsed: float, usual: float | None) -> str:
    usual_text = f"usually ~{usual:.0f} s" if usual else "first load seen by this proxy"
    return f"loading {model}: {elapsed:.0f} s so far ({usual_text})"


def waking_text(model: str, usual: float | None) -> str:
    """The message of a wake (the warm tier), with the manager's usual wake time."""
    return f"waking {model} from host memory" + (f", usually {usual:.1f} s" if usual else "")


async def _usual_wake(ctx: ProxyContext, model: str) -> float | None:
    try:
        me = (await ctx.manager.models(max_age=5.0)).get(model)
    except Exception:  # only a message
        return None
    return me.wake_seconds if me is not None else None


def shown(model: str) -> str:
    """`model`'s name as the caller's key may read it: a model outside its scope is
    "another model" (docs/keys.md, "Scoping")."""
    return model if current().may_use(model) else "another model"


async def _queued_text(ctx: ProxyContext, model: str) -> tuple[str, bool]:
    """What the call waits for now, and whether `model` is already loading."""
    try:
        models = await ctx.manager.models(max_age=0.5)
    except Exception:  # the lease request reports manager trouble; this is only a message
        return f"waiting for {model}", False
    me = models.get(model)
    resident = [m for m in models.values() if m.state in RESIDENT]
    ahead = sum(m.waiting for m in models.values())
    now = ", ".join(f"{shown(m.id)} ({m.state})" for m in resident) or "nothing"
    if me is not None and me.state == "starting":
        return f"loading {model}", True
    if me is not None and me.hosts and me.away_on and set(me.away_on) >= set(me.hosts):
        # several hosts (docs/hosts.md): every host of the model is away or being woken
        return f"waiting for a host of {model} to answer: {', '.join(me.away_on)} (away)", False
    if me is not None and me.state == "waking":
        return waking_text(model, me.wake_seconds), True
    return (
        f"queued for {model}: {ahead} request(s) waiting at the manager; loaded now: {now}",
        False,
    )


def _start_in(events: list[Any], model: str) -> float | None:
    """When `model` began starting, if one of `events` says so (None otherwise)."""
    for event in events:
        if isinstance(event, StateEvent) and event.model == model and event.state == "starting":
            return event.at
    return None


async def _loaded(progress: Progress, model: str, started: float) -> None:
    took = progress.loaded = max(0.0, time.time() - started)
    await progress.say(80.0, f"loaded {model} in {took:.0f} s")


async def _granted(
    ctx: ProxyContext,
    progress: Progress,
    model: str,
    use: LeaseUse,
    unread: list[Any],
    started: float | None,
) -> LeaseUse:
    """Report the end of a wait that `use` ended: a load that began `started` (or one the
    `unread` events show began, quicker than one look) finished. Returns `use`."""
    if started is None:
        started = _start_in(unread, model)
        if started is not None:
            await progress.say(10.0, _loading_text(model, 0, ctx.feed.usual_load(model)))
    if started is not None:  # granted before the "ready" event was read
        await _loaded(progress, model, started)
    return use


async def wait_for_lease(
    ctx: ProxyContext, model: str, progress: Progress, lease: Awaitable[LeaseUse]
) -> LeaseUse:
    """Await `lease` (the lease pool's acquire of `model`, from `proxy.modelcall`),
    reporting progress while it waits.

    Raises what acquire raises. Cancellable: cancelling withdraws the request from the
    manager's queue (the lease pool cancels a grant nobody waits for any more).
    """
    with ctx.feed.subscribe() as events:
        acquire = asyncio.ensure_future(lease)
        try:
            granted, _ = await asyncio.wait({acquire}, timeout=0.2)
            if granted:
                return await _granted(ctx, progress, model, acquire.result(), events.drain(), None)
            text, loading = await _queued_text(ctx, model)
            started = ctx.feed.loading_since(model) if loading else None
            await progress.say(10.0 if loading else 1.0, text)
            while True:
                next_event = asyncio.ensure_future(events.get())
                pending: set[asyncio.Future[Any]] = {acquire, next_event}
                try:
                    done, _ = await asyncio.wait(
                        pending, timeout=TICK, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    if not next_event.done():
                        next_event.cancel()
                usual = ctx.feed.usual_load(model)
                if acquire in done:
                    # the event this look took out of the queue counts too (the "starting"
                    # of a load quicker than one look may be it)
                    seen = [next_event.result()] if next_event in done else []
                    unread = seen + events.drain()
                    return await _granted(ctx, progress, model, acquire.result(), unread, started)
                if next_event in done and not next_event.cancelled():
                    event = next_event.result()
                    if isinstance(event, SwapEvent) and event.to == model and started is None:
                        before = event.from_model
                        await progress.say(
                            9.0,
                            f"swapping: unloading {shown(before)}, then loading {model}"
                            if before
                            else f"loading {model} (nothing was loaded)",
                        )
                    elif isinstance(event, StateEvent) and event.model == model:
                        state = event.state
                        if state == "starting":
                            started = time.time()
                            await progress.say(10.0, _loading_text(model, 0, usual))
                        elif state == "waking":
                            started = time.time()
                            wake = await _usual_wake(ctx, model)
                            await progress.say(10.0, waking_text(model, wake))
                        elif state == "ready" and started is not None:
                            await _loaded(progress, model, started)
                            started = None
                    elif isinstance(event, StateEvent) and event.state == "stopping":
                        await progress.say(
                            progress.last + 0.5,
                            f"unloading {shown(event.model)} to make room for {model}",
                        )
                    elif isinstance(event, StateEvent) and event.state == "falling_asleep":
                        await progress.say(
                            progress.last + 0.5,
                            f"putting {shown(event.model)} to sleep in host memory to make "
                            f"room for {model}",
                        )
                elif started is not None:
                    elapsed = time.time() - started
                    await progress.say(
                        _loading_value(elapsed, usual), _loading_text(model, elapsed, usual)
                    )
        except BaseException:
            if not acquire.done():
                acquire.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await acquire
            elif not acquire.cancelled() and acquire.exception() is None:
                acquire.result().end()  # granted just as the caller left: hand it back
            raise
