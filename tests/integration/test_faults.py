"""Nothing lost when a part dies (issue 12): the real manager (process runtime) and proxy,
stand-in model servers that load and stream slowly, the `openai` SDK as the client, and
SIGKILL. Each test asserts what every client got (tests/integration/faults/), never a time:
times are in bench/faults.py's report (docs/benchmarks.md).

One stack serves the module (starting Python programs is slow on a loaded machine); the
tests run in file order and each scenario brings the models it needs. Everything the stack
started, and every model server it caused, is killed at the end (FaultStack.close).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.faults import scenarios
from tests.integration.faults.stack import FaultStack, fault_stack

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    work: Path = tmp_path_factory.mktemp("faults")
    with fault_stack(work) as s:
        yield s


def explain(result: scenarios.FaultResult) -> str:
    return f"{result.summary()}"


async def test_a_flood_of_image_requests_waits_in_the_managers_queue(stack: FaultStack) -> None:
    result = await scenarios.image_flood(stack, count=20)
    assert len(result.outcomes) == 20
    assert result.facts["http_429"] == 0, explain(result)
    assert result.lost == 0, explain(result)


async def test_a_killed_model_server_loses_only_the_streams_under_way(stack: FaultStack) -> None:
    result = await scenarios.model_kill(stack)
    facts = result.facts
    assert result.counts.get("ok", 0) > 0, explain(result)
    assert facts["plain_lost"] == 0, explain(result)  # retried once the model is back
    assert result.lost == facts["streams_under_way_lost"], explain(result)
    assert facts["lost_after_death_noticed"] == 0, explain(result)
    assert facts["noticed_s"] is not None, explain(result)
    assert facts["max_resident"] <= 1, explain(result)


@pytest.mark.parametrize("outage", [1.0, 5.0])
async def test_a_manager_restart_loses_nothing_and_stops_nothing_in_use(
    stack: FaultStack, outage: float
) -> None:
    result = await scenarios.manager_restart(stack, outage)
    facts = result.facts
    assert facts["sent_during_outage"] > 0, explain(result)
    assert result.lost == 0, explain(result)
    assert facts["stopped_with_requests_in_flight"] == 0, explain(result)
    assert facts["max_resident"] <= 1, explain(result)


async def test_a_manager_killed_between_spawn_and_registry_leaves_no_orphan(
    stack: FaultStack,
) -> None:
    result = await scenarios.spawn_kill(stack)
    facts = result.facts
    # The case happened: a server was spawned, and the registry did not name it, when the
    # manager was killed (else "no orphan" below would be true of nothing).
    assert facts["spawned_before_kill"], explain(result)
    assert facts["unregistered_at_kill"] >= 1, explain(result)
    assert facts["orphans"] == 0, explain(result)
    assert facts["max_resident"] <= 1, explain(result)
    assert result.lost == 0, explain(result)


async def test_a_model_server_killed_under_mcp_calls_loses_none_of_them(
    stack: FaultStack,
) -> None:
    """MCP calls get /v1's retry and dead-server report (proxy/modelcall.py): a call under
    way when its model server dies is asked again on the restarted one."""
    result = await scenarios.mcp_model_kill(stack)
    assert result.facts["under_way_at_kill"] > 0, explain(result)  # the kill hit some
    assert result.lost == 0, explain(result)
