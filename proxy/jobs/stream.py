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
(`frame`, `KEEPALIVE` after `HEARTBEAT` idle seconds), as on every other stream.

A stream replays what it missed from the store, then follows the task's one watcher on
this proxy (`proxy.jobs.watch`: one store reader per task, fanned out to its streams),
so it works on any proxy that shares the job's store (Redis), whoever runs the job. A
key holds at most ``HOMELAB_MAX_STREAMS_PER_KEY`` streams at once (one more: 429).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from proxy import keys
from proxy.asgi import SSE_HEADERS
from proxy.errors import InvalidRequest, NotFound, TooManyStreams
from proxy.jobs.dispatcher import Dispatcher
from proxy.jobs.records import StateEvent, to_json_value
from proxy.jobs.watch import Stored
from wire.disconnect import ClientDisconnected, watch_disconnect
from wire.events import HEARTBEAT, KEEPALIVE, frame

router = APIRouter()


class JobStream(Response):
    """An ASGI response that relays one job's events until `end` or a disconnect.
    `key`: whose stream it is (counted in by the route; counted out here, at the end)."""

    background = None
    status_code = 200

    def __init__(self, jobs: Dispatcher, job_id: str, after: int, key: str) -> None:  # noqa: D107
        self.jobs, self.job_id, self.after, self.key = jobs, job_id, after, key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with watch_disconnect(receive) as watch:
                await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
                await self._relay(send)
                watch.finish()
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except ClientDisconnected:
            return  # the reader went away; a reconnect resumes with Last-Event-ID
        finally:
            self.jobs.watchers.close(self.key)

    async def _replay(self, send: Send) -> bool:
        """Send the stored events after `self.after`, a bounded chunk at a time; True
        once `end` was sent."""
        while True:
            events = await self.jobs.store.events_after(self.job_id, self.after)
            for seq, ev in events:
                await self._send(send, frame(ev.event, ev.data, seq))
                self.after = seq
                if ev.event == "end":
                    return True
            if not events:
                return False

    async def _send(self, send: Send, body: bytes) -> None:
        await send({"type": "http.response.body", "body": body, "more_body": True})

    async def _relay(self, send: Send) -> None:
        watchers = self.jobs.watchers
        sub = watchers.subscribe(self.job_id, self.after)  # first: nothing falls between
        try:
            if await self._replay(send):
                return
            dropped = 0
            last_position = watchers.position(self.job_id)
            if last_position is not None:  # published before this stream joined
                await self._send(
                    send, frame("state", to_json_value(StateEvent.waiting(last_position)))
                )
            while True:
                try:
                    item = await sub.next(HEARTBEAT)
                except StopAsyncIteration:  # the watcher ended: end sent, or job gone
                    await self._replay(send)
                    return
                if sub.dropped != dropped:  # fell behind: the store has what was lost
                    dropped = sub.dropped
                    if await self._replay(send):
                        return
                if item is None:
                    await self._send(send, KEEPALIVE)
                elif isinstance(item, Stored):
                    if item.seq <= self.after:
                        continue  # already replayed
                    if item.seq > self.after + 1 and await self._replay(send):
                        return  # a gap (a skipped id): the store's order is the truth
                    if item.seq <= self.after:
                        continue
                    await self._send(send, frame(item.event.event, item.event.data, item.seq))
                    self.after = item.seq
                    if item.event.event == "end":
                        return
                elif item != last_position:
                    last_position = item
                    waiting = to_json_value(StateEvent.waiting(item))
                    await self._send(send, frame("state", waiting))
        finally:
            watchers.unsubscribe(self.job_id, sub)


@router.get("/stream/{task_id}", summary="A job's events as Server-Sent Events (docs/jobs.md)")
async def stream(request: Request, task_id: str) -> Response:
    ctx = request.app.state.ctx
    jobs: Dispatcher = ctx.jobs
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id") or "0"
    if not raw.strip().isdigit() or len(raw) > 12:
        raise InvalidRequest("Last-Event-ID must be a non-negative integer.", param="Last-Event-ID")
    who = keys.current()
    job = await jobs.store.get_job(task_id) if len(task_id) <= 200 else None
    if job is None or not who.owns(job.owner):  # another key's: not found
        raise NotFound(f"No task {task_id[:200]!r}.", param="taskId", code="task_not_found")
    cap = ctx.settings.max_streams_per_key
    if not jobs.watchers.open(who.name, cap):
        raise TooManyStreams(
            f"This key has {cap} job streams open already (HOMELAB_MAX_STREAMS_PER_KEY); "
            "close one, or follow the task with tasks.get.",
        )
    return JobStream(jobs, task_id, int(raw), who.name)
