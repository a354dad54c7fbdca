"""Bounded work per request (issue 23), against a real proxy + manager + stand-in models:
a JSON-RPC batch capped by total work; tasks, files and batches listed a page at a time
by a cursor, owner-scoped, with the proxy's peak memory measured around a walk over
many records."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from proxy.jobs.records import BatchRecord, FileRecord, Job, RequestCounts
from proxy.jobs.state import BatchState, TaskState
from proxy.jobs.store import JobStore, QuotaExceeded
from proxy.keys import simple_name
from tests.integration.jobs.jobs_stack import EMBED, TEXT_A, JobsStack, run_redis
from tests.integration.jobs.sse import rpc
from tests.mcp_client import INITIALIZE, mcp_headers


def _call(method: str, params: dict, id_: int | None) -> dict:
    call = {"jsonrpc": "2.0", "method": method, "params": params}
    return call if id_ is None else {**call, "id": id_}


def _total(client: httpx.Client) -> int:
    return rpc(client, "tasks.list", {"limit": 1})["result"]["total"]


def test_an_rpc_batch_over_its_total_work_is_refused_before_any_call_runs(
    jobs_stack: JobsStack,
) -> None:
    with jobs_stack.client() as client:
        before = _total(client)
        # The probe of issue 23: 100 tasks.list {limit: 1000} in one 10 KB batch.
        probe = [_call("tasks.list", {"limit": 1000}, i) for i in range(100)]
        r = client.post("/rpc", json=probe)
        assert r.status_code == 200
        error = r.json()["error"]
        assert error["code"] == -32600 and "100000 records" in error["message"], error
        # A job creation in the same over-cap batch does not run: nothing was made.
        mixed = [
            _call("create_message", {"model": TEXT_A, "message": "hi"}, 1),
            _call("tasks.list", {"limit": 1000}, 2),
        ]
        error = client.post("/rpc", json=mixed).json()["error"]
        assert error["code"] == -32600 and "1001 records" in error["message"]
        # Notifications count as well (they would run all the same).
        notes = [_call("tasks.list", {}, None) for _ in range(21)]  # 21 x default 50
        assert client.post("/rpc", json=notes).json()["error"]["code"] == -32600
        assert _total(client) == before
        # At the cap it runs: 20 calls x limit 50 = 1000 records.
        fits = [_call("tasks.list", {"limit": 50}, i) for i in range(20)]
        replies = client.post("/rpc", json=fits).json()
        assert [x["id"] for x in replies] == list(range(20))
        assert all("tasks" in x["result"] for x in replies)


# -- listing a page at a time --------------------------------------------------------

KEY_B = "bounds-b-" + secrets.token_urlsafe(24)
TASKS_A, TASKS_B, BODY = 5000, 40, 32 * 1024  # 160 MB of task bodies for key A
FILES_A, FILE_BYTES = 160, 512 * 1024  # 80 MB of file content
BATCHES_A = 250


def _seed(path: Path, owner_a: str, owner_b: str) -> int:
    """Fill a job store the way a long-running proxy would have, before the proxy
    starts. Returns the bytes of task bodies and file content written for key A."""
    store = JobStore(str(path))
    now = time.time() - 3600
    try:
        for i in range(TASKS_A + TASKS_B):
            owner = owner_a if i < TASKS_A else owner_b
            job = Job(
                id=f"task_seed{i:06d}",
                method="create_completion",
                model=TEXT_A,
                endpoint="/v1/completions",
                body={"model": TEXT_A, "prompt": "x" * BODY},
                state=TaskState.SUCCESS,
                created_at=now + i * 0.001,
                finished_at=time.time(),
                owner=owner,
            )
            store.put_job(job)
        for i in range(FILES_A + 3):
            meta = FileRecord(
                id=f"file_seed{i:05d}",
                bytes=FILE_BYTES,
                created_at=int(now) + i // 10,  # ten to a second: ties broken by id
                filename="seed.jsonl",
                purpose="batch",
                owner=owner_a if i < FILES_A else owner_b,
            )
            store.put_file(meta, b"y" * FILE_BYTES)
        for i in range(BATCHES_A + 3):
            batch = BatchRecord(
                id=f"batch_seed{i:05d}",
                endpoint="/v1/completions",
                input_file_id="file_seed00000",
                status=BatchState.COMPLETED,
                created_at=int(now) + i,
                request_counts=RequestCounts(total=0),
                jobs=[],
                owner=owner_a if i < BATCHES_A else owner_b,
            )
            store.put_batch(batch)
    finally:
        store.close()
    return TASKS_A * BODY + FILES_A * FILE_BYTES


def _peak_rss(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def seeded(jobs_stack: JobsStack) -> Iterator[tuple[str, int]]:
    """A second proxy (p2) on a store seeded with many records of two keys."""
    path = jobs_stack.work / "seeded" / "jobs.db"
    path.parent.mkdir()
    seeded_bytes = _seed(path, simple_name(jobs_stack.api_key), simple_name(KEY_B))
    keys = {"HOMELAB_API_KEYS": f"{jobs_stack.api_key},{KEY_B}"}
    jobs_stack.start_proxy("p2", str(path), keys)
    yield "p2", seeded_bytes
    jobs_stack.stop_proxy("p2")


def _walk(fetch: Callable[[str | None], tuple[list[str], str | None]]) -> list[str]:
    ids: list[str] = []
    cursor: str | None = None
    while True:
        page, cursor = fetch(cursor)
        ids += page
        if cursor is None:
            return ids


def test_listing_walks_every_record_once_without_loading_them_all(
    jobs_stack: JobsStack, seeded: tuple[str, int]
) -> None:
    name, seeded_bytes = seeded
    pid = jobs_stack.proxies[name].proc.pid
    with jobs_stack.client(name) as client:
        client.get("/v1/files", params={"limit": 1})  # warm the routes up
        rpc(client, "tasks.list", {"limit": 1})
        before = _peak_rss(pid)

        def tasks(after: str | None) -> tuple[list[str], str | None]:
            params: dict = {"limit": 100} | ({"after": after} if after else {})
            result = rpc(client, "tasks.list", params)["result"]
            assert result["total"] == TASKS_A
            return [t["taskId"] for t in result["tasks"]], result["next"]

        def openai_list(path: str, limit: int) -> Callable:
            def fetch(after: str | None) -> tuple[list[str], str | None]:
                params: dict = {"limit": limit} | ({"after": after} if after else {})
                r = client.get(path, params=params)
                assert r.status_code == 200, r.text
                page = r.json()
                ids = [x["id"] for x in page["data"]]
                assert page["last_id"] == (ids[-1] if ids else None)
                return ids, page["last_id"] if page["has_more"] else None

            return fetch

        task_ids = _walk(tasks)
        file_ids = _walk(openai_list("/v1/files", 50))
        batch_ids = _walk(openai_list("/v1/batches", 100))
        grown = _peak_rss(pid) - before
    # Every one of key A's records once, newest first; none of key B's.
    assert task_ids == [f"task_seed{i:06d}" for i in reversed(range(TASKS_A))]
    assert len(file_ids) == len(set(file_ids)) == FILES_A
    assert set(file_ids) == {f"file_seed{i:05d}" for i in range(FILES_A)}
    assert batch_ids == [f"batch_seed{i:05d}" for i in reversed(range(BATCHES_A))]
    # Memory: the listing held a page at a time, never the 240 MB seeded for key A.
    assert grown < seeded_bytes // 8, (grown, seeded_bytes)


def test_a_cursor_survives_new_records_and_another_keys_cursor_is_refused(
    jobs_stack: JobsStack, seeded: tuple[str, int]
) -> None:
    name, _ = seeded
    with jobs_stack.client(name) as client:
        first = rpc(client, "tasks.list", {"limit": 10})["result"]
        new = rpc(client, "create_embedding", {"model": EMBED, "input": "new"})["result"]
        second = rpc(client, "tasks.list", {"limit": 10, "after": first["next"]})["result"]
        # The new task is in front of the first page, not in the second: nothing twice.
        seen = [t["taskId"] for t in first["tasks"] + second["tasks"]]
        assert len(set(seen)) == 20 and new["taskId"] not in seen
        assert seen == [f"task_seed{i:06d}" for i in reversed(range(TASKS_A - 20, TASKS_A))]
        # A file id as the cursor works as OpenAI's `after` does.
        files = client.get("/v1/files", params={"limit": 3}).json()
        after = client.get("/v1/files", params={"limit": 3, "after": files["last_id"]}).json()
        assert not {f["id"] for f in files["data"]} & {f["id"] for f in after["data"]}
    b = httpx.Client(
        base_url=jobs_stack.proxies[name].url,
        headers={"Authorization": f"Bearer {KEY_B}"},
        timeout=60,
    )
    with b:
        # Key B sees its own three batches only; key A's batch id is no cursor for B.
        own = b.get("/v1/batches").json()
        assert [x["id"] for x in own["data"]] == [
            f"batch_seed{i:05d}" for i in reversed(range(BATCHES_A, BATCHES_A + 3))
        ]
        crossing = b.get("/v1/batches", params={"after": "batch_seed00001"})
        assert crossing.status_code == 400
        assert crossing.json()["error"]["code"] == "invalid_cursor"
        listed = rpc(b, "tasks.list", {"limit": 1000})["result"]
        assert listed["total"] == TASKS_B and listed["next"] is None
        assert {t["taskId"] for t in listed["tasks"]} == {
            f"task_seed{i:06d}" for i in range(TASKS_A, TASKS_A + TASKS_B)
        }


def _rss(pid: int) -> int:
    """The process's resident memory now (VmRSS), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


PROBES = 4
"""Issue 23's probe sent this many times at once (it took the proxy to 528 MB)."""


def test_the_rpc_probe_is_refused_and_the_largest_batch_allowed_stays_small(
    jobs_stack: JobsStack, seeded: tuple[str, int]
) -> None:
    """Issue 23's probe (100 x tasks.list {limit: 1000} in one batch, four at once) on a
    store of 5000 tasks of 32 KB bodies is refused before any call runs; the largest
    listing a batch may ask for (one tasks.list of 1000), four at once, answers without
    holding the tasks' bodies: the proxy's memory is measured before, at its peak and
    after."""
    name, _ = seeded
    pid = jobs_stack.proxies[name].proc.pid
    probe = [_call("tasks.list", {"limit": 1000}, i) for i in range(100)]
    largest = [_call("tasks.list", {"limit": 1000}, 1)]

    def post_all(batch: list[dict]) -> list[httpx.Response]:
        def post(_: int) -> httpx.Response:
            with jobs_stack.client(name) as client:
                return client.post("/rpc", json=batch)

        with ThreadPoolExecutor(PROBES) as pool:
            return list(pool.map(post, range(PROBES)))

    with jobs_stack.client(name) as client:
        rpc(client, "tasks.list", {"limit": 1000})  # warm the route up
    before, peak_before = _rss(pid), _peak_rss(pid)
    refused = post_all(probe)
    for r in refused:
        error = r.json()["error"]
        assert error["code"] == -32600, error
        assert error["data"] == {"cap": "MAX_BATCH_RECORDS", "limit": 1000, "work": 100_000}
        assert "1000" in error["message"] and "100000" in error["message"]
    refused_peak = _peak_rss(pid)
    answered = post_all(largest)
    for r in answered:
        (reply,) = r.json()
        assert len(reply["result"]["tasks"]) == 1000, reply.get("error")
        assert "body" not in reply["result"]["tasks"][0]
    peak, after = _peak_rss(pid), _rss(pid)
    mib = 1024 * 1024
    print(
        f"\nRPC probe x{PROBES}: RSS before {before / mib:.1f} MiB (peak so far "
        f"{peak_before / mib:.1f} MiB), peak "
        f"{refused_peak / mib:.1f} MiB (refused); largest batch x{PROBES}: peak "
        f"{peak / mib:.1f} MiB, after {after / mib:.1f} MiB; answers "
        f"{sum(len(r.content) for r in answered) / mib:.1f} MiB"
    )
    # Refused before anything was read: no growth worth a page.
    assert refused_peak - peak_before < 8 * mib, (refused_peak, peak_before)
    # Four pages of 1000 tasks at once: far less than the 4 x 32 MB of their bodies.
    bodies = PROBES * 1000 * BODY
    assert peak - peak_before < bodies // 4, (peak, peak_before, bodies)


def test_the_listing_index_on_a_real_redis(tmp_path: Path) -> None:
    """The same keyset pages on Redis (sorted sets read with ZREVRANGEBYLEX)."""
    with run_redis(tmp_path) as url:
        store = JobStore(url)
        try:
            for i in range(25):
                store.put_job(
                    Job(
                        id=f"task_r{i:03d}",
                        method="create_completion",
                        model=TEXT_A,
                        endpoint="/v1/completions",
                        body={},
                        created_at=1_000_000 + i,
                        owner="a" if i % 2 else "b",
                    )
                )
            ids, cursor = [], None
            while True:
                page, cursor = store.list_page("tasks", "a", cursor, 4)
                ids += [j.id for j in page]
                if cursor is None:
                    break
            assert ids == [f"task_r{i:03d}" for i in reversed(range(25)) if i % 2]
            assert store.list_size("tasks", None) == 25 and store.list_size("tasks", "b") == 13
            store.delete_job("task_r023")
            assert store.list_page("tasks", "a", None, 1)[0][0].id == "task_r021"
            # A store from before the index: indexed once when a proxy opens it.
            store.index.conn.delete(*store.index.conn.keys("homelab_index*"))
            store.index.delete_data("indexed-v1")
            assert store.list_page("tasks", None, None, 5) == ([], None)
        finally:
            store.close()
        store = JobStore(url)
        try:
            assert [j.id for j in store.list_page("tasks", None, None, 2)[0]] == [
                "task_r024",
                "task_r022",
            ]
        finally:
            store.close()


# -- files: expiry and quotas ---------------------------------------------------------

FILE_TTL, QUOTA_KEY, QUOTA_TOTAL, UPLOAD = 4, 4500, 5000, 2000


def _upload(client: httpx.Client, size: int = UPLOAD) -> httpx.Response:
    data = _batch_file(size)
    return client.post("/v1/files", files={"file": ("b.jsonl", data)}, data={"purpose": "batch"})


def _batch_file(size: int) -> bytes:
    """A one-line batch input file of exactly `size` bytes."""
    line = {
        "custom_id": "x",
        "method": "POST",
        "url": "/v1/completions",
        "body": {"model": TEXT_A, "prompt": ""},
    }
    line["body"]["prompt"] = "p" * (size - len(json.dumps(line)) - 1)
    data = (json.dumps(line) + "\n").encode()
    assert len(data) == size
    return data


def _stored(path: Path, file_id: str) -> bool:
    """Whether the store still holds the file's bytes (read beside the running proxy)."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        row = db.execute(
            "SELECT count(*) FROM kv WHERE queue = 'homelab_files' AND (key = ? OR key LIKE ?)",
            ("data:" + file_id, f"data:{file_id}:%"),
        ).fetchone()
    return bool(row[0])


def _until(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, what
        time.sleep(0.2)


def test_files_expire_and_are_swept_and_quotas_say_which(jobs_stack: JobsStack) -> None:
    path = jobs_stack.work / "quota" / "jobs.db"
    path.parent.mkdir()
    env = {
        "HOMELAB_API_KEYS": f"{jobs_stack.api_key},{KEY_B}",
        "HOMELAB_FILE_TTL": str(FILE_TTL),
        "HOMELAB_FILE_QUOTA_BYTES": str(QUOTA_KEY),
        "HOMELAB_FILES_TOTAL_BYTES": str(QUOTA_TOTAL),
    }
    jobs_stack.start_proxy("p3", str(path), env)
    b = httpx.Client(
        base_url=jobs_stack.proxies["p3"].url,
        headers={"Authorization": f"Bearer {KEY_B}"},
        timeout=60,
    )
    try:
        with jobs_stack.client("p3") as a, b:
            first, second = (_upload(a).json() for _ in range(2))
            assert first["expires_at"] == first["created_at"] + FILE_TTL
            over_key = _upload(a)  # 6000 > the key's 4500
            assert over_key.status_code == 429, over_key.text
            assert over_key.headers["x-should-retry"] == "false"
            error = over_key.json()["error"]
            assert (error["type"], error["code"]) == (
                "insufficient_quota",
                "key_file_quota_exceeded",
            )
            assert "HOMELAB_FILE_QUOTA_BYTES" in error["message"]
            over_total = _upload(b)  # B's 2000 is under its quota, but 6000 > 5000 in all
            assert over_total.status_code == 429
            assert over_total.json()["error"]["code"] == "total_file_quota_exceeded"
            assert "HOMELAB_FILES_TOTAL_BYTES" in over_total.json()["error"]["message"]
            # The openai SDK reads it as OpenAI's own spent quota: a RateLimitError.
            sdk = openai.OpenAI(
                base_url=jobs_stack.proxies["p3"].url + "/v1", api_key=jobs_stack.api_key
            )
            with pytest.raises(openai.RateLimitError) as refused:
                sdk.files.create(file=("b.jsonl", _batch_file(UPLOAD)), purpose="batch")
            assert refused.value.type == "insufficient_quota"
            listed = [f["id"] for f in a.get("/v1/files").json()["data"]]
            assert set(listed) == {first["id"], second["id"]} and len(listed) == 2
            # Past expires_at: gone from list, get and content at once ...
            _until(lambda: time.time() > second["expires_at"] + 0.5, "the files to expire")
            assert a.get("/v1/files").json()["data"] == []
            for path_ in (f"/v1/files/{first['id']}", f"/v1/files/{first['id']}/content"):
                gone = a.get(path_)
                assert gone.status_code == 404 and gone.json()["error"]["code"] == "file_not_found"
            # ... and deleted from the store by the sweep, which frees the quota.
            _until(
                lambda: not _stored(path, first["id"]) and not _stored(path, second["id"]),
                "the sweep to delete the expired files",
            )
            assert _upload(b).status_code == 200
            assert _upload(a).status_code == 200
    finally:
        jobs_stack.stop_proxy("p3")


DOWNLOADS, BIG_LINES = 12, 24  # 12 readers at once of a 24 MB file


def test_downloads_at_once_hold_a_piece_each_not_the_file(jobs_stack: JobsStack) -> None:
    """GET /v1/files/{id}/content sends the file a piece at a time as the client reads:
    twelve downloads at once of a 24 MB file (288 MB if each held it) leave the proxy's
    peak memory about where the upload left it; each download is whole."""
    path = jobs_stack.work / "downloads" / "jobs.db"
    path.parent.mkdir()
    jobs_stack.start_proxy("p7", str(path))
    pid = jobs_stack.proxies["p7"].proc.pid
    line = _batch_file(1024 * 1024)
    data = line * BIG_LINES
    try:
        with jobs_stack.client("p7") as client:
            files = {"file": ("big.jsonl", data)}
            up = client.post("/v1/files", files=files, data={"purpose": "batch"})
            assert up.status_code == 200, up.text
            file_id = up.json()["id"]
            assert client.get(f"/v1/files/{file_id}/content").content == data  # warm up
        before, peak_before = _rss(pid), _peak_rss(pid)

        def download(_: int) -> tuple[int, int]:
            with jobs_stack.client("p7") as c, c.stream("GET", f"/v1/files/{file_id}/content") as r:
                assert r.headers["content-length"] == str(len(data))
                size = 0
                for piece in r.iter_bytes():
                    size += len(piece)
                    time.sleep(0.001)  # a reader a little slower than loopback
                return r.status_code, size

        with ThreadPoolExecutor(DOWNLOADS) as pool:
            got = list(pool.map(download, range(DOWNLOADS)))
        peak, after = _peak_rss(pid), _rss(pid)
    finally:
        jobs_stack.stop_proxy("p7")
    assert got == [(200, len(data))] * DOWNLOADS
    mib = 1024 * 1024
    print(
        f"\n{DOWNLOADS} downloads of {len(data) / mib:.0f} MiB at once: RSS before "
        f"{before / mib:.1f} MiB (peak so far {peak_before / mib:.1f}), peak {peak / mib:.1f} "
        f"MiB, after {after / mib:.1f} MiB"
    )
    assert peak - peak_before < len(data) * DOWNLOADS // 4, (peak, peak_before)


def test_file_quotas_and_the_sweep_on_a_real_redis(tmp_path: Path) -> None:
    """The quota counters (atomic INCRs, reserved before the write) and the expiry sweep
    (a page of the listing index at a time) on Redis, as several proxies share them."""
    with run_redis(tmp_path) as url:
        store, other = JobStore(url), JobStore(url)  # two proxies on one Redis
        try:
            now = int(time.time())

            def meta(i: int, owner: str, expires: int) -> FileRecord:
                return FileRecord(
                    id=f"file_r{i:03d}",
                    bytes=1000,
                    created_at=now + i,
                    filename="r.jsonl",
                    purpose="batch",
                    owner=owner,
                    expires_at=expires,
                )

            quota = (2500, 4000)
            store.put_file(meta(0, "a", now - 1), b"x" * 1000, quota)  # already expired
            other.put_file(meta(1, "a", now + 3600), b"x" * 1000, quota)
            with pytest.raises(QuotaExceeded) as key_full:
                store.put_file(meta(2, "a", now + 3600), b"x" * 1000, (1500, 4000))
            assert (key_full.value.which, key_full.value.used) == ("key", 2000)
            other.put_file(meta(3, "b", now + 3600), b"x" * 1000, quota)
            with pytest.raises(QuotaExceeded) as total_full:
                store.put_file(meta(4, "b", now + 3600), b"x" * 1000, (2500, 3500))
            assert (total_full.value.which, total_full.value.used) == ("total", 3000)
            assert other.file_usage("a") == (2000, 3000)  # the refused ones left no trace
            # The sweep deletes only the expired file, its bytes, and frees its quota.
            assert store.sweep_files(now) == 1
            assert other.get_file("file_r000") is None and other.file_content("file_r000") is None
            assert other.file_usage("a") == (1000, 2000)
            page, _ = other.list_page("files", "a", None, 10)
            assert [f.id for f in page] == ["file_r001"]
        finally:
            store.close()
            other.close()


# -- /stream: one watcher per task, streams capped per key ------------------------------

STREAMS = 40


def _gauge(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


async def _follow(
    client: httpx.AsyncClient, path: str, opened: asyncio.Event, tokened: asyncio.Event
) -> list[tuple]:
    """Read one stream to its end: the (id, event) of every stored event."""
    seen: list[tuple] = []
    async with client.stream("GET", path, timeout=120) as resp:
        assert resp.status_code == 200
        opened.set()
        ev_id = None
        async for line in resp.aiter_lines():
            if line.startswith("id:"):
                ev_id = int(line[3:].strip())
            elif line.startswith("event:") and ev_id is not None:
                seen.append((ev_id, line[6:].strip()))
                if seen[-1][1] == "token":
                    tokened.set()
                ev_id = None
    return seen


async def test_streams_of_one_task_share_one_watcher_and_a_key_has_a_cap(
    jobs_stack: JobsStack,
) -> None:
    path = jobs_stack.work / "streams" / "jobs.db"
    path.parent.mkdir()
    jobs_stack.start_proxy("p4", str(path), {"HOMELAB_MAX_STREAMS_PER_KEY": str(STREAMS)})
    url = jobs_stack.proxies["p4"].url
    try:
        with jobs_stack.client("p4") as sync:
            long = " ".join(f"w{i}" for i in range(600))  # streamed a word every 0.05 s
            task = rpc(sync, "create_message", {"model": TEXT_A, "message": long})["result"]
            limits = httpx.Limits(max_connections=STREAMS + 5)
            async with httpx.AsyncClient(
                base_url=url, headers=jobs_stack.headers(), limits=limits
            ) as client:
                opened = [asyncio.Event() for _ in range(STREAMS)]
                tokened = asyncio.Event()
                readers = [
                    asyncio.create_task(_follow(client, task["stream"], opened[i], tokened))
                    for i in range(STREAMS)
                ]
                await asyncio.wait_for(asyncio.gather(*(o.wait() for o in opened)), 60)

                def counted() -> bool:
                    return _gauge(sync, "homelab_proxy_job_streams") == STREAMS

                await asyncio.to_thread(_until, counted, "the streams to be counted")
                # One watcher reads the store for all forty streams of the task.
                assert _gauge(sync, "homelab_proxy_job_watchers") == 1
                # One stream more for this key: a 429 envelope, not a forty-first reader.
                over = await client.get(task["stream"])
                assert over.status_code == 429, over.text
                assert over.json()["error"]["code"] == "too_many_streams"
                assert "HOMELAB_MAX_STREAMS_PER_KEY" in over.json()["error"]["message"]
                await asyncio.wait_for(tokened.wait(), 120)  # the model answers meanwhile
                assert _gauge(sync, "homelab_proxy_job_watchers") == 1
                rpc(sync, "tasks.cancel", {"taskId": task["taskId"]})
                seen = await asyncio.wait_for(asyncio.gather(*readers), 120)
            # Every stream got the same events, each once, in order, to the end.
            assert all(s == seen[0] for s in seen)
            ids = [i for i, _ in seen[0]]
            assert ids == list(range(1, len(ids) + 1)) and seen[0][-1][1] == "end"
            assert any(name == "token" for _, name in seen[0])
            _until(
                lambda: (
                    _gauge(sync, "homelab_proxy_job_streams") == 0
                    and _gauge(sync, "homelab_proxy_job_watchers") == 0
                ),
                "the streams and the watcher to be gone",
            )
    finally:
        jobs_stack.stop_proxy("p4")


PROBE_STREAMS, DEFAULT_STREAM_CAP = 150, 32


@pytest.mark.parametrize("engine", ["sqlite", "redis"])
async def test_the_stream_probe_meets_the_per_key_cap_on_one_watcher(
    jobs_stack: JobsStack, tmp_path: Path, engine: str
) -> None:
    """Issue 23's probe: 150 /stream connections of one key on one task. At the default
    cap 32 are served, all from one watcher, and the other 118 are refused with a 429
    envelope; the proxy's memory is measured before, at its peak and after (on the
    embedded store and on a real Redis, whose watcher also polls for other proxies)."""
    with contextlib.ExitStack() as stop:
        if engine == "redis":
            store = stop.enter_context(run_redis(tmp_path))
        else:
            store = str(jobs_stack.work / "probe-streams" / "jobs.db")
        name = f"p6-{engine}"
        jobs_stack.start_proxy(name, store)
        stop.callback(jobs_stack.stop_proxy, name)
        pid = jobs_stack.proxies[name].proc.pid
        with jobs_stack.client(name) as sync:
            long = " ".join(f"w{i}" for i in range(600))
            task = rpc(sync, "create_message", {"model": TEXT_A, "message": long})["result"]
            before = _rss(pid)
            # One stream at a time, as a client would hold them: each accepted one stays
            # open; a refused one gives its connection back.
            limits = httpx.Limits(max_connections=DEFAULT_STREAM_CAP + 8)
            async with httpx.AsyncClient(
                base_url=jobs_stack.proxies[name].url,
                headers=jobs_stack.headers(),
                limits=limits,
                timeout=120,
            ) as client:
                held: list[httpx.Response] = []
                codes: list[int] = []
                refusals: set[str] = set()
                for _ in range(PROBE_STREAMS):
                    request = client.build_request("GET", task["stream"])
                    resp = await client.send(request, stream=True)
                    codes.append(resp.status_code)
                    if resp.status_code == 200:
                        held.append(resp)
                    else:
                        await resp.aread()
                        refusals.add(resp.json()["error"]["code"])
                        await resp.aclose()
                assert codes.count(200) == DEFAULT_STREAM_CAP, codes
                assert codes.count(429) == PROBE_STREAMS - DEFAULT_STREAM_CAP
                assert refusals == {"too_many_streams"}
                assert _gauge(sync, "homelab_proxy_job_streams") == DEFAULT_STREAM_CAP
                assert _gauge(sync, "homelab_proxy_job_watchers") == 1
                # Every held stream is read: each gets the task's first stored events.
                for resp in held:
                    lines = resp.aiter_lines()
                    while not (await asyncio.wait_for(anext(lines), 60)).startswith("id:"):
                        pass
                peak = _peak_rss(pid)
                for resp in held:
                    await resp.aclose()
            _until(
                lambda: (
                    _gauge(sync, "homelab_proxy_job_streams") == 0
                    and _gauge(sync, "homelab_proxy_job_watchers") == 0
                ),
                "the streams and the watcher to be gone",
            )
            after = _rss(pid)
            rpc(sync, "tasks.cancel", {"taskId": task["taskId"]})
    mib = 1024 * 1024
    print(
        f"\n{PROBE_STREAMS} streams ({engine}): {codes.count(200)} served, "
        f"{codes.count(429)} refused; RSS before {before / mib:.1f} MiB, peak "
        f"{peak / mib:.1f} MiB, after {after / mib:.1f} MiB"
    )


# -- MCP sessions: a cap per key and an idle timeout ----------------------------------

MCP_PER_KEY, MCP_IDLE = 3, 3


def test_mcp_sessions_are_capped_per_key_and_end_when_idle(jobs_stack: JobsStack) -> None:
    path = jobs_stack.work / "mcp" / "jobs.db"
    path.parent.mkdir()
    env = {
        "HOMELAB_API_KEYS": f"{jobs_stack.api_key},{KEY_B}",
        "HOMELAB_MCP_SESSIONS_PER_KEY": str(MCP_PER_KEY),
        "HOMELAB_MCP_SESSION_IDLE_TIMEOUT": str(MCP_IDLE),
    }
    jobs_stack.start_proxy("p5", str(path), env)
    url = jobs_stack.proxies["p5"].url + "/mcp"
    key_a = jobs_stack.api_key
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    try:
        with httpx.Client(timeout=30) as http:

            def open_session(key: str) -> httpx.Response:
                return http.post(url, json=INITIALIZE, headers=mcp_headers(key))

            sessions = [open_session(key_a).headers["mcp-session-id"] for _ in range(MCP_PER_KEY)]
            over = open_session(key_a)
            assert over.status_code == 429, over.text
            assert "HOMELAB_MCP_SESSIONS_PER_KEY" in over.json()["error"]["message"]
            # The cap is per key: another key opens its own.
            assert open_session(KEY_B).status_code == 200
            # A session in use keeps working ...
            used = http.post(url, json=ping, headers=mcp_headers(key_a, sessions[0]))
            assert used.status_code == 200
            # ... and idle ones end after the idle timeout (a refused open touches none
            # of them): the key may open sessions again, and their ids answer 404.
            reopened: list[httpx.Response] = []
            _until(
                lambda: reopened.append(open_session(key_a)) or reopened[-1].status_code == 200,
                "the idle sessions to end",
            )
            assert {r.status_code for r in reopened[:-1]} <= {429}
            gone = http.post(url, json=ping, headers=mcp_headers(key_a, sessions[1]))
            assert gone.status_code == 404
    finally:
        jobs_stack.stop_proxy("p5")
