"""Named keys (docs/keys.md): the key file, `python -m proxy keys`, the ring's reload,
model patterns, the limits' pure policy and the usage counts; then the real proxy app
(unit stack: fake manager and model server) with two named keys."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import secrets
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from proxy_stack import build_stack

from proxy.keyfile import (
    KeyEntry,
    KeyFileData,
    KeyFileError,
    KeyFileWatcher,
    build_ring,
    load,
    save,
)
from proxy.keys import Principal, digest, simple_name
from proxy.keys_cli import run as cli
from proxy.limits import Limiter, LimitExceeded, TokenBucket
from proxy.usage import Usage, UsageCollector, next_day, next_month
from tests.mcp_client import http_session, text_of

KEY_A = "ka-" + secrets.token_urlsafe(24)
KEY_B = "kb-" + secrets.token_urlsafe(24)
SIMPLE = "ks-" + secrets.token_urlsafe(24)


def entry(name: str, key: str, **fields) -> KeyEntry:
    return KeyEntry(name=name, sha256=digest(key).hex(), **fields)


# -- the key file ------------------------------------------------------------------


def test_key_file_is_written_0600_in_a_0700_folder_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "state" / "keys.json"
    data = KeyFileData(keys=[entry("alice", KEY_A, models=["chat-*"], rate=5, admin=True)])
    save(path, data)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load(path) == data
    assert KEY_A not in path.read_text()  # only the digest
    ring = build_ring([], path)
    alice = ring.lookup(KEY_A.encode())
    assert alice is not None and alice.name == "alice" and alice.admin and alice.rate == 5
    assert ring.lookup(KEY_B.encode()) is None


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ('{"version": 1, "keys": [{"name": "a", "sha256": "zz"}]}', ["key 1 ('a')", "sha256"]),
        (
            '{"version": 1, "keys": [{"name": "a b", "sha256": "' + "0" * 64 + '"}]}',
            ["key 1 ('a b')", "name"],
        ),
        (
            json.dumps(
                {
                    "keys": [
                        {"name": "a", "sha256": "0" * 64},
                        {"name": "a", "sha256": "1" * 64},
                    ]
                }
            ),
            ["key 2 ('a')", "used twice"],
        ),
        (
            json.dumps({"keys": [{"name": "a", "sha256": "0" * 64, "rate": 0}]}),
            ["key 1 ('a')", "'rate' must be positive"],
        ),
        (
            json.dumps({"keys": [{"name": "a", "sha256": "0" * 64, "colour": "red"}]}),
            ["key 1", "colour"],
        ),
        (
            json.dumps({"keys": [{"name": "a", "sha256": "0" * 64, "priority": "urgent"}]}),
            ["key 1", "priority"],
        ),
        ("{not json", ["not JSON"]),
    ],
)
def test_a_bad_key_file_names_the_file_the_key_and_the_reason(
    tmp_path: Path, content: str, named: list[str]
) -> None:
    path = tmp_path / "keys.json"
    path.write_text(content)
    with pytest.raises(KeyFileError) as err:
        build_ring([], path)
    assert str(path) in str(err.value)
    for part in named:
        assert part in str(err.value)


def test_a_ring_from_a_key_file_is_never_open(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    save(path, KeyFileData())  # every key revoked: refuse everyone, not open the proxy
    assert not build_ring([], path).open
    assert build_ring([], tmp_path / "missing.json").open  # no file, no simple keys
    assert not build_ring([SIMPLE], tmp_path / "missing.json").open


def test_simple_and_named_keys_together_the_file_wins_for_a_key_in_both(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    save(path, KeyFileData(keys=[entry("admin", SIMPLE, admin=True)]))
    ring = build_ring([SIMPLE, KEY_B], path)
    assert ring.lookup(SIMPLE.encode()) == Principal(name="admin", admin=True)
    assert ring.lookup(KEY_B.encode()) == Principal(name=simple_name(KEY_B))


# -- the CLI -----------------------------------------------------------------------


def run_cli(*args: str, stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with (
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
        pytest.MonkeyPatch.context() as mp,
    ):
        mp.setattr("sys.stdin", io.StringIO(stdin))
        code = cli(list(args))
    return code, out.getvalue(), err.getvalue()


def test_cli_add_list_rotate_revoke(tmp_path: Path) -> None:
    path = tmp_path / "k" / "keys.json"
    f = ("--file", str(path))
    code, out, _ = run_cli(*f, "add", "alice", "--models", "chat-*,emb", "--rate", "10")
    assert code == 0
    key = out.strip()
    assert len(out.splitlines()) == 1 and len(key) >= 16  # the key, alone, once
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert key not in path.read_text()
    alice = build_ring([], path).lookup(key.encode())
    assert alice is not None and alice.models == ("chat-*", "emb") and alice.rate == 10

    code, out, _ = run_cli(*f, "add", "admin", "--admin", "--key-stdin", stdin=KEY_A + "\n")
    assert code == 0 and out == ""  # a key given is not printed back
    assert build_ring([], path).lookup(KEY_A.encode()) == Principal(name="admin", admin=True)

    # --replace: the same key and settings leave the file alone; another key replaces it.
    before = path.stat().st_mtime_ns
    code, _, _ = run_cli(*f, "add", "admin", "--admin", "--key-stdin", "--replace", stdin=KEY_A)
    assert code == 0 and path.stat().st_mtime_ns == before
    code, _, _ = run_cli(*f, "add", "admin", "--admin", "--key-stdin", "--replace", stdin=KEY_B)
    ring = build_ring([], path)
    assert ring.lookup(KEY_A.encode()) is None
    assert ring.lookup(KEY_B.encode()) == Principal(name="admin", admin=True)

    code, out, _ = run_cli(*f, "list")
    assert code == 0 and "alice" in out and "admin" in out
    assert key not in out and digest(key).hex() not in out
    code, out, _ = run_cli(*f, "list", "--json")
    assert {r["name"] for r in json.loads(out)} == {"alice", "admin"}
    assert "sha256" not in out

    code, out, _ = run_cli(*f, "rotate", "alice")
    new = out.strip()
    assert code == 0 and new != key
    ring = build_ring([], path)
    assert ring.lookup(key.encode()) is None
    rotated = ring.lookup(new.encode())
    assert rotated is not None and rotated.rate == 10  # same settings

    code, _, err = run_cli(*f, "add", "alice")
    assert code == 1 and "exists" in err
    code, _, _ = run_cli(*f, "revoke", "alice")
    assert code == 0 and build_ring([], path).lookup(new.encode()) is None
    code, _, err = run_cli(*f, "revoke", "alice")
    assert code == 1 and "no key named 'alice'" in err
    code, _, err = run_cli(*f, "add", "bad name!")
    assert code == 1 and "name" in err


# -- the ring's reload -------------------------------------------------------------


def test_the_watcher_swaps_a_changed_file_in_and_keeps_the_keys_on_a_bad_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys.json"
    save(path, KeyFileData(keys=[entry("alice", KEY_A)]))
    ring = build_ring([SIMPLE], path)
    watcher = KeyFileWatcher(path, ring, [SIMPLE])
    assert not watcher.check()  # unchanged: nothing read
    save(path, KeyFileData(keys=[entry("bob", KEY_B)]))
    assert watcher.check()
    assert ring.lookup(KEY_A.encode()) is None
    assert ring.lookup(KEY_B.encode()) == Principal(name="bob")
    assert ring.lookup(SIMPLE.encode()) is not None  # the simple keys stay

    path.write_text('{"keys": [{"name": "x"}]}')
    assert not watcher.check()
    assert ring.lookup(KEY_B.encode()) == Principal(name="bob")  # kept
    assert str(path) in caplog.text

    path.unlink()
    assert watcher.check()
    assert ring.lookup(KEY_B.encode()) is None and not ring.open


# -- patterns ----------------------------------------------------------------------

NAMES = st.text(alphabet="abc-*?", min_size=1, max_size=6)


@given(models=st.lists(st.text("abc-", min_size=1, max_size=5), max_size=8))
def test_every_model_for_star(models: list[str]) -> None:
    assert Principal(name="x").visible(models) == sorted(models)


@given(
    patterns=st.lists(NAMES, min_size=1, max_size=3),
    models=st.lists(st.text("abc-", min_size=1, max_size=5), max_size=8),
)
def test_visible_is_exactly_the_models_a_pattern_matches(
    patterns: list[str], models: list[str]
) -> None:
    import fnmatch

    who = Principal(name="x", models=tuple(patterns))
    shown = who.visible(models)
    assert shown == sorted(m for m in models if any(fnmatch.fnmatchcase(m, p) for p in patterns))
    assert all(who.may_use(m) for m in shown)


def test_patterns() -> None:
    who = Principal(name="x", models=("chat-*", "emb"))
    assert who.may_use("chat-a") and who.may_use("emb")
    assert not who.may_use("img") and not who.may_use("emb2") and not who.may_use("Chat-a")


# -- limits (pure policy) ----------------------------------------------------------


@settings(max_examples=200)
@given(
    rate=st.integers(1, 120),
    gaps=st.lists(st.floats(0, 30, allow_nan=False), min_size=1, max_size=200),
)
def test_the_bucket_admits_no_more_than_its_rate_allows(rate: int, gaps: list[float]) -> None:
    bucket = TokenBucket.per_minute(rate, 0.0)
    now, taken = 0.0, []
    for gap in gaps:
        now += gap
        wait = bucket.take(now)
        if wait == 0.0:
            taken.append(now)
        else:
            assert wait > 0
    # In any window of T seconds at most `rate` (the burst) + T * rate / 60 are admitted.
    for i, start in enumerate(taken):
        for j in range(i, len(taken)):
            span = taken[j] - start
            assert j - i + 1 <= rate + span * rate / 60 + 1e-6


@given(rate=st.integers(1, 120), burst=st.integers(0, 300))
def test_a_refused_call_is_admitted_after_its_retry_after(rate: int, burst: int) -> None:
    bucket = TokenBucket.per_minute(rate, 0.0)
    waits = [bucket.take(0.0) for _ in range(burst + rate + 1)]
    assert waits[:rate] == [0.0] * rate  # the burst
    wait = waits[-1]
    assert wait > 0
    assert bucket.take(wait + 1e-9) == 0.0


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_rate_limit_says_when_to_come_back() -> None:
    clock = Clock()
    limiter = Limiter(Usage(), clock=clock)
    who = Principal(name="kid", rate=2)
    limiter.admit(who)
    limiter.admit(who)
    with pytest.raises(LimitExceeded) as err:
        limiter.admit(who)
    assert err.value.status == 429 and err.value.headers["Retry-After"] == "30"
    assert "kid" in err.value.message
    limiter.admit(who, interactive=False)  # jobs: their rate is the queue's
    clock.t += 30
    limiter.admit(who)
    assert limiter.usage.refused == {"kid": {"rate": 1}}


def test_concurrency_limit_and_release() -> None:
    limiter = Limiter(Usage())
    who = Principal(name="kid", concurrency=1)
    assert limiter.admit(who)
    with pytest.raises(LimitExceeded) as err:
        limiter.admit(who)
    assert err.value.code == "concurrency_limit_exceeded"
    assert err.value.headers["Retry-After"] == "1"
    limiter.release(who)
    assert limiter.admit(who)
    assert not Limiter(Usage()).admit(Principal(name="free"))  # no limits: no slot


def test_gpu_budgets_name_the_budget_and_the_reset() -> None:
    now = 1_767_225_000.0  # 2025-12-31 23:50 UTC
    usage = Usage()
    limiter = Limiter(usage, wall=lambda: now)
    daily = Principal(name="d", gpu_day=60)
    limiter.admit(daily)
    usage.record("d", "m", now, gpu_seconds=61)
    with pytest.raises(LimitExceeded) as err:
        limiter.admit(daily, interactive=False)  # jobs meet the budget too
    assert err.value.code == "gpu_budget_exceeded"
    assert "daily GPU budget" in err.value.message
    assert "2026-01-01 00:00:00 UTC" in err.value.message
    assert err.value.headers["Retry-After"] == str(int(next_day(now) - now))
    monthly = Principal(name="d", gpu_month=100)
    limiter.admit(monthly)
    usage.record("d", "m", now, gpu_seconds=40)
    with pytest.raises(LimitExceeded) as err:
        limiter.admit(monthly)
    assert "monthly" in err.value.message
    assert err.value.headers["Retry-After"] == str(int(next_month(now) - now))
    # The next day the daily budget is whole again.
    assert usage.gpu_spent("d", next_day(now) + 1) == (0.0, 0.0)


# -- usage -------------------------------------------------------------------------


def test_usage_is_kept_across_a_restart_and_rendered_for_prometheus(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    now = 1_767_225_000.0
    usage = Usage()
    usage.record("alice", "chat", now, gpu_seconds=1.5, prompt_tokens=3, completion_tokens=4)
    usage.record("alice", "chat", now, gpu_seconds=0.5)
    usage.refuse("bob", "rate")
    path = tmp_path / "u" / "usage.json"
    usage.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = Usage.load(path)
    assert again.gpu_spent("alice", now) == (2.0, 2.0)
    (row,) = again.report(["alice"], now)
    assert row["models"] == [
        {
            "model": "chat",
            "requests": 2,
            "prompt_tokens": 3,
            "completion_tokens": 4,
            "gpu_seconds": 2.0,
        }
    ]
    registry = CollectorRegistry()
    registry.register(UsageCollector(again))
    text = generate_latest(registry).decode()
    assert 'homelab_proxy_key_requests_total{key="alice",model="chat"} 2.0' in text
    assert 'homelab_proxy_key_tokens_total{key="alice",kind="completion",model="chat"} 4.0' in text
    assert 'homelab_proxy_key_refused_total{key="bob",reason="rate"} 1.0' in text
    assert Usage.load(tmp_path / "none.json").tallies == {}


# -- the proxy app with two named keys (unit stack) --------------------------------


@contextlib.asynccontextmanager
async def keyed_stack(tmp_path: Path, *entries: KeyEntry):
    path = tmp_path / "keys.json"
    save(path, KeyFileData(keys=list(entries)))
    async with build_stack(tmp_path, api_keys=None, key_file=path) as stack:
        yield stack


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_each_key_sees_and_uses_only_its_models(tmp_path: Path) -> None:
    async with keyed_stack(
        tmp_path, entry("alice", KEY_A, models=["chat-a"]), entry("root", KEY_B, admin=True)
    ) as stack:
        c = stack.client
        r = await c.get("/v1/models", headers=bearer(KEY_A))
        assert [m["id"] for m in r.json()["data"]] == ["chat-a"]
        r = await c.get("/v1/models", headers=bearer(KEY_B))
        assert len(r.json()["data"]) == 4
        for name in ("chat-b", "no-such"):
            r = await c.post(
                "/v1/chat/completions",
                json={"model": name, "messages": [{"role": "user", "content": "hi"}]},
                headers=bearer(KEY_A),
            )
            assert r.status_code == 404, r.text
            message = r.json()["error"]["message"]
            assert message.endswith("Known models: chat-a")  # only its own
            assert "chat-b" not in message.replace(f"'{name}'", "")
            assert "img" not in message and "emb" not in message
        r = await c.get("/v1/models/chat-b", headers=bearer(KEY_A))
        assert r.status_code == 404
        # An image route with a model the key may not use: 404, not "wrong type".
        r = await c.post(
            "/v1/images/generations", json={"model": "img", "prompt": "x"}, headers=bearer(KEY_A)
        )
        assert r.status_code == 404
        r = await c.post(
            "/v1/chat/completions",
            json={"model": "chat-a", "messages": [{"role": "user", "content": "hi"}]},
            headers=bearer(KEY_A),
        )
        assert r.status_code == 200, r.text


async def test_limits_answer_429_before_any_lease_and_usage_counts(tmp_path: Path) -> None:
    async with keyed_stack(
        tmp_path, entry("kid", KEY_A, rate=1), entry("root", KEY_B, admin=True)
    ) as stack:
        c = stack.client
        body = {"model": "chat-a", "messages": [{"role": "user", "content": "hi"}]}
        r = await c.post("/v1/chat/completions", json=body, headers=bearer(KEY_A))
        assert r.status_code == 200
        grants = stack.manager.granted
        r = await c.post("/v1/chat/completions", json=body, headers=bearer(KEY_A))
        assert r.status_code == 429, r.text
        assert int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        assert stack.manager.granted == grants  # no lease asked for

        r = await c.get("/v1/usage", headers=bearer(KEY_A))
        assert r.json()["key"]["name"] == "kid"
        (mine,) = r.json()["data"]
        assert mine["refused"] == {"rate": 1}
        assert mine["models"][0]["requests"] == 1
        r = await c.get("/v1/usage", params={"key": "root"}, headers=bearer(KEY_A))
        assert r.status_code == 404
        r = await c.get("/v1/usage", headers=bearer(KEY_B))
        assert {row["key"] for row in r.json()["data"]} == {"kid", "root"}
        text = (await c.get("/metrics", headers=bearer(KEY_B))).text
        assert 'homelab_proxy_key_requests_total{key="kid",model="chat-a"} 1.0' in text
        assert KEY_A not in text


async def test_a_key_revoked_in_the_file_is_refused_without_a_restart(tmp_path: Path) -> None:
    async with keyed_stack(tmp_path, entry("alice", KEY_A), entry("bob", KEY_B)) as stack:
        c = stack.client
        assert (await c.get("/v1/models", headers=bearer(KEY_A))).status_code == 200
        save(tmp_path / "keys.json", KeyFileData(keys=[entry("bob", KEY_B)]))
        for _ in range(100):
            if (await c.get("/v1/models", headers=bearer(KEY_A))).status_code == 401:
                break
            await asyncio.sleep(0.1)
        assert (await c.get("/v1/models", headers=bearer(KEY_A))).status_code == 401
        assert (await c.get("/v1/models", headers=bearer(KEY_B))).status_code == 200


async def test_mcp_tools_list_only_the_keys_models(tmp_path: Path) -> None:
    async with keyed_stack(tmp_path, entry("alice", KEY_A, models=["chat-a", "emb"])) as stack:
        async with http_session(stack.url + "/mcp", KEY_A) as session:
            tools = (await session.list_tools()).tools
            text = json.dumps([t.model_dump(mode="json") for t in tools])
            assert "chat-a" in text
            assert "chat-b" not in text and '"img"' not in text
            result = await session.call_tool(
                "txt2txt", {"model": "chat-b", "messages": [{"role": "user", "content": "x"}]}
            )
            assert result.is_error
            assert "chat-b" in text_of(result)  # the name asked for, no other
            assert "img" not in text_of(result)


async def test_the_event_stream_of_a_limited_key_names_only_its_models(tmp_path: Path) -> None:
    async with keyed_stack(
        tmp_path, entry("alice", KEY_A, models=["chat-a"]), entry("root", KEY_B, admin=True)
    ) as stack:
        c = stack.client
        for _ in range(100):  # the hub connects to the manager's stream at start-up
            probe = await c.get("/readyz")
            if probe.status_code == 200 and stack.app.state.ctx.events.models is not None:
                break
            await asyncio.sleep(0.05)
        seen = b""
        async with c.stream("GET", "/api/events", headers=bearer(KEY_A)) as events:
            assert events.status_code == 200
            chunks = events.aiter_bytes()
            seen += await anext(chunks)
            assert b"event: snapshot" in seen and b"chat-a" in seen and b"chat-b" not in seen
            for model in ("chat-b", "chat-a"):  # a swap from a hidden model to its own
                r = await c.post(
                    "/v1/chat/completions",
                    json={"model": model, "messages": [{"role": "user", "content": "x"}]},
                    headers=bearer(KEY_B),
                )
                assert r.status_code == 200
            while b'"to":"chat-a"' not in seen:
                seen += await anext(chunks)
        assert b"chat-b" not in seen
        assert b'"from":null' in seen


async def test_mcp_progress_names_no_model_outside_the_keys_scope() -> None:
    from types import SimpleNamespace

    from proxy.keys import PRINCIPAL
    from proxy.mcp.progress import _queued_text
    from wire.models import ModelStatus

    def status(name: str, state: str) -> ModelStatus:
        return ModelStatus(id=name, type="text", state=state, since=0.0)

    async def models(max_age: float = 0.0) -> dict[str, ModelStatus]:
        return {"chat-a": status("chat-a", "stopped"), "secret": status("secret", "ready")}

    ctx = SimpleNamespace(manager=SimpleNamespace(models=models))
    token = PRINCIPAL.set(Principal(name="alice", models=("chat-a",)))
    try:
        text, _ = await _queued_text(ctx, "chat-a")  # type: ignore[arg-type]
    finally:
        PRINCIPAL.reset(token)
    assert "secret" not in text and "another model (ready)" in text
    text, _ = await _queued_text(ctx, "chat-a")  # type: ignore[arg-type]
    assert "secret (ready)" in text  # an admin (the default principal) sees it


async def test_a_concurrency_limit_holds_for_a_stream_until_its_end(tmp_path: Path) -> None:
    async with keyed_stack(tmp_path, entry("one", KEY_A, concurrency=1)) as stack:
        c = stack.client
        slow = {"model": "chat-a", "messages": [{"role": "user", "content": "slow"}]}
        quick = {"model": "chat-b", "messages": [{"role": "user", "content": "hi"}]}
        async with c.stream(
            "POST", "/v1/chat/completions", json={**slow, "stream": True}, headers=bearer(KEY_A)
        ) as stream:
            chunks = stream.aiter_bytes()
            assert b"echo" in await anext(chunks)  # the stream runs, held at the gate
            grants = stack.manager.granted
            r = await c.post("/v1/chat/completions", json=quick, headers=bearer(KEY_A))
            assert r.status_code == 429
            assert r.json()["error"]["code"] == "concurrency_limit_exceeded"
            assert r.headers["Retry-After"] == "1"
            assert stack.manager.granted == grants
            stack.upstream.gate.set()
            async for _ in chunks:
                pass
        r = await c.post("/v1/chat/completions", json=quick, headers=bearer(KEY_A))
        assert r.status_code == 200  # the slot came back at the stream's end
        (mine,) = (await c.get("/v1/usage", headers=bearer(KEY_A))).json()["data"]
        assert mine["refused"] == {"concurrency": 1}
        by_model = {m["model"]: m for m in mine["models"]}
        assert by_model["chat-a"]["gpu_seconds"] > 0 and by_model["chat-b"]["requests"] == 1
        assert by_model["chat-b"]["completion_tokens"] == 2  # "echo hi", from the answer


async def test_a_restart_keeps_the_spent_budget(tmp_path: Path) -> None:
    body = {"model": "chat-a", "messages": [{"role": "user", "content": "hi"}]}
    budgeted = entry("kid", KEY_A, gpu_day=1e-9)  # any lease time spends it
    async with keyed_stack(tmp_path, budgeted) as stack:
        r = await stack.client.post("/v1/chat/completions", json=body, headers=bearer(KEY_A))
        assert r.status_code == 200
    async with keyed_stack(tmp_path, budgeted) as stack:  # the same state: a restart
        r = await stack.client.post("/v1/chat/completions", json=body, headers=bearer(KEY_A))
        assert r.status_code == 429, r.text
        assert r.json()["error"]["code"] == "gpu_budget_exceeded"
        assert "daily GPU budget of key 'kid'" in r.json()["error"]["message"]
        assert int(r.headers["Retry-After"]) <= 86400
