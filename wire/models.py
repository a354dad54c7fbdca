"""`ModelStatus`: one model as the manager reports it and the proxy reads it.

``GET /v1/models`` on the manager answers ``{"object": "list", "data": [ModelStatus]}``;
the event stream's ``snapshot`` is a list of them; the proxy's own ``/v1/models`` adds
``created`` and ``owned_by`` to each. Times are Unix seconds.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

ModelType = Literal["text", "image", "embedding", "stt", "tts"]
"""What a model does: ``stt`` transcribes speech (``/v1/audio/transcriptions`` and
``translations``), ``tts`` speaks text (``/v1/audio/speech``)."""
Backend = Literal["vllm", "llama.cpp", "diffusers", "audio", "remote"]
"""Who serves a model: vLLM, llama.cpp's llama-server, the diffusers image server, the
audio server (``audioserver``: faster-whisper or Piper) (the manager's models), or a
remote OpenAI-compatible endpoint (the proxy's catalogue)."""
ModelStateName = Literal[
    "stopped", "starting", "ready", "stopping", "failed", "falling_asleep", "sleeping", "waking"
]
"""A model's lifecycle state (the manager's `manager.state.ModelState` values).
``sleeping``: its server runs with its weights in host memory (the warm tier: vLLM's sleep
mode, an image pipeline parked on the CPU); ``falling_asleep`` and ``waking`` are the
moves into and out of it. A Docker *standby* container is not sleeping: the model is
``stopped`` (docs/architecture.md, "Three tiers")."""
WARM_STATES = ("falling_asleep", "sleeping", "waking")
"""The states of the warm tier (the server runs, its weights are or were in host memory)."""


class ModelStatus(BaseModel):
    """One model. ``sizes`` and ``max_n`` are sent for image models only, ``vision`` and
    ``tools`` for text models only (an embedding model has none of them), ``endpoint``
    and ``reachable`` for remote models only (the proxy adds those, from its catalogue)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str
    object: Literal["model"] = "model"
    type: ModelType
    state: ModelStateName
    last_error: str | None = None
    """The most recent failure, kept after the model is ready again."""
    last_used: float | None = None
    since: float
    """When `state` was entered."""
    in_flight: int = 0
    """Leases held now."""
    waiting: int = 0
    """Lease requests queued now."""
    description: str = ""
    sizes: list[str] | None = None
    """Image models: the sizes it makes, the first the default."""
    max_n: int | None = None
    """Image models: most images per request."""
    vision: bool | None = None
    """Text models: whether it takes images in chat messages (models.json ``vision``)."""
    tools: bool | None = None
    """Text models: whether it calls tools (models.json ``tool_calls`` is set)."""
    gpu_memory_mib: int | None = None
    """GPU memory the model declares it needs (models.json ``gpu_memory_mib``); None:
    undeclared (it runs alone)."""
    observed_gpu_memory_mib: int | None = None
    """GPU memory it was seen to take the last time it became ready (NVML); None: not
    measured (no NVML, or another model started or stopped meanwhile)."""
    priority: int = 0
    """models.json ``priority``: among waiting models, the higher goes first."""
    pinned: bool = False
    """models.json ``pinned``: started at boot and never evicted."""
    backend: Backend | None = None
    """Who serves it (`Backend`); None from a manager older than this field."""
    warm_level: int | None = None
    """models.json ``warm.level``: the sleep level it is kept warm with (1: weights in host
    memory; 2: weights dropped, reloaded from disk on wake); None: it is never kept warm."""
    host_memory_mib: int | None = None
    """Host memory (MiB) it holds while sleeping: declared (``warm.host_memory_mib``), or
    the last one measured; None: not warm, or not known yet."""
    wake_seconds: float | None = None
    """How long a wake usually takes (learned; None: never woken yet)."""
    load_seconds: float | None = None
    """How long a cold start usually takes (learned; None: never started yet)."""
    endpoint: str | None = None
    """Remote models only: the proxy catalogue's endpoint that serves it."""
    reachable: bool | None = None
    """Remote models only: the endpoint's ``/v1/models`` answered at the last health poll
    (None: not polled yet). The manager never sends it."""
    hosts: list[str] | None = None
    """Several hosts (the proxy's catalogue, docs/hosts.md): the hosts that can serve it, in
    the catalogue's order. None (not sent): one host, or a remote model. The manager never
    sends it, nor the three below."""
    resident_on: list[str] | None = None
    """Several hosts: where it is ``ready`` now."""
    loading_on: list[str] | None = None
    """Several hosts: where it is on its way to ready (``starting``, or waking)."""
    away_on: list[str] | None = None
    """Several hosts: those of `hosts` that are away (unreachable, or asleep) now; their
    states are the last known."""

    def to_wire(self) -> dict[str, Any]:
        """The JSON object the manager sends."""
        data = self.model_dump()
        if self.type != "image":
            del data["sizes"], data["max_n"]
        if self.type == "text":
            data["vision"] = bool(self.vision)
            data["tools"] = bool(self.tools)
        else:
            del data["vision"], data["tools"]
        if self.backend == "remote":  # no lifecycle or GPU on the proxy's side
            for key in (
                "gpu_memory_mib",
                "observed_gpu_memory_mib",
                "priority",
                "pinned",
                "warm_level",
                "host_memory_mib",
                "wake_seconds",
                "load_seconds",
            ):
                del data[key]
        else:
            del data["endpoint"], data["reachable"]
        for key in ("hosts", "resident_on", "loading_on", "away_on"):
            if data[key] is None:
                del data[key]
        return data


class ModelList(BaseModel):
    """The manager's ``GET /v1/models`` answer."""

    object: Literal["list"] = "list"
    data: list[ModelStatus]
    gpu_budget_mib: int | None = None
    """The manager's GPU budget (MiB) its models share (``manager.budget``); None: none
    (one model at a time), or not a manager's list. Several hosts' placement reads it
    (`proxy.placement`: a start that fits beside the residents stops nothing)."""

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"object": "list", "data": [m.to_wire() for m in self.data]}
        if self.gpu_budget_mib is not None:
            out["gpu_budget_mib"] = self.gpu_budget_mib
        return out


class EnsureAnswer(BaseModel):
    """``POST /v1/models/{name}/ensure``: the model is ready (nothing is held)."""

    model: str
    state: ModelStateName
    base_url: str


class StopAnswer(BaseModel):
    """``POST /v1/models/{name}/stop``: the model's state once stopped."""

    model: str
    state: ModelStateName
