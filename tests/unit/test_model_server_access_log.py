"""Our model servers' (image, audio) access log leaves out the manager's health checks (it asks every
few tens of milliseconds while the model loads) and keeps what clients did."""

from __future__ import annotations

import logging

from wire.http_server import NoHealthChecks


def record(path: str) -> logging.LogRecord:
    return logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET" if path == "/health" else "POST", path, "1.1", 200),
        None,
    )


def test_health_checks_are_left_out_of_the_access_log() -> None:
    keep = NoHealthChecks().filter
    assert not keep(record("/health"))
    assert keep(record("/v1/images/generations"))
    assert keep(record("/health?full=1"))  # not the manager's probe
