"""The container runtime protocol: the only way the scheduler touches Docker or processes.

Two implementations: `manager.docker_runtime.DockerRuntime` (default on the GPU PC)
and `manager.process_runtime.ProcessRuntime` (a GPU box without Docker, and the
one-machine demo). Unit tests use a fake behind this same protocol.

All methods are coroutines and safe to cancel; implementations that call
blocking libraries (the docker SDK) do so through `asyncio.to_thread`.
Every method raises `manager.errors.RuntimeFailure` for engine/OS failures.
Model servers always listen on `INTERNAL_PORT` inside a container, and on the
spec's `port` on the host.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from manager import model_guard
from manager.spec import AnyModel, LanguageModel, TextModel
from wire.model_server import LLAMA_API_KEY_ENV
from wire.model_server import UPSTREAM_KEY_ENV as UPSTREAM_KEY_ENV

# `UPSTREAM_KEY_ENV` (the variable that carries a server's upstream key, by type) is the
# contract's (`wire.model_server`); the runtimes import it from here. vLLM reads
# `VLLM_API_KEY` (as `--api-key`, but kept out of the process list), the image server
# `HOMELAB_IMAGE_API_KEY`, llama.cpp's llama-server `LLAMA_API_KEY` (`key_env`); all then
# refuse every path without the key (401; vLLM through `manager.model_guard`, llama.cpp
# but for its `/health`).


def key_env(spec: Spec) -> str:
    """The variable that carries `spec`'s upstream key: its type's `UPSTREAM_KEY_ENV`, but
    llama.cpp's own `LLAMA_API_KEY` for a text model on that backend."""
    if isinstance(spec, TextModel) and spec.backend == "llama.cpp":
        return LLAMA_API_KEY_ENV
    return UPSTREAM_KEY_ENV[spec.type]


def guarded(spec: Spec) -> bool:
    """Whether `spec`'s server is vLLM, launched with `manager.model_guard` (`--middleware`)
    on its path; the image server and llama.cpp's server check the key themselves."""
    return isinstance(spec, LanguageModel) and not (
        isinstance(spec, TextModel) and spec.backend == "llama.cpp"
    )


KEY_ENVS = (*UPSTREAM_KEY_ENV.values(), LLAMA_API_KEY_ENV)
"""Every variable an upstream key may be in (read back from a server the runtime adopts)."""

INTERNAL_PORT = 8000
LABEL_MANAGED = "homelab-ai.managed"
LABEL_MODEL = "homelab-ai.model"
LABEL_SPEC = "homelab-ai.spec"
LABEL_GATED = "homelab-ai.gated"
"""Set ("true") on a container whose process starts as the standby gate (manager/gate.py)."""
LABEL_INSTANCE = "homelab-ai.instance"
"""Set (to `HOMELAB_INSTANCE`) when several managers share one Docker engine: each owns only its own."""

Spec = AnyModel
SCHEDULING_FIELDS = {"max_in_flight"}
"""Spec fields only the scheduler reads; they are not part of `spec_hash`."""


def new_upstream_key() -> str:
    """A fresh upstream key: made whenever a runtime launches a new model server."""
    return secrets.token_urlsafe(32)


def spec_hash(spec: Spec) -> str:
    """A short stable digest of a spec; a container whose label differs is recreated."""
    # Scheduling-only fields do not change the server: leaving them out keeps the hash of
    # servers started before they existed (no restart on upgrade).
    # Likewise an unset `max_steps` (added later) leaves the hash as it was.
    exclude = set(SCHEDULING_FIELDS)
    if getattr(spec, "max_steps", None) is None:
        exclude.add("max_steps")
    # And an unset `warm`: a model that is not kept warm keeps its hash from before it.
    if getattr(spec, "warm", None) is None:
        exclude.add("warm")
    # The same for the llama.cpp fields: a vLLM model's hash is what it was before them.
    if getattr(spec, "backend", None) == "vllm":
        exclude.update(("backend", "context_size", "gpu_layers"))
    fields = spec.model_dump(mode="json", exclude=exclude)
    # A vLLM server launched without the guard (before it existed), or with another text of
    # it, still answers paths without the key: its hash differs, so it is replaced.
    if guarded(spec):
        fields["$guard"] = model_guard.revision()
    blob = json.dumps(fields, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class Instance:
    """What the runtime sees of one model server it owns."""

    model: str
    """The model name (the `homelab-ai.model` label, or the process registry key)."""
    running: bool
    exit_code: int | None = None
    """Set once the server has exited."""
    spec_hash: str | None = None
    api_key: str | None = field(default=None, repr=False)
    """The server's upstream key (None: it takes requests without one). Every runtime
    makes a new key when it launches a server and reads it back from a server it
    reuses or adopts, so the manager can put it in leases and probes."""
    standby: bool = False
    """A standby container (Docker): started ahead behind its gate, the server not yet
    launched. `running` is False for it: nothing serves, and nothing will until a
    `start` releases the gate. A kind of *cold* (the model is `stopped`; nothing is
    loaded), never to be confused with a *sleeping* server (the warm tier: a running
    server whose weights wait in host memory, `manager.state`)."""


@runtime_checkable
class ContainerRuntime(Protocol):
    async def start(self, name: str, spec: Spec) -> None:
        """Start the model server for `name` and return once it is launched (not ready).

        A newly launched server gets a new upstream key (`new_upstream_key`, passed in
        the `UPSTREAM_KEY_ENV` variable of its type); `inspect` reports it.

        An existing container/process for `name` with the same spec hash is reused
        (started again if it had stopped); one with a different hash is removed
        and recreated. Never creates a duplicate.
        """

    async def stop(self, name: str, spec: Spec | None, timeout: float) -> None:  # noqa: ASYNC109
        """Stop and remove the server for `name`. Idempotent: absent is success.

        Sends SIGTERM, waits up to `timeout` seconds, then kills. `spec` is None for
        an owned server of a model that is no longer in models.json (found by
        `list_owned` at adoption): find it by its model name alone (Docker: the
        `homelab-ai.model` label; process runtime: the registry key).
        """

    async def inspect(self, name: str, spec: Spec) -> Instance | None:
        """The server's current status, or None if no container/process exists."""

    async def logs(self, name: str, spec: Spec, tail: int = 100) -> str:
        """The last `tail` lines of the server's output ('' if none)."""

    async def list_owned(self) -> list[Instance]:
        """Every server this runtime owns (Docker: by the managed label), known or not."""

    def base_url(self, spec: Spec) -> str:
        """Where the manager reaches the server, e.g. 'http://127.0.0.1:8001'."""


@runtime_checkable
class HostMemoryRuntime(Protocol):
    """An optional extension of `ContainerRuntime` (both runtimes have it): what a server
    holds in host memory, which the scheduler reads once a warm model has fallen asleep
    to learn its host footprint (`manager.warm`)."""

    async def host_memory_mib(self, name: str, spec: Spec) -> int | None:
        """The resident memory (MiB) of `name`'s server (Docker: the container's memory
        usage; processes: the RSS of its process group), or None when it does not run or
        cannot be read. Raises RuntimeFailure for engine errors."""


@runtime_checkable
class PreparingRuntime(Protocol):
    """An optional extension of `ContainerRuntime` (`DockerRuntime` has it; the process
    runtime has nothing to prepare). A scheduler calls it through
    `isinstance(runtime, PreparingRuntime)`."""

    async def prepare(self, name: str, spec: Spec) -> None:
        """Do ahead what `start(name, spec)` would do before launching the server (Docker:
        pull the image if needed, create the container and start it behind its gate, a
        *standby* container), so that the `start` that follows costs only the launch.
        Call it while the outgoing model stops, or for any model that is not resident; it
        takes no GPU memory (Docker: a sleeping Python process, and the model's port).

        Idempotent; never touches a running server; never required (`start` does all of
        it itself when nothing was prepared). Raises `RuntimeFailure` as `start` would for
        the same reasons (foreign container, unavailable image, engine error).
        """
