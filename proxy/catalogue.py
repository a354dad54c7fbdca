"""The proxy's own catalogue (``HOMELAB_CATALOGUE``): what the proxy routes to besides the
manager's models, and in what order. Read once at start-up, strictly, like models.json is
on the GPU PC (`manager.spec`): an unknown key, a bad value or an unreadable key file stops
the proxy with a `CatalogueError` naming the file, the key and the reason.

It lives on the proxy's side because the proxy must reach these while the GPU PC is off.
A JSON object::

    {
      "hosts": {"gpu-pc": {}},
      "endpoints": {
        "cloud": {
          "base_url": "https://api.example.com/v1",
          "key_file": "/etc/homelab-ai/cloud.key",
          "models": {"gpt-4o-mini": {"type": "text", "tools": true, "vision": true}}
        }
      },
      "fallbacks": {"smollm2-gguf": {"then": ["gpt-4o-mini"], "max_queue": 4}}
    }

- ``hosts``: the GPU PCs, each with a manager. This release has one, the manager at
  ``HOMELAB_MANAGER_URL``; the entry only names it (``<model>@<host>`` in the
  ``X-Homelab-Served-By`` header; ``local`` when the file names none). The several-hosts
  work adds its fields (manager URL, token file, Wake-on-LAN address) and lifts the limit
  of one.
- ``endpoints``: remote OpenAI-compatible servers. ``base_url`` is what the openai SDK
  would be given (usually ending in ``/v1``); ``key_file`` a file holding the key sent as
  ``Authorization: Bearer`` (never the key itself; relative to the catalogue's folder;
  omitted: no key); ``models`` the model names it serves (its own names: the body is sent
  unchanged) with their type (``text`` or ``embedding``) and what they can do.
  ``health_interval`` (seconds, default 30) paces the background ``GET /models`` poll.
- ``fallbacks``: a model name (a manager model or a remote one) and the models to try
  after it, in order, when its host is unreachable (or, for a remote model, its endpoint
  failed its last poll) or when more than ``max_queue`` requests wait for it (unset:
  the queue never diverts). The models tried must serve the same endpoints as the first.

Remote model names and host names share one name space with the manager's models
(`manager.spec.NAME_PATTERN`); a remote model that has the name of a manager model hides
it. Nothing here is read per request: `proxy.routing.Router` turns it into lookup
tables at start-up.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
"""Model, endpoint and host names (as the manager's `manager.spec.NAME_PATTERN`)."""
LOCAL_HOST = "local"
"""The name of the one host (the manager at HOMELAB_MANAGER_URL) when the file names none."""

Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class CatalogueError(Exception):
    """The catalogue is unreadable or invalid. The message names file, key and reason."""

    def __init__(self, source: str, key: str, reason: str) -> None:
        self.file, self.key, self.reason = source, key, reason
        where = f"{source}: key '{key}'" if key else source
        super().__init__(f"{where}: {reason}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Host(_Strict):
    """A GPU PC with a manager. No fields yet: the one host is HOMELAB_MANAGER_URL's."""


class RemoteModel(_Strict):
    type: Literal["text", "embedding"] = Field(
        description="`text` (chat and completions) or `embedding` (embeddings)."
    )
    tools: bool = Field(default=False, description="It calls tools (text models).")
    vision: bool = Field(default=False, description="It takes images in chat messages.")
    description: str = Field(default="", max_length=500)


class Endpoint(_Strict):
    base_url: str = Field(
        pattern=r"^https?://[^\s/]+(:\d+)?(/[^\s]*)?$",
        description="The OpenAI base URL, as the openai SDK takes it (usually ending in /v1).",
    )
    key_file: Path | None = Field(
        default=None,
        description="File holding the API key (relative: to the catalogue's folder). Unset: no key.",
    )
    models: dict[Name, RemoteModel] = Field(min_length=1)
    health_interval: float = Field(default=30.0, ge=1, le=3600)

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")


class Fallback(_Strict):
    then: list[Name] = Field(min_length=1, description="The models to try next, in order.")
    max_queue: int | None = Field(
        default=None,
        ge=0,
        description="Divert when more requests than this wait for the model (unset: never).",
    )


class _File(_Strict):
    schema_: str | None = Field(default=None, alias="$schema")
    hosts: dict[Name, Host] = Field(default_factory=dict, max_length=1)
    endpoints: dict[Name, Endpoint] = Field(default_factory=dict)
    fallbacks: dict[Name, Fallback] = Field(default_factory=dict)


class RemoteEndpoint(BaseModel):
    """An endpoint as loaded: its key read from its key file."""

    model_config = ConfigDict(frozen=True)

    name: str
    base_url: str
    api_key: str | None = Field(default=None, repr=False)
    models: dict[str, RemoteModel]
    health_interval: float

    def headers(self) -> dict[str, str]:
        """The upstream Authorization this endpoint wants (never the client's)."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


class Catalogue(BaseModel):
    """The loaded catalogue. Empty (`Catalogue()`) without ``HOMELAB_CATALOGUE``."""

    model_config = ConfigDict(frozen=True)

    host: str = LOCAL_HOST
    endpoints: dict[str, RemoteEndpoint] = Field(default_factory=dict)
    fallbacks: dict[str, Fallback] = Field(default_factory=dict)
    source: str = "<none>"

    def remote(self, model: str) -> tuple[RemoteEndpoint, RemoteModel] | None:
        """The endpoint serving `model` and its declaration, or None."""
        for endpoint in self.endpoints.values():
            spec = endpoint.models.get(model)
            if spec is not None:
                return endpoint, spec
        return None


def parse_catalogue(data: object, source: str = "<memory>", base: Path | None = None) -> Catalogue:
    """Validate decoded JSON; read the key files (relative to `base`). Raises CatalogueError."""
    if not isinstance(data, dict):
        raise CatalogueError(source, "", "the top level must be a JSON object")
    try:
        parsed = _File.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"] if p != "[key]")
        reason = err["msg"]
        if err["type"] == "extra_forbidden":
            reason = "unknown key"
        elif err["type"] == "too_long" and loc == "hosts":
            reason = "one host in this release (the manager at HOMELAB_MANAGER_URL)"
        raise CatalogueError(source, loc, reason) from exc
    served: dict[str, str] = {}
    endpoints: dict[str, RemoteEndpoint] = {}
    for name, ep in parsed.endpoints.items():
        for model in ep.models:
            if model in served:
                raise CatalogueError(
                    source,
                    f"endpoints.{name}.models.{model}",
                    f"already served by endpoint {served[model]!r}",
                )
            served[model] = name
        key = None
        if ep.key_file is not None:
            key = _read_key(ep.key_file, base, source, f"endpoints.{name}.key_file")
        endpoints[name] = RemoteEndpoint(
            name=name,
            base_url=ep.base_url,
            api_key=key,
            models=dict(ep.models),
            health_interval=ep.health_interval,
        )
    host = next(iter(parsed.hosts), LOCAL_HOST)
    for name in (*served, *parsed.fallbacks):
        if name in parsed.hosts or name in parsed.endpoints:
            where = f"endpoints.{served[name]}.models.{name}" if name in served else "fallbacks"
            raise CatalogueError(source, where, f"{name!r} is also a host or endpoint name")
    for name, fb in parsed.fallbacks.items():
        chain = [name, *fb.then]
        if len(set(chain)) != len(chain):
            raise CatalogueError(source, f"fallbacks.{name}.then", "names a model twice")
        types = {served_type for m in chain if (served_type := _type_of(m, endpoints))}
        if len(types) > 1:
            raise CatalogueError(
                source,
                f"fallbacks.{name}.then",
                f"mixes model types ({', '.join(sorted(types))}): a fallback must serve the "
                "same endpoints",
            )
    return Catalogue(
        host=host, endpoints=endpoints, fallbacks=dict(parsed.fallbacks), source=source
    )


def _type_of(model: str, endpoints: dict[str, RemoteEndpoint]) -> str | None:
    for ep in endpoints.values():
        if model in ep.models:
            return ep.models[model].type
    return None  # a manager model: its type is known at request time


def _read_key(path: Path, base: Path | None, source: str, key: str) -> str:
    full = path if path.is_absolute() or base is None else base / path
    try:
        text = full.read_text(encoding="utf-8").strip()
        mode = full.stat().st_mode
    except OSError as exc:
        raise CatalogueError(source, key, f"{full} cannot be read: {exc.strerror or exc}") from exc
    if not text or any(c.isspace() for c in text):
        raise CatalogueError(source, key, f"{full} must hold one key on one line")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CatalogueError(source, key, f"{full} is readable by others: chmod 600 it")
    return text


def load_catalogue(path: str | Path | None) -> Catalogue:
    """Read and validate the catalogue file; `Catalogue()` for None. Raises CatalogueError."""
    if path is None:
        return Catalogue()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogueError(str(path), "", f"cannot be read: {exc.strerror or exc}") from exc
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CatalogueError(
            str(path), "", f"is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    return parse_catalogue(data, source=str(path), base=path.parent)
