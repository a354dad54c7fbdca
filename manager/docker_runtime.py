"""`DockerRuntime`: model servers as Docker containers, through the docker SDK.

Each model runs in the container named by its spec's `container`, labelled
`homelab-ai.managed=true`, `homelab-ai.model=<name>` and
`homelab-ai.spec=<spec hash>`; the runtime only ever stops, removes or reuses
containers that carry the managed label. Text models run the vLLM OpenAI image
with vLLM's arguments; image models run homelab-ai's image server, configured
through `HOMELAB_IMAGE_*` variables (see `manager.launch.image_server_env`, and the
"Image server environment" section of docs/architecture.md).

Every docker SDK call is blocking and runs in `asyncio.to_thread`; cancelling a
coroutine abandons the wait but not the engine call already under way (a
`start` cancelled mid-create may leave a created container, which the next
`start` reuses or replaces). Every engine failure is raised as `RuntimeFailure`.

The launch recipe (arguments, the image server's variables, the upstream key) is
`manager.launch`, shared with the process runtime; the engine's clock and `die` events
are `manager.engine_events`; the gate program is the file manager/gate.py.

Exits: with `watch_exits(callback)` set, a daemon thread follows the engine's event
stream (`die` events of this manager's containers, by label; `engine_events.DieWatcher`)
and calls `callback(model)` on the event loop at once; a broken stream is reopened after
a second. There is no registry to lose: a container carries its labels from creation
on, so `list_owned` finds one that a killed manager created but never used.

Standby containers: every container's process starts as `GATE` (manager/gate.py), a
stdlib Python script that listens on the model's internal port and waits for one line
equal to the container's upstream key; it answers any other line "no" and keeps waiting,
and on the key answers "ok", closes its socket and `execvp`s the real server (the
image's entrypoint and command, read once per image). The gate holds no GPU memory. So
`prepare(name, spec)` does all of the engine's work ahead (pull, create, start: runc,
network namespace, port proxy; with `standby` off it only creates), and `start` only
releases the gate: a TCP line to the model's port, a few ms. `list_owned` reports a
gated container whose gate still answers "no" as `standby` (not running). `stop` returns
once the container's process has exited (seen from the host through a pidfd where the
engine runs on this kernel, `manager.exit_watch`; else at the container's `die` event);
the engine's teardown and the removal finish in the background (the model's next start,
prepare or stop waits for them). The search for the model's containers under old names
runs once per model and container name. Where a swap's time goes is measured by
`python -m bench.swap` (docs/architecture.md, "Swaps").
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import docker.types
import requests

from manager import gate, model_guard
from manager.engine_events import DieWatcher, terminate
from manager.errors import RuntimeFailure
from manager.launch import server_env, text_server_args
from manager.runtime import (
    INTERNAL_PORT,
    KEY_ENVS,
    LABEL_GATED,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_MODEL,
    LABEL_SPEC,
    Instance,
    Spec,
    guarded,
    key_env,
    new_upstream_key,
    spec_hash,
)
from manager.settings import ManagerSettings
from manager.spec import LanguageModel

log = logging.getLogger(__name__)

HF_CACHE_TARGET = "/root/.cache/huggingface"
"""Where the Hugging Face cache (volume or host folder) is mounted inside model containers."""

_VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_T = TypeVar("_T")
GATE = Path(gate.__file__).read_text(encoding="utf-8")
"""The standby gate's program (manager/gate.py), read once: PID 1 of every container this
runtime creates, run as `python3 -c GATE <port> <key variable> <server argv...>`."""
GATE_RELEASED = gate.RELEASED
"""The gate's one line of output, printed just before it becomes the server."""
_GATE_KNOCK = b"GET /health HTTP/1.0\r\n\r\n"
"""A wrong line for a gate (it answers "no"), and a request a server answers in HTTP."""
_ENGINE_ERRORS = (docker.errors.DockerException, requests.RequestException, OSError)


def _hf_cache_mount(source: str) -> docker.types.Mount:
    """A named volume, or a bind mount of an absolute host path. Raises RuntimeFailure otherwise."""
    if source.startswith("/"):
        if ":" in source or ".." in source.split("/"):
            raise RuntimeFailure(
                f"HOMELAB_HF_CACHE={source!r}: a host path must be absolute, without ':' or '..'"
            )
        return docker.types.Mount(HF_CACHE_TARGET, source, type="bind")
    if _VOLUME_NAME.fullmatch(source):
        return docker.types.Mount(HF_CACHE_TARGET, source, type="volume")
    raise RuntimeFailure(
        f"HOMELAB_HF_CACHE={source!r} is neither a Docker volume name "
        "(letters, digits, '_', '.', '-') nor an absolute host path"
    )


def _env_value(container: Any, names: Any) -> str | None:
    """The first of `names` set in the container's environment (its Config.Env), or None."""
    config = container.attrs.get("Config")
    env = config.get("Env") if isinstance(config, dict) else None
    values = dict(e.partition("=")[::2] for e in env or () if isinstance(e, str))
    for name in names:
        if values.get(name):
            return values[name]
    return None


def _instance(container: Any, fallback_name: str | None = None) -> Instance:
    labels = container.labels or {}
    state = container.attrs.get("State")
    exit_code = state.get("ExitCode") if isinstance(state, dict) else None
    return Instance(
        model=labels.get(LABEL_MODEL) or fallback_name or container.name,
        running=container.status == "running",
        exit_code=exit_code if container.status in ("exited", "dead") else None,
        spec_hash=labels.get(LABEL_SPEC),
        api_key=_env_value(container, KEY_ENVS),
    )


LOCAL_HOST = "127.0.0.1"
"""Where model ports are published when `model_bind_host` is unset."""
_RELEASE_TIMEOUT = 30.0
"""Seconds `start` waits for a standby container's gate to answer."""


async def _send_line(host: str, port: int, line: bytes, timeout: float) -> bytes:  # noqa: ASYNC109
    """Connect, send `line`, return what comes back up to the first newline (at most 64
    bytes; b"" when refused, dropped or silent within `timeout`)."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(line)
            await writer.drain()
            data = b""
            while b"\n" not in data and len(data) < 64:
                chunk = await reader.read(64)
                if not chunk:
                    break
                data += chunk
            return data
    except (OSError, TimeoutError):
        return b""
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def _published_on(container: Any) -> list[str]:
    """The host addresses the container's model port is published on (its HostConfig)."""
    bindings = ((container.attrs.get("HostConfig") or {}).get("PortBindings") or {}).get(
        f"{INTERNAL_PORT}/tcp"
    )
    return [b.get("HostIp") or "" for b in bindings or () if isinstance(b, dict)]


def publish_host(settings: ManagerSettings) -> str:
    """The host address model ports are published on: `model_bind_host`, else 127.0.0.1
    (this machine only; never every interface unless `model_bind_host` says 0.0.0.0)."""
    return settings.model_bind_host or LOCAL_HOST


class DockerRuntime:
    """The `ContainerRuntime` for Docker. Safe for concurrent use across model names;
    calls for one name are serialised by a per-name lock."""

    def __init__(
        self, settings: ManagerSettings, client: docker.DockerClient | None = None
    ) -> None:
        """Reads `hf_cache`, `model_host`, `hf_token` and `instance` from `settings`.
        `client` defaults to `docker.from_env()`, created on first use."""
        self._settings = settings
        self._instance = settings.instance or None
        self._client = client
        self._client_lock = asyncio.Lock()
        self._locks: dict[str, asyncio.Lock] = {}
        self._on_exit: Callable[[str], None] | None = None
        self._watcher: DieWatcher | None = None
        self._closing = False
        self._removing: set[str] = set()
        """Ids of dead containers being removed in the background (reported as absent)."""
        self._removals: dict[asyncio.Task[None], str] = {}
        """Background removals left by `stop`, with their model names."""
        self._released: set[str] = set()
        """Ids of containers whose gate this runtime released (their server runs)."""
        self._image_argvs: dict[str, tuple[list[str], list[str]]] = {}
        """Entrypoint and command of each image used, read once (an image rebuilt under
        the same tag with another entrypoint needs a manager restart)."""
        self._scanned: set[tuple[str, str]] = set()
        """(model, container name) pairs whose stale containers under old names are removed."""

    # ---- exits ----------------------------------------------------------------------------------
    def watch_exits(self, callback: Callable[[str], None]) -> None:
        """Call `callback(model)` on the event loop as soon as one of this manager's
        containers dies (the engine's event stream; started with the first engine call)."""
        self._on_exit = callback

    async def _ensure_watch(self, client: docker.DockerClient) -> None:
        if self._on_exit is None or self._watcher is not None or self._closing:
            return
        loop = asyncio.get_running_loop()
        self._watcher = DieWatcher(client, self._instance, self._exited, loop)
        self._watcher.start()

    def _exited(self, model: str) -> None:
        if self._on_exit is not None and not self._closing:
            log.info("container of %s died", model)
            self._on_exit(model)

    # ---- plumbing ---------------------------------------------------------------------------
    async def _docker(self) -> docker.DockerClient:
        if self._client is None:
            async with self._client_lock:
                if self._client is None:
                    self._client = await self._call(
                        docker.from_env, what="connect to the Docker engine"
                    )
        await self._ensure_watch(self._client)
        return self._client

    @staticmethod
    async def _call(fn: Callable[..., _T], *args: Any, what: str, **kwargs: Any) -> _T:
        """Run a blocking SDK call in a thread; NotFound passes through, the rest becomes RuntimeFailure."""
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except docker.errors.NotFound:
            raise
        except _ENGINE_ERRORS as exc:
            detail = getattr(exc, "explanation", None) or str(exc) or type(exc).__name__
            raise RuntimeFailure(f"Docker: cannot {what}: {detail}") from exc

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def _get(self, container_name: str) -> Any | None:
        client = await self._docker()
        try:
            return await self._call(
                client.containers.get, container_name, what=f"inspect container {container_name}"
            )
        except docker.errors.NotFound:
            return None

    def _is_managed(self, container: Any) -> bool:
        """Ours: labelled managed, and of this manager's instance (both unset, or equal)."""
        labels = container.labels or {}
        return labels.get(LABEL_MANAGED) == "true" and labels.get(LABEL_INSTANCE) == self._instance

    async def _owned(self, model: str | None = None) -> list[Any]:
        """Containers this manager owns, optionally only those of one model (by label)."""
        client = await self._docker()
        wanted = [f"{LABEL_MANAGED}=true"]
        if model is not None:
            wanted.append(f"{LABEL_MODEL}={model}")
        if self._instance is not None:
            wanted.append(f"{LABEL_INSTANCE}={self._instance}")
        containers = await self._call(
            client.containers.list,
            all=True,
            filters={"label": wanted},
            ignore_removed=True,
            what="list containers",
        )
        return [c for c in containers if self._is_managed(c)]

    @staticmethod
    def _foreign(container_name: str) -> RuntimeFailure:
        return RuntimeFailure(
            f"a container named {container_name!r} already exists and is not managed by homelab-ai "
            f"(it lacks the label {LABEL_MANAGED}=true); homelab-ai never touches containers it does "
            "not own: rename or remove it, or change 'container' in models.json"
        )

    # ---- what a container looks like ----------------------------------------------------------
    def labels(self, name: str, spec: Spec) -> dict[str, str]:
        labels = {LABEL_MANAGED: "true", LABEL_MODEL: name, LABEL_SPEC: spec_hash(spec)}
        if self._instance is not None:
            labels[LABEL_INSTANCE] = self._instance
        return labels

    def container_config(
        self,
        name: str,
        spec: Spec,
        api_key: str | None = None,
        image_argv: tuple[list[str], list[str]] | None = None,
    ) -> dict[str, Any]:
        """Keyword arguments for `containers.create` (pure; exposed for tests and docs).

        The model port is published on `publish_host(settings)` only; `api_key` (the
        server's upstream key) goes into its `key_env` variable. With
        `image_argv` (the image's entrypoint and command, `_image_argv`), the container
        runs `GATE`, which launches the server once released (labelled `LABEL_GATED`);
        without it, the server at once. A vLLM container also carries
        `manager.model_guard`'s text in `gate.GUARD_SOURCE_ENV`, which the gate writes
        as the module vLLM's `--middleware` loads (so a vLLM container needs the gate).
        """
        env = {"HF_HOME": HF_CACHE_TARGET}
        env.update(server_env(name, spec, self._settings, port=INTERNAL_PORT, api_key=api_key))
        command: list[str] | None = None
        if isinstance(spec, LanguageModel):
            command = text_server_args(name, spec, "0.0.0.0", INTERNAL_PORT)
        config: dict[str, Any] = {
            "image": spec.image,
            "command": command,
            "name": spec.container,
            "detach": True,
            "environment": env,
            "labels": self.labels(name, spec),
            "ports": {f"{INTERNAL_PORT}/tcp": (publish_host(self._settings), spec.port)},
            "ipc_mode": "host",
            "restart_policy": {"Name": "no"},
            "mounts": [_hf_cache_mount(self._settings.hf_cache)],
        }
        if image_argv is not None:
            entrypoint, image_cmd = image_argv
            argv = [*entrypoint, *(command if command is not None else image_cmd)]
            if not argv:
                raise RuntimeFailure(f"image {spec.image} has neither an entrypoint nor a command")
            config["entrypoint"] = ["python3", "-c", GATE]
            config["command"] = [str(INTERNAL_PORT), key_env(spec), *argv]
            config["labels"][LABEL_GATED] = "true"
            if guarded(spec):
                env[gate.GUARD_SOURCE_ENV] = model_guard.source()
        if spec.gpu:
            config["device_requests"] = [
                docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])
            ]
        return config

    # ---- ContainerRuntime ---------------------------------------------------------------------
    async def start(self, name: str, spec: Spec) -> None:
        """Launch the server; returns once it is launched, not ready.

        A standby container of this model and spec (`prepare`) is only released: a TCP
        line to its gate, a few ms. Otherwise reuses a managed container of the same
        name, model and spec hash (starting it if stopped; it keeps its upstream key), or
        removes one that differs and creates a new one (a new upstream key), starts it and
        releases its gate. Pulls the image if it is not present (which may take long).
        Raises RuntimeFailure for a foreign container of that name, an unavailable image,
        a busy port, a gate that does not answer, or any engine error.
        """
        async with self._lock(name):
            await self._removed(name)
            existing = await self._get(spec.container)
            if existing is not None and self._matches(existing, name, spec):
                container = existing
                if existing.status != "running":
                    log.info("starting existing container %s for %s", spec.container, name)
                    await self._start_container(existing, spec)
                elif existing.id in self._released:
                    log.info("reusing running container %s for %s", spec.container, name)
                    return
            else:
                container = await self._make(name, spec, existing)
                await self._start_container(container, spec)
            if (container.labels or {}).get(LABEL_GATED) == "true":
                await self._release(container, spec)
            self._released.add(container.id)

    async def prepare(self, name: str, spec: Spec) -> None:
        """Make `name`'s standby container: pull its image if needed, create the container
        and start it behind its gate (with the `standby` setting off: only create it), so
        that a later `start` only releases the gate. Holds no GPU memory; keeps the
        model's port published.

        Does nothing when a managed container of that name runs a server (`start`
        replaces one of another spec) or is a standby one of this spec; starts a stopped
        one of this model and spec; replaces one that differs (a standby one too). Raises RuntimeFailure like `start`
        (foreign container, unavailable image, busy port, engine error).
        """
        async with self._lock(name):
            await self._removed(name)
            existing = await self._get(spec.container)
            matches = existing is not None and self._matches(existing, name, spec)
            if existing is not None and existing.status == "running":
                if matches or not await self._is_standby(existing):
                    return
            elif matches and not self._settings.standby:
                return
            container = existing if matches else await self._make(name, spec, existing)
            if self._settings.standby:
                log.info("starting standby container %s for %s", spec.container, name)
                await self._start_container(container, spec)

    async def _release(self, container: Any, spec: Spec) -> None:
        """Send the container's upstream key to its gate and wait for "ok" (the gate
        then becomes the server). Retries while the gate is not listening yet (the
        container just started); returns if a server answers instead (released before)
        or the container exited (the readiness probe reports why). Raises RuntimeFailure
        when the gate refuses the key or does not answer within `_RELEASE_TIMEOUT`."""
        key = _env_value(container, [key_env(spec)])
        if not key:
            raise RuntimeFailure(f"container {spec.container} has no upstream key to release it")
        host, port = self._settings.model_host, spec.port
        deadline = time.monotonic() + _RELEASE_TIMEOUT
        next_look = time.monotonic() + 0.5
        while True:
            answer = await _send_line(host, port, key.encode() + b"\n", timeout=2.0)
            if answer.startswith(b"ok"):
                log.info("released the gate of %s", spec.container)
                return
            if answer.startswith(b"no"):
                raise RuntimeFailure(f"the gate of {spec.container} refused its upstream key")
            if answer:  # a server answered: the gate was released before
                return
            now = time.monotonic()
            if now > deadline:
                raise RuntimeFailure(
                    f"the gate of {spec.container} did not answer on {host}:{port} "
                    f"within {_RELEASE_TIMEOUT:.0f} s"
                )
            if now > next_look:
                next_look = now + 0.5
                fresh = await self._get(spec.container)
                if fresh is None or fresh.status != "running":
                    return
            await asyncio.sleep(0.01)

    def _matches(self, container: Any, name: str, spec: Spec) -> bool:
        """Ours, of this model and spec, its port published where `publish_host` says now
        (one made before, on another address, is replaced). Raises RuntimeFailure for a
        foreign container."""
        if not self._is_managed(container):
            raise self._foreign(spec.container)
        labels = container.labels or {}
        return (
            labels.get(LABEL_SPEC) == spec_hash(spec)
            and labels.get(LABEL_MODEL) == name
            and _published_on(container) == [publish_host(self._settings)]
        )

    async def _make(self, name: str, spec: Spec, existing: Any | None) -> Any:
        """Create the container, first removing `existing` (of that name, which differs) and
        containers of the model under other names; returns it, not started."""
        if existing is not None:
            log.info(
                "container %s differs from the spec of %s (hash %s, want %s): recreating",
                spec.container,
                name,
                (existing.labels or {}).get(LABEL_SPEC),
                spec_hash(spec),
            )
            await self._remove(existing)
        if (name, spec.container) not in self._scanned:
            # A container of this model under an old name (models.json changed) would be a
            # duplicate, and would likely hold the port: remove it. Once per model and name:
            # only a changed models.json (a new container name) makes such a container.
            for stale in await self._owned(name):
                if stale.name != spec.container:
                    log.info("removing %s, an old container of %s", stale.name, name)
                    await self._remove(stale)
            self._scanned.add((name, spec.container))
        return await self._create(name, spec)

    async def _create(self, name: str, spec: Spec) -> Any:
        client = await self._docker()
        argv = await self._image_argv(client, spec.image)
        config = self.container_config(name, spec, new_upstream_key(), argv)
        try:
            return await self._call(
                client.containers.create, what=f"create container {spec.container}", **config
            )
        except docker.errors.NotFound as exc:
            raise RuntimeFailure(
                f"Docker: cannot create container {spec.container}: {exc}"
            ) from exc

    async def _image_argv(
        self, client: docker.DockerClient, image: str
    ) -> tuple[list[str], list[str]]:
        """The image's entrypoint and command (cached per image), pulling it if absent."""
        cached = self._image_argvs.get(image)
        if cached is not None:
            return cached
        try:
            found = await self._call(client.images.get, image, what=f"inspect image {image}")
        except docker.errors.NotFound:
            found = await self._pull(client, image)
        config = found.attrs.get("Config") or {}
        argv = (list(config.get("Entrypoint") or []), list(config.get("Cmd") or []))
        self._image_argvs[image] = argv
        return argv

    async def _pull(self, client: docker.DockerClient, image: str) -> Any:
        log.info("image %s is not present: pulling it", image)
        repository, _, tag = image.partition("@")[0].rpartition(":")
        try:
            if "@" in image:
                return await self._call(client.images.pull, image, what=f"pull image {image}")
            return await self._call(
                client.images.pull, repository, tag=tag, what=f"pull image {image}"
            )
        except docker.errors.NotFound as exc:
            raise RuntimeFailure(
                f"Docker: image {image} is not present and not in any registry"
            ) from exc

    async def _start_container(self, container: Any, spec: Spec) -> None:
        try:
            await self._call(container.start, what=f"start container {spec.container}")
        except docker.errors.NotFound as exc:
            raise RuntimeFailure(f"container {spec.container} vanished while starting") from exc
        except RuntimeFailure:
            # A container that cannot start (busy port, bad device request) is useless: remove it
            # so the next attempt starts from a clean slate.
            await self._remove(container)
            raise

    async def _remove(self, container: Any) -> None:
        try:
            await self._call(
                container.remove, force=True, v=False, what=f"remove container {container.name}"
            )
        except docker.errors.NotFound:
            pass

    async def stop(self, name: str, spec: Spec | None, timeout: float) -> None:  # noqa: ASYNC109 (protocol)
        """Stop (SIGTERM, then SIGKILL after `timeout` s) and remove the container. Absent is success.

        Returns as soon as the container's process has died (its memory, GPU memory
        included, is freed with it): the engine's network and mount teardown and the
        removal (~150 ms) finish in the background, holding the model's lock, so a `start`
        or `prepare` of the same model waits for them, and `inspect`/`list_owned` no
        longer report the container. With a spec, the container named by it; with None
        (a model no longer in models.json), every owned container labelled with the model
        name. Blocks up to about `timeout` seconds. Raises RuntimeFailure for a container
        of the spec's name that homelab-ai does not own, or an engine error.
        """
        async with self._lock(name):
            await self._removed(name)
            if spec is None:
                targets = await self._owned(name)
            else:
                container = await self._get(spec.container)
                if container is not None and not self._is_managed(container):
                    raise self._foreign(spec.container)
                targets = [container] if container is not None else []
            for container in targets:
                await self._stop_remove(name, container, timeout)

    async def _stop_remove(self, name: str, container: Any, grace: float) -> None:
        try:
            if container.status == "running":
                client = await self._docker()
                await self._call(
                    terminate, client, container, grace, what=f"stop container {container.name}"
                )
            elif container.status in ("restarting", "paused"):
                await self._call(
                    container.stop,
                    timeout=max(1, math.ceil(grace)),
                    what=f"stop container {container.name}",
                )
        except docker.errors.NotFound:
            return
        self._removing.add(container.id)
        task = asyncio.get_running_loop().create_task(
            self._remove_later(container), name=f"remove {container.name}"
        )
        self._removals[task] = name
        task.add_done_callback(self._removals.pop)

    async def _remove_later(self, container: Any) -> None:
        """Remove a dead container (this waits for the engine's teardown). Every later
        `start`, `prepare` or `stop` of the model waits for it first (`_removed`)."""
        try:
            await self._remove(container)
        except Exception as exc:  # a background task: the next start or adoption retries
            log.warning("removing container %s failed: %s", container.name, exc)
        finally:
            self._removing.discard(container.id)

    async def _removed(self, name: str) -> None:
        """Wait for the background removals of `name`'s containers (call under its lock)."""
        pending = [task for task, model in self._removals.items() if model == name]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def settled(self) -> None:
        """Wait until the removals that `stop` left running in the background are done."""
        while self._removals:
            await asyncio.gather(*list(self._removals), return_exceptions=True)

    async def inspect(self, name: str, spec: Spec) -> Instance | None:
        """The managed container's status; None if there is none (or it is not ours)."""
        container = await self._get(spec.container)
        if container is None or not self._is_managed(container) or container.id in self._removing:
            return None
        return _instance(container, name)

    async def logs(self, name: str, spec: Spec, tail: int = 100) -> str:
        """The last `tail` lines of the container's stdout+stderr; '' if there is no container."""
        container = await self._get(spec.container)
        if container is None or not self._is_managed(container):
            return ""
        try:
            raw = await self._call(
                container.logs,
                stdout=True,
                stderr=True,
                tail=max(0, int(tail)),
                what=f"read logs of {spec.container}",
            )
        except docker.errors.NotFound:
            return ""
        return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)

    async def list_owned(self) -> list[Instance]:
        """Every container this manager owns (managed label, same instance), running or not.

        A running gated container whose gate still answers (a standby container: no
        server runs in it) is reported with `running=False, standby=True`; the check is
        one wrong line to its published port, which a gate answers "no" and a server in
        HTTP."""
        containers = [c for c in await self._owned() if c.id not in self._removing]
        standby = await asyncio.gather(*(self._is_standby(c) for c in containers))
        return [
            dataclasses.replace(_instance(c), running=False, standby=True)
            if gated
            else _instance(c)
            for c, gated in zip(containers, standby, strict=True)
        ]

    async def _is_standby(self, container: Any) -> bool:
        if container.status != "running" or (container.labels or {}).get(LABEL_GATED) != "true":
            return False
        if container.id in self._released:
            return False
        ports = (container.attrs.get("NetworkSettings") or {}).get("Ports") or {}
        bound = ports.get(f"{INTERNAL_PORT}/tcp") or []
        host_port = next((b.get("HostPort") for b in bound if b.get("HostPort")), None)
        if host_port is None:
            return False
        answer = await _send_line(self._settings.model_host, int(host_port), _GATE_KNOCK, 2.0)
        return answer.startswith(b"no")

    async def host_memory_mib(self, name: str, spec: Spec) -> int | None:
        """The container's memory usage (MiB; the engine's stats, less its inactive file
        cache), or None when it does not run (`manager.runtime.HostMemoryRuntime`)."""
        container = await self._get(spec.container)
        if container is None or not self._is_managed(container):
            return None
        try:
            stats = await self._call(
                container.stats, stream=False, what=f"read the stats of {spec.container}"
            )
        except docker.errors.NotFound:
            return None
        memory = stats.get("memory_stats") or {}
        usage = memory.get("usage")
        if not isinstance(usage, int):
            return None
        cache = (memory.get("stats") or {}).get("inactive_file", 0)
        return max(0, usage - (cache if isinstance(cache, int) else 0)) // (1024 * 1024)

    def host_total_mib(self) -> int | None:
        """The memory the engine's machine has (``docker info`` MemTotal: on Docker
        Desktop the WSL2 VM's limit, set in .wslconfig), for the host-memory budget; None
        when the engine does not answer. Blocks (start-up only)."""
        try:
            client = self._client or docker.from_env()
            total = client.info().get("MemTotal")
        except _ENGINE_ERRORS as exc:
            log.warning("could not read the engine's memory (docker info): %s", exc)
            return None
        return int(total) // (1024 * 1024) if isinstance(total, int) and total > 0 else None

    def base_url(self, spec: Spec) -> str:
        return f"http://{self._settings.model_host}:{spec.port}"

    async def aclose(self) -> None:
        """Stop following events; close the docker client's HTTP session (optional; for
        tidy shutdowns)."""
        self._closing = True
        await self.settled()
        if self._watcher is not None:
            await asyncio.to_thread(self._watcher.close)
        if self._client is not None:
            await asyncio.to_thread(self._client.close)
