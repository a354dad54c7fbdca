"""The lease contract: ``POST /v1/leases``, its renewal and release.

A lease is the manager's promise that its model stays resident until released or
expired; up to ``max_uses`` proxy requests may share it (docs/architecture.md,
"Leases"). The manager answers with a `LeaseGrant` and the proxy reads the same type.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from wire.models import ModelType

LEASE_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,128}$"
"""A lease id goes into URL paths (renew, release): URL-safe characters only."""
UPSTREAM_KEY_PATTERN = r"^[\x21-\x7e]{1,512}$"
"""An upstream key goes into a header: printable ASCII without spaces only."""

PriorityClass = Literal["high", "normal", "low"]
"""An API key's priority class for the manager's fair share (the proxy's
`proxy.keys.Principal.priority`)."""
CLASS_RANK: dict[str, int] = {"high": 0, "normal": 1, "low": 2}
"""Each class's place in the fair order, best first."""


class LeaseRequest(BaseModel):
    """``POST /v1/leases`` body. `model`, and who the lease is for; other fields are
    ignored.

    The proxy shares a lease only among requests of one key (`proxy.lease_pool`), so a
    grant request speaks for one key: `key_name` is that key's *name* (never the key),
    `key_class` its priority class. The manager orders its waiters by class, then by the
    GPU time each name used recently (docs/architecture.md, "Fair share"); an older proxy
    that sends neither is one unnamed key of class normal."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=256)
    key_name: str = Field(default="", max_length=128)
    """The API key's name (`proxy.keys.Principal.name`); empty: unnamed."""
    key_class: PriorityClass = "normal"


class LeaseGrant(BaseModel):
    """The answer to ``POST /v1/leases``: the model is ready at `base_url`."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    lease_id: str = Field(pattern=LEASE_ID_PATTERN)
    model: str
    type: ModelType
    base_url: str = Field(min_length=1)
    """Where the proxy reaches the model server (no trailing slash)."""
    ttl: float = Field(ge=0)
    """Seconds until the lease expires unless renewed (0: it does not expire)."""
    max_uses: int = Field(default=1, ge=0, strict=True)
    """How many proxy requests may share the lease in all. 0: no limit, because no other
    model waited for this one's memory at grant time; the proxy keeps sharing it until the
    manager says contention began (a ``contention`` event, or ``contended`` in a renewal).
    Under contention: 1 (docs/architecture.md, "Leases"). Absent (an older manager): 1."""
    max_concurrent: int = Field(default=1, ge=1, strict=True)
    """How many proxy requests may share the lease at once (the model's room at grant
    time, at most the batch bound). Absent: 1."""
    api_key: str | None = Field(default=None, pattern=UPSTREAM_KEY_PATTERN, repr=False)
    """The model server's upstream key, made anew for each start: the proxy sends it as
    ``Authorization: Bearer`` (never the client's own). None: the server needs none."""

    @field_validator("base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    def upstream_headers(self) -> dict[str, str]:
        """The model server's credential, for the proxy's requests to it (never the
        client's own Authorization)."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


class LeaseRenewal(BaseModel):
    """The answer to ``POST /v1/leases/{id}/renew``: the lease's new ttl."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    lease_id: str
    ttl: float = Field(ge=0)
    contended: bool = False
    """Another model waits for this one's memory: stop sharing the lease (no new requests
    join it) and release it once the requests on it end."""
