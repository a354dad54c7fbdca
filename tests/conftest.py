"""Suite-wide rules: tier markers, and refusing a run where a required tier was skipped.

Tiers are pytest markers (`docker`, `vllm`, `diffusers`, `browser`, `llamacpp`, `speech`; unmarked
tests are the fast unit tier). A tier's fixtures skip its tests when the real
part is missing (no Docker engine, no Chromium, ...). That is fine on a
laptop, but CI must prove every tier ran: set
`HOMELAB_REQUIRE_TIERS=docker,vllm,diffusers,browser,llamacpp,speech` (`.ci/run` does) and the
session fails if any test of a listed tier was skipped, or none of it ran. A module
skipped while it loads (a module-level `pytest.importorskip`) counts as skipped tests of
the tiers its `pytestmark` names: pytest never collects its tests, so without this the
tier could look green with the module's tests missing.

One fixture is shared by tiers: `tiny_sd`, the tiny random-weight diffusers pipeline
(imageserver.tiny, seed 0), built once per session for the image server's integration
tests and the real-model stacks of tests/e2e (the servers only read it).
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

TIERS = ("docker", "vllm", "diffusers", "browser", "llamacpp", "speech")

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


def module_tiers(path: Path) -> set[str]:
    """The tiers a test module's top-level `pytestmark` names (read from its source, for a
    module that could not be imported)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return set()
    found: set[str] = set()
    for node in tree.body:
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign)
            else []
        )
        if not any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in targets):
            continue
        for sub in ast.walk(node):
            if (
                isinstance(sub, ast.Attribute)
                and sub.attr in TIERS
                and isinstance(sub.value, ast.Attribute)
                and sub.value.attr == "mark"
            ):
                found.add(sub.attr)
    return found


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    """Count a module skipped while loading as skipped tests of the tiers it is marked with."""
    outcome = yield
    report: pytest.CollectReport = outcome.get_result()
    if not (report.skipped and isinstance(collector, pytest.Module)):
        return
    why = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
    for tier in sorted(module_tiers(collector.path)):
        _skipped[tier].append(f"{report.nodeid} (the whole module, while loading): {why}")


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


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny text-to-image pipeline folder (StableDiffusionPipeline, seed 0); skips with
    the fix when torch, diffusers or transformers is missing."""
    pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")
    pytest.importorskip(
        "diffusers", reason="diffusers is not installed (pip install -e '.[image]')"
    )
    pytest.importorskip(
        "transformers", reason="transformers is not installed (pip install -e '.[image]')"
    )
    from imageserver.tiny import build

    return build(tmp_path_factory.mktemp("tiny-sd") / "tiny-sd", kind="text2image")
