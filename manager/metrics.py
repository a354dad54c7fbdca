"""The manager's Prometheus metrics (``GET /metrics``, with the manager token): the fair
share's view of who waits and who holds the GPU, by API key *name* and class only.

Collected at scrape time from the scheduler (nothing is counted on the lease path):

* ``homelab_manager_waiting{model, key_class, key}``: lease requests waiting now.
* ``homelab_manager_leases{model, key_class, key}``: live leases now.
* ``homelab_manager_key_gpu_seconds{key}``: each key's recent GPU-seconds, decayed with
  ``HOMELAB_FAIR_SHARE_HALF_LIFE`` (`manager.fairshare`): what the fair order compares.
* ``homelab_manager_swaps_total``, ``homelab_manager_evictions_total``,
  ``homelab_manager_sleeps_total``, ``homelab_manager_wakes_total`` (the warm tier).

An unnamed key (an older proxy, or a request without one) is ``key=""``.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from manager.scheduler import Scheduler

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class SchedulerCollector(Collector):
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    def collect(self) -> Iterator[Metric]:
        s = self.scheduler
        labels = ["model", "key_class", "key"]
        waiting = GaugeMetricFamily(
            "homelab_manager_waiting", "Lease requests waiting, per model and key.", labels=labels
        )
        for (model, klass, key), n in sorted(s.waiting_by_key().items()):
            waiting.add_metric([model, klass, key], n)
        yield waiting
        leases = GaugeMetricFamily(
            "homelab_manager_leases", "Live leases, per model and key.", labels=labels
        )
        for (model, klass, key), n in sorted(s.leases_by_key().items()):
            leases.add_metric([model, klass, key], n)
        yield leases
        used = GaugeMetricFamily(
            "homelab_manager_key_gpu_seconds",
            "Recent GPU-seconds per key (lease hold time, decayed): the fair share's measure.",
            labels=["key"],
        )
        for key, seconds in sorted(s.usage.snapshot().items()):
            used.add_metric([key], seconds)
        yield used
        yield CounterMetricFamily(
            "homelab_manager_swaps",
            "Model starts and wakes the scheduler began.",
            value=s.swaps,
        )
        yield CounterMetricFamily(
            "homelab_manager_evictions",
            "Ready models stopped or put to sleep to make room.",
            value=s.evictions,
        )
        yield CounterMetricFamily(
            "homelab_manager_sleeps", "Models put to sleep in host memory.", value=s.sleeps
        )
        yield CounterMetricFamily("homelab_manager_wakes", "Sleeping models woken.", value=s.wakes)


def render(scheduler: Scheduler) -> bytes:
    """The metrics text for one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SchedulerCollector(scheduler))
    return generate_latest(registry)
