"""Typed jobs: the task and batch state tables (every forbidden move refused), records
written by an earlier proxy still read back, and the wire shapes clients see (JSON-RPC,
the SSE log, the Batch API) pinned key by key through the real app in front of fakes."""

from __future__ import annotations

import asyncio
import itertools
import time

import orjson
import pytest
from proxy_stack import build_stack

from proxy.jobs.dispatcher import Dispatcher, JobFinished
from proxy.jobs.records import (
    BatchRecord,
    EndEvent,
    Job,
    Position,
    RequestCounts,
    StateEvent,
    TaskView,
    TokenEvent,
    decode,
    encode,
    to_json_value,
)
from proxy.jobs.state import (
    BATCH_TRANSITIONS,
    TASK_TRANSITIONS,
    TERMINAL,
    BatchState,
    IllegalTransition,
    TaskState,
    transition,
)
from proxy.jobs.store import AsyncJobStore, JobStore
from proxy.keys import Principal

T, B = TaskState, BatchState
TASK_MOVES = {
    (T.PENDING, T.STARTED),
    (T.PENDING, T.CANCELLED),
    (T.STARTED, T.SUCCESS),
    (T.STARTED, T.FAILURE),
    (T.STARTED, T.CANCELLED),
    (T.STARTED, T.PENDING),
}
BATCH_MOVES = {
    (B.IN_PROGRESS, B.COMPLETED),
    (B.IN_PROGRESS, B.CANCELLING),
    (B.CANCELLING, B.CANCELLED),
}


def _job(state: TaskState = T.PENDING) -> Job:
    return Job(id="t1", method="create_message", model="m", endpoint="/v1/x", body={}, state=state)


def _batch(status: BatchState = B.IN_PROGRESS) -> BatchRecord:
    return BatchRecord(
        id="batch_1",
        endpoint="/v1/completions",
        input_file_id="file_1",
        created_at=1,
        status=status,
        request_counts=RequestCounts(total=1),
        jobs=["batch_1-0"],
    )


@pytest.mark.parametrize(("current", "new"), sorted(itertools.product(T, T)))
def test_task_moves_are_exactly_the_table(current: TaskState, new: TaskState) -> None:
    job = _job(current)
    if (current, new) in TASK_MOVES:
        assert transition(current, new) is new
        job.move_to(new)
        assert job.state is new
    else:
        with pytest.raises(IllegalTransition, match=f"{current.value} -> {new.value}"):
            job.move_to(new)
        assert job.state is current  # a refused move changes nothing


@pytest.mark.parametrize(("current", "new"), sorted(itertools.product(B, B)))
def test_batch_moves_are_exactly_the_table(current: BatchState, new: BatchState) -> None:
    batch = _batch(current)
    if (current, new) in BATCH_MOVES:
        batch.move_to(new, 42)
        assert batch.status is new and getattr(batch, f"{new.value}_at") == 42
    else:
        with pytest.raises(IllegalTransition, match=f"{current.value} -> {new.value}"):
            batch.move_to(new, 42)
        assert batch.status is current


def test_a_task_state_never_moves_to_a_batch_state() -> None:
    with pytest.raises(IllegalTransition):
        transition(T.PENDING, B.COMPLETED)  # type: ignore[type-var]


def test_the_tables_cover_every_state_and_name_the_terminal_ones() -> None:
    assert set(TASK_TRANSITIONS) == set(T) and set(BATCH_TRANSITIONS) == set(B)
    assert TERMINAL == {T.SUCCESS, T.FAILURE, T.CANCELLED}
    assert {s for s in B if s.terminal} == {B.COMPLETED, B.CANCELLED}
    assert [s.value for s in T] == ["PENDING", "STARTED", "SUCCESS", "FAILURE", "CANCELLED"]


def test_records_written_by_the_earlier_untyped_proxy_read_back_unchanged() -> None:
    # The exact dicts proxy/jobs wrote before the records were typed (a Redis store
    # shared across an upgrade holds them).
    old_job = {
        "id": "task_x",
        "method": "batch",
        "model": "m",
        "endpoint": "/v1/completions",
        "body": {"model": "m", "prompt": "hi"},
        "url_base": None,
        "state": "STARTED",
        "attempt": 1,
        "created_at": 1.5,
        "started_at": 2.5,
        "finished_at": None,
        "error": None,
        "status_code": None,
        "batch_id": "batch_y",
        "custom_id": "c1",
        "worker": "abcd",
    }
    job = decode(orjson.dumps(old_job), Job)
    assert job.state is T.STARTED and job.worker == "abcd"
    # Written before jobs had owners: no owner, which only an admin key sees.
    assert job.owner is None
    assert orjson.loads(encode(job)) == {**old_job, "owner": None}
    assert Principal(name="admin", admin=True).owns(job.owner)
    assert not Principal(name="").owns(job.owner)
    old_batch = {
        "id": "batch_y",
        "object": "batch",
        "endpoint": "/v1/completions",
        "errors": None,
        "input_file_id": "file_z",
        "completion_window": "24h",
        "status": "cancelling",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": 10,
        "in_progress_at": 10,
        "expires_at": 86410,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": 11,
        "cancelled_at": None,
        "request_counts": {"total": 1, "completed": 0, "failed": 0},
        "metadata": {"k": "v"},
        "jobs": ["batch_y-0"],
    }
    batch = decode(orjson.dumps(old_batch), BatchRecord)
    assert batch.status is B.CANCELLING and batch.owner is None
    assert orjson.loads(encode(batch)) == {**old_batch, "owner": None}
    assert list(orjson.loads(encode(batch.public()))) == list(old_batch)[:-1]  # no "jobs"


def test_a_record_with_an_unknown_state_is_refused_on_read() -> None:
    raw = orjson.dumps({**to_json_value(_job()), "state": "RUNNING"})
    with pytest.raises(Exception, match="state"):
        decode(raw, Job)


def test_views_and_events_keep_their_wire_keys() -> None:
    job = _job()
    pending = TaskView.of(job, where=Position(3, None))
    assert list(to_json_value(pending)) == [
        "taskId",
        "state",
        "method",
        "model",
        "created_at",
        "started_at",
        "finished_at",
        "attempt",
        "stream",
        "position",
        "load_first",
    ]
    job.move_to(T.STARTED)
    job.move_to(T.SUCCESS)
    job.batch_id = "b"
    done = to_json_value(TaskView.of(job, result=None))
    assert "result" in done and done["result"] is None and done["batch_id"] == "b"
    assert "error" not in done and "position" not in done
    assert to_json_value(StateEvent(T.PENDING, model="m")) == {"state": "PENDING", "model": "m"}
    assert to_json_value(StateEvent(T.STARTED, attempt=2)) == {"state": "STARTED", "attempt": 2}
    assert to_json_value(StateEvent(T.SUCCESS, error=None)) == {"state": "SUCCESS", "error": None}
    assert to_json_value(StateEvent.waiting(Position(None, "m"))) == {
        "state": "PENDING",
        "position": None,
        "load_first": "m",
    }
    assert to_json_value(TokenEvent("hi", 1)) == {"content": "hi", "attempt": 1}
    assert to_json_value(EndEvent(T.FAILURE)) == {"state": "FAILURE"}


# -- through the app ------------------------------------------------------------------

TASK_KEYS = ["taskId", "state", "method", "model", "created_at", "started_at", "finished_at"]
TASK_KEYS += ["attempt", "stream"]
BATCH_KEYS = [
    "id",
    "object",
    "endpoint",
    "errors",
    "input_file_id",
    "completion_window",
    "status",
    "output_file_id",
    "error_file_id",
    "created_at",
    "in_progress_at",
    "expires_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
    "request_counts",
    "metadata",
]
FILE_KEYS = ["id", "object", "bytes", "created_at", "filename", "purpose", "status", "expires_at"]


async def _rpc(client, method: str, **params) -> dict:
    r = await client.post(
        "/rpc", json={"jsonrpc": "2.0", "id": 7, "method": method, "params": params}
    )
    assert r.status_code == 200, r.text
    reply = r.json()
    assert list(reply) in (["jsonrpc", "result", "id"], ["jsonrpc", "error", "id"])
    assert reply["id"] == 7
    return reply


async def _wait_task(client, task_id: str, states: set[str]) -> dict:
    deadline = time.monotonic() + 60
    while True:
        task = (await _rpc(client, "tasks.get", taskId=task_id))["result"]
        if task["state"] in states or time.monotonic() > deadline:
            return task
        await asyncio.sleep(0.05)


def _events(text: str) -> list[tuple[int | None, str, object]]:
    out = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if not line.startswith(":"))
        if fields:
            seq = int(fields["id"]) if "id" in fields else None
            out.append((seq, fields["event"], orjson.loads(fields["data"])))
    return out


async def test_rpc_tasks_and_their_stream_keep_the_documented_shapes(tmp_path) -> None:
    async with build_stack(tmp_path) as stack:
        client = stack.client
        accepted = (await _rpc(client, "create_message", model="chat-a", message="hi there"))[
            "result"
        ]
        assert list(accepted) == ["taskId", "state", "stream"]
        task_id = accepted["taskId"]
        assert accepted == {"taskId": task_id, "state": "PENDING", "stream": f"/stream/{task_id}"}
        done = await _wait_task(client, task_id, {"SUCCESS", "FAILURE"})
        assert list(done) == [*TASK_KEYS, "result"]
        assert done["state"] == "SUCCESS" and done["attempt"] == 1
        assert done["result"]["text"] == "echo hi there"

        events = _events((await client.get(f"/stream/{task_id}")).text)
        stored = [(e, d) for seq, e, d in events if seq is not None]
        assert [seq for seq, _, _ in events if seq is not None] == list(range(1, len(stored) + 1))
        assert stored[0] == ("state", {"state": "PENDING", "model": "chat-a"})
        assert stored[1] == ("state", {"state": "STARTED", "attempt": 1})
        tokens = [d for e, d in stored if e == "token"]
        assert tokens and all(list(d) == ["content", "attempt"] for d in tokens)
        assert "".join(d["content"] for d in tokens) == "echo hi there"
        assert stored[-3] == ("result", done["result"])
        assert stored[-2:] == [
            ("state", {"state": "SUCCESS", "error": None}),
            ("end", {"state": "SUCCESS"}),
        ]

        failed_id = (await _rpc(client, "create_message", model="chat-a", message="fail"))[
            "result"
        ]["taskId"]
        failed = await _wait_task(client, failed_id, {"SUCCESS", "FAILURE"})
        assert list(failed) == [*TASK_KEYS, "error"] and failed["state"] == "FAILURE"
        assert isinstance(failed["error"]["message"], str)

        listed = (await _rpc(client, "tasks.list", state="SUCCESS"))["result"]
        # total: the caller's tasks (any state); next: None on the last page
        assert list(listed) == ["tasks", "total", "next"] and listed["total"] == 2
        assert listed["next"] is None and len(listed["tasks"]) == 1
        assert listed["tasks"][0]["taskId"] == task_id
        bad = (await _rpc(client, "tasks.list", state="RUNNING"))["error"]
        assert bad["code"] == -32602 and list(bad) == ["code", "message"]


async def test_a_queued_task_shows_its_place_and_cancels_once(tmp_path) -> None:
    async with build_stack(tmp_path, job_workers=1) as stack:
        client = stack.client
        slow = (await _rpc(client, "create_message", model="chat-a", message="slow"))["result"]
        await _wait_task(client, slow["taskId"], {"STARTED"})
        queued = (await _rpc(client, "create_completion", model="chat-a", prompt="x"))["result"]
        waiting = (await _rpc(client, "tasks.get", taskId=queued["taskId"]))["result"]
        assert list(waiting) == [*TASK_KEYS, "position", "load_first"]
        assert waiting["state"] == "PENDING" and waiting["position"] == 1
        cancelled = (await _rpc(client, "tasks.cancel", taskId=queued["taskId"]))["result"]
        assert list(cancelled) == [*TASK_KEYS, "error"] and cancelled["state"] == "CANCELLED"
        again = (await _rpc(client, "tasks.cancel", taskId=queued["taskId"]))["error"]
        assert again["code"] == -32002
        events = _events((await client.get(f"/stream/{queued['taskId']}")).text)
        assert [(e, d) for seq, e, d in events if seq is not None][-1] == (
            "end",
            {"state": "CANCELLED"},
        )
        await _rpc(client, "tasks.cancel", taskId=slow["taskId"])
        stack.upstream.gate.set()
        stopped = await _wait_task(client, slow["taskId"], {"CANCELLED", "SUCCESS"})
        assert stopped["state"] == "CANCELLED" and stopped["attempt"] == 1


async def test_a_batch_keeps_the_openai_shapes(tmp_path) -> None:
    async with build_stack(tmp_path) as stack:
        client = stack.client
        lines = [
            {
                "custom_id": f"c{i}",
                "method": "POST",
                "url": "/v1/completions",
                "body": {"model": "chat-a", "prompt": f"p{i}"},
            }
            for i in range(2)
        ]
        data = b"".join(orjson.dumps(line) + b"\n" for line in lines)
        r = await client.post(
            "/v1/files", files={"file": ("in.jsonl", data)}, data={"purpose": "batch"}
        )
        assert r.status_code == 200, r.text
        upload = r.json()
        assert list(upload) == FILE_KEYS and upload["purpose"] == "batch"
        r = await client.post(
            "/v1/batches", json={"input_file_id": upload["id"], "endpoint": "/v1/completions"}
        )
        assert r.status_code == 200, r.text
        batch = r.json()
        assert list(batch) == BATCH_KEYS and batch["status"] == "in_progress"
        assert batch["request_counts"] == {"total": 2, "completed": 0, "failed": 0}
        deadline = time.monotonic() + 60
        while batch["status"] != "completed" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            batch = (await client.get(f"/v1/batches/{batch['id']}")).json()
        assert list(batch) == BATCH_KEYS and batch["status"] == "completed"
        assert batch["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
        assert batch["error_file_id"] is None and batch["completed_at"] is not None
        out = (await client.get(f"/v1/files/{batch['output_file_id']}/content")).content
        answers = [orjson.loads(line) for line in out.splitlines()]
        assert [a["custom_id"] for a in answers] == ["c0", "c1"]
        for answer in answers:
            assert list(answer) == ["id", "custom_id", "response", "error"]
            assert list(answer["response"]) == ["status_code", "request_id", "body"]
            assert answer["response"]["status_code"] == 200 and answer["error"] is None
        page = (await client.get("/v1/batches")).json()
        assert list(page) == ["object", "data", "first_id", "last_id", "has_more"]
        assert [list(b) for b in page["data"]] == [BATCH_KEYS]
        files = (await client.get("/v1/files")).json()
        assert list(files) == ["object", "data", "first_id", "last_id", "has_more"]
        assert all(list(f) == FILE_KEYS for f in files["data"]) and len(files["data"]) == 2
        # cancelling a finished batch changes nothing (completed is terminal)
        r = await client.post(f"/v1/batches/{batch['id']}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "completed"


async def test_the_dispatcher_refuses_a_forbidden_move_before_it_writes(tmp_path) -> None:
    store = JobStore(str(tmp_path / "jobs.db"))
    try:
        jobs = Dispatcher(None, AsyncJobStore(store))  # type: ignore[arg-type]  # no ctx needed
        job = await jobs.submit(
            method="create_completion", model="m", endpoint="/v1/completions", body={}, owner="k"
        )
        with pytest.raises(IllegalTransition, match="PENDING -> SUCCESS"):
            await jobs._finish(job, T.SUCCESS, status=200, result={})
        stored = store.get_job(job.id)
        assert stored is not None and stored.state is T.PENDING and stored.finished_at is None
        assert [e.event for _, e in store.events_after(job.id, 0)] == ["state"]
        assert (await jobs.cancel(job.id)).state is T.CANCELLED
        with pytest.raises(JobFinished):
            await jobs.cancel(job.id)
        cancelled = await jobs.get(job.id)
        with pytest.raises(IllegalTransition, match="CANCELLED -> PENDING"):
            await jobs._requeue(cancelled, reason="test")
        assert store.queued("m", "k") == [job.id]  # the submit's entry only: nothing requeued
        assert [e.data for _, e in store.events_after(job.id, 0)][-1] == {"state": "CANCELLED"}
    finally:
        store.close()
