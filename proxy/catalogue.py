"""The proxy's own catalogue (``HOMELAB_CATALOGUE``): what the proxy routes to besides the
manager's models, and in what order. Read once at start-up, strictly, like models.json is
on the GPU PC (`manager.spec`): an unknown key, a bad value or an unreadable key file stops
the proxy with a `CatalogueError` naming the file, the key and the reason.

It lives on the proxy's side because the proxy must reach these while the GPU PC is off.
A JSON object::

    {
      "hosts": {
        "gpu-pc": {"url": "http://192.168.1.20:8090", "token_file": "gpu-pc.token"},
        "laptop": {"url": "http://192.168.1.30:8090", "token_file": "laptop.token",
                   "mac": "aa:bb:cc:dd:ee:ff", "sleepable": true}
      },
      "endpoints": {
        "cloud": {
          "base_url": "https://api.example.com/v1",
          "key_file": "/etc/homelab-ai/cloud.key",
          "models": {"gpt-4o-mini": {"type": "text", "tools": true, "vision": true}}
        }
      },
      "fallbacks": {"smollm2-gguf": {"then": ["gpt-4o-mini"], "max_queue": 4}}
    }

- ``hosts``: the GPU PCs, each with a manager (docs/hosts.md). ``url`` is the manager's
  base URL and ``token_file`` a file holding its token (mode 600, like an endpoint's
  ``key_file``; relative to the catalogue's folder); a host without ``url`` is the manager
  at ``HOMELAB_MANAGER_URL`` with ``HOMELAB_MANAGER_TOKEN`` (at most one such entry: the
  one-host form, which only names it). ``mac`` (and ``broadcast``, ``wol_port``) say
  where its Wake-on-LAN magic packet goes; ``sleepable`` marks a host that may be asleep
  (woken when a request needs it, `proxy.wol`). The host's name is the ``@<host>`` of
  ``X-Homelab-Served-By`` (``local`` when the file names none). No file, or no
  ``hosts``: the one host at ``HOMELAB_MANAGER_URL``.
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

from wire.tokens import token_problem

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
"""Model, endpoint and host names (as the manager's `manager.spec.NAME_PATTERN`)."""
LOCAL_HOST = "local"
"""The name of the one host (the manager at HOMELAB_MANAGER_URL) when the file names none."""
MAC_PATTERN = r"^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$"

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
    """A GPU PC with a manager."""

    url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s/]+(:\d+)?/?$",
        description="The manager's base URL. Unset: HOMELAB_MANAGER_URL (one such host).",
    )
    token_file: Path | None = Field(
        default=None,
        description="File holding the manager's token (mode 600; relative: to the "
        "catalogue's folder). Required with `url`.",
    )
    mac: str | None = Field(
        default=None, pattern=MAC_PATTERN, description="MAC address for Wake-on-LAN."
    )
    broadcast: str = Field(
        default="255.255.255.255",
        pattern=r"^[0-9]{1,3}(\.[0-9]{1,3}){3}$",
        description="IPv4 address the magic packet is sent to (the LAN's broadcast).",
    )
    wol_port: int = Field(default=9, ge=1, le=65535, description="UDP port of the magic packet.")
    sleepable: bool = Field(
        default=False,
        description="The host may be asleep: woken (Wake-on-LAN, needs `mac`) when a request "
        "needs it and no awake host can serve.",
    )


class HostSpec(BaseModel):
    """A host as loaded: its token read from its token file (None: the one-host form's
    HOMELAB_MANAGER_URL and HOMELAB_MANAGER_TOKEN)."""

    model_config = ConfigDict(frozen=True)

    name: str
    url: str | None = None
    token: str | None = Field(default=None, repr=False)
    mac: str | None = None
    broadcast: str = "255.255.255.255"
    wol_port: int = 9
    sleepable: bool = False


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
    hosts: dict[Name, Host] = Field(default_factory=dict)
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
    """The first host's name (the one host's, in the one-host form)."""
    hosts: dict[str, HostSpec] = Field(default_factory=dict)
    """Every host by name, in the file's order (empty: the one host at HOMELAB_MANAGER_URL)."""
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
    hosts = _load_hosts(parsed.hosts, base, source)
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
        host=host,
        hosts=hosts,
        endpoints=endpoints,
        fallbacks=dict(parsed.fallbacks),
        source=source,
    )


def _load_hosts(hosts: dict[str, Host], base: Path | None, source: str) -> dict[str, HostSpec]:
    out: dict[str, HostSpec] = {}
    urls: dict[str, str] = {}
    plain = [name for name, h in hosts.items() if h.url is None]
    if len(plain) > 1:
        raise CatalogueError(
            source,
            f"hosts.{plain[1]}.url",
            f"missing: only one host ({plain[0]!r}) may be the one at HOMELAB_MANAGER_URL",
        )
    for name, h in hosts.items():
        where = f"hosts.{name}"
        if h.url is None and h.token_file is not None:
            raise CatalogueError(source, f"{where}.token_file", "needs `url` beside it")
        if h.url is not None and h.token_file is None:
            raise CatalogueError(source, f"{where}.token_file", "required with `url`")
        if h.sleepable and h.mac is None:
            raise CatalogueError(source, f"{where}.mac", "required for a sleepable host")
        url = h.url.rstrip("/") if h.url is not None else None
        if url is not None:
            if url in urls:
                raise CatalogueError(source, f"{where}.url", f"already host {urls[url]!r}'s")
            urls[url] = name
        token = None
        if h.token_file is not None:
            token = _read_key(h.token_file, base, source, f"{where}.token_file")
            problem = token_problem(token)
            if problem:
                raise CatalogueError(source, f"{where}.token_file", problem)
        out[name] = HostSpec(
            name=name,
            url=url,
            token=token,
            mac=h.mac,
            broadcast=h.broadcast,
            wol_port=h.wol_port,
            sleepable=h.sleepable,
        )
    return out


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
