"""The Docker engine's clock and its `die` events: how `DockerRuntime` learns that a
container's process has exited.

- `engine_time`: now on the engine's clock (a VM's clock, as under Docker Desktop, can
  drift by seconds after a host sleep), for the `since` of an event query.
- `terminate`: SIGTERM, then SIGKILL, returning once the process has exited: seen from
  the host through a pidfd (`manager.exit_watch`, where the engine runs on this
  kernel), else at the container's `die` event.
- `DieWatcher`: a daemon thread that follows the engine's event stream (`die` events of
  one manager's containers, by label) and hands each dead model's name to the event
  loop; a broken stream is reopened after a second.

Every call here blocks (the docker SDK does): run them in a thread from async code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import docker
import docker.errors

from manager.errors import RuntimeFailure
from manager.exit_watch import ExitWatch
from manager.runtime import LABEL_INSTANCE, LABEL_MANAGED, LABEL_MODEL

log = logging.getLogger(__name__)

CLOCK_CHECK = 300.0
"""Seconds between readings of the engine's clock (`engine_time`)."""
_engine_offset: tuple[float, float] | None = None
"""(when it was read, engine clock minus ours) in seconds."""


def engine_time(client: docker.DockerClient) -> float:
    """Now on the engine's clock (Unix seconds): ours plus the offset read from
    `docker info`'s SystemTime every `CLOCK_CHECK` s. Ours if the engine does not say.
    Blocking."""
    global _engine_offset
    now = time.time()
    if _engine_offset is None or now - _engine_offset[0] > CLOCK_CHECK:
        offset = 0.0
        try:
            stamp = str(client.info().get("SystemTime", ""))
            whole, _, frac = stamp.rstrip("Z").partition(".")
            parsed = datetime.fromisoformat(whole).replace(tzinfo=UTC)
            offset = parsed.timestamp() + float(f"0.{frac or 0}") - now
        except (docker.errors.APIError, ValueError, OSError) as exc:
            log.info("could not read the engine's clock (%s); using ours", exc)
        _engine_offset = (now, offset)
    return now + _engine_offset[1]


def terminate(client: docker.DockerClient, container: Any, grace: float) -> None:
    """SIGTERM the container, SIGKILL it after `grace` s; return once its process has
    exited: seen from the host (`manager.exit_watch`, native Linux) or at its `die`
    event (the engine's teardown is still to come, unlike `container.stop` or `wait`,
    which return after it). Blocking. Raises RuntimeFailure if it outlives the SIGKILL
    by 10 s."""
    state = (getattr(container, "attrs", None) or {}).get("State") or {}
    with contextlib.ExitStack() as stack:
        watch = ExitWatch.open(state.get("Pid"), container.id)
        if watch is not None:
            stack.callback(watch.close)
        for signal, wait in (("SIGTERM", max(1.0, grace)), ("SIGKILL", 10.0)):
            if _signal_and_wait(client, container, signal, wait, watch):
                return
    raise RuntimeFailure(f"container {container.name} did not die after SIGKILL")


def _signal_and_wait(
    client: docker.DockerClient, container: Any, signal: str, wait: float, watch: ExitWatch | None
) -> bool:
    """Send `signal`; True once the process exited within `wait` s (or was not running)."""
    # The engine's clock (Docker Desktop's VM may drift), for the `die` events below.
    since = engine_time(client) if watch is None else 0.0
    if watch is None or not watch.send(signal):
        try:
            container.kill(signal=signal)
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # not running (any more)
                return True
            raise
    if watch is not None:
        return watch.wait(wait)
    # Opened after the kill (one round trip less before it): `since` lies before the
    # kill, so the engine replays a `die` that came first.
    stream = client.events(
        since=since - 1.0,
        until=since + wait,
        decode=True,
        filters={"type": "container", "container": container.id, "event": "die"},
    )
    try:
        for _ in stream:
            return True
    finally:
        stream.close()
    return False


class DieWatcher:
    """Follows the engine's `die` events of the containers labelled managed (and of
    `instance`, or of no instance) on a daemon thread, and calls `on_die(model)` on
    `loop` for each. `close()` ends it."""

    def __init__(
        self,
        client: docker.DockerClient,
        instance: str | None,
        on_die: Callable[[str], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._client = client
        self._instance = instance
        self._on_die = on_die
        self._loop = loop
        self._closing = False
        self._events: Any = None
        self._thread = threading.Thread(target=self._follow, name="docker-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop following: close the open stream (the thread ends at once). Blocking."""
        self._closing = True
        if self._events is not None:
            with contextlib.suppress(Exception):
                self._events.close()

    def _follow(self) -> None:
        labels = [f"{LABEL_MANAGED}=true"]
        if self._instance is not None:
            labels.append(f"{LABEL_INSTANCE}={self._instance}")
        filters = {"type": "container", "event": ["die"], "label": labels}
        while not self._closing:
            try:
                engine_time(self._client)  # read now (cached), so that no stop waits for it
                self._events = self._client.events(decode=True, filters=filters)
                for event in self._events:
                    attrs = (event.get("Actor") or {}).get("Attributes") or {}
                    model = attrs.get(LABEL_MODEL)
                    if model and attrs.get(LABEL_INSTANCE) == self._instance:
                        self._loop.call_soon_threadsafe(self._on_die, model)
            except Exception as exc:  # a thread boundary: log, reopen after a pause
                if self._closing:
                    return
                log.warning("Docker event stream broke off (%s); reopening", exc)
            time.sleep(1.0)
