"""Everything has an owner (issue 22): three keys on one real proxy (the real manager,
fakevllm model servers), every route of the surface tried across keys. Another key gets
404 (on /rpc: -32001 "No task", as for an id that never existed) for what it does not
own; lists show only the caller's own; image URLs work without a key until they expire,
are mangled, or their owner deletes them. The issue's probe is `test_the_issue_probe_*`.

The keys are the simple form (`HOMELAB_API_KEYS=A,B,C`: three non-admin principals
named ``key-<hex>``); an admin seeing all is shown by the proxy reopened without keys
(`OPEN` is an admin) on the same store, last.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import httpx2
import openai
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from proxy.keys import simple_name
from tests.integration.jobs.jobs_stack import (
    EMBED,
    IMAGE,
    TEXT_A,
    TEXT_B,
    JobsStack,
    run_jobs_stack,
    wait_batch,
)
from tests.integration.jobs.sse import read_events, rpc
from tests.mcp_client import INITIALIZE

KEY_A, KEY_B, KEY_C = (f"own-{who}-" + secrets.token_urlsafe(24) for who in "abc")
NAME_A, NAME_B, NAME_C = (simple_name(k) for k in (KEY_A, KEY_B, KEY_C))
SECRET = "ALICE SECRET PROMPT"
LONG = " ".join(f"w{i}" for i in range(60))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobsStack]:
    work = tmp_path_factory.mktemp("owners")
    with run_jobs_stack(work) as stack:
        stack.api_key = KEY_A  # the readiness check's key
        stack.start_proxy("p1", store_path(stack), keyed())
        yield stack


def store_path(stack: JobsStack) -> str:
    return str(stack.work / "state" / "jobs.db")


def keyed(*keys: str) -> dict[str, str]:
    return {"HOMELAB_API_KEYS": ",".join(keys or (KEY_A, KEY_B, KEY_C))}


def client(stack: JobsStack, key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=stack.proxies["p1"].url, headers=headers, timeout=60)


def sdk(stack: JobsStack, key: str) -> openai.OpenAI:
    url = stack.proxies["p1"].url + "/v1"
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=60)


def batch_file(text: str) -> io.BytesIO:
    line = {
        "custom_id": "one",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": TEXT_B, "messages": [{"role": "user", "content": text}]},
    }
    data = io.BytesIO((json.dumps(line) + "\n").encode())
    data.name = "batch.jsonl"
    return data


def not_found(call) -> openai.NotFoundError:  # type: ignore[no-untyped-def]
    with pytest.raises(openai.NotFoundError) as info:
        call()
    return info.value


def same_404(crossing: httpx.Response, unknown: httpx.Response, own_id: str, fake: str) -> None:
    """A crossing is answered exactly as an id that never existed (no existence told)."""
    assert crossing.status_code == unknown.status_code == 404, crossing.text
    assert crossing.text.replace(own_id, fake) == unknown.text


def finished(stack: JobsStack, key: str, task_id: str) -> dict:
    with client(stack, key) as c:
        events = list(read_events(c, f"/stream/{task_id}"))
    return next(e.data for e in events if e.event == "result")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- the issue's probe ---------------------------------------------------------------


def test_the_issue_probe_files(stack: JobsStack) -> None:
    """B listed A's uploaded file, read its content and deleted it: now each is a 404."""
    a, b = sdk(stack, KEY_A), sdk(stack, KEY_B)
    upload = a.files.create(file=batch_file(SECRET), purpose="batch")
    assert upload.id not in [f.id for f in b.files.list().data]
    assert not_found(lambda: b.files.retrieve(upload.id)).status_code == 404
    assert not_found(lambda: b.files.content(upload.id)).status_code == 404
    assert not_found(lambda: b.files.delete(upload.id)).status_code == 404
    # each answered as a file that never existed
    fake = "file_" + secrets.token_urlsafe(18)
    with client(stack, KEY_B) as c:
        for path in ("/v1/files/{}", "/v1/files/{}/content"):
            same_404(c.get(path.format(upload.id)), c.get(path.format(fake)), upload.id, fake)
        same_404(c.delete(f"/v1/files/{upload.id}"), c.delete(f"/v1/files/{fake}"), upload.id, fake)
    # A's file is untouched, and A's list has it
    assert upload.id in [f.id for f in a.files.list().data]
    assert SECRET in a.files.content(upload.id).text
    assert "owner" not in a.files.retrieve(upload.id).model_dump()


def test_the_issue_probe_tasks(stack: JobsStack) -> None:
    """tasks.list returned every key's tasks with their /stream URLs: now only one's own."""
    with client(stack, KEY_A) as a, client(stack, KEY_B) as b:
        task = rpc(a, "create_message", {"model": TEXT_A, "message": SECRET})["result"]
        own = rpc(b, "create_completion", {"model": TEXT_A, "prompt": "bob's"})["result"]
        listed_b = rpc(b, "tasks.list", {"limit": 1000})["result"]
        assert [t["taskId"] for t in listed_b["tasks"]] == [own["taskId"]]
        assert listed_b["total"] == 1
        listed_a = [t["taskId"] for t in rpc(a, "tasks.list", {"limit": 1000})["result"]["tasks"]]
        assert task["taskId"] in listed_a and own["taskId"] not in listed_a
        for method in ("tasks.get", "tasks.cancel"):
            crossing = rpc(b, method, {"taskId": task["taskId"]})
            unknown = rpc(b, method, {"taskId": "task_nope"})
            assert crossing["error"]["code"] == unknown["error"]["code"] == -32001
            assert crossing["error"]["message"] == f"No task {task['taskId']!r}"
        same_404(b.get(task["stream"]), b.get("/stream/task_nope"), task["taskId"], "task_nope")
        # A's task was neither cancelled nor hidden from A
        result = finished(stack, KEY_A, task["taskId"])
        assert SECRET in result["text"]
    with client(stack, KEY_C) as c:
        assert rpc(c, "tasks.list")["result"] == {"tasks": [], "total": 0, "next": None}


async def test_the_issue_probe_mcp_session(stack: JobsStack) -> None:
    """B ran tools/list on A's MCP session and then deleted it: now both are refused as an
    unknown session, and A's session goes on working."""
    url = stack.proxies["p1"].url + "/mcp"
    seen: list[str] = []

    async def session_id(response: httpx2.Response) -> None:
        if sid := response.headers.get("mcp-session-id"):
            seen.append(sid)

    async with (
        httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {KEY_A}"},
            timeout=httpx2.Timeout(30.0, read=None),
            event_hooks={"response": [session_id]},
        ) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        assert seen, "the SDK's session has an id"
        sid = seen[0]
        headers = {
            "Authorization": f"Bearer {KEY_B}",
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
            "MCP-Protocol-Version": "2025-06-18",
        }
        tools_list = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
        async with httpx.AsyncClient(timeout=30) as b:
            crossing = await b.post(
                url, json=tools_list, headers={**headers, "Mcp-Session-Id": sid}
            )
            unknown = await b.post(
                url, json=tools_list, headers={**headers, "Mcp-Session-Id": "0" * 32}
            )
            assert crossing.status_code == unknown.status_code == 404
            assert crossing.json() == unknown.json()
            assert "Session not found" in crossing.text
            deleted = await b.delete(url, headers={**headers, "Mcp-Session-Id": sid})
            assert deleted.status_code == 404
            # B's own session is B's: opened, used, and closed by B
            opened = await b.post(url, json=INITIALIZE, headers=headers)
            assert opened.status_code == 200
            own = opened.headers["mcp-session-id"]
            assert own != sid
            closed = await b.delete(url, headers={**headers, "Mcp-Session-Id": own})
            assert closed.status_code in (200, 204)
        # A's session was neither read nor ended by B
        tools = await session.list_tools()
        assert {t.name for t in tools.tools} >= {"txt2txt", "txt2img"}
        # A picture made in A's session is A's: B cannot delete it, A can
        made = await session.call_tool("txt2img", {"model": IMAGE, "prompt": "a red square"})
        assert not made.is_error, made
        [image_url] = made.structured_content["urls"]
        name = image_url.rsplit("/", 1)[1]
        async with httpx.AsyncClient(base_url=stack.proxies["p1"].url, timeout=30) as c:
            assert (await c.get(image_url)).status_code == 200  # no key: the URL is enough
            b_key, a_key = ({"Authorization": f"Bearer {k}"} for k in (KEY_B, KEY_A))
            assert (await c.delete(f"/v1/images/{name}", headers=b_key)).status_code == 404
            assert (await c.get(image_url)).status_code == 200
            assert (await c.delete(f"/v1/images/{name}", headers=a_key)).status_code == 200
            assert (await c.get(image_url)).status_code == 404


# -- batches, streams, images, events ----------------------------------------------------


def test_batches_and_their_output_files_are_their_makers(stack: JobsStack) -> None:
    a, b = sdk(stack, KEY_A), sdk(stack, KEY_B)
    upload = a.files.create(file=batch_file(SECRET), purpose="batch")
    batch = a.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    # B cannot start a batch on A's file, see, read or cancel A's batch
    refused = not_found(
        lambda: b.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    )
    assert refused.body["code"] == "file_not_found"  # type: ignore[index]
    assert batch.id not in [x.id for x in b.batches.list().data]
    not_found(lambda: b.batches.retrieve(batch.id))
    not_found(lambda: b.batches.cancel(batch.id))
    fake = "batch_" + secrets.token_urlsafe(18)
    with client(stack, KEY_B) as c:
        for path in ("/v1/batches/{}", "/v1/batches/{}/cancel"):
            call = c.get if not path.endswith("cancel") else c.post
            same_404(call(path.format(batch.id)), call(path.format(fake)), batch.id, fake)
    done = wait_batch(a, batch.id)
    assert done.status == "completed" and done.output_file_id
    # the output file is A's too
    assert SECRET in a.files.content(done.output_file_id).text
    not_found(lambda: b.files.content(done.output_file_id))
    assert done.output_file_id not in [f.id for f in b.files.list().data]
    # B's own batch works and B's lists hold only B's
    mine = b.files.create(file=batch_file("bob's"), purpose="batch")
    own = b.batches.create(
        input_file_id=mine.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert [x.id for x in b.batches.list().data] == [own.id]
    assert wait_batch(b, own.id).status == "completed"
    assert batch.id in [x.id for x in a.batches.list().data]
    assert own.id not in [x.id for x in a.batches.list().data]


def test_image_urls_work_without_a_key_until_deleted_expired_or_mangled(
    stack: JobsStack,
) -> None:
    with client(stack, KEY_A) as a, client(stack, KEY_B) as b, client(stack, None) as anyone:
        task = rpc(a, "create_image", {"model": IMAGE, "prompt": "a lighthouse", "n": 2})
        urls = [d["url"] for d in finished(stack, KEY_A, task["result"]["taskId"])["data"]]
        names = [u.rsplit("/", 1)[1] for u in urls]
        for url in urls:  # an <img src> sends no key
            r = anyone.get(url)
            assert r.status_code == 200 and r.content.startswith(b"\x89PNG")
        first, second = names
        # mangled: another id, another extension, the owner file, a path, a deleted prefix
        for bad in (
            ("B" if first[0] != "B" else "C") + first[1:],
            first.rsplit(".", 1)[0] + ".jpeg",
            first + ".owner",
            first[1:],
            "..%2F" + first,
        ):
            assert anyone.get(f"/images/{bad}").status_code == 404, bad
            assert a.delete(f"/v1/images/{bad}").status_code == 404, bad
        # deletion by another key: 404, as for an image that never was; the URL still works
        fake = "x" * 32 + ".png"
        same_404(b.delete(f"/v1/images/{first}"), b.delete(f"/v1/images/{fake}"), first, fake)
        assert anyone.get(f"/images/{first}").status_code == 200
        # without a key the route refuses (401), as every /v1 route does
        assert anyone.delete(f"/v1/images/{first}").status_code == 401
        # the owner deletes it: its URL answers 404, the other picture lives on
        deleted = a.delete(f"/v1/images/{first}")
        assert deleted.status_code == 200 and deleted.json()["deleted"] is True
        assert anyone.get(f"/images/{first}").status_code == 404
        assert a.delete(f"/v1/images/{first}").status_code == 404
        assert anyone.get(f"/images/{second}").status_code == 200
        # expired (HOMELAB_IMAGE_URL_TTL passed): 404, and no one can delete it any more
        path = stack.work / "images" / second
        old = path.stat().st_mtime - 7 * 86400
        os.utime(path, (old, old))
        assert anyone.get(f"/images/{second}").status_code == 404
        assert a.delete(f"/v1/images/{second}").status_code == 404


def test_an_openai_image_url_is_its_makers_to_delete(stack: JobsStack) -> None:
    b = sdk(stack, KEY_B)
    made = b.images.generate(model=IMAGE, prompt="a cat", response_format="url")
    url = made.data[0].url
    assert url is not None
    name = url.rsplit("/", 1)[1]
    with client(stack, KEY_A) as a, client(stack, KEY_B) as owner:
        assert a.delete(f"/v1/images/{name}").status_code == 404
        assert httpx.get(url).status_code == 200
        assert owner.delete(f"/v1/images/{name}").status_code == 200
        assert httpx.get(url).status_code == 404


def test_ui_events_carry_no_key_s_jobs(stack: JobsStack) -> None:
    """/api/events streams the manager's model events (snapshot, state, swap, contention),
    never a job, task, file or key: B's stream while A's job loads a model names none."""
    frames: list[str] = []

    def follow() -> None:
        with client(stack, KEY_B) as b, b.stream("GET", "/api/events", timeout=120) as r:
            assert r.status_code == 200
            name = ""
            for line in r.iter_lines():
                frames.append(line)
                if line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:") and name == "state":
                    data = json.loads(line[5:])
                    if data["model"] == EMBED and data["state"] == "ready":
                        return

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    with client(stack, KEY_A) as a:
        task = rpc(a, "create_embedding", {"model": EMBED, "input": SECRET})["result"]
        finished(stack, KEY_A, task["taskId"])
    reader.join(60)
    assert not reader.is_alive(), "B's stream never saw the embedding model get ready"
    text = "\n".join(frames)
    kinds = {line[6:].strip() for line in frames if line.startswith("event:")}
    assert kinds <= {"snapshot", "state", "swap", "contention"}, kinds
    for private in (task["taskId"], SECRET, NAME_A, KEY_A):
        assert private not in text


def test_the_stores_are_private(stack: JobsStack) -> None:
    sdk(stack, KEY_A).images.generate(model=IMAGE, prompt="kept", response_format="url")
    state, images = stack.work / "state", stack.work / "images"
    assert mode(state) == 0o700 and mode(images) == 0o700
    files = {p.name: mode(p) for p in [*state.iterdir(), *images.iterdir()] if p.is_file()}
    assert "jobs.db" in files and any(n.endswith(".png") for n in files), files
    assert any(n.endswith(".owner") for n in files), files
    assert set(files.values()) == {0o600}, files


# -- a revoked key's job, and an admin who sees all ----------------------------------------


def stored_job(stack: JobsStack, task_id: str) -> dict | None:
    """The job record as the store holds it (huey's SQLite `kv` table), read beside the
    running proxy."""
    with sqlite3.connect(f"file:{store_path(stack)}?mode=ro", uri=True) as db:
        row = db.execute(
            "select value from kv where queue = 'homelab_jobs' and key = ?", (task_id,)
        ).fetchone()
    return None if row is None else json.loads(row[0])


def test_a_revoked_keys_queued_job_fails_and_an_admin_sees_all(stack: JobsStack) -> None:
    with client(stack, KEY_C) as c:
        task = rpc(c, "create_message", {"model": TEXT_A, "message": LONG})["result"]
    stack.stop_proxy("p1", kill=True)  # while the job waits or streams: it is requeued
    stack.start_proxy("p1", store_path(stack), keyed(KEY_A, KEY_B))  # C revoked
    end = time.monotonic() + 60
    job = stored_job(stack, task["taskId"])
    while time.monotonic() < end and (job is None or job["state"] != "FAILURE"):
        time.sleep(0.2)
        job = stored_job(stack, task["taskId"])
    assert job is not None and job["state"] == "FAILURE", job
    assert job["owner"] == NAME_C and job["status_code"] == 401
    assert job["error"]["code"] == "key_revoked" and NAME_C in job["error"]["message"]
    with client(stack, KEY_A) as a:  # still C's, not A's
        assert rpc(a, "tasks.get", {"taskId": task["taskId"]})["error"]["code"] == -32001

    # The proxy reopened without keys: everyone is the admin `anonymous`, who sees all.
    stack.stop_proxy("p1")

    def open_and_ours(url: str) -> bool:
        models = httpx.get(url + "/v1/models", timeout=2).json()["data"]
        return {m["id"] for m in models} == {TEXT_A, TEXT_B, IMAGE, EMBED}

    stack.start_proxy("p1", store_path(stack), {"HOMELAB_API_KEYS": "off"}, is_ours=open_and_ours)
    with client(stack, None) as admin:
        tasks = rpc(admin, "tasks.list", {"limit": 1000})["result"]["tasks"]
        assert task["taskId"] in {t["taskId"] for t in tasks}
        got = rpc(admin, "tasks.get", {"taskId": task["taskId"]})["result"]
        assert got["state"] == "FAILURE" and got["error"]["code"] == "key_revoked"
        files = admin.get("/v1/files").json()["data"]
        assert len({f["filename"] for f in files}) > 1 and len(files) >= 4  # A's and B's
        batches = admin.get("/v1/batches").json()["data"]
        assert len(batches) >= 2
