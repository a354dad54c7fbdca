"""A proxy killed (SIGKILL) or stopped (SIGTERM) with jobs queued and running on the embedded store: the next
proxy on the same file finishes every one. Counted: submitted, completed, lost, and
completed twice (more than one `result` event or SUCCESS state in a job's log)."""

from __future__ import annotations

import time

import pytest

from tests.integration.jobs.jobs_stack import TEXT_A, TEXT_B, run_jobs_stack
from tests.integration.jobs.sse import read_events, rpc

PROMPT = " ".join(f"r{i}" for i in range(30))
"""30 tokens at 0.05 s: each chat job streams for about 1.5 s."""


@pytest.mark.parametrize("kill", [True, False], ids=["sigkill", "sigterm"])
def test_restart_with_jobs_queued_and_running_loses_none_and_completes_none_twice(
    tmp_path, kill: bool
) -> None:
    with run_jobs_stack(tmp_path) as stack:
        store = str(tmp_path / "jobs.db")
        stack.start_proxy("p1", store, {"HOMELAB_JOB_WORKERS": "2"})
        with stack.client("p1") as client:
            ids = [
                rpc(
                    client, "create_message", {"model": (TEXT_A, TEXT_B)[i % 2], "message": PROMPT}
                )["result"]["taskId"]
                for i in range(10)
            ]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # kill while jobs are running and queued
                tasks = rpc(client, "tasks.list", {"limit": 100})["result"]["tasks"]
                states = [t["state"] for t in tasks]
                if states.count("STARTED") >= 1 and states.count("PENDING") >= 3:
                    break
                time.sleep(0.05)
            else:
                raise AssertionError(f"never saw running and queued jobs together: {states}")
            running_at_kill = {t["taskId"] for t in tasks if t["state"] == "STARTED"}
        t0 = time.monotonic()
        stack.stop_proxy("p1", kill=kill)
        stopped_in = time.monotonic() - t0

        stack.start_proxy("p1", store, {"HOMELAB_JOB_WORKERS": "2"})
        t1 = time.monotonic()
        completed, lost, twice = 0, [], []
        with stack.client("p1") as client:
            for task_id in ids:
                events = list(read_events(client, f"/stream/{task_id}"))
                final = events[-1]
                if final.event == "end" and final.data["state"] == "SUCCESS":
                    completed += 1
                else:  # say how it ended, so a failure names its cause
                    lost.append((task_id, final.event, final.data))
                results = [e for e in events if e.event == "result"]
                successes = [
                    e for e in events if e.data.get("state") == "SUCCESS" and e.event == "state"
                ]
                if len(results) > 1 or len(successes) > 1:
                    twice.append(task_id)
                if results:
                    model = rpc(client, "tasks.get", {"taskId": task_id})["result"]["model"]
                    assert results[0].data["text"] == f"[{model}] {PROMPT}"
            attempts = {
                task_id: rpc(client, "tasks.get", {"taskId": task_id})["result"]["attempt"]
                for task_id in running_at_kill
            }
    print(f"stopped in {stopped_in:.1f} s, drained in {time.monotonic() - t1:.1f} s")
    counts = {"submitted": len(ids), "completed": completed, "lost": len(lost), "twice": len(twice)}
    print("restart counts:", counts, "running at kill:", attempts)
    assert counts == {"submitted": 10, "completed": 10, "lost": 0, "twice": 0}, (lost, twice)
    # The jobs that were running when the proxy died ran again, as a new attempt.
    assert running_at_kill and all(a >= 2 for a in attempts.values())
