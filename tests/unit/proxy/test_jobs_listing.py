"""The job store's listing index (SQLite): keyset pages, filters with a bound, and the
one-time backfill of a store written before the index existed; job summaries and file
pieces, what lists and downloads read instead of whole records."""

from __future__ import annotations

from pathlib import Path

import pytest
from proxy_stack import build_stack

from proxy.jobs.records import FileRecord, Job, JobSummary
from proxy.jobs.state import TaskState
from proxy.jobs.store import FILE_CHUNK, JobStore


def _job(i: int, owner: str, state: TaskState = TaskState.SUCCESS) -> Job:
    return Job(
        id=f"task_{i:04d}",
        method="create_completion",
        model="m",
        endpoint="/v1/completions",
        body={},
        state=state,
        created_at=1_000_000 + i,
        owner=owner,
    )


def _walk(store: JobStore, owner: str | None, limit: int, keep=None) -> list[str]:
    ids, cursor = [], None
    while True:
        page, cursor = store.list_page("tasks", owner, cursor, limit, keep)
        ids += [j.id for j in page]
        if cursor is None:
            return ids


def test_pages_walk_each_record_once_newest_first_per_owner(tmp_path: Path) -> None:
    store = JobStore(str(tmp_path / "j.db"))
    for i in range(23):
        store.put_job(_job(i, "a" if i % 3 else "b"))
    store.put_job(_job(5, "a", TaskState.FAILURE))  # a second write: still listed once
    mine = [f"task_{i:04d}" for i in reversed(range(23)) if i % 3]
    assert _walk(store, "a", 4) == mine
    assert _walk(store, None, 5) == [f"task_{i:04d}" for i in reversed(range(23))]
    assert store.list_size("tasks", "a") == len(mine) and store.list_size("tasks", "b") == 8
    failed = _walk(store, "a", 2, keep=lambda j: j.state is TaskState.FAILURE)
    assert failed == ["task_0005"]
    store.delete_job("task_0022")
    assert _walk(store, "a", 100)[0] == "task_0020"
    store.close()


def test_a_filter_that_matches_little_stops_at_its_budget(tmp_path: Path) -> None:
    store = JobStore(str(tmp_path / "j.db"))
    for i in range(30):
        store.put_job(_job(i, "a"))
    page, cursor = store.list_page("tasks", "a", None, 5, lambda j: False, budget=10)
    assert page == [] and cursor == JobStore.sort_key(1_000_020, "task_0020")
    page, cursor = store.list_page("tasks", "a", cursor, 5, lambda j: j.id < "task_0003", 10)
    assert page == [] and cursor is not None  # 10 more looked at, none matched
    page, cursor = store.list_page("tasks", "a", cursor, 5, lambda j: j.id < "task_0003", 10)
    assert [j.id for j in page] == ["task_0002", "task_0001", "task_0000"] and cursor is None
    store.close()


def test_a_store_from_before_the_index_is_indexed_once_at_start(tmp_path: Path) -> None:
    store = JobStore(str(tmp_path / "j.db"))
    for i in range(3):
        store.put_job(_job(i, "a"))
    store.index.sql("DELETE FROM kv WHERE queue = ?", (store.index.name,), commit=True)
    assert _walk(store, "a", 10) == []
    store.close()
    store = JobStore(str(tmp_path / "j.db"))
    assert _walk(store, "a", 10) == ["task_0002", "task_0001", "task_0000"]
    store.close()


async def test_an_rpc_batch_answer_stops_growing_at_its_byte_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from proxy.jobs import rpc

    monkeypatch.setattr(rpc, "MAX_ANSWER_BYTES", 300)
    async with build_stack(tmp_path) as stack:
        calls = [
            {"jsonrpc": "2.0", "id": i, "method": "tasks.get", "params": {"taskId": "x" * 150}}
            for i in range(5)
        ]
        replies = (await stack.client.post("/rpc", json=calls)).json()
    codes = [r["error"]["code"] for r in replies]
    assert [r["id"] for r in replies] == list(range(5))
    # Each "No task" answer is ~200 bytes: two fit under 300, the rest are not run.
    assert codes == [-32001, -32001, -32004, -32004, -32004]
    assert "send this call again on its own" in replies[-1]["error"]["message"]


def test_a_list_reads_summaries_never_request_bodies(tmp_path: Path) -> None:
    store = JobStore(str(tmp_path / "j.db"))
    big = _job(0, "a", TaskState.STARTED)
    big.body = {"prompt": "x" * 100_000}
    store.put_job(big)
    big.move_to(TaskState.FAILURE)  # the summary follows the record's writes
    store.put_job(big)
    (listed,), _ = store.list_page("tasks", "a", None, 10)
    assert type(listed) is JobSummary and listed.state is TaskState.FAILURE
    assert len(store.summaries.peek_data(big.id)) < 1000
    store.delete_job(big.id)
    assert store.get_summaries([big.id]) == {}
    store.close()


def test_jobs_from_before_summaries_are_summed_up_once_at_start(tmp_path: Path) -> None:
    store = JobStore(str(tmp_path / "j.db"))
    for i in range(3):
        store.put_job(_job(i, "a"))
    store.summaries.sql("DELETE FROM kv WHERE queue = ?", (store.summaries.name,), commit=True)
    # Meanwhile a list reads such a job whole and sums it up.
    assert [j.id for j in store.get_summaries(["task_0001"]).values()] == ["task_0001"]
    store.index.delete_data("summaries-v1")
    store.close()
    store = JobStore(str(tmp_path / "j.db"))
    assert store.summaries.peek_data("task_0002") is not None
    assert [j.id for j in store.list_page("tasks", "a", None, 10)[0]] == [
        "task_0002",
        "task_0001",
        "task_0000",
    ]
    store.close()


def test_a_file_is_kept_in_pieces_and_one_stored_whole_still_reads(tmp_path: Path) -> None:
    store = JobStore(str(tmp_path / "j.db"))
    content = bytes(range(256)) * (FILE_CHUNK // 128 + 3)  # two pieces and a bit
    meta = FileRecord(
        id="file_p", bytes=len(content), created_at=1, filename="p", purpose="batch", owner="a"
    )
    store.put_file(meta, content)
    assert store.file_pieces(meta) == 3
    assert b"".join(store.file_piece("file_p", n) for n in range(3)) == content
    assert store.file_content("file_p") == content
    old = FileRecord(id="file_w", bytes=5, created_at=2, filename="w", purpose="batch", owner="a")
    store.put_file(old, b"")  # metadata and counters; then its bytes as a store before pieces
    store.files.put_data("data:file_w", b"whole")
    assert store.file_pieces(old) == 1 and store.file_content("file_w") == b"whole"
    assert store.delete_file("file_p") and store.delete_file("file_w")
    left = store.files.sql(
        "SELECT count(*) FROM kv WHERE queue = ? AND key LIKE 'data:%'",
        (store.files.name,),
        results=True,
    )
    assert left[0][0] == 0
    store.close()


async def test_a_batch_output_is_written_a_piece_at_a_time(tmp_path: Path) -> None:
    from proxy.jobs.batches import _Pieces
    from proxy.jobs.store import AsyncJobStore

    store = JobStore(str(tmp_path / "j.db"))
    pieces = _Pieces(AsyncJobStore(store))
    lines = [f'{{"n": {i}, "pad": "{"x" * (i * 7 % 5000)}"}}\n'.encode() for i in range(1200)]
    for line in lines:
        await pieces.write(line)
        assert len(pieces.buffer) < FILE_CHUNK  # never more than a piece held
    await pieces.close()
    content = b"".join(lines)
    meta = FileRecord(
        id=pieces.id, bytes=pieces.size, created_at=1, filename="o", purpose="batch_output"
    )
    store.finish_file(meta)
    assert pieces.size == len(content) and store.file_pieces(meta) == pieces.pieces > 2
    assert store.file_content(pieces.id) == content
    assert store.file_usage(None) == (len(content), len(content))
    store.close()
