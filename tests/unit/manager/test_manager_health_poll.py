"""The readiness poll's timing: fast looks, a runtime check every tenth of a second, a
backoff only for long loads, exits and failures with their reasons; and the cheap
knock that tells a port nobody serves from a server that answers.

The probe's HTTP look (`check`) is replaced by a scripted server that becomes ready at
a given time on a fake clock; the probe's `sleep` advances that clock. So what is
tested is the loop's timing decisions (how long after the server became ready it
noticed, how many looks and runtime calls it made), without a wall clock. The knock
is tested against real loopback sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from manager_fakes import CATALOGUE, FakeRuntime, catalogue

from manager.errors import StartFailed
from manager.health import HttpReadinessProbe, Verdict
from manager.runtime import Instance, Spec
from manager.spec import EmbeddingModel


class FakeClock:
    """Monotonic seconds that move only when the probe sleeps; `at(t, fn)` runs `fn` once
    the clock has reached `t` (a server that exits meanwhile)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []
        self._due: list[tuple[float, Callable[[], None]]] = []

    def __call__(self) -> float:
        return self.now

    def at(self, when: float, action: Callable[[], None]) -> None:
        self._due.append((when, action))

    async def sleep(self, delay: float) -> None:
        self.slept.append(delay)
        self.now += delay
        for item in [d for d in self._due if d[0] <= self.now]:
            self._due.remove(item)
            item[1]()
        await asyncio.sleep(0)


class ScriptedServer(HttpReadinessProbe):
    """A probe whose HTTP look answers as a server that is ready from `ready_at` on
    (or says `final` then)."""

    def __init__(
        self, clock: FakeClock, ready_at: float, final: str = "ready", **kwargs: object
    ) -> None:
        super().__init__(clock=clock, sleep=clock.sleep, **kwargs)  # type: ignore[arg-type]
        self.clock = clock
        self.ready_at = ready_at
        self.final = final
        self.looks: list[float] = []

    async def knock(self, base_url: str, within: float, api_key: str | None = None) -> int | str:
        return 200  # every look goes on to the scripted `check`

    async def check(
        self, name, spec, base_url, *, within=None, api_key=None, health=None
    ) -> Verdict:
        self.looks.append(self.clock.now)
        if self.clock.now < self.ready_at:
            return Verdict("loading", "not answering yet (ConnectError)")
        if self.final == "failed":
            return Verdict("failed", "vLLM reports its engine is dead (GET /health answered 503)")
        return Verdict("ready", "ready")


class CountingRuntime(FakeRuntime):
    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.inspected: list[float] = []

    async def inspect(self, name: str, spec: Spec) -> Instance | None:
        self.inspected.append(self.clock.now)
        return await super().inspect(name, spec)


async def _wait(probe: ScriptedServer, start_timeout: float = 600.0) -> CountingRuntime:
    spec = catalogue().models["alpha"].model_copy(update={"start_timeout": start_timeout})
    runtime = CountingRuntime(probe.clock)
    await runtime.start("alpha", spec)
    try:
        await probe.wait_ready("alpha", spec, runtime)
    finally:
        await probe.aclose()
    return runtime


async def test_a_server_ready_after_two_seconds_is_noticed_within_twenty_milliseconds():
    clock = FakeClock()
    probe = ScriptedServer(clock, ready_at=2.0)
    runtime = await _wait(probe)
    assert 2.0 <= clock.now <= 2.0 + 0.02 + 1e-9
    assert clock.slept[0] == 0.02  # the first look
    assert max(clock.slept) == pytest.approx(0.02, abs=1e-3)
    assert len(probe.looks) == pytest.approx(100, abs=2)
    # The runtime is asked on the first look, then about every tenth of a second.
    assert runtime.inspected[0] == probe.looks[0]
    assert len(runtime.inspected) == pytest.approx(20, abs=2)
    gaps = [b - a for a, b in zip(runtime.inspected, runtime.inspected[1:], strict=False)]
    assert all(0.1 - 1e-9 <= gap <= 0.12 + 1e-9 for gap in gaps)


async def test_a_long_load_backs_off_to_a_quarter_second_and_costs_hundreds_of_looks():
    clock = FakeClock()
    probe = ScriptedServer(clock, ready_at=100.0)
    runtime = await _wait(probe)
    assert clock.now - 100.0 <= 0.25 + 1e-9  # noticed within one capped interval
    waits = clock.slept[1:]
    assert all(b >= a - 1e-9 for a, b in zip(waits, waits[1:], strict=False))  # never shrinks
    assert max(waits) == pytest.approx(0.25)
    assert waits[-1] == pytest.approx(0.25)
    # 20 ms up to 2 s, 1% of the time waited up to 25 s, then 0.25 s: about 650 looks.
    assert 550 <= len(probe.looks) <= 750
    # The runtime is asked every tenth of a second, or every other look once they are slower.
    gaps = [b - a for a, b in zip(runtime.inspected, runtime.inspected[1:], strict=False)]
    assert min(gaps) >= 0.1 - 1e-9
    assert max(gaps) <= 0.5 + 1e-9
    assert len(runtime.inspected) <= len(probe.looks) / 2 + 1


def test_the_interval_is_flat_then_proportional_then_capped():
    probe = HttpReadinessProbe()
    assert probe.interval_after(0.0) == 0.02
    assert probe.interval_after(2.0) == pytest.approx(0.02)
    assert probe.interval_after(10.0) == pytest.approx(0.1)
    assert probe.interval_after(25.0) == pytest.approx(0.25)
    assert probe.interval_after(1000.0) == 0.25


async def test_an_exit_while_loading_fails_within_a_tenth_of_a_second_with_code_and_logs():
    clock = FakeClock()
    probe = ScriptedServer(clock, ready_at=50.0)
    spec = catalogue().models["alpha"]
    runtime = CountingRuntime(clock)
    await runtime.start("alpha", spec)
    runtime.log_lines["alpha"].append("CUDA out of memory")
    clock.at(1.0, lambda: runtime.kill("alpha", exit_code=1))
    with pytest.raises(StartFailed) as failed:
        await probe.wait_ready("alpha", spec, runtime)
    assert failed.value.exit_code == 1
    assert "exited with code 1" in failed.value.reason
    assert "CUDA out of memory" in failed.value.logs
    assert 1.0 <= clock.now <= 1.0 + 0.1 + 0.02 + 1e-9


async def test_a_failed_verdict_prefers_the_exit_code_and_otherwise_gives_the_reason():
    clock = FakeClock()
    probe = ScriptedServer(clock, ready_at=0.5, final="failed")
    with pytest.raises(StartFailed) as failed:
        await _wait(probe)
    assert "engine is dead" in failed.value.reason
    assert failed.value.exit_code is None
    assert 0.5 <= clock.now <= 0.52 + 1e-9  # at the first look that saw it


async def test_the_start_timeout_is_kept_and_names_the_last_check():
    clock = FakeClock()
    probe = ScriptedServer(clock, ready_at=1e9)
    with pytest.raises(StartFailed) as failed:
        await _wait(probe, start_timeout=3.0)
    assert "not ready within its start_timeout of 3s" in failed.value.reason
    assert "ConnectError" in failed.value.reason
    assert clock.now == pytest.approx(3.0)


async def test_the_intervals_are_constructor_knobs():
    clock = FakeClock()
    probe = ScriptedServer(
        clock, ready_at=30.0, first_delay=0.2, interval=0.05, backoff=0.0, max_interval=1.0
    )
    await _wait(probe)
    assert clock.slept[0] == 0.2
    assert set(clock.slept[1:]) == {0.05}


async def _serve(handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def test_knock_a_closed_port_is_refused():
    server, url = await _serve(lambda r, w: w.close())
    server.close()
    await server.wait_closed()
    async with HttpReadinessProbe() as probe:
        assert await probe.knock(url, 1.0) == "connection refused"


async def test_knock_a_port_proxy_that_accepts_and_drops_is_not_listening():
    """Docker's userland port proxy accepts, finds nothing listening inside, and closes."""

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server, url = await _serve(drop)
    async with server, HttpReadinessProbe() as probe:
        assert await probe.knock(url, 1.0) == "connection closed without an answer"


async def test_knock_a_server_that_answers_any_status_is_listening():
    requests: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server, url = await _serve(answer)
    async with server, HttpReadinessProbe() as probe:
        assert await probe.knock(url, 1.0) == 503
    assert requests[0].startswith(b"GET /health HTTP/1.1\r\n")


async def test_a_text_model_whose_knock_got_200_is_only_asked_for_its_model_list():
    paths: list[str] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                request = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return  # the client closed its connection
            path = request.split()[1].decode()
            paths.append(path)
            body = b'{"data": [{"id": "alpha"}]}' if path == "/v1/models" else b"{}"
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()

    spec = catalogue().models["alpha"]
    server, url = await _serve(answer)
    async with server, HttpReadinessProbe() as probe:
        embedding = EmbeddingModel.model_validate(CATALOGUE["alpha"] | {"type": "embedding"})
        assert (await probe.check("alpha", embedding, url, health=200)).state == "ready"
        assert paths == ["/v1/models"]  # vLLM's pooling runner: the same look as a text model
        paths.clear()
        assert (await probe.check("alpha", spec, url, health=200)).state == "ready"
        assert paths == ["/v1/models"]
        assert (await probe.check("alpha", spec, url, health=503)).state == "ready"
        assert paths[1:] == ["/health", "/v1/models"]  # anything else is asked again
