"""Prometheus metrics of one proxy process, in a registry of its own.

``homelab_proxy_requests_total{endpoint,model,status}``, ``..._request_seconds{endpoint}``
(until the last byte), ``..._queue_wait_seconds{model}`` (lease acquire: queueing
plus any swap), ``..._in_flight``, ``..._swaps_total{from_model,to_model}``
counted from the manager's ``swap`` events, and from the lease pool
(`watch_leases`) ``..._lease_grants_total{model}`` and ``..._lease_releases_total{model}``
(how often the proxy went to the manager) and ``..._leases_held``. A model label is only ever a model
the manager knows (else ``"unknown"``), so clients cannot grow the label set.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from proxy.jobs.watch import TaskWatchers
    from proxy.lease_pool import LeasePool

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "homelab_proxy_requests",
            "Requests answered, by endpoint, model and HTTP status.",
            ["endpoint", "model", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "homelab_proxy_request_seconds",
            "Seconds from request to the last byte of the answer.",
            ["endpoint"],
            buckets=_LATENCY,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "homelab_proxy_queue_wait_seconds",
            "Seconds waiting for the manager's lease (queue and swap).",
            ["model"],
            buckets=_LATENCY,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "homelab_proxy_in_flight", "Requests being forwarded now.", registry=self.registry
        )
        self.calls_in_flight = 0
        """What `in_flight` reports when read: a plain count (ModelCall adds and takes one),
        not two locked updates of the gauge on every call."""
        self.in_flight.set_function(lambda: self.calls_in_flight)
        self.swaps = Counter(
            "homelab_proxy_swaps",
            "Model swaps reported by the manager's event stream.",
            ["from_model", "to_model"],
            registry=self.registry,
        )

        self._answered: dict[tuple[str, str, int], Counter] = {}
        self._took: dict[str, Histogram] = {}
        self._waited: dict[str, Histogram] = {}

    # The labelled children of the per-call metrics, kept per label values: `labels()`
    # checks and converts its arguments and takes a lock on every call.

    def answered(self, endpoint: str, model: str, status: int, seconds: float) -> None:
        """A call answered `status` after `seconds`: `requests` and `latency`."""
        key = (endpoint, model, status)
        counter = self._answered.get(key)
        if counter is None:
            counter = self._answered[key] = self.requests.labels(endpoint, model, str(status))
        counter.inc()
        took = self._took.get(endpoint)
        if took is None:
            took = self._took[endpoint] = self.latency.labels(endpoint)
        took.observe(seconds)

    def waited(self, model: str, seconds: float) -> None:
        """A call waited `seconds` for its first lease on `model`: `queue_wait`."""
        waited = self._waited.get(model)
        if waited is None:
            waited = self._waited[model] = self.queue_wait.labels(model)
        waited.observe(seconds)

    def watch_leases(self, *pools: LeasePool) -> None:
        """Report the `pools`' grants, releases and leases held, summed over the pools (one per
        host), read at each scrape."""
        self.registry.register(_LeaseCollector(pools))

    def watch_streams(self, watchers: TaskWatchers) -> None:
        """Report the job streams open and the task watchers feeding them (at each scrape)."""
        self.registry.register(_StreamCollector(watchers))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LeaseCollector(Collector):
    def __init__(self, pools: tuple[LeasePool, ...]) -> None:
        self._pools = pools

    def collect(self) -> Iterator[Metric]:
        granted: collections.Counter[str] = collections.Counter()
        released: collections.Counter[str] = collections.Counter()
        for pool in self._pools:
            granted.update(pool.granted)
            released.update(pool.released)
        grants = CounterMetricFamily(
            "homelab_proxy_lease_grants", "Leases the manager granted, by model.", labels=["model"]
        )
        for model, count in sorted(granted.items()):
            grants.add_metric([model], count)
        releases = CounterMetricFamily(
            "homelab_proxy_lease_releases", "Leases released to the manager.", labels=["model"]
        )
        for model, count in sorted(released.items()):
            releases.add_metric([model], count)
        held = GaugeMetricFamily("homelab_proxy_leases_held", "Manager leases held now.")
        held.add_metric([], sum(pool.stats()["leases"] for pool in self._pools))
        yield from (grants, releases, held)


class _StreamCollector(Collector):
    def __init__(self, watchers: TaskWatchers) -> None:
        self._watchers = watchers

    def collect(self) -> Iterator[Metric]:
        streams = GaugeMetricFamily("homelab_proxy_job_streams", "/stream connections open now.")
        streams.add_metric([], self._watchers.streams)
        watching = GaugeMetricFamily(
            "homelab_proxy_job_watchers",
            "Task watchers running now: one per task with a stream open, whatever its streams.",
        )
        watching.add_metric([], self._watchers.watching)
        yield from (streams, watching)
