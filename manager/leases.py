"""The scheduler's lease table: every live lease, by id and by model.

A lease is the manager's promise that its model stays resident until released or
expired (docs/architecture.md, "Leases"). The table hands out `wire.lease.LeaseGrant`
answers (the type the proxy reads), keeps each lease's expiry on the scheduler's
monotonic clock and answers the questions the scheduler's policy asks: how many
leases a model holds, how many more proxy requests its leases may still admit.
Synchronous; used on the scheduler's event loop only.

With a `LeaseStore` the table is kept on disk (`manager.lease_store`): every grant,
renewal or drop writes the table at the end of that event-loop turn (one small write
per burst, before the turn's answers reach a proxy), and `restore()` takes back the
leases a previous manager left, so a restarted manager knows what is in flight.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from manager.errors import LeaseNotFound
from manager.lease_store import LeaseStore, StoredLease
from wire.lease import LeaseGrant
from wire.models import ModelType


@dataclass
class Lease:
    """A live lease: the `grant` the manager sent (`wire.lease.LeaseGrant`) and when it
    expires."""

    grant: LeaseGrant
    expires_at: float
    """On the scheduler's monotonic clock."""
    key_name: str = ""
    """The name of the API key it was granted for (`wire.lease.LeaseRequest.key_name`)."""
    key_class: str = "normal"
    granted_at: float = 0.0
    """On the scheduler's monotonic clock: its hold time is charged to `key_name`
    (`manager.fairshare`) when it ends."""

    @property
    def lease_id(self) -> str:
        return self.grant.lease_id

    @property
    def model(self) -> str:
        return self.grant.model

    @property
    def type(self) -> ModelType:
        return self.grant.type

    @property
    def base_url(self) -> str:
        return self.grant.base_url

    @property
    def ttl(self) -> float:
        return self.grant.ttl

    @property
    def max_uses(self) -> int:
        """How many proxy requests may share this lease: `batch_bound` when no other model
        had waiters at grant time, 1 under contention (docs/architecture.md, "Leases")."""
        return self.grant.max_uses

    @property
    def max_concurrent(self) -> int:
        """How many proxy requests may share it at once."""
        return self.grant.max_concurrent

    @property
    def unbounded(self) -> bool:
        """Shared without a limit on uses until contention (`max_uses` 0)."""
        return self.grant.max_uses == 0

    @property
    def api_key(self) -> str | None:
        """The model server's upstream key, which the proxy sends as `Authorization: Bearer`
        (None: the server takes requests without one)."""
        return self.grant.api_key


class LeaseTable:
    """Live leases. `ttl` is every lease's lifetime unless renewed; `clock` is monotonic."""

    def __init__(
        self,
        ttl: float,
        clock: Callable[[], float],
        *,
        store: LeaseStore | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.ttl = ttl
        self._clock = clock
        self._wall = wall_clock
        self._store = store
        self._save_pending = False
        self._leases: dict[str, Lease] = {}
        self._by_model: dict[str, set[str]] = {}

    def get(self, lease_id: str) -> Lease:
        """The live lease `lease_id`. Raises LeaseNotFound."""
        lease = self._leases.get(lease_id)
        if lease is None:
            raise LeaseNotFound(f"lease {lease_id!r} is unknown, released or expired")
        return lease

    def __contains__(self, lease_id: object) -> bool:
        return lease_id in self._leases

    def grant(
        self,
        model: str,
        type: ModelType,
        base_url: str,
        max_uses: int = 1,
        *,
        max_concurrent: int = 1,
        api_key: str | None = None,
        key_name: str = "",
        key_class: str = "normal",
    ) -> Lease:
        """A new lease on `model` for the API key named `key_name`, live until dropped or
        expired, carrying the model server's upstream key `api_key`. `max_uses` 0:
        unbounded (`wire.lease.LeaseGrant`)."""
        grant = LeaseGrant(
            lease_id=secrets.token_urlsafe(18),
            model=model,
            type=type,
            base_url=base_url,
            ttl=self.ttl,
            max_uses=max_uses,
            max_concurrent=max_concurrent,
            api_key=api_key,
        )
        now = self._clock()
        lease = Lease(grant, now + self.ttl, key_name, key_class, granted_at=now)
        self._add(lease)
        return lease

    def _add(self, lease: Lease) -> None:
        self._leases[lease.lease_id] = lease
        self._by_model.setdefault(lease.model, set()).add(lease.lease_id)
        self._changed()

    def renew(self, lease_id: str) -> Lease:
        """Push a lease's expiry `ttl` seconds from now. Raises LeaseNotFound."""
        lease = self.get(lease_id)
        lease.expires_at = self._clock() + lease.ttl
        self._changed()
        return lease

    def drop(self, lease: Lease) -> bool:
        """Forget `lease`; whether it was live."""
        if self._leases.pop(lease.lease_id, None) is None:
            return False
        self._by_model.get(lease.model, set()).discard(lease.lease_id)
        self._changed()
        return True

    def expired(self) -> list[Lease]:
        """The leases past their expiry now (still in the table: drop them)."""
        now = self._clock()
        return [lease for lease in self._leases.values() if lease.expires_at <= now]

    def held(self, model: str) -> int:
        """How many live leases `model` has."""
        return len(self._by_model.get(model, ()))

    def in_flight(self) -> dict[str, int]:
        """Live leases per model, for the models that hold any."""
        return {model: len(ids) for model, ids in self._by_model.items() if ids}

    def uses(self, model: str) -> int:
        """Proxy requests `model`'s live leases may carry at once, at most: what its
        concurrency limit (`max_in_flight`) is counted against. A bounded lease counts its
        `max_uses` (all may be in flight together), an unbounded one its `max_concurrent`."""
        return sum(
            lease.max_concurrent if lease.unbounded else lease.max_uses for lease in self.of(model)
        )

    def spare_uses(self, model: str, unbounded: int) -> int:
        """Proxy requests `model`'s live leases may still admit, at most (the manager does
        not see the proxy's joins): `max_uses - 1` each, `unbounded` for an unbounded one."""
        return sum(unbounded if lease.unbounded else lease.max_uses - 1 for lease in self.of(model))

    def holders(self, model: str) -> set[str]:
        """The key names `model`'s live leases are held for."""
        return {self._leases[i].key_name for i in self._by_model.get(model, ())}

    def all(self) -> list[Lease]:
        """Every live lease."""
        return list(self._leases.values())

    def of(self, model: str) -> list[Lease]:
        """`model`'s live leases."""
        return [self._leases[i] for i in self._by_model.get(model, ())]

    # -- on disk -------------------------------------------------------------------

    def _changed(self) -> None:
        if self._store is None or self._save_pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): write now
            self._write()
            return
        self._save_pending = True
        loop.call_soon(self._write)

    def _write(self) -> None:
        self._save_pending = False
        if self._store is None:
            return
        now, wall = self._clock(), self._wall()
        self._store.save(
            [
                StoredLease(
                    lease_id=lease.lease_id,
                    model=lease.model,
                    type=lease.type,
                    base_url=lease.base_url,
                    ttl=lease.ttl,
                    max_uses=lease.max_uses,
                    max_concurrent=lease.max_concurrent,
                    expires=wall + (lease.expires_at - now),
                    key_name=lease.key_name,
                    key_class=lease.key_class,
                )
                for lease in self._leases.values()
            ]
        )

    def restore(self, known: Callable[[str], ModelType | None]) -> list[Lease]:
        """Take back the unexpired leases the store holds for models `known` gives a type
        for (the catalogue's); returns them."""
        if self._store is None:
            return []
        now, wall = self._clock(), self._wall()
        restored = []
        for stored in self._store.load():
            model_type = known(stored.model)
            left = stored.expires - wall
            if model_type is None or left <= 0 or stored.lease_id in self._leases:
                continue
            grant = LeaseGrant(
                lease_id=stored.lease_id,
                model=stored.model,
                type=model_type,
                base_url=stored.base_url,
                ttl=stored.ttl,
                max_uses=max(0, int(stored.max_uses)),
                max_concurrent=max(1, int(stored.max_concurrent)),
            )
            lease = Lease(grant, now + left, stored.key_name, stored.key_class, granted_at=now)
            self._add(lease)
            restored.append(lease)
        return restored
