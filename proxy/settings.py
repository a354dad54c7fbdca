"""The proxy's settings, read from the environment (prefix ``HOMELAB_``; base: wire.settings).

Defaults live here and only here (``ProxySettings.default(name)`` for code that takes a
setting as an argument, e.g. ``ManagerClient``); docs/settings.md is generated from
these classes. ``ProxySettings()`` raises pydantic's
``ValidationError`` at start-up for a missing or placeholder manager token, a bad
URL or a non-positive limit, so a misconfigured proxy never starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, ClassVar

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from wire.events import HEARTBEAT
from wire.http_server import ConnectionLimits
from wire.settings import BATCH_BOUND, QUEUE_TIMEOUT, HomelabSettings, ServiceSettings
from wire.tokens import check_token, token_problem

_APP_DIR = Path(__file__).resolve().parent.parent / "app"
KEY_FILE_NAME = "keys.json"


class ProxySettings(ServiceSettings):
    """Settings of the proxy. Environment names are the field names upper-cased with the
    `HOMELAB_` prefix, e.g. `proxy_port` is `HOMELAB_PROXY_PORT`."""

    renamed: ClassVar[Mapping[str, str]] = {
        "HOMELAB_MAX_BODY_BYTES": "proxy_max_body_bytes",
        "HOMELAB_MAX_CONNECTIONS": "proxy_max_connections",
    }

    manager_url: str = Field(
        default="http://127.0.0.1:8090",
        pattern=r"^https?://[^\s/]+(:\d+)?/?$",
        description="Base URL of the manager on the GPU PC.",
    )
    catalogue: Path | None = Field(
        default=None,
        description=(
            "The proxy's catalogue (JSON): remote OpenAI-compatible endpoints and each "
            'model\'s fallbacks (docs/adding-models.md, "Remote endpoints"). Read once at '
            "start-up; a bad file stops the proxy. Unset: the manager's models only."
        ),
    )
    manager_token: SecretStr = Field(
        description="Bearer token the manager expects (HOMELAB_MANAGER_TOKEN on the GPU PC)."
    )
    api_keys: Annotated[list[SecretStr] | None, NoDecode] = Field(
        default=None,
        description=(
            "Comma list of API keys clients must send as `Authorization: Bearer`. "
            "`off`: the proxy is open to everyone who reaches it. Unset: `python -m proxy` "
            "refuses to start (keys are on by default)."
        ),
    )
    docs: bool = Field(
        default=False,
        description="Serve the Swagger UI at /docs (its scripts come from a CDN). /openapi.json is always served.",
    )
    max_event_clients: int = Field(
        default=256, ge=1, description="Most /api/events streams open at once (one more: 503)."
    )
    image_store_max_count: int = Field(
        default=1000,
        ge=1,
        description="Most images kept for response_format=url (oldest go first).",
    )
    image_store_max_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=1024 * 1024,
        description="Most bytes of images kept for response_format=url (oldest go first).",
    )
    proxy_host: str = Field(default="0.0.0.0", description="Address the proxy listens on.")
    proxy_port: int = Field(default=8080, ge=1, le=65535, description="Port the proxy listens on.")
    proxy_max_body_bytes: int = Field(
        default=32 * 1024 * 1024,
        gt=0,
        description="Largest JSON request body (vision content parts included).",
    )
    max_upload_bytes: int = Field(
        default=25 * 1024 * 1024,
        gt=0,
        description=(
            "Largest multipart upload (images/edits, audio/transcriptions and "
            "audio/translations), all parts together."
        ),
    )
    image_url_ttl: float = Field(
        default=3600.0, gt=0, description="Seconds an image URL stays valid."
    )
    image_dir: Path | None = Field(
        default=None, description="Where url-format images are kept. Unset: a temporary directory."
    )
    audio_dir: Path | None = Field(
        default=None,
        description="Where generated audio (MCP txt2speech) is kept. Unset: a temporary directory.",
    )
    audio_ttl: float = Field(
        default=3600.0,
        gt=0,
        description="Seconds a generated audio file stays at its link (/v1/audio/files/...).",
    )
    audio_store_max_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1024 * 1024,
        description="Most bytes of generated audio kept, all keys together (oldest go first).",
    )
    audio_store_key_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024 * 1024,
        description="Most bytes of generated audio kept per key (that key's oldest go first).",
    )
    public_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s]+$",
        description=(
            "How clients reach the proxy, for image URLs (`./setup.sh server` and the demo "
            "set it to the address they print). Unset: the Host the Host check accepted, "
            "else the address the connection came in on (never a relative URL)."
        ),
    )
    models_cache_ttl: float = Field(
        default=2.0, ge=0, description="Seconds the manager's model list is cached."
    )
    connect_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Longest wait (seconds) for a connection to the manager or a model server.",
    )
    upstream_timeout: float = Field(
        default=900.0,
        gt=0,
        description="Longest silence (seconds) from a model server before giving up.",
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Comma list of Host header values /mcp accepts (DNS-rebinding protection), e.g. "
            "`homelab.lan:8080,localhost:*`. Every path also accepts their host names, besides "
            "IP addresses, localhost, this machine's name and the public URL's host "
            "(proxy/guard.py); `*`: any."
        ),
    )
    manager_outage_window: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description=(
            "Seconds a request waits for an unreachable (restarting) manager, retrying with "
            "backoff, before it gets a 503 with Retry-After (0: fail at once)."
        ),
    )
    wake_timeout: float = Field(
        default=120.0,
        ge=0,
        le=3600,
        description=(
            "Seconds a request waits for a sleeping host it woke (Wake-on-LAN, docs/hosts.md) "
            "before it gets a 503 with Retry-After."
        ),
    )
    retry_endpoints: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"],
        description=(
            "Comma list of endpoints whose requests are sent once more when the model server "
            "died before the client got a byte (empty: never retry)."
        ),
    )
    lease_read_timeout: float = Field(
        default=QUEUE_TIMEOUT + 60.0,
        gt=0,
        description=(
            "Longest wait (seconds) for the manager's answer to a lease request: the "
            "manager's default queue timeout (HOMELAB_QUEUE_TIMEOUT) plus a minute."
        ),
    )
    events_read_timeout: float = Field(
        default=4 * HEARTBEAT,
        gt=0,
        description=(
            "Longest silence (seconds) on the manager's event stream: four of the manager's "
            "default heartbeats (HOMELAB_SSE_HEARTBEAT)."
        ),
    )
    proxy_max_connections: int = Field(
        default=2048,
        ge=1,
        description=(
            "Connections at once. A new one past it closes the oldest connection that has "
            "not made a request with a valid key; when all have, it is refused with 503."
        ),
    )
    proxy_max_connections_per_address: int = Field(
        default=128,
        ge=1,
        description="Connections at once from one client address; the next gets 429.",
    )
    proxy_header_timeout: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description=(
            "Seconds from a request's first byte to its last header (408 and closed after); "
            "also how long a body may take before its rate is checked."
        ),
    )
    proxy_min_body_rate: int = Field(
        default=1024,
        ge=0,
        description=(
            "Bytes a second a request body must average once it has taken "
            "HOMELAB_PROXY_HEADER_TIMEOUT seconds (408 and closed otherwise; 0: no minimum)."
        ),
    )
    default_model: str | None = Field(default=None, description="Model the UI selects first.")
    app_dir: Path = Field(default=_APP_DIR, description="The web UI (templates/ and static/).")
    lease_linger: float = Field(
        default=0.5,
        ge=0,
        le=60,
        description=(
            "Seconds a shared manager lease is kept after its last request (0: release at "
            "once). A lingering lease holds its model resident: an explicit stop or idle "
            "stop waits for it, a swap does not (the manager's contention event retires it)."
        ),
    )

    state_dir: Path = Field(
        default=Path.home() / ".local" / "share" / "homelab-ai",
        description="Where the proxy keeps durable state (the embedded job store).",
    )
    key_file: Path | None = Field(
        default=None,
        description=(
            "The named keys (docs/keys.md; `python -m proxy keys` manages it), re-read when "
            "it changes. Unset: <state_dir>/keys.json, used when it exists."
        ),
    )
    usage_save_interval: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description=(
            "Seconds between two saves of the usage counters (<job store>.usage-<port>.json "
            "beside the embedded job store, else <state_dir>/usage-<port>.json; also at "
            "shutdown), so a restart keeps the GPU budgets spent."
        ),
    )
    jobs_url: str | None = Field(
        default=None,
        description=(
            "The job store: redis://host:port/db for a Redis server shared by several "
            "proxies, or a file path for the embedded SQLite store. Unset: "
            "<state_dir>/proxy-jobs-<port>.db (one store per proxy port)."
        ),
    )
    job_workers: int = Field(
        default=BATCH_BOUND,
        ge=1,
        le=256,
        description="Jobs this proxy runs at once (all models); the manager's batch bound by default.",
    )
    job_ttl: float = Field(
        default=7 * 86400.0, gt=0, description="Seconds a finished job and its result are kept."
    )
    max_batch_file_bytes: int = Field(
        default=64 * 1024 * 1024, gt=0, description="Largest batch input file (POST /v1/files)."
    )
    max_batch_lines: int = Field(
        default=50_000, gt=0, description="Most requests in one batch input file."
    )
    max_streams_per_key: int = Field(
        default=32,
        ge=1,
        description="Most /stream/{taskId} connections one key may hold open at once "
        "(one more: 429 too_many_streams).",
    )
    mcp_sessions_per_key: int = Field(
        default=16,
        ge=1,
        description="Most MCP sessions (/mcp) one key may hold open at once (one more: 429).",
    )
    mcp_session_idle_timeout: float = Field(
        default=600.0,
        gt=0,
        description="Seconds an MCP session may go with no request in flight (and no open "
        "GET stream) before it is ended; its id then answers 404.",
    )
    file_ttl: float = Field(
        default=7 * 86400.0,
        gt=0,
        description="Seconds a file (a batch's input, output or error file) is kept: "
        "then it is gone from /v1/files and deleted by the periodic sweep.",
    )
    file_quota_bytes: int = Field(
        default=1024 * 1024 * 1024,
        gt=0,
        description="Bytes of files one key may keep (its uploads and its batches' output); "
        "an upload over it is a 429 insufficient_quota (key_file_quota_exceeded).",
    )
    files_total_bytes: int = Field(
        default=8 * 1024 * 1024 * 1024,
        gt=0,
        description="Bytes of files all keys together may keep; an upload over it is a 429 "
        "insufficient_quota (total_file_quota_exceeded).",
    )

    def connection_limits(self) -> ConnectionLimits:
        """The deadlines and caps of the proxy's connections (`wire.http_server`)."""
        return ConnectionLimits(
            header_timeout=self.proxy_header_timeout,
            body_grace=self.proxy_header_timeout,
            min_body_rate=self.proxy_min_body_rate,
            per_address=self.proxy_max_connections_per_address,
            max_connections=self.proxy_max_connections,
        )

    def known_models_path(self) -> Path:
        """Where the last known catalogue is kept (`proxy.hosts.Fleet`), per proxy port."""
        return self.state_dir / f"known-models-{self.proxy_port}.json"

    def key_path(self) -> Path:
        return self.key_file or self.state_dir / KEY_FILE_NAME

    def usage_path(self) -> Path:
        """Where the usage counters are saved: beside an embedded job store, else in the
        state dir; one file per proxy port (proxies may share a store)."""
        store = self.job_store_url()
        if store.startswith(("redis://", "rediss://", "unix://")):
            return self.state_dir / f"usage-{self.proxy_port}.json"
        return Path(store).with_suffix(f".usage-{self.proxy_port}.json")

    def job_store_url(self) -> str:
        return self.jobs_url or str(self.state_dir / f"proxy-jobs-{self.proxy_port}.db")

    @field_validator("manager_token")
    @classmethod
    def _real_token(cls, value: SecretStr) -> SecretStr:
        check_token(value.get_secret_value())  # the manager's own rules (wire.tokens)
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            if value.strip().lower() == "off":
                return []
            keys = [k.strip() for k in value.split(",") if k.strip()]
            return keys or None
        return value

    @field_validator("retry_endpoints", mode="before")
    @classmethod
    def _split_endpoints(cls, value: object) -> object:
        if isinstance(value, str):
            return [e.strip() for e in value.split(",") if e.strip()]
        return value

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return [h.strip() for h in value.split(",") if h.strip()]
        return value

    @field_validator("api_keys")
    @classmethod
    def _real_keys(cls, value: list[SecretStr] | None) -> list[SecretStr] | None:
        for number, key in enumerate(value or (), 1):
            problem = token_problem(key.get_secret_value())
            if problem:
                raise ValueError(f"API key {number} of {len(value or ())} {problem}")
        return value

    @field_validator("manager_url", "public_url")
    @classmethod
    def _strip_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    def keys(self) -> list[str]:
        """The API keys in force (empty: open)."""
        return [k.get_secret_value() for k in self.api_keys or ()]


class McpBridgeSettings(HomelabSettings):
    """Settings of ``python -m proxy.mcp`` (the stdio relay to a proxy's /mcp, run where
    the MCP client runs)."""

    renamed: ClassVar[Mapping[str, str]] = {"HOMELAB_API_KEY": "mcp_key"}

    mcp_key: SecretStr | None = Field(
        default=None,
        description=(
            "The API key the relay sends to the proxy (one of the proxy's HOMELAB_API_KEYS); "
            "`--key` overrides it. Unset: none is sent."
        ),
    )
