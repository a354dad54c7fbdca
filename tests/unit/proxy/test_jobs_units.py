"""Unit tier for proxy/jobs: the pure dispatch order, the SQLite job store, the
JSON-RPC request checks and the chat assembler."""

from __future__ import annotations

import pytest

from proxy.jobs.order import pick_model
from proxy.jobs.records import Job
from proxy.jobs.runner import ChatAssembler
from proxy.jobs.state import TaskState
from proxy.jobs.store import JobStore, StoreInUse


def test_resident_model_goes_first() -> None:
    assert pick_model({"a": 3, "b": 9}, residents={"a"}, interactive_waiting={}, last="b") == "a"


def test_grouped_by_model_keeps_draining_the_last_one() -> None:
    assert pick_model({"a": 3, "b": 9}, residents=(), interactive_waiting={}, last="b") == "b"


def test_oldest_job_decides_when_nothing_else_does() -> None:
    picked = pick_model(
        {"a": 1, "b": 1},
        residents={"c"},
        interactive_waiting={},
        last=None,
        oldest={"a": 5, "b": 2},
    )
    assert picked == "b"


def test_running_jobs_hold_other_models_back() -> None:
    assert (
        pick_model({"b": 4}, residents={"a"}, interactive_waiting={}, last="a", running={"a": 2})
        is None
    )
    assert (
        pick_model(
            {"a": 1, "b": 4}, residents={"b"}, interactive_waiting={}, last="b", running={"a": 1}
        )
        == "a"
    )


def test_jobs_of_models_resident_together_run_side_by_side() -> None:
    # a and b both fit the GPU: while a's jobs run, b's may start (no swap), c's may not.
    both = {"a", "b"}
    assert (
        pick_model({"b": 4}, residents=both, interactive_waiting={}, last="a", running={"a": 2})
        == "b"
    )
    assert (
        pick_model({"c": 4}, residents=both, interactive_waiting={}, last="a", running={"a": 2})
        is None
    )
    assert pick_model({"b": 1, "c": 9}, residents=both, interactive_waiting={}, last="c") == "b"


def test_interactive_requests_for_another_model_stop_jobs() -> None:
    # Someone waits for b while a is resident: no new job for a, b's jobs may ride the swap.
    assert pick_model({"a": 5}, residents={"a"}, interactive_waiting={"b": 1}, last="a") is None
    assert (
        pick_model({"a": 5, "b": 1}, residents={"a"}, interactive_waiting={"b": 1}, last="a") == "b"
    )
    assert pick_model({"a": 5}, residents={"a"}, interactive_waiting={"a": 2}, last=None) == "a"


def test_nothing_queued_means_wait() -> None:
    assert pick_model({"a": 0}, residents={"a"}, interactive_waiting={}, last=None) is None


def test_store_queues_claims_events_and_reopen(tmp_path) -> None:
    path = str(tmp_path / "jobs.db")
    store = JobStore(path)
    try:
        with pytest.raises(StoreInUse):
            JobStore(path)  # a second proxy on the same file is refused
        store.put_job(Job(id="t1", method="create_message", model="m", endpoint="/v1/x", body={}))
        store.enqueue("m", "t1")
        store.enqueue("m-2", "t2")
        assert store.queue_sizes(["m", "m-2", "x"]) == {"m": 1, "m-2": 1}
        assert [store.append_event("t1", "state", {"n": i}) for i in range(3)] == [1, 2, 3]
        assert [seq for seq, _ in store.events_after("t1", 1)] == [2, 3]
        store.claim("t1", 1, "me")
        assert store.take_claim("t1", 1) == "me"
        assert store.take_claim("t1", 1) is None  # exactly one caller wins
    finally:
        store.close()
    again = JobStore(path)
    try:
        job = again.get_job("t1")
        assert job is not None and job.state is TaskState.PENDING and job.model == "m"
        assert again.dequeue("m") == "t1" and again.dequeue("m") is None
        assert again.last_event("t1") == 3
        again.delete_job("t1")
        assert again.get_job("t1") is None and again.events_after("t1", 0) == []
    finally:
        again.close()


def test_chat_assembler_joins_content_and_tool_call_fragments() -> None:
    chat = ChatAssembler()
    chunks = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]},
        {"choices": [{"index": 0, "delta": {"content": "lo"}}]},
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "c1",
                                "function": {"name": "get", "arguments": '{"a"'},
                            }
                        ]
                    },
                }
            ]
        },
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]},
                }
            ]
        },
        {
            "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}],
            "usage": {"total_tokens": 3},
        },
    ]
    deltas = [chat.feed(c) for c in chunks]
    assert deltas[:2] == ["Hel", "lo"]
    result = chat.result()
    assert result["text"] == "Hello" and result["finish_reason"] == "tool_calls"
    assert result["tool_calls"] == [
        {"id": "c1", "type": "function", "function": {"name": "get", "arguments": '{"a": 1}'}}
    ]
    assert result["usage"] == {"total_tokens": 3}
