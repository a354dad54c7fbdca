"""Suite-wide rules: tier markers, and refusing a run where a required tier was skipped.

Tiers are pytest markers (`docker`, `vllm`, `diffusers`, `browser`; unmarked
tests are the fast unit tier). A tier's fixtures skip its tests when the real
part is missing (no Docker engine, no Chromium, ...). That is fine on a
laptop, but CI must prove every tier ran: set
`HOMELAB_REQUIRE_TIERS=docker,vllm,diffusers,browser` (`.ci/run` does) and the
session fails if any test of a listed tier was skipped, or none of it ran.
"""

from __future__ import annotations

import os

import pytest

TIERS = ("docker", "vllm", "diffusers", "browser")

_ran: dict[str, int] = {t: 0 for t in TIERS}
_skipped: dict[str, list[str]] = {t: [] for t in TIERS}


def _required() -> set[str]:
    raw = os.environ.get("HOMELAB_REQUIRE_TIERS", "")
    return {t.strip() for t in raw.split(",") if t.strip()}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run browser tests last.

    Playwright's sync API keeps an asyncio loop running in the main thread for
    as long as its session fixture lives; async tests collected after it would
    fail with "Runner.run() cannot be called from a running event loop".
    """
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    tiers = [t for t in TIERS if t in report.keywords]
    if not tiers:
        return
    if report.skipped:
        for t in tiers:
            _skipped[t].append(
                f"{report.nodeid}: {report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr}"
            )
    elif report.when == "call":
        for t in tiers:
            _ran[t] += 1


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    required = _required()
    if not required:
        return
    # Only judge a full run: a run narrowed with -k/-m or node ids is a developer's choice.
    if session.config.getoption("keyword") or session.config.getoption("markexpr"):
        return
    problems = []
    for tier in sorted(required):
        if _skipped.get(tier):
            problems.append(
                f"tier '{tier}' had skipped tests:\n    " + "\n    ".join(_skipped[tier][:10])
            )
        elif not _ran.get(tier):
            problems.append(f"tier '{tier}' ran no test")
    if problems:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        msg = "HOMELAB_REQUIRE_TIERS not met:\n  " + "\n  ".join(problems)
        if reporter:
            reporter.write_line(msg, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
