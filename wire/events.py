"""The manager's event stream (``GET /v1/events``): payloads; SSE framing, keep-alive and
parsing for every event stream of the programs.

The stream is Server-Sent Events: first ``event: snapshot`` (data: a JSON list of every
`ModelStatus`), then ``event: state`` (`StateEvent`), ``event: swap`` (`SwapEvent`) and
``event: contention`` (`ContentionEvent`) as they happen, and a ``: keepalive`` comment
(`KEEPALIVE`) after `HEARTBEAT` idle seconds. Each data is one line of JSON. The proxy
follows ONE such stream with `SseParser`, parses each frame once (`parse_event`) and fans
the typed events out (`wire.fanout.Fanout`) to every web UI (``/api/events``,
`proxy.event_hub`) and to MCP calls waiting for a model (`proxy.feed`).

Every stream the programs send is framed here: the manager's and the proxy's event
streams with `event_stream` (snapshot first, then each event's frame, made once for
every reader, and keep-alives), the proxy's job streams (``GET /stream/{taskId}``) with
`frame` (with the ``id:`` line) and `KEEPALIVE`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Iterable
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from wire.fanout import Subscription
from wire.models import ModelStateName, ModelStatus

SNAPSHOT, STATE, SWAP, CONTENTION = "snapshot", "state", "swap", "contention"
KEEPALIVE = b": keepalive\n\n"
"""The comment every event stream sends after `HEARTBEAT` idle seconds."""
HEARTBEAT = 15.0
"""Idle seconds before a `KEEPALIVE`, unless a setting says otherwise."""
SSE_MEDIA_TYPE = "text/event-stream"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
"""Headers of every event stream (no proxy buffering in between)."""


class StateEvent(BaseModel):
    """A model moved from `previous` to `state` at `at` (Unix seconds)."""

    kind: ClassVar[str] = STATE
    model_config = ConfigDict(frozen=True)

    model: str
    state: ModelStateName
    previous: ModelStateName
    at: float
    error: str | None = None

    def payload(self) -> dict[str, Any]:
        return self.model_dump()


class SwapEvent(BaseModel):
    """The manager began starting `to`; `from_model` (``"from"`` on the wire) was resident
    before (None: nothing was)."""

    kind: ClassVar[str] = SWAP
    model_config = ConfigDict(frozen=True, populate_by_name=True)

    from_model: str | None = Field(alias="from")
    to: str
    at: float

    def payload(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True)


class ContentionEvent(BaseModel):
    """Other models wait for the GPU memory of `models` (residents that hold leases), or
    requests of several API keys wait for the room of a ready model in `models`: a proxy
    stops sharing its leases on them (no new requests join; each is released once its
    requests end) and asks for new, counted ones, so the fairness bound counts requests
    and freed room goes back to the manager's fair order (docs/architecture.md,
    "Leases", "Fair share between API keys")."""

    kind: ClassVar[str] = CONTENTION
    model_config = ConfigDict(frozen=True)

    models: list[str]
    at: float

    def payload(self) -> dict[str, Any]:
        return self.model_dump()


Event = StateEvent | SwapEvent | ContentionEvent
Parsed = Event | list[ModelStatus]
"""A frame of the manager's stream, typed: an event, or the snapshot's model list."""
_SNAPSHOT = TypeAdapter(list[ModelStatus])


def frame(event: str, data: Any, event_id: int | None = None) -> bytes:
    """One SSE frame with single-line JSON data (compact UTF-8), with an ``id:`` line when
    `event_id` is given (a stream a client may resume with ``Last-Event-ID``)."""
    head = f"event: {event}\ndata: "
    if event_id is not None:
        head = f"id: {event_id}\n{head}"
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"{head}{body}\n\n".encode()


def data_frame(data: Any) -> bytes:
    """One SSE frame with only a ``data:`` line (single-line compact UTF-8 JSON): the
    shape OpenAI's own streams use (chat chunks, ``transcript.text.delta`` events),
    which clients read by the JSON's ``type``, not by an ``event:`` name."""
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {body}\n\n".encode()


def event_frame(event: Event) -> bytes:
    """`event`'s frame (its payload serialised by its own type)."""
    data = event.model_dump_json(by_alias=True)
    return f"event: {event.kind}\ndata: {data}\n\n".encode()


def snapshot_frame(statuses: Iterable[ModelStatus]) -> bytes:
    return frame(SNAPSHOT, [s.to_wire() for s in statuses])


async def event_stream(
    first: bytes, subscription: Subscription[Any], heartbeat: float = HEARTBEAT
) -> AsyncGenerator[bytes, None]:
    """The bytes of one event stream: `first` (the snapshot), then the frame of each item
    `subscription` gets (`Subscription.next_frame`: made once for every reader), and
    `KEEPALIVE` after `heartbeat` idle seconds. Ends when the subscription ends; closes
    it when the stream ends or is closed (``contextlib.aclosing``)."""
    try:
        yield first
        while True:
            try:
                chunk = await subscription.next_frame(heartbeat)
            except StopAsyncIteration:
                return
            yield KEEPALIVE if chunk is None else chunk
    finally:
        subscription.close()


class SseParser:
    """Incremental SSE parsing: feed it lines (with or without line ends); a blank line
    completes a frame, returned as ``(event name, data)``. Comments are skipped."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: bytes | str) -> tuple[str, str] | None:
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        text = text.rstrip("\r\n")
        if not text:
            event, data = self._event or "message", self._data
            self._event, self._data = "", []
            return (event, "\n".join(data)) if data else None
        if text.startswith(":"):
            return None
        name, _, value = text.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None


def parse_event(event: str, data: str) -> Parsed | None:
    """A frame's typed payload; None for an unknown event or a payload that does not
    validate (a newer manager's additions are skipped, not fatal)."""
    try:
        if event == STATE:
            return StateEvent.model_validate_json(data)
        if event == SWAP:
            return SwapEvent.model_validate_json(data)
        if event == CONTENTION:
            return ContentionEvent.model_validate_json(data)
        if event == SNAPSHOT:
            return _SNAPSHOT.validate_json(data)
    except ValidationError:
        return None
    return None
