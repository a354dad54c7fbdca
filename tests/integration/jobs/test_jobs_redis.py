"""Two proxies on one real redis-server: a job submitted to one is followed, listed and
cancelled on the other; a proxy killed mid-job is covered by the other one."""

from __future__ import annotations

import time

from tests.integration.jobs.jobs_stack import TEXT_A, TEXT_B, run_jobs_stack, run_redis
from tests.integration.jobs.sse import read_events, rpc

LONG = " ".join(f"q{i}" for i in range(40))


def test_two_proxies_share_jobs_through_redis(tmp_path) -> None:
    with run_redis(tmp_path) as redis_url, run_jobs_stack(tmp_path) as stack:
        stack.start_proxy("p1", redis_url, {"HOMELAB_JOB_WORKERS": "2"})
        stack.start_proxy("p2", redis_url, {"HOMELAB_JOB_WORKERS": "2"})
        with stack.client("p1") as one, stack.client("p2") as two:
            # Submitted on p1, streamed on p2 from the first event to the end.
            task = rpc(one, "create_message", {"model": TEXT_A, "message": "over redis"})["result"]
            events = list(read_events(two, task["stream"]))
            assert events[-1].data == {"state": "SUCCESS"}
            text = "".join(e.data["content"] for e in events if e.event == "token")
            assert text == f"[{TEXT_A}] over redis"
            got = rpc(two, "tasks.get", {"taskId": task["taskId"]})["result"]
            assert got["state"] == "SUCCESS" and got["result"]["text"] == text
            listed = rpc(two, "tasks.list", {"model": TEXT_A})["result"]["tasks"]
            assert task["taskId"] in [t["taskId"] for t in listed]

            # Cancelled on p2 while it runs, wherever it runs.
            long = rpc(one, "create_message", {"model": TEXT_B, "message": LONG})["result"]
            started = read_events(two, long["stream"], stop=lambda e: e.event == "token")
            assert any(e.event == "token" for e in started)
            rpc(two, "tasks.cancel", {"taskId": long["taskId"]})
            tail = list(read_events(one, long["stream"]))
            assert tail[-1].data == {"state": "CANCELLED"}

            # p1 dies with jobs claimed: p2 sees its heartbeat stop and runs them again.
            ids = [
                rpc(one, "create_message", {"model": TEXT_A, "message": LONG})["result"]["taskId"]
                for _ in range(6)
            ]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                tasks = [rpc(one, "tasks.get", {"taskId": i})["result"] for i in ids]
                mine = [t for t in tasks if t["state"] == "STARTED"]
                if mine:
                    break
                time.sleep(0.05)
        stack.stop_proxy("p1", kill=True)
        with stack.client("p2") as two:
            finals = [list(read_events(two, f"/stream/{i}"))[-1].data["state"] for i in ids]
            assert finals == ["SUCCESS"] * 6
            results = [rpc(two, "tasks.get", {"taskId": i})["result"] for i in ids]
        assert all(r["result"]["text"] == f"[{TEXT_A}] {LONG}" for r in results)
        # Some of them were p1's when it died: they ran again, as attempt 2, on p2.
        assert any(r["attempt"] >= 2 for r in results), results
