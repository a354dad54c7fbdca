"""Server-Sent Events at ``GET /stream/{taskId}``: a job's events, replayable.

Every event the store keeps for the job is sent with its id (``id: N``), in order:
``state`` (``PENDING``, ``STARTED`` with its ``attempt``, ``SUCCESS``, ``FAILURE``,
``CANCELLED``), ``token`` (chat content as it comes), ``result`` (the final answer),
and last ``end``, after which the stream closes. A client may connect before,
during or after the run; with ``Last-Event-ID: N`` (header, or ``?last_event_id=N``
for clients that cannot set headers) it gets exactly the events after N.

While the job waits, ``state`` events *without* an id report its place in line
(``position``) and which model must load first (``load_first``); they are not
stored, so a resume neither loses nor repeats stored events. ``: keepalive``
comments keep idle connections open. Frames and keep-alives are `wire.events`'
(`frame`, `KEEPALIVE` after `HEARTBEAT` idle seconds), as on every other stream. The
stream reads from the store, so it works on any proxy that shares the job's store
(Redis), whoever runs the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from proxy import keys
from proxy.asgi import SSE_HEADERS
from proxy.errors import InvalidRequest, NotFound
from proxy.jobs.dispatcher import Dispatcher
from proxy.jobs.records import Position, StateEvent, to_json_value
from proxy.jobs.state import TaskState
from wire.disconnect import ClientDisconnected, watch_disconnect
from wire.events import HEARTBEAT, KEEPALIVE, frame

router = APIRouter()

POLL = 0.25
"""Seconds between store reads when no local notification comes (other proxies)."""
GAP_GRACE = 2.0
"""An event id handed out but never written (its writer died) is skipped after this."""


class JobStream(Response):
    """An ASGI response that relays one job's events until `end` or a disconnect."""

    background = None
    status_code = 200

    def __init__(self, jobs: Dispatcher, job_id: str, after: int) -> None:  # no Response.__init__
        self.jobs, self.job_id, self.after = jobs, job_id, after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with watch_disconnect(receive) as watch:
                await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
                await self._relay(send)
                watch.finish()
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except ClientDisconnected:
            return  # the reader went away; a reconnect resumes with Last-Event-ID

    async def _relay(self, send: Send) -> None:
        jobs, job_id = self.jobs, self.job_id
        store = jobs.store
        last = self.after
        wake = jobs.listen(job_id)
        last_sent = time.monotonic()
        stuck_since: float | None = None
        last_position: Position | None = None
        try:
            while True:
                wake.clear()
                events = await store.events_after(job_id, last)
                for seq, ev in events:
                    body = frame(ev.event, ev.data, seq)
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                    last = seq
                    last_sent = time.monotonic()
                    if ev.event == "end":
                        return
                if events:
                    stuck_since = None
                    continue
                if await store.last_event(job_id) > last:
                    now = time.monotonic()
                    stuck_since = stuck_since or now
                    if now - stuck_since > GAP_GRACE:
                        last += 1  # a writer died between numbering and writing: skip
                        stuck_since = None
                        continue
                job = await store.get_job(job_id)
                if job is None:
                    return  # expired meanwhile
                if job.state is TaskState.PENDING:
                    position = await jobs.position(job)
                    if position != last_position:
                        last_position = position
                        body = frame("state", to_json_value(StateEvent.waiting(position)))
                        await send({"type": "http.response.body", "body": body, "more_body": True})
                        last_sent = time.monotonic()
                if time.monotonic() - last_sent > HEARTBEAT:
                    await send({"type": "http.response.body", "body": KEEPALIVE, "more_body": True})
                    last_sent = time.monotonic()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), POLL)
        finally:
            jobs.unlisten(job_id, wake)


@router.get("/stream/{task_id}", summary="A job's events as Server-Sent Events (docs/jobs.md)")
async def stream(request: Request, task_id: str) -> Response:
    jobs: Dispatcher = request.app.state.ctx.jobs
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id") or "0"
    if not raw.strip().isdigit() or len(raw) > 12:
        raise InvalidRequest("Last-Event-ID must be a non-negative integer.", param="Last-Event-ID")
    job = await jobs.store.get_job(task_id) if len(task_id) <= 200 else None
    if job is None or not keys.current().owns(job.owner):  # another key's: not found
        raise NotFound(f"No task {task_id[:200]!r}.", param="taskId", code="task_not_found")
    return JobStream(jobs, task_id, int(raw))
