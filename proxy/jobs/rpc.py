"""JSON-RPC 2.0 at ``POST /rpc``: start jobs and manage them (docs/jobs.md).

Methods: ``create_message`` (a chat turn: history, message, optional tools, model),
``create_completion``, ``create_embedding``, ``create_image``, ``create_transcription``
(audio as a data URL or an uploaded file's id; ``progress`` events by segment); ``tasks.get``,
``tasks.cancel``, ``tasks.list``. A ``create_*`` call answers at once with
``{"taskId", "state": "PENDING", "stream": "/stream/<taskId>"}``; the work runs when
its model is resident.

Every reply is HTTP 200 with a JSON-RPC response (or 204 when a call or batch had
only notifications); protocol errors are the spec's: -32700 parse error, -32600
invalid request, -32601 method not found, -32602 invalid params (a bad model, wrong
type, bad size: ``data`` carries the OpenAI error envelope's inner object), -32603
internal error; and ours: -32001 task not found, -32002 task already finished,
-32003 the manager cannot be reached, -32004 not run: the batch's answer is already
at its byte bound. A batch is capped by total work, not only by count: at most
`MAX_BATCH` calls and `MAX_BATCH_RECORDS` records (a ``tasks.list`` counts its
``limit``), refused whole (-32600) before any call runs. HTTP-level refusals stay HTTP (401 key, 413
body over the limit) with the OpenAI envelope.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import orjson
from fastapi import APIRouter, Request
from msgspec import UNSET, UnsetType
from starlette.responses import Response

from proxy import keys
from proxy.context import ProxyContext
from proxy.errors import InvalidRequest, ManagerRefused, ManagerUnavailable, ProxyError
from proxy.images import check_image_request, image_url_base
from proxy.jobs import listing
from proxy.jobs.dispatcher import Dispatcher, JobFinished, JobNotFound
from proxy.jobs.records import Accepted, Job, TaskList, TaskView, encode
from proxy.jobs.runner import TRANSCRIPTIONS, audio_of
from proxy.jobs.state import TaskState
from proxy.keys import Principal
from proxy.parsing import model_name, read_body
from proxy.routes_openai import resolve_model
from wire.models import ModelStatus

log = logging.getLogger("proxy.rpc")
router = APIRouter()

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL = (
    -32700,
    -32600,
    -32601,
    -32602,
    -32603,
)
TASK_NOT_FOUND, TASK_FINISHED, MANAGER_DOWN = -32001, -32002, -32003
MAX_BATCH = 100
DEFAULT_LIST_LIMIT = 50
MAX_BATCH_RECORDS = 1000
"""A batch's total work: each call counts 1, a `tasks.list` counts its `limit` (50 if
not given). A batch over it is refused whole, before any call runs."""
MAX_ANSWER_BYTES = 8 * 1024 * 1024
"""A batch's answer stops growing here: the calls after it answer -32004 unrun."""
ANSWER_TOO_LARGE = -32004
_RESERVED = {"model", "messages", "prompt", "input", "stream"}


Id = str | int | float | None
"""A JSON-RPC request id (null for a notification's error or an unreadable request)."""


class ErrorObject(msgspec.Struct):
    """A JSON-RPC error object; `data` is left out when there is none."""

    code: int
    message: str
    data: Any | UnsetType = UNSET


class Success(msgspec.Struct, kw_only=True):
    jsonrpc: str = "2.0"
    result: Any
    id: Id


class Failure(msgspec.Struct, kw_only=True):
    jsonrpc: str = "2.0"
    error: ErrorObject
    id: Id


Reply = Success | Failure


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data

    def obj(self) -> ErrorObject:
        return ErrorObject(self.code, self.message, UNSET if self.data is None else self.data)


def _params_error(message: str, param: str | None = None) -> RpcError:
    return RpcError(INVALID_PARAMS, message, {"param": param} if param else None)


class Call:
    """One JSON-RPC request's context: the app context and the HTTP request."""

    def __init__(self, request: Request, params: dict[str, Any]) -> None:
        self.request = request
        self.ctx: ProxyContext = request.app.state.ctx
        self.jobs: Dispatcher = self.ctx.jobs
        self.params = params
        self.who: Principal = keys.current()
        """Whose call this is: it owns what it makes, and sees only what it owns."""

    def get(self, name: str, kind: type | tuple[type, ...], *, required: bool = False) -> Any:
        value = self.params.get(name)
        if value is None:
            if required:
                raise _params_error(f"'{name}' is required", name)
            return None
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise _params_error(f"'{name}' has the wrong type", name)
        if not isinstance(value, kind):
            raise _params_error(f"'{name}' has the wrong type", name)
        return value

    def model(self) -> str:
        """The ``model`` param, checked as the direct routes check it (`model_name`)."""
        try:
            return model_name(self.params.get("model"))
        except InvalidRequest as exc:
            raise RpcError(INVALID_PARAMS, exc.message, exc.envelope()["error"]) from exc

    def options(self) -> dict[str, Any]:
        options = self.get("options", dict) or {}
        clash = sorted(_RESERVED & set(options))
        if clash:
            raise _params_error(f"'options' cannot set {', '.join(clash)}", "options")
        return options

    async def resolve(self, model: str, want: str, endpoint: str) -> ModelStatus:
        try:
            return await resolve_model(self.ctx, model, want, endpoint, wait=False)
        except (ManagerUnavailable, ManagerRefused) as exc:
            raise RpcError(MANAGER_DOWN, exc.message, exc.envelope()["error"]) from exc
        except ProxyError as exc:
            raise RpcError(INVALID_PARAMS, exc.message, exc.envelope()["error"]) from exc

    async def submit(
        self,
        method: str,
        model: str,
        endpoint: str,
        body: dict[str, Any],
        url_base: str | None = None,
    ) -> Accepted:
        job = await self.jobs.submit(
            method=method,
            model=model,
            endpoint=endpoint,
            body=body,
            url_base=url_base,
            owner=self.who.name,
        )
        return Accepted.of(job)


def _message(value: Any, name: str) -> dict[str, Any]:
    if isinstance(value, str):
        return {"role": "user", "content": value}
    if isinstance(value, dict) and isinstance(value.get("role"), str) and "content" in value:
        return value
    raise _params_error(
        f"'{name}' must be a string or a message object with 'role' and 'content'", name
    )


async def create_message(call: Call) -> Accepted:
    model = call.model()
    message = call.params.get("message")
    if message is None:
        raise _params_error("'message' is required", "message")
    history = call.get("history", list) or []
    messages = [_message(m, "history") for m in history]
    system = call.get("system", str)
    if system:
        messages.insert(0, {"role": "system", "content": system})
    messages.append(_message(message, "message"))
    body: dict[str, Any] = {**call.options(), "model": model, "messages": messages, "stream": True}
    tools = call.get("tools", list)
    if tools is not None:
        body["tools"] = tools
    await call.resolve(model, "text", "/v1/chat/completions")
    return await call.submit("create_message", model, "/v1/chat/completions", body)


async def create_completion(call: Call) -> Accepted:
    model = call.model()
    prompt = call.params.get("prompt")
    if not isinstance(prompt, str | list):
        raise _params_error("'prompt' is required (a string or a list)", "prompt")
    body = {**call.options(), "model": model, "prompt": prompt}
    await call.resolve(model, "text", "/v1/completions")
    return await call.submit("create_completion", model, "/v1/completions", body)


async def create_embedding(call: Call) -> Accepted:
    model = call.model()
    text = call.params.get("input")
    if not isinstance(text, str | list) or not text:
        raise _params_error("'input' is required (a string or a list)", "input")
    body = {**call.options(), "model": model, "input": text}
    await call.resolve(model, "embedding", "/v1/embeddings")
    return await call.submit("create_embedding", model, "/v1/embeddings", body)


async def create_image(call: Call) -> Accepted:
    model = call.model()
    prompt = call.get("prompt", str, required=True)
    body: dict[str, Any] = {**call.options(), "model": model, "prompt": prompt}
    for name in ("n", "size"):  # a named param wins over the same one in `options`
        if call.params.get(name) is not None:
            body[name] = call.params[name]
    info = await call.resolve(model, "image", "/v1/images/generations")
    try:
        # The body as it will be sent, `options` included: the direct route's checks.
        check_image_request(info, body.get("n"), body.get("size"), body.get("response_format"))
    except InvalidRequest as exc:
        raise RpcError(INVALID_PARAMS, exc.message, exc.envelope()["error"]) from exc
    body["response_format"] = "b64_json"
    url_base = image_url_base(call.ctx, call.request)
    return await call.submit(
        "create_image", model, "/v1/images/generations", body, url_base=url_base
    )


async def create_transcription(call: Call) -> Accepted:
    model = call.model()
    audio = call.params.get("file")
    body: dict[str, Any] = {"model": model, "file": audio}
    fields: tuple[tuple[str, type | tuple[type, ...]], ...] = (
        ("language", str),
        ("prompt", str),
        ("temperature", (int, float)),
    )
    for name, kind in fields:
        value = call.get(name, kind)
        if value is not None:
            body[name] = value
    await call.resolve(model, "stt", TRANSCRIPTIONS)
    try:  # checked now (and read again when the job runs): a bad one is refused at once
        await audio_of(call.ctx, audio, call.who, call.ctx.settings.max_upload_bytes)
    except ProxyError as exc:
        raise RpcError(INVALID_PARAMS, exc.message, exc.envelope()["error"]) from exc
    return await call.submit("create_transcription", model, TRANSCRIPTIONS, body)


def _task_id(call: Call) -> str:
    task_id: str = call.get("taskId", str, required=True)
    if len(task_id) > 200:
        raise _params_error("'taskId' is too long", "taskId")
    return task_id


async def tasks_get(call: Call) -> TaskView:
    task_id = _task_id(call)
    jobs = call.jobs
    try:
        job = await jobs.get(task_id, call.who)
    except JobNotFound as exc:
        raise RpcError(TASK_NOT_FOUND, f"No task {task_id!r}") from exc
    result = await jobs.store.get_result(task_id) if job.state is TaskState.SUCCESS else None
    where = await jobs.position(job) if job.state is TaskState.PENDING else None
    return TaskView.of(job, result, where)


async def tasks_cancel(call: Call) -> TaskView:
    task_id = _task_id(call)
    try:
        job = await call.jobs.cancel(task_id, call.who)
    except JobNotFound as exc:
        raise RpcError(TASK_NOT_FOUND, f"No task {task_id!r}") from exc
    except JobFinished as exc:
        raise RpcError(TASK_FINISHED, f"Task {task_id!r} has already finished") from exc
    return TaskView.of(job)


async def tasks_list(call: Call) -> TaskList:
    state = call.get("state", str)
    if state is not None and state not in {s.value for s in TaskState}:
        raise _params_error("'state' must be PENDING, STARTED, SUCCESS, FAILURE or CANCELLED")
    model = call.get("model", str)
    limit = call.get("limit", int)
    limit = DEFAULT_LIST_LIMIT if limit is None else limit
    if not 1 <= limit <= 1000:
        raise _params_error("'limit' must be 1..1000", "limit")
    after = call.get("after", str)
    keep = None
    if state is not None or model is not None:

        def keep(job: Job) -> bool:
            return (state is None or job.state == state) and (model is None or job.model == model)

    store = call.jobs.store
    try:
        jobs, cursor = await listing.page(store, "tasks", call.who, after, limit, keep)
    except listing.BadCursor as exc:
        raise RpcError(INVALID_PARAMS, exc.message, exc.envelope()["error"]) from exc
    total = await store.list_size("tasks", listing.scope(call.who))
    return TaskList([TaskView.of(j) for j in jobs], total, cursor)


METHODS: dict[str, Callable[[Call], Awaitable[Any]]] = {
    "create_message": create_message,
    "create_completion": create_completion,
    "create_embedding": create_embedding,
    "create_image": create_image,
    "create_transcription": create_transcription,
    "tasks.get": tasks_get,
    "tasks.cancel": tasks_cancel,
    "tasks.list": tasks_list,
}


def _response(id_: Id, *, result: Any = None, error: RpcError | None = None) -> Reply:
    if error is not None:
        return Failure(error=error.obj(), id=id_)
    return Success(result=result, id=id_)


async def handle_one(request: Request, msg: Any) -> Reply | None:
    """One request object -> its response, or None for a notification."""
    if not isinstance(msg, dict):
        return _response(None, error=RpcError(INVALID_REQUEST, "Invalid Request"))
    has_id = "id" in msg
    id_ = msg.get("id")
    if has_id and not (id_ is None or isinstance(id_, str | int | float)) or isinstance(id_, bool):
        return _response(None, error=RpcError(INVALID_REQUEST, "Invalid Request: bad 'id'"))
    if msg.get("jsonrpc") != "2.0":
        return _response(
            id_, error=RpcError(INVALID_REQUEST, "Invalid Request: 'jsonrpc' must be \"2.0\"")
        )
    method = msg.get("method")
    if not isinstance(method, str):
        return _response(
            id_, error=RpcError(INVALID_REQUEST, "Invalid Request: 'method' must be a string")
        )
    params = msg.get("params", {})
    if not isinstance(params, dict | list):
        return _response(
            id_,
            error=RpcError(INVALID_REQUEST, "Invalid Request: 'params' must be an object or array"),
        )
    try:
        handler = METHODS.get(method)
        if handler is None:
            raise RpcError(METHOD_NOT_FOUND, f"Method not found: {method[:100]}")
        if isinstance(params, list):
            raise RpcError(INVALID_PARAMS, "Invalid params: pass named params (an object)")
        result = await handler(Call(request, params))
        return _response(id_, result=result) if has_id else None
    except RpcError as exc:
        return _response(id_, error=exc) if has_id else None
    except Exception:
        log.exception("JSON-RPC method %s failed", method)
        err = RpcError(INTERNAL, "Internal error in the proxy; see its log.")
        return _response(id_, error=err) if has_id else None


def work_of(msg: Any) -> int:
    """What one request object of a batch may cost, in records (see MAX_BATCH_RECORDS);
    read before anything runs, so a malformed one counts 1 and fails in `handle_one`."""
    if isinstance(msg, dict) and msg.get("method") == "tasks.list":
        params = msg.get("params")
        limit = params.get("limit") if isinstance(params, dict) else None
        if isinstance(limit, int) and not isinstance(limit, bool):
            return max(1, min(limit, 1000))
        return DEFAULT_LIST_LIMIT
    return 1


async def handle_batch(request: Request, msgs: list[Any]) -> list[Reply]:
    """Run a batch's calls in order; the answer stops growing at MAX_ANSWER_BYTES."""
    replies: list[Reply] = []
    size = 0
    for msg in msgs:
        if size > MAX_ANSWER_BYTES:
            if isinstance(msg, dict) and "id" in msg:
                id_ = msg["id"] if isinstance(msg["id"], str | int | float) else None
                error = RpcError(
                    ANSWER_TOO_LARGE,
                    f"Not run: the batch's answer passed {MAX_ANSWER_BYTES} bytes; "
                    "send this call again on its own",
                )
                replies.append(_response(id_, error=error))
            continue
        reply = await handle_one(request, msg)
        if reply is not None:
            size += len(encode(reply))
            replies.append(reply)
    return replies


def _json(body: Reply | list[Reply]) -> Response:
    return Response(encode(body), media_type="application/json")


@router.post("/rpc", summary="JSON-RPC 2.0: start jobs, follow them (docs/jobs.md)")
async def rpc(request: Request) -> Response:
    raw = await read_body(request)  # bounded by the app's BodyLimit (413)
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _json(_response(None, error=RpcError(PARSE_ERROR, "Parse error")))
    if isinstance(msg, list):
        if not msg:
            return _json(
                _response(None, error=RpcError(INVALID_REQUEST, "Invalid Request: empty batch"))
            )
        if len(msg) > MAX_BATCH:
            return _json(
                _response(
                    None,
                    error=RpcError(
                        INVALID_REQUEST,
                        f"Invalid Request: {len(msg)} calls, more than {MAX_BATCH} (MAX_BATCH)",
                        {"cap": "MAX_BATCH", "limit": MAX_BATCH, "work": len(msg)},
                    ),
                )
            )
        work = sum(work_of(m) for m in msg)
        if work > MAX_BATCH_RECORDS:
            message = (
                f"Invalid Request: the batch may return {work} records, more than "
                f"{MAX_BATCH_RECORDS} (MAX_BATCH_RECORDS: each call counts 1, a tasks.list "
                "its limit); split it"
            )
            cap = {"cap": "MAX_BATCH_RECORDS", "limit": MAX_BATCH_RECORDS, "work": work}
            return _json(_response(None, error=RpcError(INVALID_REQUEST, message, cap)))
        replies = await handle_batch(request, msg)
        return _json(replies) if replies else Response(status_code=204)
    reply = await handle_one(request, msg)
    return _json(reply) if reply is not None else Response(status_code=204)
