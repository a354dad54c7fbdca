"""What every route needs, built once per process in the app's lifespan."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp

from proxy.feed import EventFeed
from proxy.images import ImageStore
from proxy.manager_client import ManagerClient
from proxy.metrics import Metrics
from proxy.settings import ProxySettings
from proxy.upstream import UpstreamPool

if TYPE_CHECKING:  # event_hub imports forward, which imports this module
    from proxy.event_hub import EventHub


@dataclass(slots=True)
class ProxyContext:
    settings: ProxySettings
    manager: ManagerClient
    http: aiohttp.ClientSession
    """The one aiohttp client session of this process (the manager, MCP tool calls)."""
    metrics: Metrics
    events: EventHub
    """The one manager event stream, fanned out to /api/events subscribers."""
    images: ImageStore
    upstream_timeout: aiohttp.ClientTimeout
    upstream: UpstreamPool
    """Keep-alive connections for forwarded requests (proxy.forward), the hot path."""
    feed: EventFeed = field(default_factory=EventFeed)
    """The manager's state and swap events, for callers waiting on a model."""
    interactive_waiting: Counter[str] = field(default_factory=Counter)
    """Interactive (/v1) requests waiting for a lease now, per model: jobs yield to them."""
    jobs: Any = None
    """The job dispatcher (`proxy.jobs.dispatcher.Dispatcher`), set in the lifespan."""
