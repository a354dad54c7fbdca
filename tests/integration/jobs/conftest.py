"""Fixtures for the jobs tier: one manager + proxy stack per module (jobs_stack.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.jobs.jobs_stack import JobsStack, run_jobs_stack


@pytest.fixture(scope="module")
def jobs_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobsStack]:
    work = tmp_path_factory.mktemp("jobs")
    with run_jobs_stack(work) as stack:
        stack.start_proxy("p1", str(work / "jobs.db"), {"HOMELAB_JOB_WORKERS": "2"})
        yield stack
