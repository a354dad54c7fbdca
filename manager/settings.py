"""The manager's settings, read from the environment (prefix `HOMELAB_`; base: wire.settings).

Every default lives here, once (`ManagerSettings.default(name)` for code that takes a
setting as an argument, e.g. `SchedulerConfig`). `ManagerSettings()` raises pydantic's
`ValidationError` when a value is missing or wrong (the token above all);
`python -m manager` prints that as one line per problem and exits non-zero. The
reference of every variable is docs/settings.md, generated from this class.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, SecretStr, field_validator

from manager.footprints import FOOTPRINT_FILE
from manager.lease_store import LEASE_FILE
from wire.settings import BATCH_BOUND, QUEUE_TIMEOUT, ServiceSettings
from wire.tokens import check_token

_HOST_PATTERN = r"^[A-Za-z0-9.:\-\[\]]{1,253}$"


class ManagerSettings(ServiceSettings):
    """Settings of the manager daemon. Environment names are the field names upper-cased
    with the `HOMELAB_` prefix, e.g. `queue_limit` is `HOMELAB_QUEUE_LIMIT`."""

    retired: ClassVar[Mapping[str, str]] = {
        "HOMELAB_MAX_BODY_BYTES": (
            "the manager's body limit is fixed (manager.api.MAX_BODY_BYTES); "
            "for the proxy's, set HOMELAB_PROXY_MAX_BODY_BYTES"
        ),
        "HOMELAB_LEASE_FILE": "the lease file is leases.json in HOMELAB_LOG_DIR",
        "HOMELAB_FOOTPRINT_FILE": "the footprints file is footprints.json in HOMELAB_LOG_DIR",
        "HOMELAB_MAX_CONNECTIONS": (
            "the manager's connection limit is fixed (manager.__main__.CONNECTION_LIMITS); "
            "for the proxy's, set HOMELAB_PROXY_MAX_CONNECTIONS"
        ),
    }

    models_file: Path = Field(default=Path("models.json"), description="The models.json catalogue.")
    manager_token: SecretStr = Field(
        description="Bearer token every API call but /healthz must carry (rules: wire.tokens)."
    )
    manager_host: str = Field(
        default="0.0.0.0", pattern=_HOST_PATTERN, description="Address the manager listens on."
    )
    manager_port: int = Field(
        default=8090, ge=1, le=65535, description="Port the manager listens on."
    )
    runtime: Literal["docker", "process"] = Field(
        default="docker",
        description=(
            "How model servers run: `docker` containers (the GPU PC), or local `process`es "
            "(the demo, tests)."
        ),
    )
    model_host: str = Field(
        default="127.0.0.1",
        pattern=_HOST_PATTERN,
        description="How the manager reaches model servers' published ports.",
    )
    model_bind_host: str | None = Field(
        default=None,
        pattern=_HOST_PATTERN,
        description=(
            "Address model servers' ports are bound to (Docker: published on): the address "
            "the proxy reaches them by, e.g. the GPU PC's LAN address (`./setup.sh gpu-pc` "
            "writes it); 0.0.0.0 is every interface. Unset: 127.0.0.1, this machine only "
            "(a proxy on this machine)."
        ),
    )
    advertise_host: str | None = Field(
        default=None,
        pattern=_HOST_PATTERN,
        description="Host put in lease base_urls for the proxy. Unset: model_host.",
    )
    hf_cache: str = Field(
        default="homelab-hf-cache",
        min_length=1,
        description="Docker volume name or host path mounted as the Hugging Face cache.",
    )
    hf_token: SecretStr | None = Field(
        default=None,
        description="Hugging Face token passed to model servers (gated models). Optional.",
    )
    instance: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description=(
            "Docker runtime: label this manager's containers homelab-ai.instance=<value> and "
            "own only those, so several managers can share one engine. Unset: the usual one."
        ),
    )
    queue_limit: int = Field(default=64, ge=1, le=100_000, description="Most waiters at once.")
    queue_timeout: float = Field(
        default=QUEUE_TIMEOUT, gt=0, description="Seconds a lease request may wait before a 429."
    )
    batch_bound: int = Field(
        default=BATCH_BOUND,
        ge=1,
        description="Leases the resident model may still get while other models wait.",
    )
    lease_ttl: float = Field(
        default=300.0, gt=0, description="Seconds a lease lives unless renewed."
    )
    fair_share_half_life: float = Field(
        default=600.0,
        gt=0,
        le=30 * 86400,
        description=(
            "Fair share: seconds after which the GPU time an API key used counts half when "
            "its waiting requests are ordered against other keys' (same class)."
        ),
    )
    stop_timeout: float = Field(
        default=30.0, gt=0, description="Seconds between SIGTERM and kill when stopping a server."
    )
    gpu_release_timeout: float = Field(
        default=60.0,
        ge=0,
        description="Seconds to wait for GPU memory to be released after a stop (0: do not check).",
    )
    liveness_interval: float = Field(
        default=10.0, gt=0, description="Seconds between housekeeping passes (liveness, TTLs)."
    )
    max_event_streams: int = Field(
        default=32,
        ge=1,
        le=10_000,
        description="Most GET /v1/events streams at once (each proxy needs one); one more is a 429.",
    )
    vllm_python: str = Field(
        default="python3", min_length=1, description="Process runtime: Python that has vLLM."
    )
    llama_server: str = Field(
        default="llama-server",
        min_length=1,
        description=(
            "Process runtime: llama.cpp's llama-server program (`./setup.sh deps` builds one "
            "and names it in its env file)."
        ),
    )
    imageserver_python: str = Field(
        default="python3",
        min_length=1,
        description="Process runtime: Python that has the image server's stack.",
    )
    audioserver_python: str = Field(
        default="python3",
        min_length=1,
        description="Process runtime: Python that has the audio server's stack (faster-whisper, piper-tts).",
    )
    log_dir: Path = Field(
        default=Path("logs"),
        description=(
            "Where the manager keeps its files: the leases in flight (leases.json, so a "
            "restarted manager knows them), the learned GPU footprints (footprints.json), "
            "the learned cold-start and wake times (swaptimes.json) and, with the process runtime, model servers' output."
        ),
    )
    gpu_budget_mib: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description=(
            "GPU memory (MiB) the models may share (manager.budget). Unset: models.json's "
            "$gpu_budget_mib, else the card's total from NVML less gpu_reserve_mib, else "
            "one model at a time."
        ),
    )
    gpu_reserve_mib: int = Field(
        default=1024,
        ge=0,
        description="GPU memory (MiB) kept out of the default budget (desktop, other programs).",
    )
    host_budget_mib: int | None = Field(
        default=None,
        ge=0,
        le=100_000_000,
        description=(
            "Host memory (MiB) the models kept warm (asleep, models.json `warm`) may hold "
            "together, so they never push the machine into swap. Unset: half the memory the "
            "runtime sees (Docker: the engine's MemTotal, on Docker Desktop WSL2's limit from "
            ".wslconfig; processes: /proc/meminfo). 0: no model is kept warm."
        ),
    )
    standby: bool = Field(
        default=True,
        description=(
            "Docker runtime: keep a standby container (created and started behind a gate, "
            "no server, no GPU memory; a sleeping Python process that keeps the model's "
            "port published) for every model that is not resident, so that its start "
            "costs only the gate's release, not the engine's create and start."
        ),
    )

    @field_validator("manager_token")
    @classmethod
    def _strong_token(cls, value: SecretStr) -> SecretStr:
        check_token(value.get_secret_value())  # the rules of wire.tokens
        return value

    def lease_path(self) -> Path:
        """The lease file: `log_dir`/leases.json."""
        return self.log_dir / LEASE_FILE

    def footprint_path(self) -> Path:
        """The learned footprints: `log_dir`/footprints.json."""
        return self.log_dir / FOOTPRINT_FILE

    def swap_times_path(self) -> Path:
        """The learned cold-start and wake times: `log_dir`/swaptimes.json."""
        return self.log_dir / "swaptimes.json"

    def advertised_host(self) -> str:
        """The host the proxy should use to reach model servers."""
        return self.advertise_host or self.model_host
