"""What every route needs, built once per process in the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass, field

import aiohttp

from proxy.feed import EventFeed
from proxy.images import ImageStore
from proxy.manager_client import ManagerClient
from proxy.metrics import Metrics
from proxy.settings import ProxySettings


@dataclass(slots=True)
class ProxyContext:
    settings: ProxySettings
    manager: ManagerClient
    http: aiohttp.ClientSession
    """The one client session to model servers (and the manager) of this process."""
    metrics: Metrics
    images: ImageStore
    upstream_timeout: aiohttp.ClientTimeout
    feed: EventFeed = field(default_factory=EventFeed)
    """The manager's state and swap events, for callers waiting on a model."""
