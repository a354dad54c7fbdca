"""What every route needs, built once per process in the app's lifespan."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from proxy.audio import AudioStore
from proxy.feed import EventFeed
from proxy.hosts import Fleet
from proxy.images import ImageStore
from proxy.keys import KeyRing
from proxy.lease_pool import LeasePool
from proxy.metrics import Metrics
from proxy.modelcall import ModelCalls
from proxy.settings import ProxySettings

if TYPE_CHECKING:  # event_hub imports forward, which imports this module
    from proxy.event_hub import EventHub


@dataclass(slots=True)
class ProxyContext:
    settings: ProxySettings
    manager: Fleet
    """The hosts' managers as one (the model list of every host, health; placement and each
    host's client and lease pool: `proxy.hosts`)."""
    leases: LeasePool
    """The first host's lease pool (each host has its own: `manager.links`)."""
    model_calls: ModelCalls
    """The one way to a model server (HTTP forwarding, MCP, jobs)."""
    metrics: Metrics
    events: EventHub
    """The one manager event stream, fanned out to /api/events subscribers."""
    images: ImageStore
    feed: EventFeed = field(default_factory=EventFeed)
    """The manager's state and swap events, for callers waiting on a model."""
    interactive_waiting: Counter[str] = field(default_factory=Counter)
    """Interactive (/v1, MCP) calls waiting for a lease now, per model: jobs yield to them
    (the same counter as `model_calls.waiting`)."""
    ring: KeyRing = field(default_factory=KeyRing)
    """The keys (the same ring the key middleware checks, re-read from the key file as it
    changes): whose principal a job runs as."""
    audio: AudioStore | None = None
    """Generated audio (MCP ``txt2speech``), owned per key (`proxy.audio`); set in the lifespan."""
    jobs: Any = None
    """The job dispatcher (`proxy.jobs.dispatcher.Dispatcher`), set in the lifespan."""
