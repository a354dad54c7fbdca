"""The hosts as one (proxy/hosts.py `Fleet`): the merged catalogue, placement on the hosts'
states, a down host skipped, a sleeping one woken (its magic packet seen on a UDP socket),
and a 503 with Retry-After when no host comes back within the bound."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from proxy_fakes import TOKEN, FakeManager, serve_asgi

from proxy.catalogue import HostSpec
from proxy.errors import ManagerUnavailable
from proxy.event_hub import EventHub
from proxy.hosts import Fleet, HostLink
from proxy.lease_pool import LeasePool
from proxy.manager_client import ManagerClient
from proxy.wol import magic_packet
from wire.models import ModelStatus

MAC = "02:00:00:00:00:26"


def _status(name: str, state: str, **kw: object) -> ModelStatus:
    return ModelStatus(id=name, type="text", state=state, since=time.time(), **kw)  # type: ignore[arg-type]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _fleet(http: aiohttp.ClientSession, *specs: HostSpec, bound: float = 0.3) -> Fleet:
    links = []
    for spec in specs:
        client = ManagerClient(f"http://127.0.0.1:9/{spec.name}", "t" * 43, http, outage_window=0)
        links.append(HostLink(spec, client, LeasePool(client)))
    return Fleet(links, outage_window=bound, wake_timeout=bound)


async def test_the_merged_list_shows_each_model_once_with_its_hosts(
    http: aiohttp.ClientSession,
) -> None:
    fleet = _fleet(http, HostSpec(name="a"), HostSpec(name="b"), HostSpec(name="c"))
    a, b, c = fleet.links.values()
    a.events = {"chat": _status("chat", "stopped", waiting=1), "only-a": _status("only-a", "ready")}
    b.events = {"chat": _status("chat", "ready", waiting=2, in_flight=1)}
    c.events = {"chat": _status("chat", "starting")}
    c.client.reachable = False
    merged = fleet.event_models()
    assert merged is not None and set(merged) == {"chat", "only-a"}
    chat = merged["chat"]
    assert chat.state == "ready" and chat.hosts == ["a", "b", "c"]
    assert chat.resident_on == ["b"] and chat.loading_on == [] and chat.away_on == ["c"]
    assert chat.waiting == 3 and chat.in_flight == 1
    wire = chat.to_wire()
    assert wire["hosts"] == ["a", "b", "c"] and wire["resident_on"] == ["b"]
    assert "hosts" not in _status("x", "ready").to_wire()  # the manager sends none of them


async def test_placement_follows_the_hosts_states_and_skips_a_down_one(
    http: aiohttp.ClientSession,
) -> None:
    fleet = _fleet(http, HostSpec(name="a"), HostSpec(name="b"))
    a, b = fleet.links.values()
    a.events = {"chat": _status("chat", "stopped")}
    b.events = {"chat": _status("chat", "ready")}
    assert (await fleet.choose("chat", set())) is b
    assert (await fleet.choose("chat", {"b"})) is a  # b failed this request: the next
    fleet.mark_down(b)
    assert (await fleet.choose("chat", set())) is a
    fleet.mark_up(b)  # b back, its model falling asleep (the warm tier): cheap to wake there
    b.events = {"chat": _status("chat", "falling_asleep")}
    assert fleet.place("chat").order == ("b", "a")
    merged = fleet.event_models()
    assert merged is not None and merged["chat"].state == "falling_asleep"


async def test_no_host_back_within_the_bound_is_a_503_with_retry_after(
    http: aiohttp.ClientSession,
) -> None:
    fleet = _fleet(http, HostSpec(name="a"), HostSpec(name="b"))
    for link in fleet.links.values():
        link.events = {"chat": _status("chat", "ready")}
        link.client.reachable = False
        link.failures, link.retry_at = 5, time.monotonic() + 3600
    with pytest.raises(ManagerUnavailable) as err:
        await fleet.choose("chat", set())
    assert err.value.status == 503 and err.value.headers == {"Retry-After": "5"}


async def test_a_sleeping_host_is_woken_and_chosen_once_it_is_up(
    http: aiohttp.ClientSession,
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.setblocking(False)
        port = listener.getsockname()[1]
        sleepy = HostSpec(
            name="sleepy", mac=MAC, broadcast="127.0.0.1", wol_port=port, sleepable=True
        )
        fleet = _fleet(http, HostSpec(name="awake"), sleepy, bound=30)
        awake, asleep = fleet.links.values()
        awake.events = {"other": _status("other", "ready")}
        asleep.events = None
        asleep.client.reachable = False
        asleep.client._models = {"big": _status("big", "stopped")}  # its last known list
        chosen = asyncio.create_task(fleet.choose("big", set()))
        loop = asyncio.get_running_loop()
        packet = await asyncio.wait_for(loop.sock_recv(listener, 1024), 10)
        assert packet == magic_packet(MAC) and fleet.wakes == 1
        assert not chosen.done()  # it waits for the host
        asleep.events = {"big": _status("big", "stopped")}
        fleet.mark_up(asleep)  # its event stream connected
        assert (await asyncio.wait_for(chosen, 10)) is asleep


@contextlib.asynccontextmanager
async def _two_fakes(
    http: aiohttp.ClientSession, models: dict[str, dict]
) -> AsyncIterator[tuple[Fleet, FakeManager, FakeManager]]:
    a, b = FakeManager(models, "http://127.0.0.1:9"), FakeManager(models, "http://127.0.0.1:9")
    async with serve_asgi(a.app) as url_a, serve_asgi(b.app) as url_b:
        links = []
        for name, url in (("a", url_a), ("b", url_b)):
            client = ManagerClient(url, TOKEN, http, outage_window=0, models_ttl=0)
            links.append(HostLink(HostSpec(name=name), client, LeasePool(client)))
        yield Fleet(links, outage_window=0.3), a, b


async def test_a_host_whose_gpu_budget_fits_the_model_beside_its_residents_goes_first(
    http: aiohttp.ClientSession,
) -> None:
    models = {
        "chat": {"type": "text", "gpu_memory_mib": 6000},
        "other": {"type": "text", "gpu_memory_mib": 4000},
    }
    async with _two_fakes(http, models) as (fleet, a, b):
        for fake in (a, b):
            fake.states["other"] = "ready"
        b.gpu_budget_mib = 24000  # b's manager shares its card; a's runs one model at a time
        await fleet.models(max_age=0)
        assert [v.budget_mib for v in fleet.views("chat")] == [None, 24000]
        assert fleet.place("chat").order == ("b", "a")
        b.gpu_budget_mib = 8000  # 6000 + 4000 no longer fits: both evict, the name decides
        await fleet.models(max_age=0)
        assert fleet.place("chat").order == ("a", "b")


async def test_queues_come_from_the_hosts_lists_not_the_stream_copy_and_are_refreshed(
    http: aiohttp.ClientSession,
) -> None:
    async with _two_fakes(http, {"chat": {"type": "text"}}) as (fleet, a, b):
        for fake in (a, b):
            fake.states["chat"] = "ready"
        await fleet.models(max_age=0)
        for link in fleet.links.values():  # the event stream's copy, as of its snapshot
            link.events = dict(link.client.last or {})
        assert fleet.place("chat").order == ("a", "b")
        a.waiting["chat"] = 7  # a's queue grows; the stream says nothing of queues
        fleet.refresh()  # what `choose` does first: the lists older than the ttl, fetched
        await asyncio.sleep(0)
        for _ in range(100):
            if not fleet._refreshing:
                break
            await asyncio.sleep(0.02)
        assert not fleet._refreshing  # each fetch, once done, lets the host be fetched again
        assert fleet.place("chat").order == ("b", "a")
        assert (await fleet.choose("chat", set())).name == "b"
        fleet.invalidate_models()
        fleet.refresh()
        assert set(fleet._refreshing) == {"a", "b"}
        await fleet.close()  # the app's shutdown: no fetch left behind
        assert not fleet._refreshing


async def test_a_host_coming_back_makes_browsers_rejoin_for_the_merged_snapshot(
    http: aiohttp.ClientSession,
) -> None:
    fleet = _fleet(http, HostSpec(name="a"), HostSpec(name="b"))
    a, b = fleet.links.values()
    hub = EventHub(fleet, lambda parsed, link: None)
    hub.handle([_status("chat", "ready")], a)
    b.client.reachable = False
    b.client._models = {"chat": _status("chat", "stopped")}  # b's last known list
    sub, frame = hub.subscribe()
    assert b'"away_on":["b"]' in frame.replace(b" ", b"")
    hub.handle([_status("chat", "stopped")], b)  # b's stream connected: its snapshot
    assert sub.ended
    fleet.mark_up(b)
    _, frame = hub.subscribe()
    assert b'"away_on":[]' in frame.replace(b" ", b"")
