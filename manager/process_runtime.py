"""`ProcessRuntime`: model servers as local processes (a GPU box without Docker, the demo).

Each server is started with `asyncio.create_subprocess_exec` from an argv list
(never a shell) in its own session, so it leads a process group and `stop`
reaches every child it spawned (vLLM runs its engine in a child process):
SIGTERM to the group, then SIGKILL after the timeout.

Text models run `[vllm_python, -m, vllm.entrypoints.openai.api_server]`, image
models `[imageserver_python, -m, imageserver]`, speech models (stt, tts)
`[audioserver_python, -m, audioserver]`; a spec's `command` replaces that
program part and the type's arguments are appended. Servers listen on
`<model_bind_host>:<spec.port>` (127.0.0.1 unless configured).

Output goes to `<log_dir>/<name>.log` (appended; rotated once past 20 MB).
`<log_dir>/registry.json` (`wire.procs`, a contract: deploy/demo.py reads it too; mode
600) maps model name -> pid, process start time, spec hash and upstream key, so a
restarted manager adopts the servers it launched (`list_owned`) with their keys and
never signals a process that merely reuses a recorded pid (the start time must match).

No orphans: the registry is written just after the spawn, so a manager killed in
between would lose the server. Every server therefore carries its owner in its
environment (`HOMELAB_SERVER_OWNER`, a digest of the log folder, plus
`HOMELAB_SERVER_MODEL` and `HOMELAB_SERVER_SPEC`), and `list_owned` also scans
/proc for process-group leaders with this owner: one the registry does not name is
registered then (and so adopted or removed like any other), or killed when the
registry already names a live server of that model. Before a spawn, a model's port
that already accepts connections fails the start (`RuntimeFailure`): readiness must
never take another program's answer for the new server's.

The inherited environment is passed on without any `HOMELAB_*` variable (the
manager's token stays in the manager); the image server's `HOMELAB_IMAGE_*`
(the audio server's `HOMELAB_AUDIO_*`) variables, the spec's `env` and the server's new upstream key (`VLLM_API_KEY` or
`HOMELAB_IMAGE_API_KEY`: in the environment, not on the command line, which every
local user can read) are added. A vLLM server gets `<log_dir>/guard` first on its
`PYTHONPATH`, where each spawn writes `manager.model_guard`'s text as
`homelab_model_guard.py` (the `--middleware` that refuses every path without the key).

POSIX only (process groups, signals).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from manager import model_guard
from manager.errors import RuntimeFailure
from manager.launch import server_env, text_server_args
from manager.runtime import KEY_ENVS, Instance, Spec, guarded, new_upstream_key, spec_hash
from manager.settings import ManagerSettings
from manager.spec import AudioModel, LanguageModel, TextModel
from manager.warm import meminfo_total_mib
from wire.procs import (
    REGISTRY_FILE,
    ProcessRecord,
    is_alive,
    is_same_process,
    read_registry,
    start_time,
)
from wire.procs import write_registry as _write_records

log = logging.getLogger(__name__)

LOCAL_HOST = "127.0.0.1"
LOG_ROTATE_BYTES = 20 * 1024 * 1024
ENV_OWNER = "HOMELAB_SERVER_OWNER"
ENV_MODEL = "HOMELAB_SERVER_MODEL"
ENV_SPEC = "HOMELAB_SERVER_SPEC"
_POLL = 0.05
_GROUP_POLL = 0.005
"""How often a stop looks at a server's process group once its leader has exited."""


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _environ(pid: int) -> dict[bytes, bytes]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.partition(b"=")[::2] for item in raw.split(b"\0") if item)


def _discover(owner: str) -> dict[int, tuple[str, str, str | None]]:
    """Live process-group leaders whose environment names `owner`:
    pid -> (model, spec hash, upstream key or None). Linux /proc only ({} elsewhere)."""
    found: dict[int, tuple[str, str, str | None]] = {}
    try:
        entries = list(Path("/proc").iterdir())
    except OSError:
        return found
    mark = owner.encode()
    for entry in entries:
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        env = _environ(pid)
        if env.get(ENV_OWNER.encode()) != mark or not is_alive(pid):
            continue
        try:
            if os.getpgid(pid) != pid:
                continue  # a child of a server (vLLM's engine), not the server itself
        except OSError:
            continue
        model = env.get(ENV_MODEL.encode(), b"").decode(errors="replace")
        keys = [env[k.encode()] for k in KEY_ENVS if k.encode() in env]
        found[pid] = (
            model,
            env.get(ENV_SPEC.encode(), b"").decode(errors="replace"),
            keys[0].decode(errors="replace") if keys else None,
        )
    return found


def group_rss_mib(pgid: int) -> int | None:
    """The summed VmRSS (MiB) of the processes in group `pgid` (Linux /proc), or None."""
    total_kib, found = 0, False
    try:
        entries = list(os.scandir("/proc"))
    except OSError:
        return None
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pgid:
                continue
            for line in Path(f"/proc/{entry.name}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
                    found = True
        except (OSError, ValueError, IndexError):
            continue
    return total_kib // 1024 if found else None


def _port_busy(host: str, port: int) -> bool:
    """Whether something accepts connections on host:port right now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _tail(path: Path, lines: int) -> str:
    """The last `lines` lines of a file, reading only its end."""
    if lines <= 0:
        return ""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            block, data = 8192, b""
            while end > 0 and data.count(b"\n") <= lines:
                step = min(block, end)
                end -= step
                f.seek(end)
                data = f.read(step) + data
                block *= 2
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise RuntimeFailure(f"cannot read log {path}: {exc.strerror or exc}") from exc
    text = data.decode("utf-8", "replace")
    kept = text.splitlines()[-lines:]
    return "\n".join(kept) + ("\n" if kept else "")


class ProcessRuntime:
    """The `ContainerRuntime` for local processes. One instance per manager process."""

    def __init__(self, settings: ManagerSettings) -> None:
        """Reads `model_host`, `log_dir`, `vllm_python`, `imageserver_python`, `hf_token`
        and `stop_timeout` from `settings`."""
        self._settings = settings
        self._dir = Path(settings.log_dir)
        self._children: dict[str, asyncio.subprocess.Process] = {}
        self._reapers: dict[str, asyncio.Task[int]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._registry_lock = asyncio.Lock()
        self._on_exit: Callable[[str], None] | None = None
        self._pidfds: dict[str, tuple[int, int]] = {}
        """Adopted (not our children) servers watched for exit: name -> (pid, pidfd)."""

    # ---- exits ----------------------------------------------------------------------------------
    def watch_exits(self, callback: Callable[[str], None]) -> None:
        """Call `callback(name)` on the event loop as soon as a server this runtime launched
        or has seen running (adopted) exits; the caller then asks `inspect` for the details.
        Children are watched through their reaper; adopted servers through a pidfd."""
        self._on_exit = callback

    def _exited_now(self, name: str, pid: int) -> None:
        self._unwatch(name)
        child = self._children.get(name)
        if child is not None and child.pid != pid:
            return  # an older server of this model; the current one still runs
        if self._on_exit is not None:
            log.info("server of %s (pid %s) exited", name, pid)
            self._on_exit(name)

    def _watch_adopted(self, name: str, pid: int) -> None:
        """Watch a running server that is not our child (a previous manager's) for its exit."""
        if self._on_exit is None or name in self._children or name in self._pidfds:
            return
        try:
            fd = os.pidfd_open(pid)
        except (OSError, AttributeError):  # no pidfd (old kernel, not Linux): liveness polls
            return
        self._pidfds[name] = (pid, fd)
        asyncio.get_running_loop().add_reader(fd, self._exited_now, name, pid)

    def _unwatch(self, name: str) -> None:
        watched = self._pidfds.pop(name, None)
        if watched is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(watched[1])
            os.close(watched[1])

    # ---- registry ---------------------------------------------------------------------------
    @property
    def registry_path(self) -> Path:
        return self._dir / REGISTRY_FILE

    def _read_registry(self) -> dict[str, ProcessRecord]:
        return read_registry(self._dir)

    def _write_registry(self, records: dict[str, ProcessRecord]) -> None:
        _write_records(self._dir, records)

    async def _update_registry(self, name: str, record: ProcessRecord | None) -> None:
        async with self._registry_lock:

            def update() -> None:
                records = self._read_registry()
                if record is None:
                    records.pop(name, None)
                else:
                    records[name] = record
                self._write_registry(records)

            try:
                await asyncio.to_thread(update)
            except OSError as exc:
                raise RuntimeFailure(
                    f"cannot write {self.registry_path}: {exc.strerror or exc}"
                ) from exc

    async def _record(self, name: str) -> ProcessRecord | None:
        async with self._registry_lock:
            return (await asyncio.to_thread(self._read_registry)).get(name)

    @staticmethod
    def _is_ours(record: ProcessRecord) -> bool:
        """The recorded process is alive and is the one we started (not a reused pid)."""
        return is_same_process(record.pid, record.started)

    # ---- what a server process looks like -----------------------------------------------------
    @property
    def bind_host(self) -> str:
        """The address servers listen on: `model_bind_host`, else 127.0.0.1."""
        return self._settings.model_bind_host or LOCAL_HOST

    def argv(self, name: str, spec: Spec) -> list[str]:
        """The full argv for `spec` (pure; exposed for tests)."""
        if isinstance(spec, LanguageModel):
            if isinstance(spec, TextModel) and spec.backend == "llama.cpp":
                program = spec.command or [self._settings.llama_server]
            else:
                program = spec.command or [
                    self._settings.vllm_python,
                    "-m",
                    "vllm.entrypoints.openai.api_server",
                ]
            return [*program, *text_server_args(name, spec, self.bind_host, spec.port)]
        if isinstance(spec, AudioModel):
            return list(spec.command or [self._settings.audioserver_python, "-m", "audioserver"])
        return list(spec.command or [self._settings.imageserver_python, "-m", "imageserver"])

    @property
    def owner(self) -> str:
        """This runtime's identity in its servers' environment: a digest of its log folder."""
        return hashlib.sha256(str(self._dir.resolve()).encode()).hexdigest()[:16]

    def environment(self, name: str, spec: Spec, api_key: str | None = None) -> dict[str, str]:
        """The server's environment: the manager's minus HOMELAB_*, plus the type's and spec's,
        plus the owner marks (`HOMELAB_SERVER_*`) that make it discoverable, plus
        `manager.launch.server_env` (the launch recipe both runtimes share: the Hugging
        Face token, the image server's variables, the spec's env, `api_key`)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("HOMELAB_")}
        env["PYTHONUNBUFFERED"] = "1"
        env[ENV_OWNER] = self.owner
        env[ENV_MODEL] = name
        env[ENV_SPEC] = spec_hash(spec)
        env.update(
            server_env(
                name, spec, self._settings, port=spec.port, host=self.bind_host, api_key=api_key
            )
        )
        if guarded(spec):
            rest = env.get("PYTHONPATH")
            env["PYTHONPATH"] = str(self.guard_dir) + (os.pathsep + rest if rest else "")
        return env

    def log_path(self, name: str) -> Path:
        return self._dir / f"{name}.log"

    @property
    def guard_dir(self) -> Path:
        """Where `manager.model_guard` is written for vLLM servers (first on their PYTHONPATH)."""
        return self._dir.resolve() / "guard"

    def write_guard(self) -> None:
        """Write `manager.model_guard`'s text as `homelab_model_guard.py` in `guard_dir`
        (each vLLM spawn does; exposed, like `argv` and `environment`, for a test that
        launches a server by this recipe itself)."""
        self.guard_dir.mkdir(parents=True, exist_ok=True)
        target = self.guard_dir / f"{model_guard.MODULE}.py"
        text = model_guard.source()
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            tmp = target.with_suffix(".tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, target)

    # ---- ContainerRuntime ---------------------------------------------------------------------
    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def start(self, name: str, spec: Spec) -> None:
        """Launch the server (or keep the running one if its spec hash matches); not ready yet.

        A running server with another spec hash is stopped first (settings' stop_timeout,
        default 30 s). Raises RuntimeFailure if the program cannot be executed or the log
        folder cannot be written.
        """
        async with self._lock(name):
            wanted = spec_hash(spec)
            record = await self._record(name)
            if record is not None:
                if self._is_ours(record) and record.spec_hash == wanted:
                    child = self._children.get(name)
                    if child is None or child.returncode is None:
                        log.info("reusing running process %s for %s", record.pid, name)
                        return
                if self._is_ours(record):
                    log.info("process %s for %s has another spec: replacing it", record.pid, name)
                    await self._terminate(name, record, self._settings.stop_timeout)
                await self._forget(name)
            if await asyncio.to_thread(_port_busy, LOCAL_HOST, spec.port):
                raise RuntimeFailure(
                    f"port {spec.port} of model {name!r} is already in use by another program "
                    "(not a server of this manager); stop it or give the model another port"
                )
            await self._spawn(name, spec, wanted)

    async def _spawn(self, name: str, spec: Spec, wanted: str) -> None:
        argv = self.argv(name, spec)
        api_key = new_upstream_key()
        path = self.log_path(name)

        def open_log() -> Any:
            self._dir.mkdir(parents=True, exist_ok=True)
            if guarded(spec):
                self.write_guard()
            if path.exists() and path.stat().st_size > LOG_ROTATE_BYTES:
                os.replace(path, path.with_suffix(".log.1"))
            handle = path.open("ab")
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            handle.write(f"==== homelab-ai {stamp}: starting {name}: {argv!r}\n".encode())
            handle.flush()
            return handle

        try:
            handle = await asyncio.to_thread(open_log)
        except OSError as exc:
            raise RuntimeFailure(f"cannot open log file {path}: {exc.strerror or exc}") from exc
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=handle,
                stderr=asyncio.subprocess.STDOUT,
                env=self.environment(name, spec, api_key),
                start_new_session=True,
            )
        except OSError as exc:
            raise RuntimeFailure(
                f"cannot run {argv[0]!r} for model {name!r}: {exc.strerror or exc}"
            ) from exc
        finally:
            handle.close()
        self._unwatch(name)
        self._children[name] = proc
        reaper = asyncio.create_task(proc.wait(), name=f"reap-{name}")
        pid = proc.pid

        def reaped(task: asyncio.Task[int]) -> None:
            if not task.cancelled():
                self._exited_now(name, pid)

        reaper.add_done_callback(reaped)
        self._reapers[name] = reaper
        record = ProcessRecord(
            pid=proc.pid,
            spec_hash=wanted,
            started=start_time(proc.pid),
            argv=argv,
            log=str(path),
            api_key=api_key,
        )
        await self._update_registry(name, record)
        log.info("started %s as pid %s: %s", name, proc.pid, argv)

    async def _forget(self, name: str) -> None:
        self._unwatch(name)
        self._children.pop(name, None)
        reaper = self._reapers.pop(name, None)
        if reaper is not None and not reaper.done():
            reaper.cancel()
        await self._update_registry(name, None)

    async def _exited(self, name: str, record: ProcessRecord) -> bool:
        child = self._children.get(name)
        if child is not None and child.pid == record.pid:
            return child.returncode is not None
        return not self._is_ours(record)

    async def _terminate(self, name: str, record: ProcessRecord, grace: float) -> None:
        """SIGTERM the process group, wait up to `grace` s for it to empty, then SIGKILL."""
        pgid = record.pid  # start_new_session: the server leads its own group
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while (left := deadline - time.monotonic()) > 0:
            if await self._exited(name, record) and not _group_alive(pgid):
                return
            await self._exit_or(name, record, min(_POLL, left))
        log.warning("%s (pid %s) did not stop within %.1fs: killing", name, record.pid, grace)
        _signal_group(pgid, signal.SIGKILL)
        for _ in range(100):  # the kernel needs a moment to tear the group down
            if await self._exited(name, record) and not _group_alive(pgid):
                return
            await asyncio.sleep(_POLL)

    async def _exit_or(self, name: str, record: ProcessRecord, delay: float) -> None:
        """Sleep `delay` seconds, or less: until our child leading `record` exits (its
        reaper), then `_GROUP_POLL` for the rest of its group. A stop returns as soon as
        the server is gone, not at the next 50 ms poll."""
        child, reaper = self._children.get(name), self._reapers.get(name)
        if child is not None and child.pid == record.pid and reaper is not None:
            if not reaper.done():
                await asyncio.wait({reaper}, timeout=delay)
                return
            delay = min(delay, _GROUP_POLL)
        await asyncio.sleep(delay)

    async def stop(self, name: str, spec: Spec | None, timeout: float) -> None:  # noqa: ASYNC109 (protocol)
        """SIGTERM the server's process group, SIGKILL after `timeout` s; forget it. Absent is success."""
        async with self._lock(name):
            record = await self._record(name)
            if record is None:
                return
            # Signal the group when its leader is ours, or when the leader is gone but members
            # remain (the kernel does not reuse a pid while a group of that id exists).
            orphans = not is_alive(record.pid) and _group_alive(record.pid)
            if self._is_ours(record) or orphans:
                await self._terminate(name, record, timeout)
            await self._forget(name)

    async def inspect(self, name: str, spec: Spec) -> Instance | None:
        """Running, or exited (with the exit code when this manager launched it); None if unknown."""
        record = await self._record(name)
        if record is None:
            return None
        child = self._children.get(name)
        if child is not None and child.pid == record.pid:
            if child.returncode is None and not is_alive(child.pid):
                # It exited but the reaper task has not run yet: give it a moment for the code.
                reaper = self._reapers.get(name)
                if reaper is not None:
                    await asyncio.wait({reaper}, timeout=1.0)
            if child.returncode is None:
                return Instance(
                    model=name, running=True, spec_hash=record.spec_hash, api_key=record.api_key
                )
            return Instance(
                model=name,
                running=False,
                exit_code=child.returncode,
                spec_hash=record.spec_hash,
                api_key=record.api_key,
            )
        running = self._is_ours(record)
        if running:
            self._watch_adopted(name, record.pid)
        return Instance(
            model=name, running=running, spec_hash=record.spec_hash, api_key=record.api_key
        )

    async def host_memory_mib(self, name: str, spec: Spec) -> int | None:
        """The resident memory (MiB) of `name`'s process group (the server and the
        children it spawned, such as vLLM's engine core), from /proc; None when it does
        not run (`manager.runtime.HostMemoryRuntime`)."""
        record = await self._record(name)
        if record is None or not self._is_ours(record):
            return None
        return await asyncio.to_thread(group_rss_mib, record.pid)

    def host_total_mib(self) -> int | None:
        """This machine's memory (/proc/meminfo), for the host-memory budget."""
        return meminfo_total_mib()

    async def logs(self, name: str, spec: Spec, tail: int = 100) -> str:
        """The last `tail` lines of the server's log file ('' if none)."""
        return await asyncio.to_thread(_tail, self.log_path(name), int(tail))

    async def list_owned(self) -> list[Instance]:
        """Every server in the registry, with whether its process is still alive, after
        taking in the unregistered servers of this owner found in /proc (module docstring)."""
        await self._take_in_strays()
        async with self._registry_lock:
            records = await asyncio.to_thread(self._read_registry)
        owned = []
        for name, record in records.items():
            child = self._children.get(name)
            if child is not None and child.pid == record.pid and child.returncode is not None:
                owned.append(
                    Instance(
                        name,
                        running=False,
                        exit_code=child.returncode,
                        spec_hash=record.spec_hash,
                        api_key=record.api_key,
                    )
                )
            else:
                owned.append(
                    Instance(
                        name,
                        running=self._is_ours(record),
                        spec_hash=record.spec_hash,
                        api_key=record.api_key,
                    )
                )
        return owned

    async def _take_in_strays(self) -> None:
        """Register each live, unregistered server of this owner; kill one whose model
        already has a live registered server (a duplicate must never serve)."""
        async with self._registry_lock:
            records = await asyncio.to_thread(self._read_registry)
        known = {record.pid for record in records.values()}
        for pid, (model, wanted, key) in (await asyncio.to_thread(_discover, self.owner)).items():
            if pid in known or not model:
                continue
            stray = ProcessRecord(
                pid=pid,
                spec_hash=wanted,
                started=start_time(pid),
                argv=[],
                log=str(self.log_path(model)),
                api_key=key,
            )
            registered = records.get(model)
            if registered is not None and self._is_ours(registered):
                log.warning("killing a duplicate unregistered server of %s (pid %s)", model, pid)
                await self._terminate(model, stray, 5.0)
                continue
            log.warning("found an unregistered server of %s (pid %s): registering it", model, pid)
            await self._update_registry(model, stray)
            records[model] = stray

    def base_url(self, spec: Spec) -> str:
        return f"http://{self._settings.model_host}:{spec.port}"
