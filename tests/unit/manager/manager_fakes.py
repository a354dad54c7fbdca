"""Fakes for the manager's unit tier, behind the real protocols.

`FakeRuntime` implements `manager.runtime.ContainerRuntime` in memory and
checks the one invariant the GPU cares about: never two servers running.
`FakeProbe` implements `manager.probe.ReadinessProbe` by asking the runtime,
like the real probe does, with knobs to hold a start, fail it, or kill a server.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

from manager.errors import RuntimeFailure, StartFailed
from manager.runtime import Instance, Spec, spec_hash
from manager.spec import parse_catalogue
from manager.warm import WarmFailure

CATALOGUE = {
    "alpha": {
        "type": "text",
        "container": "t-alpha",
        "port": 18001,
        "image": "vllm/vllm-openai:v0.32.0",
        "model": "org/alpha",
        "description": "the first",
    },
    "beta": {
        "type": "text",
        "container": "t-beta",
        "port": 18002,
        "image": "vllm/vllm-openai:v0.32.0",
        "model": "org/beta",
        "idle_ttl": 60,
        "tool_calls": {"parser": "hermes"},
    },
    "pix": {
        "type": "image",
        "container": "t-pix",
        "port": 18003,
        "image": "homelab-ai/imageserver:0.1.0",
        "model": "org/pix",
        "sizes": ["512x512", "768x768"],
        "max_n": 2,
    },
}


def catalogue(data: dict | None = None):
    return parse_catalogue(data or CATALOGUE, source="test-models.json")


class TwoResident(AssertionError):
    """The fake GPU saw two servers running at once."""


class FakeRuntime:
    """An in-memory ContainerRuntime. `calls` records ("start"|"stop", name) in order."""

    def __init__(self, capacity: int | None = None) -> None:
        """`capacity`: the fake GPU's memory; servers may then run together while their
        specs' `gpu_memory_mib` fit it (else: never two at once)."""
        self.capacity = capacity
        self.specs: dict[str, Spec] = {}
        self.instances: dict[str, Instance] = {}
        self.calls: list[tuple[str, str]] = []
        self.stop_failures: dict[str, int] = defaultdict(int)
        self.start_failures: dict[str, Exception] = {}
        self.stop_specs: list[Spec | None] = []
        self.log_lines: dict[str, list[str]] = defaultdict(list)
        self.max_running = 0
        self.asleep: set[str] = set()
        """Servers that sleep (`FakeWarm`): running, but holding no GPU memory."""
        self.host_mib: dict[str, int] = {}
        """What `host_memory_mib` reports per server (`manager.runtime.HostMemoryRuntime`)."""

    def running(self) -> list[str]:
        return sorted(name for name, inst in self.instances.items() if inst.running)

    def put(
        self,
        name: str,
        *,
        running: bool = True,
        exit_code: int | None = None,
        hash_: str | None = None,
    ) -> None:
        """Pretend a server exists already (adoption tests)."""
        self.instances[name] = Instance(name, running, exit_code, hash_)

    def kill(self, name: str, exit_code: int = 137) -> None:
        """The server exits on its own (crash, OOM)."""
        old = self.instances[name]
        self.instances[name] = Instance(name, False, exit_code, old.spec_hash, old.api_key)

    async def start(self, name: str, spec: Spec) -> None:
        await asyncio.sleep(0)
        self.calls.append(("start", name))
        if name in self.start_failures:
            raise self.start_failures.pop(name)
        others = [n for n in self.running() if n != name and n not in self.asleep]
        if self.capacity is None and others:
            raise TwoResident(f"starting {name} while {others} run")
        if self.capacity is not None:
            taken = sum(self.specs[n].gpu_memory_mib or self.capacity for n in others)
            if taken + (spec.gpu_memory_mib or self.capacity) > self.capacity:
                raise TwoResident(f"starting {name} beside {others} overruns the GPU")
        self.specs[name] = spec
        self.instances[name] = Instance(
            name, True, None, spec_hash(spec), api_key=f"key-{name}-{len(self.calls)}"
        )
        self.log_lines[name].append(f"{name} starting")
        self.max_running = max(self.max_running, len(self.running()))

    async def stop(self, name: str, spec: Spec | None, timeout: float) -> None:  # noqa: ASYNC109
        await asyncio.sleep(0)
        self.calls.append(("stop", name))
        self.stop_specs.append(spec)
        if self.stop_failures[name] > 0:
            self.stop_failures[name] -= 1
            raise RuntimeFailure(f"engine refused to stop {name}")
        self.instances.pop(name, None)
        self.asleep.discard(name)

    async def host_memory_mib(self, name: str, spec: Spec) -> int | None:
        inst = self.instances.get(name)
        return self.host_mib.get(name) if inst is not None and inst.running else None

    async def inspect(self, name: str, spec: Spec) -> Instance | None:
        return self.instances.get(name)

    async def logs(self, name: str, spec: Spec, tail: int = 100) -> str:
        return "\n".join(self.log_lines[name][-tail:])

    async def list_owned(self) -> list[Instance]:
        return list(self.instances.values())

    def base_url(self, spec: Spec) -> str:
        return f"http://127.0.0.1:{spec.port}"


class FakeProbe:
    """A ReadinessProbe that consults the runtime, with test controls:

    `hold(name)` makes the next readiness waits block until `release(name)`;
    `fail_next(name, ...)` makes the next wait raise StartFailed.
    """

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.failures: dict[str, StartFailed] = {}
        self.ready_calls: list[str] = []
        self.alive_calls: list[str] = []
        self.waiting: set[str] = set()

    def hold(self, name: str) -> None:
        self.gates[name] = asyncio.Event()

    def release(self, name: str) -> None:
        self.gates.pop(name).set()

    def fail_next(
        self, name: str, reason: str = "engine died", exit_code: int | None = 1, logs: str = ""
    ) -> None:
        self.failures[name] = StartFailed(name, reason, exit_code=exit_code, logs=logs)

    async def wait_ready(self, name: str, spec: Spec, runtime) -> None:
        self.ready_calls.append(name)
        gate = self.gates.get(name)
        if gate is not None:
            self.waiting.add(name)
            try:
                await gate.wait()
            finally:
                self.waiting.discard(name)
        if name in self.failures:
            raise self.failures.pop(name)
        inst = await runtime.inspect(name, spec)
        if inst is None or not inst.running:
            code = inst.exit_code if inst else None
            raise StartFailed(
                name, "the server exited", exit_code=code, logs=await runtime.logs(name, spec, 50)
            )

    async def check_alive(self, name: str, spec: Spec, runtime) -> str | None:
        self.alive_calls.append(name)
        inst = await runtime.inspect(name, spec)
        if inst is None:
            return "the server is gone"
        if not inst.running:
            return f"the server exited with code {inst.exit_code}"
        return None


class FakeWarm:
    """A `manager.warm.WarmControl` over a `FakeRuntime`: a sleeping server is marked in
    `runtime.asleep` (so the fake GPU does not count it). `fail_sleep` / `fail_wake` name
    models whose next call fails; `hold(name)` blocks its next sleep or wake until
    `release(name)`; `calls` records ("sleep"|"wake", name, key)."""

    def __init__(self, runtime: FakeRuntime, models) -> None:
        self.runtime, self.models = runtime, models
        self.calls: list[tuple[str, str, str | None]] = []
        self.fail_sleep: set[str] = set()
        self.fail_wake: set[str] = set()
        self.gates: dict[str, asyncio.Event] = {}

    def hold(self, name: str) -> None:
        self.gates[name] = asyncio.Event()

    def release(self, name: str) -> None:
        self.gates.pop(name).set()

    def _name(self, spec: Spec) -> str:
        return next(n for n, s in self.models.models.items() if s.port == spec.port)

    async def _gate(self, name: str) -> None:
        gate = self.gates.get(name)
        if gate is not None:
            await gate.wait()

    async def sleep(self, spec: Spec, base_url: str, api_key: str | None) -> None:
        name = self._name(spec)
        self.calls.append(("sleep", name, api_key))
        await self._gate(name)
        if name in self.fail_sleep:
            self.fail_sleep.discard(name)
            raise WarmFailure(f"{name} cannot sleep")
        self.runtime.asleep.add(name)

    async def wake(self, spec: Spec, base_url: str, api_key: str | None) -> None:
        name = self._name(spec)
        self.calls.append(("wake", name, api_key))
        await self._gate(name)
        if name in self.fail_wake:
            self.fail_wake.discard(name)
            raise WarmFailure(f"{name} did not wake")
        self.runtime.asleep.discard(name)

    async def is_sleeping(self, spec: Spec, base_url: str, api_key: str | None) -> bool | None:
        return self._name(spec) in self.runtime.asleep


class FakeClock:
    """A monotonic clock the test moves by hand; `step` is added on every read."""

    def __init__(self, start: float = 1000.0, step: float = 0.0) -> None:
        self.now, self.step = start, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class GpuCheck:
    """A GpuReleaseCheck that records its calls and can be told to fail."""

    def __init__(self) -> None:
        self.calls: list[float] = []
        self.needs: list[int | None] = []
        self.error: Exception | None = None

    async def __call__(self, timeout: float, *, need_mib: int | None = None) -> None:  # noqa: ASYNC109
        self.calls.append(timeout)
        self.needs.append(need_mib)
        if self.error is not None:
            raise self.error


async def until(predicate, what: str = "condition", limit: float = 10.0) -> None:
    """Let the loop run until `predicate()` holds. The limit only guards against a hang."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.001)
