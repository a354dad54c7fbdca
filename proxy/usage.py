"""What each key used: requests, tokens and GPU-seconds per key and model (docs/keys.md).

`Usage` is a few dicts in memory, updated once per model call by `proxy.modelcall` (a
dict lookup and some additions: no lock, no I/O on the request path). GPU-seconds are
the time a call of that key held a model lease (queueing and the answer's travel to the
client not counted). Beside the totals, each key's GPU-seconds of the current UTC day
and month are kept for its budgets (`proxy.limits`).

Persistence: `save` writes everything as JSON (atomically, mode 0600 in a 0700 folder)
and `load` reads it back at start-up, so a restart does not zero the budgets. The app
saves every ``HOMELAB_USAGE_SAVE_INTERVAL`` seconds when something changed, and at
shutdown: a crash loses at most that interval's counts.

Rendered for Prometheus by `UsageCollector` (``key`` label: the key's name, never the
key) and for clients by ``GET /v1/usage`` (`proxy.routes_ops`).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from wire.private import private_dir, write_private

log = logging.getLogger("proxy.usage")


class Tally(msgspec.Struct):
    """One key's use of one model."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    gpu_seconds: float = 0.0


class Spent(msgspec.Struct):
    """One key's GPU-seconds in the current UTC day and month (budgets)."""

    day: str = ""
    day_seconds: float = 0.0
    month: str = ""
    month_seconds: float = 0.0


class Saved(msgspec.Struct):
    version: int = 1
    tallies: dict[str, dict[str, Tally]] = msgspec.field(default_factory=dict)
    spent: dict[str, Spent] = msgspec.field(default_factory=dict)
    refused: dict[str, dict[str, int]] = msgspec.field(default_factory=dict)


def day_of(now: float) -> str:
    return datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y-%m-%d")


def month_of(now: float) -> str:
    return day_of(now)[:7]


def next_day(now: float) -> float:
    """The next UTC midnight after `now` (when a daily budget resets)."""
    today = datetime.datetime.fromtimestamp(now, datetime.UTC).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    return (today + datetime.timedelta(days=1)).timestamp()


def next_month(now: float) -> float:
    """The first moment of the next UTC month after `now`."""
    t = datetime.datetime.fromtimestamp(now, datetime.UTC)
    year, month = (t.year + 1, 1) if t.month == 12 else (t.year, t.month + 1)
    return datetime.datetime(year, month, 1, tzinfo=datetime.UTC).timestamp()


class Usage:
    """Every key's counts (module docstring). Not thread-safe: the event loop only."""

    def __init__(self) -> None:
        self.tallies: dict[str, dict[str, Tally]] = {}
        self.spent: dict[str, Spent] = {}
        self.refused: dict[str, dict[str, int]] = {}
        self.dirty = False
        self._today: tuple[float, float, str] = (0.0, 0.0, "")

    def record(
        self,
        key: str,
        model: str,
        now: float,
        *,
        gpu_seconds: float = 0.0,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> None:
        """One model call of `key` on `model`, ended at `now` (wall clock, for the day and
        month its GPU-seconds count in)."""
        per_key = self.tallies.get(key)
        if per_key is None:
            per_key = self.tallies[key] = {}
        tally = per_key.get(model)
        if tally is None:
            tally = per_key[model] = Tally()
        tally.requests += 1
        tally.prompt_tokens += prompt_tokens
        tally.completion_tokens += completion_tokens
        if gpu_seconds:
            tally.gpu_seconds += gpu_seconds
            spent = self._current(key, now)
            spent.day_seconds += gpu_seconds
            spent.month_seconds += gpu_seconds
        self.dirty = True

    def refuse(self, key: str, reason: str) -> None:
        """A request of `key` refused by a limit (`reason`: rate, concurrency, gpu_day, ...)."""
        per_key = self.refused.setdefault(key, {})
        per_key[reason] = per_key.get(reason, 0) + 1
        self.dirty = True

    def _day(self, now: float) -> str:
        """`day_of(now)`, computed once a day (a cached UTC day and its bounds)."""
        start, end, day = self._today
        if not start <= now < end:
            day = day_of(now)
            start = next_day(now) - 86400.0
            self._today = (start, start + 86400.0, day)
        return day

    def _current(self, key: str, now: float) -> Spent:
        spent = self.spent.get(key)
        if spent is None:
            spent = self.spent[key] = Spent()
        day = self._day(now)
        if spent.day != day:
            spent.day, spent.day_seconds = day, 0.0
        if spent.month != day[:7]:
            spent.month, spent.month_seconds = day[:7], 0.0
        return spent

    def gpu_spent(self, key: str, now: float) -> tuple[float, float]:
        """`key`'s GPU-seconds in the UTC day and month of `now`."""
        spent = self.spent.get(key)
        if spent is None:
            return 0.0, 0.0
        day = self._day(now)
        return (
            spent.day_seconds if spent.day == day else 0.0,
            spent.month_seconds if spent.month == day[:7] else 0.0,
        )

    def report(self, keys: list[str] | None, now: float) -> list[dict[str, Any]]:
        """Each key's usage (all keys when `keys` is None), for ``GET /v1/usage``."""
        names = sorted(set(self.tallies) | set(self.spent)) if keys is None else keys
        out = []
        for name in names:
            day, month = self.gpu_spent(name, now)
            models = self.tallies.get(name, {})
            out.append(
                {
                    "key": name,
                    "gpu_seconds_today": round(day, 3),
                    "gpu_seconds_this_month": round(month, 3),
                    "refused": dict(self.refused.get(name, {})),
                    "models": [
                        {"model": model, **msgspec.structs.asdict(models[model])}
                        for model in sorted(models)
                    ],
                }
            )
        return out

    # -- persistence ------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """Everything, encoded (on the event loop: the dicts do not change meanwhile)."""
        self.dirty = False
        return msgspec.json.encode(
            Saved(tallies=self.tallies, spent=self.spent, refused=self.refused)
        )

    def save(self, path: Path) -> None:
        """Write the counts (mode 0600; the folder made 0700 if missing)."""
        private_dir(path.parent, tighten=False)
        write_private(path, self.snapshot())

    @classmethod
    def load(cls, path: Path) -> Usage:
        """The counts saved at `path`; empty when there are none or they cannot be read
        (logged: usage is a record, not a reason to refuse to start)."""
        usage = cls()
        try:
            saved = msgspec.json.decode(path.read_bytes(), type=Saved)
        except FileNotFoundError:
            return usage
        except (OSError, msgspec.DecodeError) as exc:
            log.error("usage counts at %s cannot be read, starting from zero: %s", path, exc)
            return usage
        usage.tallies, usage.spent, usage.refused = saved.tallies, saved.spent, saved.refused
        return usage


class UsageCollector(Collector):
    """`Usage` for Prometheus, read at each scrape (nothing per request)."""

    def __init__(self, usage: Usage) -> None:
        self._usage = usage

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "homelab_proxy_key_requests",
            "Model calls by key (its name) and model.",
            labels=["key", "model"],
        )
        tokens = CounterMetricFamily(
            "homelab_proxy_key_tokens",
            "Tokens by key, model and kind (prompt, completion), from the answers' usage.",
            labels=["key", "model", "kind"],
        )
        gpu = CounterMetricFamily(
            "homelab_proxy_key_gpu_seconds",
            "Seconds a key's calls held a model lease, by key and model.",
            labels=["key", "model"],
        )
        refused = CounterMetricFamily(
            "homelab_proxy_key_refused",
            "Requests refused by a key's limits (429), by key and reason.",
            labels=["key", "reason"],
        )
        for key, models in sorted(self._usage.tallies.items()):
            for model, t in sorted(models.items()):
                requests.add_metric([key, model], t.requests)
                tokens.add_metric([key, model, "prompt"], t.prompt_tokens)
                tokens.add_metric([key, model, "completion"], t.completion_tokens)
                gpu.add_metric([key, model], t.gpu_seconds)
        for key, reasons in sorted(self._usage.refused.items()):
            for reason, count in sorted(reasons.items()):
                refused.add_metric([key, reason], count)
        yield from (requests, tokens, gpu, refused)
