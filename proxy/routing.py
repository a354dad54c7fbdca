"""Where a request for a model goes: the host's manager, a remote endpoint, or a fallback.

`Router` is built once from the catalogue (`proxy.catalogue`) into lookup tables, so the
hot path pays one dict lookup (`Router.route`): a model with no catalogue entry goes to
the one host as before. A remote model goes to its endpoint; a model with fallbacks gets
its `Target`s ordered by `order`, a pure function of a `View` (the host reachable, each
model's queue, each endpoint's last health poll), tested without I/O.

Health: `Router.watch` polls each endpoint's ``GET /models`` in the background, one
poll at a time per endpoint, each bounded by `HEALTH_TIMEOUT`, through the one model
call module (`proxy.modelcall.ModelCalls.probe`); a request that could not reach an
endpoint marks it down at once, and one that got an answer marks it up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from proxy.catalogue import Catalogue, RemoteEndpoint
from wire.models import ModelStatus

log = logging.getLogger("proxy.routing")

HEALTH_TIMEOUT = 5.0
"""Seconds one health poll of an endpoint may take."""


@dataclass(frozen=True, slots=True)
class Target:
    """One place a request can be served: `model` on the host (``endpoint`` None) or on a
    remote endpoint. `served_by` is the ``X-Homelab-Served-By`` value."""

    model: str
    where: str
    endpoint: RemoteEndpoint | None = None
    served_by: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "served_by", f"{self.model}@{self.where}")


@dataclass(frozen=True, slots=True)
class Route:
    """A model's targets in the catalogue's order (the model itself first), and the
    queue bound above which the next is preferred."""

    targets: tuple[Target, ...]
    max_queue: int | None = None


@dataclass(frozen=True)
class View:
    """What the fallback choice looks at, taken at the moment of the request."""

    host_up: bool
    """The host's manager answered the last time the proxy asked (or its event stream
    is connected)."""
    queues: Mapping[str, int]
    """Requests waiting for each model the host's manager knows (absent: unknown to it)."""
    endpoints_up: Mapping[str, bool | None]
    """Each endpoint's last health (None: not polled yet, taken as up)."""


def usable(target: Target, view: View, max_queue: int | None) -> tuple[bool, bool]:
    """(reachable, not over the queue bound) for `target` under `view`."""
    if target.endpoint is not None:
        return view.endpoints_up.get(target.endpoint.name) is not False, True
    queue = view.queues.get(target.model)
    if not view.host_up or queue is None:
        return False, False
    return True, max_queue is None or queue <= max_queue


def order(route: Route, view: View) -> list[Target]:
    """`route`'s targets, best first: those reachable and within the queue bound (in the
    catalogue's order), then those reachable but busy, then the rest (whose error the
    client gets if every one fails). Pure."""
    good: list[Target] = []
    busy: list[Target] = []
    down: list[Target] = []
    for target in route.targets:
        reachable, short = usable(target, view, route.max_queue)
        (good if reachable and short else busy if reachable else down).append(target)
    return good + busy + down


class Router:
    """The catalogue as lookup tables, and the endpoints' health."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue
        self.host = catalogue.host
        self.remote: dict[str, Target] = {}
        """Remote models by name."""
        for endpoint in catalogue.endpoints.values():
            for model in endpoint.models:
                self.remote[model] = Target(model, endpoint.name, endpoint)
        self.routes: dict[str, Route] = {}
        """Models with fallbacks by name (a model without is absent: one lookup)."""
        for model, fb in catalogue.fallbacks.items():
            targets = tuple(self.target(m) for m in (model, *fb.then))
            self.routes[model] = Route(targets, fb.max_queue)
        self.health: dict[str, bool | None] = {name: None for name in catalogue.endpoints}
        """Each endpoint's last health (None: not polled yet)."""
        self.errors: dict[str, str | None] = {name: None for name in catalogue.endpoints}
        self.since: dict[str, float] = {name: time.time() for name in catalogue.endpoints}
        self._statuses: dict[str, ModelStatus] = {}

    def target(self, model: str) -> Target:
        """Where `model` is served when it has no fallbacks."""
        remote = self.remote.get(model)
        if remote is not None:
            return remote
        return Target(model, self.host)

    def mark(self, endpoint: str, up: bool, error: str | None = None) -> None:
        """Record an endpoint's health (a poll, or a request that reached it or not)."""
        error = None if up else error
        if self.health.get(endpoint) is up and self.errors.get(endpoint) == error:
            return  # the common case: nothing changed
        self._statuses.clear()
        if self.health.get(endpoint) is not up:
            self.since[endpoint] = time.time()
            if up:
                log.info("endpoint %s is reachable", endpoint)
            else:
                log.warning("endpoint %s is unreachable: %s", endpoint, error)
        self.health[endpoint] = up
        self.errors[endpoint] = error

    def status(self, model: str) -> ModelStatus | None:
        """A remote model as a `ModelStatus` (backend ``remote``), or None. Made once per
        change of its endpoint's health."""
        cached = self._statuses.get(model)
        if cached is not None:
            return cached
        target = self.remote.get(model)
        if target is None or target.endpoint is None:
            return None
        spec = target.endpoint.models[model]
        name = target.endpoint.name
        up = self.health[name]
        status = self._statuses[model] = ModelStatus(
            id=model,
            type=spec.type,
            state="failed" if up is False else "ready",
            last_error=self.errors[name],
            since=self.since[name],
            description=spec.description,
            vision=spec.vision if spec.type == "text" else None,
            tools=spec.tools if spec.type == "text" else None,
            backend="remote",
            endpoint=name,
            reachable=up,
        )
        return status

    def statuses(self) -> dict[str, ModelStatus]:
        """Every remote model's status, by name."""
        out: dict[str, ModelStatus] = {}
        for model in self.remote:
            status = self.status(model)
            if status is not None:
                out[model] = status
        return out

    async def watch(self, probe: Callable[[RemoteEndpoint], Awaitable[str | None]]) -> None:
        """Poll every endpoint until cancelled (`probe` returns None when healthy, else why
        not). Never raises otherwise."""
        async with asyncio.TaskGroup() as group:
            for endpoint in self.catalogue.endpoints.values():
                group.create_task(self._watch_one(endpoint, probe))

    async def _watch_one(
        self, endpoint: RemoteEndpoint, probe: Callable[[RemoteEndpoint], Awaitable[str | None]]
    ) -> None:
        while True:
            try:
                async with asyncio.timeout(HEALTH_TIMEOUT):
                    problem = await probe(endpoint)
            except TimeoutError:
                problem = f"no answer from GET /models within {HEALTH_TIMEOUT:g} s"
            except Exception as exc:  # a poll must never end the watch
                problem = f"{exc.__class__.__name__}: {exc}"
            self.mark(endpoint.name, problem is None, problem)
            await asyncio.sleep(endpoint.health_interval)


def view(
    host_up: bool,
    models: Mapping[str, ModelStatus],
    waiting: Mapping[str, int],
    endpoints_up: Mapping[str, bool | None],
    names: Sequence[Target],
) -> View:
    """The `View` for `names`: each host model's queue is the manager's waiting lease
    requests plus this proxy's requests waiting for that model's lease."""
    queues: dict[str, int] = {}
    for target in names:
        status = models.get(target.model)
        if target.endpoint is None and status is not None and status.backend != "remote":
            queues[target.model] = status.waiting + waiting.get(target.model, 0)
    return View(host_up=host_up, queues=queues, endpoints_up=endpoints_up)


async def cancel(task: asyncio.Task[None] | None) -> None:
    """Cancel a background task and wait for it."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
