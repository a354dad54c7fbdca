"""The warm tier's mechanism: putting a model server to sleep and waking it, over HTTP, and
the swap times the policy learns from.

A model that opts in (models.json ``warm``) may leave the GPU by sleeping: its server
keeps running with its weights in host memory (docs/architecture.md, "Three tiers").
`WarmControl` is the protocol the scheduler uses (like `manager.probe.ReadinessProbe`,
so the scheduler speaks no HTTP); `HttpWarmControl` is the real one:

* vLLM (text and embedding models; launched with ``--enable-sleep-mode`` and
  ``VLLM_SERVER_DEV_MODE=1`` on the GPU, `manager.launch.sleep_mode`):
  ``POST /sleep?level=N``; to wake from level 1 ``POST /wake_up``; from level 2 (the
  weights were dropped) ``POST /wake_up?tags=weights``, ``POST /collective_rpc``
  ``{"method": "reload_weights"}``, then ``POST /wake_up?tags=kv_cache``;
  ``GET /is_sleeping`` answers ``{"is_sleeping": bool}``.
* The image server: ``POST /park`` (the pipeline to the CPU), ``POST /unpark`` (back to
  its device), ``GET /is_parked`` answering ``{"is_parked": bool}``.

Every call carries the server's upstream key. A refused or failed call raises
`WarmFailure`; the scheduler then stops the server (a failed sleep) or stops it and
cold-starts it (a failed wake).

`SwapTimes` keeps, per model, the last `HISTORY` cold-start and wake durations and
host-memory readings in a small JSON file beside the footprints (``swaptimes.json``),
so a restarted manager still knows what each swap costs.
"""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import httpx

from manager.errors import ManagerError
from manager.footprints import write_atomic
from manager.runtime import Spec
from manager.spec import ImageModel

log = logging.getLogger(__name__)

SWAP_FILE = "swaptimes.json"
"""The learned swap times' file, in the manager's `log_dir`."""
HISTORY = 10
"""Readings kept per model and kind."""
DEFAULT_LOAD_S = 30.0
"""A cold start's assumed duration until one was measured."""
DEFAULT_WAKE_S = {1: 2.0, 2: 10.0}
"""A wake's assumed duration by sleep level until one was measured."""


class WarmFailure(ManagerError):
    """A server did not go to sleep or wake as asked (refused, failed, unreachable)."""

    code = "warm_failed"


@runtime_checkable
class WarmControl(Protocol):
    async def sleep(self, spec: Spec, base_url: str, api_key: str | None) -> None:
        """Put the server to sleep at its spec's level; return once its GPU memory is
        given back. Raises WarmFailure."""

    async def wake(self, spec: Spec, base_url: str, api_key: str | None) -> None:
        """Wake the server; return once it serves again. Raises WarmFailure."""

    async def is_sleeping(self, spec: Spec, base_url: str, api_key: str | None) -> bool | None:
        """Whether the server sleeps now; None when it does not say (no such route, not
        reachable). Never raises."""


class HttpWarmControl:
    """`WarmControl` over HTTP, one `httpx.AsyncClient` for every call. `aclose()` at
    shutdown. A call may take up to the spec's `start_timeout` (a level-2 wake reloads
    the weights from disk)."""

    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        self._client = client or httpx.AsyncClient()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def sleep(self, spec: Spec, base_url: str, api_key: str | None) -> None:
        if isinstance(spec, ImageModel):
            await self._post(spec, f"{base_url}/park", api_key)
            return
        level = spec.warm.level if spec.warm else 1
        await self._post(spec, f"{base_url}/sleep?level={level}", api_key)

    async def wake(self, spec: Spec, base_url: str, api_key: str | None) -> None:
        if isinstance(spec, ImageModel):
            await self._post(spec, f"{base_url}/unpark", api_key)
            return
        if spec.warm is not None and spec.warm.level == 2:
            await self._post(spec, f"{base_url}/wake_up?tags=weights", api_key)
            await self._post(
                spec, f"{base_url}/collective_rpc", api_key, json={"method": "reload_weights"}
            )
            await self._post(spec, f"{base_url}/wake_up?tags=kv_cache", api_key)
            return
        await self._post(spec, f"{base_url}/wake_up", api_key)

    async def is_sleeping(self, spec: Spec, base_url: str, api_key: str | None) -> bool | None:
        path, key = (
            ("/is_parked", "is_parked")
            if isinstance(spec, ImageModel)
            else ("/is_sleeping", "is_sleeping")
        )
        try:
            answer = await self._client.get(
                f"{base_url}{path}", headers=_auth(api_key), timeout=5.0
            )
            value = answer.json().get(key) if answer.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        return value if isinstance(value, bool) else None

    async def _post(
        self, spec: Spec, url: str, api_key: str | None, json: dict[str, Any] | None = None
    ) -> None:
        try:
            answer = await self._client.post(
                url, headers=_auth(api_key), json=json, timeout=spec.start_timeout
            )
        except httpx.HTTPError as exc:
            raise WarmFailure(f"{url.split('?')[0]}: {exc!r}") from exc
        if answer.status_code >= 300:
            raise WarmFailure(
                f"{url.split('?')[0]} answered {answer.status_code}: {answer.text[:200]}"
            )


def _auth(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class SwapTimes:
    """Learned cold-start and wake seconds and sleeping host memory per model, kept in a
    JSON file (`path`; None: in memory only)::

        {"models": {"smollm2": {"load_s": [31.2, ...], "wake_s": [0.8, ...],
                                "host_mib": [1400, ...]}}}

    Small blocking writes on the event loop, one per swap (as `manager.footprints`)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._data: dict[str, dict[str, list[float]]] = self._load()

    def _load(self) -> dict[str, dict[str, list[float]]]:
        if self.path is None:
            return {}
        try:
            models = json.loads(self.path.read_text(encoding="utf-8"))["models"]
            if not isinstance(models, dict):
                raise ValueError("models is not an object")
            return {
                str(name): {
                    str(k): [float(x) for x in v] for k, v in entry.items() if isinstance(v, list)
                }
                for name, entry in models.items()
                if isinstance(entry, dict)
            }
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring the unreadable swap-times file %s: %s", self.path, exc)
            return {}

    def record(self, model: str, kind: str, value: float) -> None:
        """Add a reading (`kind`: ``load_s``, ``wake_s`` or ``host_mib``) and write the
        file (errors are logged, not raised)."""
        entry = self._data.setdefault(model, {})
        entry[kind] = [*entry.get(kind, []), round(float(value), 3)][-HISTORY:]
        if self.path is None:
            return
        try:
            write_atomic(self.path, {"models": self._data})
        except OSError as exc:
            log.warning("could not write the swap-times file %s: %s", self.path, exc)

    def usual(self, model: str, kind: str) -> float | None:
        """The median of `model`'s readings of `kind`; None: none yet."""
        values = self._data.get(model, {}).get(kind)
        return statistics.median(values) if values else None

    def readings(self, model: str, kind: str) -> list[float]:
        """`model`'s readings of `kind`, oldest first."""
        return list(self._data.get(model, {}).get(kind, []))


HOST_SHARE = 0.5
"""The share of the host's memory sleeping models may hold when no budget is set: the
rest is the system's, the desktop's and the awake servers' own."""


def host_budget(setting_mib: int | None, total_mib: int | None) -> tuple[int | None, str]:
    """The host-memory budget (None: no warm tier) and where it came from: the setting
    (0 turns the tier off), else `HOST_SHARE` of `total_mib`, else none."""
    if setting_mib is not None:
        return (setting_mib or None), "HOMELAB_HOST_BUDGET_MIB"
    if total_mib:
        return int(total_mib * HOST_SHARE), f"half of the {total_mib} MiB the runtime sees"
    return None, "none (the host's memory is unknown): no model is kept warm"


def meminfo_total_mib(path: Path = Path("/proc/meminfo")) -> int | None:
    """MemTotal of this machine's /proc/meminfo in MiB, or None."""
    try:
        for line in path.read_text(encoding="ascii").splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def host_mib_of(spec: Spec, times: SwapTimes, model: str) -> int | None:
    """The host memory `model` holds asleep: its declaration, else the largest of its
    recent readings; None: not known (it may then only sleep alone)."""
    if spec.warm is None:
        return None
    if spec.warm.host_memory_mib is not None:
        return spec.warm.host_memory_mib
    values = times.readings(model, "host_mib")
    return int(max(values)) if values else None
