"""The per-(model, owner) job queues on a real redis-server (docs/jobs.md, "Fair share
between keys"): two stores on one server (two proxies) see each other's owners and
queues, FIFO within an owner, and a queue entry is taken by exactly one of them."""

from __future__ import annotations

from proxy.jobs.store import JobStore
from tests.integration.jobs.jobs_stack import run_redis


def test_two_stores_on_one_redis_share_the_per_owner_queues(tmp_path) -> None:
    with run_redis(tmp_path) as url:
        one, two = JobStore(url), JobStore(url)
        try:
            for i in range(3):
                one.enqueue("m", f"a{i}", "key-a")
            two.enqueue("m", "b0", "key-b")
            two.enqueue("m/x", "c0", "")  # any model name, an unowned job
            assert one.owners() == {"m": {"key-a", "key-b"}, "m/x": {""}}
            assert one.owner_sizes("m") == {"key-a": 3, "key-b": 1}
            assert two.queue_sizes(["m", "m/x", "z"]) == {"m": 4, "m/x": 1}
            assert two.head("m", "key-a") == "a0" and one.queued("m", "key-b") == ["b0"]
            taken = [one.dequeue("m", "key-a"), two.dequeue("m", "key-a")]
            assert taken == ["a0", "a1"]
            assert two.dequeue("m", "key-b") == "b0" and one.dequeue("m", "key-b") is None
            assert one.owner_sizes("m") == {"key-a": 1}
        finally:
            one.close()
            two.close()
