"""What the proxy does with each manager event: swap metrics and a fresh model list.

`handle_event` is called by the event hub (`proxy.event_hub`, which holds the proxy's
one connection to each host's manager's stream) for every frame of each host, parsed once by the hub into the
types the manager sends (`wire.events.Parsed`). It counts ``swap`` events into
``homelab_proxy_swaps_total``, drops the cached model list on every ``state``, ``swap``
or ``snapshot`` event (that host's), so /v1/models shows "loading" vs "ready" at once, and hands
``state`` and ``swap`` events to `ctx.feed` (proxy/feed.py: progress of waiting MCP
calls, load-time history). A ``contention`` event (another model waits for the memory
of the models it names, or other keys' requests wait for their room) retires that host's lease
pool's leases on those models: nobody joins
them any more and each is released once its requests end (proxy/lease_pool.py).
"""

from __future__ import annotations

from proxy.context import ProxyContext
from proxy.hosts import HostLink
from wire.events import ContentionEvent, Parsed, StateEvent, SwapEvent


def handle_event(ctx: ProxyContext, parsed: Parsed, link: HostLink) -> None:
    """`parsed` came from `link`'s manager: contention retires that host's leases only."""
    if isinstance(parsed, ContentionEvent):
        for model in parsed.models:
            link.leases.retire_model(model)
        return
    if isinstance(parsed, SwapEvent):
        ctx.metrics.swaps.labels(parsed.from_model or "none", parsed.to or "none").inc()
    if isinstance(parsed, StateEvent | SwapEvent):
        ctx.feed.publish(parsed)
    link.client.invalidate_models()
    if ctx.jobs is not None:
        ctx.jobs.wake()  # a model became resident (or left): jobs may run now
