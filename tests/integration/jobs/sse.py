"""A plain Server-Sent Events reader over httpx (no SSE library): enough for the tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import httpx


@dataclass
class Event:
    id: int | None
    event: str
    data: dict


def read_events(
    client: httpx.Client, path: str, last_event_id: int | None = None, stop=None
) -> Iterator[Event]:
    """Yield events of GET `path` until the server closes or `stop(event)` is true."""
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    with client.stream("GET", path, headers=headers, timeout=120) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        ev_id, ev_name, data = None, "message", []
        for line in resp.iter_lines():
            if line == "":
                if data:
                    event = Event(ev_id, ev_name, json.loads("\n".join(data)))
                    yield event
                    if stop is not None and stop(event):
                        return
                ev_id, ev_name, data = None, "message", []
            elif line.startswith(":"):
                continue
            elif line.startswith("id:"):
                ev_id = int(line[3:].strip())
            elif line.startswith("event:"):
                ev_name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip(" "))


def rpc(client: httpx.Client, method: str, params: dict | None = None, id_: int = 1) -> dict:
    """One JSON-RPC call; returns the whole response object."""
    r = client.post(
        "/rpc", json={"jsonrpc": "2.0", "method": method, "params": params or {}, "id": id_}
    )
    assert r.status_code == 200, r.text
    return r.json()
