"""Who a request is: the key ring and the `Principal` each key stands for.

Every request that passes `proxy.auth.ApiKeyMiddleware` carries one `Principal`: in
``scope["state"]["principal"]`` and, for the code it calls, in the `PRINCIPAL` context
variable (`current()`). Everything a key makes (jobs, files, batches, images, MCP
sessions) is owned by its principal's ``name``; the manager learns that name (never the
key) and its ``priority`` class for its fair share.

The ring holds only SHA-256 digests of the keys: a presented key is hashed and looked
up (the digest of an attacker's guess says nothing about how close it came, so a dict
lookup leaks no timing worth having). With the proxy open (``HOMELAB_API_KEYS=off``)
every request is `OPEN`: an admin named ``anonymous``.

``HOMELAB_API_KEYS=k1,k2`` is the simple form: each key is its own principal, named
``key-<first 8 hex digits of its digest>``, with every model, class ``normal``, no
limits, not an admin (two such keys do not see each other's work). Named keys, with
their own models, class, limits and budgets, come from the key file (`proxy.keyfile`,
docs/keys.md); both may be given (the union; a key in both is the file's).
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from typing import Literal, TypeVar

import msgspec

PriorityClass = Literal["high", "normal", "low"]
CLASSES: tuple[PriorityClass, ...] = ("high", "normal", "low")
"""Priority classes, best first."""


ALL_MODELS: tuple[str, ...] = ("*",)


class Principal(msgspec.Struct, frozen=True):
    """One key's identity and what it may do (never the key itself)."""

    name: str
    admin: bool = False
    models: tuple[str, ...] = ALL_MODELS
    """Patterns (`fnmatch`, case-sensitive) of the model names this key may use."""
    priority: PriorityClass = "normal"
    rate: int | None = None
    """Requests a minute (a token bucket of that size, refilled evenly); None: no limit."""
    concurrency: int | None = None
    """Model calls in flight at once; None: no limit."""
    gpu_day: float | None = None
    """GPU-seconds a UTC day (time holding a model lease); None: no budget."""
    gpu_month: float | None = None
    """GPU-seconds a UTC calendar month; None: no budget."""

    def may_use(self, model: str) -> bool:
        if self.models == ALL_MODELS:
            return True
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)

    def visible(self, names: Iterable[str]) -> list[str]:
        """The names of `names` this principal may use, sorted."""
        return sorted(n for n in names if self.may_use(n))

    @property
    def limited(self) -> bool:
        """Has a rate or concurrency limit or a GPU budget (`proxy.limits`)."""
        return (
            self.rate is not None
            or self.concurrency is not None
            or self.gpu_day is not None
            or self.gpu_month is not None
        )

    def owns(self, owner: str | None) -> bool:
        """May this principal see a thing owned by `owner`? Its own, or any for an admin."""
        return self.admin or owner == self.name


OPEN = Principal(name="anonymous", admin=True)
"""Every request of an open proxy (no keys)."""

NOBODY = Principal(name="", models=())
"""The principal of a request on an open path (the page, images) that carries no valid
key, and of anything that cannot tell who it works for: no models, owns nothing."""

PRINCIPAL: ContextVar[Principal] = ContextVar("principal", default=OPEN)
"""The principal of the request (or job) being served. Set by the key middleware for
each request; code that works for a principal outside a request (the job runner) sets
it around that work."""


def current() -> Principal:
    return PRINCIPAL.get()


T = TypeVar("T")


def visible(models: Mapping[str, T], who: Principal | None = None) -> dict[str, T]:
    """The entries of `models` (by model name) that `who` (default: `current()`) may use."""
    who = who or current()
    if who.models == ALL_MODELS:
        return dict(models)
    return {name: m for name, m in models.items() if who.may_use(name)}


def digest(key: str | bytes) -> bytes:
    raw = key.encode() if isinstance(key, str) else key
    return hashlib.sha256(raw).digest()


def simple_name(key: str) -> str:
    """The name of a key given in the simple form (`HOMELAB_API_KEYS`)."""
    return "key-" + digest(key).hex()[:8]


def simple_entries(keys: Iterable[str]) -> dict[bytes, Principal]:
    """The ring entries of keys given in the simple form."""
    return {digest(k): Principal(name=simple_name(k)) for k in keys}


class KeyRing:
    """Key digests to principals. Open (every request is `OPEN`) only when built so:
    by default when built empty; a ring from a key file is never open, even with no
    keys left in it (then every request is refused)."""

    def __init__(
        self, entries: Mapping[bytes, Principal] | None = None, *, open: bool | None = None
    ) -> None:
        self._by_digest: dict[bytes, Principal] = dict(entries or {})
        self._open = not self._by_digest if open is None else open

    @classmethod
    def simple(cls, keys: Iterable[str]) -> KeyRing:
        return cls(simple_entries(keys))

    def replace(self, entries: Mapping[bytes, Principal]) -> None:
        """Swap in a new set of keys (a re-read key file): requests after it see it. A
        ring that was open stays open only if `entries` is empty."""
        self._by_digest = dict(entries)
        self._open = self._open and not self._by_digest

    @property
    def open(self) -> bool:
        return self._open

    def lookup(self, token: bytes) -> Principal | None:
        """The principal of a presented key, None for an unknown one."""
        return self._by_digest.get(digest(token))

    def principals(self) -> list[Principal]:
        return list(self._by_digest.values())

    def by_name(self, name: str) -> Principal | None:
        for principal in self._by_digest.values():
            if principal.name == name:
                return principal
        return None
