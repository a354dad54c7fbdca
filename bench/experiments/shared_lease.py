"""Experiment: the real proxy, with one manager lease shared by concurrent requests per model.

    python -m bench.latency --proxy-module bench.experiments.shared_lease --output latency-shared-lease

NOT the shipped proxy and not a proposal of code: a prototype to measure what
the idea is worth before anyone builds it into proxy/. It runs `python -m proxy`
unchanged except that `proxy.app.ManagerClient` is replaced (before the app
starts) by `SharedLeaseClient`:

- ``acquire(model)`` joins the model's current shared lease when there is one that
  has served fewer than ``HOMELAB_BENCH_SHARE_CAP`` requests (default 8, the
  manager's default batch bound); otherwise it asks the manager for a new lease
  (one request per model at a time; the others wait for it and join it).
- a request's ``end()`` drops its reference; the last one out releases the lease
  after ``HOMELAB_BENCH_SHARE_LINGER`` seconds (default 0.05) unless another request
  joined meanwhile; a lease that reached the cap is released as soon as it drains.

So the manager sees at most one lease grant per ``cap`` requests. What this
prototype does not do, and a real version must: learn from the manager when other
models are waiting (then stop sharing and drop a lingering lease at once), so the
manager's fairness bound counts requests, not shared leases. One way: the lease
answer carries how many requests may ride on it (a contract change).
"""

from __future__ import annotations

import asyncio
import os

import proxy.app
from proxy.manager_client import HeldLease, Lease, ManagerClient


class _Shared:
    __slots__ = ("lease", "held", "refs", "uses", "timer")

    def __init__(self, lease: Lease, held: HeldLease) -> None:
        self.lease, self.held = lease, held
        self.refs = 0
        self.uses = 0
        self.timer: asyncio.TimerHandle | None = None


class _Ref:
    """What `hold()` returns: ends one request's share of a lease. Never blocks or raises."""

    __slots__ = ("_client", "_shared", "_ended", "lease")

    def __init__(self, client: SharedLeaseClient, shared: _Shared) -> None:
        self._client, self._shared, self._ended = client, shared, False
        self.lease = shared.lease

    def end(self) -> None:
        if not self._ended:
            self._ended = True
            self._client._drop(self._shared)


class SharedLeaseClient(ManagerClient):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.cap = int(os.environ.get("HOMELAB_BENCH_SHARE_CAP", "8"))
        self.linger = float(os.environ.get("HOMELAB_BENCH_SHARE_LINGER", "0.05"))
        self._current: dict[str, _Shared] = {}
        self._by_id: dict[str, _Shared] = {}
        self._asking: dict[str, asyncio.Future] = {}

    async def acquire(self, model: str) -> Lease:
        while True:
            shared = self._current.get(model)
            if shared is not None and shared.uses < self.cap:
                if shared.timer is not None:
                    shared.timer.cancel()
                    shared.timer = None
                shared.uses += 1
                shared.refs += 1
                return shared.lease
            asking = self._asking.get(model)
            if asking is None:
                break
            await asyncio.shield(asking)
        done = asyncio.get_running_loop().create_future()
        self._asking[model] = done
        try:
            lease = await super().acquire(model)
        finally:
            del self._asking[model]
            done.set_result(None)
        shared = _Shared(lease, super().hold(lease))
        shared.uses = shared.refs = 1
        self._current[model] = shared
        self._by_id[lease.lease_id] = shared
        return lease

    def hold(self, lease: Lease) -> _Ref:  # type: ignore[override]
        return _Ref(self, self._by_id[lease.lease_id])

    def _drop(self, shared: _Shared) -> None:
        shared.refs -= 1
        if shared.refs > 0:
            return
        if shared.uses >= self.cap or self._current.get(shared.lease.model) is not shared:
            self._end(shared)
        else:
            shared.timer = asyncio.get_running_loop().call_later(self.linger, self._expire, shared)

    def _expire(self, shared: _Shared) -> None:
        shared.timer = None
        if shared.refs == 0:
            self._end(shared)

    def _end(self, shared: _Shared) -> None:
        if self._current.get(shared.lease.model) is shared:
            del self._current[shared.lease.model]
        self._by_id.pop(shared.lease.lease_id, None)
        shared.held.end()


def main() -> None:
    proxy.app.ManagerClient = SharedLeaseClient  # the lifespan builds its client from this name
    from proxy.__main__ import main as proxy_main

    proxy_main()


if __name__ == "__main__":
    main()
