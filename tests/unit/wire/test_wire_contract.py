"""Contract: what the real manager app sends is what the proxy reads, through the same
`wire` types. The manager's API (a real scheduler over the unit tier's fakes) is served
for real on loopback; the proxy's real `ManagerClient` talks to it over aiohttp."""

from __future__ import annotations

import aiohttp
import pytest

from manager.api import create_app
from manager.scheduler import Scheduler, SchedulerConfig
from manager.settings import ManagerSettings
from manager.state import ModelState
from proxy.errors import ManagerRefused
from proxy.manager_client import ManagerClient
from tests.unit.manager.manager_fakes import CATALOGUE, FakeProbe, FakeRuntime, catalogue
from tests.unit.proxy.proxy_fakes import serve_asgi
from wire.events import SseParser, StateEvent, SwapEvent, parse_event
from wire.lease import LeaseGrant, LeaseRenewal
from wire.models import ModelStateName, ModelStatus

TOKEN = "c0ntract-7Qx2kLp9Vd4Rw8Zs"


@pytest.fixture
async def manager_url():
    scheduler = Scheduler(
        catalogue(), FakeRuntime(), FakeProbe(), SchedulerConfig(batch_bound=3, stop_backoff=0)
    )
    settings = ManagerSettings(manager_token=TOKEN, sse_heartbeat=0.05)
    async with serve_asgi(create_app(scheduler, settings)) as url:
        yield url


@pytest.fixture
async def client(manager_url):
    async with aiohttp.ClientSession() as session:
        yield ManagerClient(manager_url, TOKEN, session, models_ttl=0)


def test_the_manager_states_are_the_wire_states() -> None:
    assert {s.value for s in ModelState} == set(ModelStateName.__args__)  # type: ignore[attr-defined]
    assert all(s.wire == s.value for s in ModelState)


async def test_model_list_and_leases_validate_as_the_proxy_reads_them(client) -> None:
    models = await client.models()
    assert list(models) == ["alpha", "beta", "pix"]
    assert all(isinstance(m, ModelStatus) for m in models.values())
    assert models["pix"].sizes == ["512x512", "768x768"] and models["pix"].max_n == 2
    assert models["alpha"].state == "stopped" and models["alpha"].sizes is None

    grant = await client.grant("alpha")
    assert isinstance(grant, LeaseGrant)
    # Nobody else waits: unbounded, for up to the batch bound at once.
    assert (grant.model, grant.type, grant.max_uses, grant.max_concurrent) == (
        "alpha",
        "text",
        0,
        3,
    )
    assert grant.base_url == "http://127.0.0.1:18001"
    assert (await client.models())["alpha"].in_flight == 1
    renewal = await client.renew(grant.lease_id)
    assert isinstance(renewal, LeaseRenewal)
    assert (renewal.ttl, renewal.contended) == (grant.ttl, False)
    await client.release(grant.lease_id)
    with pytest.raises(ManagerRefused) as info:
        await client.renew(grant.lease_id)
    assert info.value.status == 404 and info.value.code == "lease_not_found"


async def test_an_embedding_model_reads_as_its_own_type_without_text_or_image_fields() -> None:
    emb = {**CATALOGUE["alpha"], "type": "embedding", "container": "t-emb", "port": 18004}
    scheduler = Scheduler(
        catalogue({**CATALOGUE, "emb": emb}), FakeRuntime(), FakeProbe(), SchedulerConfig()
    )
    settings = ManagerSettings(manager_token=TOKEN)
    async with (
        serve_asgi(create_app(scheduler, settings)) as url,
        aiohttp.ClientSession() as session,
    ):
        raw = await (await session.get(f"{url}/v1/models", headers=_auth())).json()
        sent = next(m for m in raw["data"] if m["id"] == "emb")
        assert sent["type"] == "embedding"
        assert not {"vision", "sizes", "max_n"} & set(sent)
        client = ManagerClient(url, TOKEN, session, models_ttl=0)
        assert (await client.models())["emb"].type == "embedding"
        grant = await client.grant("emb")
        assert (grant.type, grant.base_url) == ("embedding", "http://127.0.0.1:18004")
        await client.release(grant.lease_id)


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


async def test_the_event_stream_parses_with_the_wire_parser(client) -> None:
    resp = await client.open_events()
    try:
        parser = SseParser()
        frames = []
        async for line in resp.content:
            frame = parser.feed(line)
            if frame is not None:
                frames.append(parse_event(*frame))
                if len(frames) == 1:
                    grant = await client.grant("beta")  # stopped -> starting -> ready
                if len(frames) == 4:
                    break
    finally:
        resp.close()
    snapshot, starting, swap, ready = frames
    assert isinstance(snapshot, list) and [m.id for m in snapshot] == ["alpha", "beta", "pix"]
    assert starting == StateEvent(
        model="beta", state="starting", previous="stopped", at=starting.at
    )  # type: ignore[union-attr]
    assert isinstance(swap, SwapEvent) and (swap.from_model, swap.to) == (None, "beta")
    assert isinstance(ready, StateEvent) and (ready.previous, ready.state) == ("starting", "ready")
    await client.release(grant.lease_id)
