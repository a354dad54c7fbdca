"""The GPU hosts behind the proxy: one `HostLink` per manager, and the `Fleet` of them.

Each host of the proxy's catalogue (`proxy.catalogue.HostSpec`; the one-host form: the
manager at ``HOMELAB_MANAGER_URL``) gets a `HostLink`: its own `ManagerClient` and its own
`LeasePool` (so a lease never spans two hosts), and the copy of its model list that the
event hub (`proxy.event_hub`) keeps from its event stream.

`Fleet` is what the routes, MCP and jobs see as "the manager": `models()` is ONE catalogue,
each model once (`merge`: its best state, the hosts that serve it, where it is resident,
loading or away), and `choose()` is where a request goes (`proxy.placement.place` on the
hosts' `views`), waiting for a host to come back, or waking a sleeping one
(`proxy.wol`), within the request's bound.

Placement state is each manager's own: every proxy follows every manager's event stream
and places from what it saw there, plus its own queue counts. Several proxies share no
state of their own and need no consensus: two proxies that see the same states choose the
same host, and the managers' schedulers settle what the proxies' choices race for (queues,
swaps, the GPU budget), as they do for one host.

A host that does not answer is marked down at once (`mark_down`): requests skip it and it
is tried again after a backoff (0.5 s doubling to `MAX_BACKOFF`); its event stream
connecting again marks it up. A sleepable host that is down is taken as asleep.

The last known catalogue (the merged list) is kept in a file (`known_path`), so a proxy
that starts while every host is away still accepts jobs and batches for the models it
knew (`models(wait=False)`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from proxy.catalogue import HostSpec
from proxy.errors import ManagerUnavailable, ProxyError
from proxy.lease_pool import LeasePool
from proxy.manager_client import OUTAGE_RETRY_AFTER, ManagerClient
from proxy.placement import HostView, Other, Placement, place
from proxy.wol import wake
from wire.models import ModelList, ModelStatus
from wire.private import private_dir, write_private

log = logging.getLogger("proxy.hosts")

MAX_BACKOFF = 30.0
"""Longest wait (seconds) before a host that did not answer is tried again."""
WAKE_RESEND = 15.0
"""Seconds between two magic packets to one host while requests wait for it."""
_BEST = {
    "ready": 0,
    "starting": 1,
    "waking": 2,
    "sleeping": 3,
    "falling_asleep": 4,
    "stopping": 5,
    "stopped": 6,
}
"""Which state a merged model shows (the best among its hosts); unknown ones after these."""


class HostLink:
    """One host: its manager's client, its lease pool and what its event stream says."""

    def __init__(self, spec: HostSpec, client: ManagerClient, leases: LeasePool) -> None:
        self.name = spec.name
        self.spec = spec
        self.client = client
        self.leases = leases
        self.events: dict[str, ModelStatus] | None = None
        """Its model list as of the last event (kept by the event hub); None: not connected."""
        self.failures = 0
        self.retry_at = 0.0
        self.woken_at = float("-inf")
        self.poke = asyncio.Event()
        """Set to make the event hub reconnect to this host now (it was woken)."""

    @property
    def up(self) -> bool:
        return self.client.reachable

    @property
    def asleep(self) -> bool:
        return self.spec.sleepable and not self.up

    def models(self) -> dict[str, ModelStatus] | None:
        """What placement reads: the event stream's copy, else the last list fetched."""
        return self.events if self.events is not None else self.client.last


class Fleet:
    """Every host (module docstring). Built once per process in the app's lifespan."""

    def __init__(
        self,
        links: Sequence[HostLink],
        *,
        known_path: Path | None = None,
        outage_window: float | None = None,
        wake_timeout: float = 120.0,
    ) -> None:
        if not links:
            raise ValueError("a fleet needs a host")
        self.links: dict[str, HostLink] = {link.name: link for link in links}
        self.first = links[0]
        self.multi = len(links) > 1
        self.outage_window = (
            self.first.client.outage_window if outage_window is None else outage_window
        )
        self.wake_timeout = wake_timeout
        self.known_path = known_path
        self._known: dict[str, ModelStatus] | None = _read_known(known_path)
        self._known_ids: tuple[tuple[str, str], ...] = ()
        self._remembered: dict[str, ModelStatus] | None = None
        """The last list `_remember` read (a manager client's cached list comes again and
        again, never changed in place)."""
        self._changed = asyncio.Event()
        self._refreshing: dict[str, asyncio.Task[None]] = {}
        """Per host: its list being fetched in the background (`refresh`)."""
        self.wakes = 0
        """Magic packets sent or tried (every host)."""

    # -- what the routes read as "the manager" --------------------------------------

    @property
    def base_url(self) -> str:
        return self.first.client.base_url

    @property
    def reachable(self) -> bool:
        """Some host's manager answers."""
        return any(link.up for link in self.links.values())

    def invalidate_models(self, host: str | None = None) -> None:
        for link in self.links.values():
            if host is None or link.name == host:
                link.client.invalidate_models()

    async def health(self) -> dict[str, Any]:
        """The first host's /healthz; several hosts: each one's (ManagerUnavailable when
        none answers)."""
        if not self.multi:
            return await self.first.client.health()

        async def one(link: HostLink) -> dict[str, Any]:
            try:
                return await link.client.health()
            except ProxyError as exc:
                return {"status": "unreachable", "error": exc.message}

        found = await asyncio.gather(*(one(link) for link in self.links.values()))
        answers = dict(zip(self.links, found, strict=True))
        if all(a.get("status") == "unreachable" for a in answers.values()):
            raise ManagerUnavailable("No host's manager can be reached")
        return {"status": "ok", "hosts": answers}

    async def models(
        self, *, max_age: float | None = None, wait: bool = True
    ) -> dict[str, ModelStatus]:
        """The one catalogue: each model once (`merge`), at most `max_age` seconds old per
        host. `wait=False`: never wait for a host that is away; without any list, the last
        known catalogue (`known_path`). Raises ManagerUnavailable / ManagerRefused."""
        if not self.multi:
            try:
                models = await self.first.client.models(max_age=max_age, wait=wait)
            except ManagerUnavailable:
                if wait or self._known is None:
                    raise
                return self._known
            self._remember(models)
            return models
        per: dict[str, dict[str, ModelStatus]] = {}
        listings = await asyncio.gather(
            *(self._listing(link, max_age) for link in self.links.values())
        )
        for link, listing in zip(self.links.values(), listings, strict=True):
            if listing is not None:
                per[link.name] = listing
        if not per:
            if self._known is not None:
                return self._known
            raise ManagerUnavailable(
                "No host's manager can be reached", headers={"Retry-After": str(OUTAGE_RETRY_AFTER)}
            )
        merged = self.merge(per)
        self._remember(merged)
        return merged

    async def _listing(
        self, link: HostLink, max_age: float | None
    ) -> dict[str, ModelStatus] | None:
        """`link`'s list: fetched while it is up, else its last one (a host that is away is
        not asked here, so a PC that is off costs no connect timeout: its event stream,
        reconnecting in the background, brings it back)."""
        if not link.up:
            return link.client.last
        try:
            return await link.client.models(max_age=max_age, wait=False)
        except ManagerUnavailable:
            self.mark_down(link)
            return link.client.last

    def merge(self, per: Mapping[str, Mapping[str, ModelStatus]]) -> dict[str, ModelStatus]:
        """Each host's models as one list: each model once, with the best state among the
        hosts that are up (else the last known), the hosts that serve it, where it is
        resident, loading or away, and its queue and leases summed. Pure but for `up`."""
        serving: dict[str, list[tuple[str, ModelStatus]]] = {}
        for host, models in per.items():
            for name, status in models.items():
                serving.setdefault(name, []).append((host, status))
        out: dict[str, ModelStatus] = {}
        for name, entries in serving.items():
            up = [(h, s) for h, s in entries if self.links[h].up]
            pool = up or entries
            _, best = min(pool, key=lambda e: (_BEST.get(e[1].state, 9), e[0]))
            out[name] = best.model_copy(
                update={
                    "hosts": [h for h, _ in entries],
                    "resident_on": [h for h, s in up if s.state == "ready"],
                    "loading_on": [h for h, s in up if s.state in ("starting", "waking")],
                    "away_on": [h for h, _ in entries if not self.links[h].up],
                    "in_flight": sum(s.in_flight for _, s in up),
                    "waiting": sum(s.waiting for _, s in up),
                }
            )
        return out

    def event_models(self) -> dict[str, ModelStatus] | None:
        """The catalogue from the event streams (the event hub's snapshot); None when no
        host's stream is connected."""
        per = {n: link.events for n, link in self.links.items() if link.events is not None}
        if not per:
            return None
        if not self.multi:
            return per[self.first.name]
        for name, link in self.links.items():  # away hosts: their last known lists
            last = link.client.last
            if name not in per and last is not None:
                per[name] = last
        return self.merge(per)

    def _remember(self, models: dict[str, ModelStatus]) -> None:
        """Keep the catalogue's names and types in `known_path` when they changed."""
        if models is self._remembered:  # a manager's cached list, seen already
            return
        self._remembered = models
        ids = tuple(sorted((m.id, m.type) for m in models.values() if m.backend != "remote"))
        if ids == self._known_ids:
            return
        self._known_ids = ids
        self._known = {k: v for k, v in models.items() if v.backend != "remote"}
        if self.known_path is None:
            return
        listing = ModelList(data=list(self._known.values())).to_wire()
        try:
            private_dir(self.known_path.parent, tighten=False)
            write_private(self.known_path, orjson.dumps(listing))
        except OSError as exc:
            log.warning("cannot keep the known models in %s: %s", self.known_path, exc)

    # -- hosts up and down ---------------------------------------------------------

    def mark_down(self, link: HostLink) -> None:
        """`link` did not answer: skipped until its backoff has passed."""
        link.client.reachable = False
        link.failures += 1
        link.retry_at = time.monotonic() + min(0.5 * 2 ** (link.failures - 1), MAX_BACKOFF)
        if link.failures == 1:
            log.warning("host %s is away", link.name)

    def mark_up(self, link: HostLink) -> None:
        """`link`'s event stream connected: placement may use it again."""
        if link.failures:
            log.info("host %s is back", link.name)
        link.failures, link.retry_at = 0, 0.0
        link.client.reachable = True
        self.notify()

    def notify(self) -> None:
        """A host came up or a state changed: wake every `choose` waiting."""
        self._changed.set()
        self._changed = asyncio.Event()

    # -- placement -------------------------------------------------------------------

    def views(self, model: str) -> list[HostView]:
        """What placement sees of each host for `model` now: the states from its event
        stream (else its last list), the queues and requests in flight from its last list
        (the stream carries states only; `refresh` keeps the list young), plus this proxy's
        requests riding on its grant requests there, and its GPU budget."""
        now = time.monotonic()
        out: list[HostView] = []
        for link in self.links.values():
            models = link.models() or {}
            counts = link.client.last or {}
            status = models.get(model)
            others = tuple(
                Other(
                    name=o.id,
                    state=o.state,
                    gpu_memory_mib=o.gpu_memory_mib,
                    in_flight=(counts.get(o.id) or o).in_flight,
                    pinned=o.pinned,
                )
                for o in models.values()
                if o.id != model
            )
            out.append(
                HostView(
                    name=link.name,
                    state=None if status is None else status.state,
                    up=link.up,
                    retry_due=not link.up and now >= link.retry_at,
                    asleep=link.asleep,
                    queue=0
                    if status is None
                    else (counts.get(model) or status).waiting + link.leases.riding(model),
                    need_mib=None if status is None else status.gpu_memory_mib,
                    budget_mib=link.client.gpu_budget_mib,
                    others=others,
                )
            )
        return out

    def refresh(self) -> None:
        """Fetch the list of each host that is up and whose list is older than the cache's
        ttl, in the background (placement never waits for it: it places on what it has,
        and the next request sees the fresh counts). A host that does not answer is
        marked down. Never raises."""
        for link in self.links.values():
            if not link.up or link.client.fresh() or link.name in self._refreshing:
                continue
            task = asyncio.get_running_loop().create_task(self._refresh_one(link))
            self._refreshing[link.name] = task
            task.add_done_callback(self._refreshed)

    async def close(self) -> None:
        """Stop the background list fetches (`refresh`). Idempotent."""
        tasks = list(self._refreshing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._refreshing.clear()

    def _refreshed(self, task: asyncio.Task[None]) -> None:
        """A fetch ended (or was cancelled, even before it ran): the host may be fetched
        again."""
        for name, running in list(self._refreshing.items()):
            if running is task:
                del self._refreshing[name]

    async def _refresh_one(self, link: HostLink) -> None:
        try:
            if await self._listing(link, None) is not None:
                self.notify()
        except ProxyError as exc:
            log.debug("host %s: its list could not be read: %s", link.name, exc)

    def place(self, model: str) -> Placement:
        return place(self.views(model))

    async def choose(self, model: str, tried: set[str], *, bound: float | None = None) -> HostLink:
        """The host to lease `model` from (not in `tried`): the placement's best, else a
        sleeping host woken for it, else the first host to come back, waiting at most
        `bound` seconds (default `outage_window`; `wake_timeout` once a host was woken).
        Raises ManagerUnavailable (503, Retry-After) when the wait ends with no host, or
        ModelNotFound-like ManagerUnavailable when no host serves the model. Cancellable."""
        if not self.multi:
            return self.first
        start = time.monotonic()
        limit = self.outage_window if bound is None else bound
        woke: str | None = None
        self.refresh()
        while True:
            changed = self._changed  # taken first: a change while this pass runs is seen
            placement = self.place(model)
            for name in placement.order:
                if name not in tried:
                    return self.links[name]
            asleep = [n for n in placement.wake if n not in tried]
            if asleep and woke is None:
                woke = asleep[0]
                limit = max(limit, self.wake_timeout)
            if woke is not None:
                await self.wake(self.links[woke])
            now = time.monotonic()
            if now - start >= limit:
                raise ManagerUnavailable(
                    f"No host that serves '{model}' answered within {limit:g} s"
                    + (f" (host {woke!r} was woken and is not up yet)" if woke else ""),
                    headers={"Retry-After": str(OUTAGE_RETRY_AFTER)},
                )
            due = [link.retry_at for link in self.links.values() if not link.up]
            timeout = start + limit - now
            if due:
                timeout = min(timeout, max(0.05, min(due) - now))
            if woke is not None:
                timeout = min(timeout, WAKE_RESEND)
            try:
                await asyncio.wait_for(changed.wait(), timeout)
            except TimeoutError:
                pass

    async def wake(self, link: HostLink) -> None:
        """Send `link`'s magic packet (at most every `WAKE_RESEND` s) and make the event
        hub try its stream again soon. Never raises (a failed send is logged)."""
        now = time.monotonic()
        if link.spec.mac is None or now - link.woken_at < WAKE_RESEND:
            return
        link.woken_at = now
        link.retry_at = now
        self.wakes += 1
        try:
            await wake(link.spec.mac, link.spec.broadcast, link.spec.wol_port)
        except OSError as exc:
            log.warning("the magic packet for host %s could not be sent: %s", link.name, exc)
            return
        link.poke.set()
        log.info("sent the Wake-on-LAN packet to host %s (%s)", link.name, link.spec.mac)


def _read_known(path: Path | None) -> dict[str, ModelStatus] | None:
    if path is None:
        return None
    try:
        listing = ModelList.model_validate_json(path.read_bytes())
    except (OSError, ValidationError):
        return None
    return {m.id: m for m in listing.data}
