"""The OpenAI Batch API: ``/v1/files`` and ``/v1/batches``, as the openai SDK calls them.

A batch input file is JSONL, one request a line: ``{"custom_id", "method": "POST",
"url", "body"}``. Upload (``POST /v1/files``, multipart, ``purpose=batch``) is read to
disk by the multipart parser, capped at `max_batch_file_bytes` and `max_batch_lines`
(413 / 400 beyond), and checked line by line before it is stored. ``POST /v1/batches``
checks every line (``url`` equal to the batch's ``endpoint``, unique ``custom_id``, a
known model of the right type, no ``stream: true``) and answers 400 naming the first
bad line; otherwise each line becomes one job (the same queue, order and forwarding
as every other job). When the last job of a batch ends, the output file (successes)
and the error file (failures, cancelled requests) are written in request order.
Cancelling cancels the batch's queued and running jobs; the batch ends ``cancelled``
with what had finished.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.responses import Response, StreamingResponse

from proxy import keys
from proxy.audio import KNOWN, MEDIA, sniff_audio
from proxy.errors import FileQuotaExceeded, InvalidRequest, NotFound, ProxyError
from proxy.images import check_image_request, image_url_base
from proxy.jobs import listing
from proxy.jobs.dispatcher import Dispatcher, JobFinished, JobNotFound, new_id
from proxy.jobs.records import (
    BatchItem,
    BatchLineError,
    BatchList,
    BatchOutputLine,
    BatchRecord,
    BatchResponse,
    FileList,
    FileRecord,
    Job,
    JobSummary,
    RequestCounts,
    encode,
)
from proxy.jobs.runner import TRANSCRIPTIONS, audio_of
from proxy.jobs.state import BatchState, TaskState
from proxy.jobs.store import FILE_CHUNK, AsyncJobStore, QuotaExceeded
from proxy.openapi_docs import ERRORS
from proxy.parsing import check_stream, model_name, parse_object, read_body
from proxy.routes_openai import check_transcript_format, resolve_model
from wire.limits import too_large

router = APIRouter()

FILES = "/v1/files"
FORM_OVERHEAD = 64 * 1024
"""Bytes allowed on top of the file for the multipart framing and the other fields."""

ENDPOINTS = {
    "/v1/chat/completions": "text",
    "/v1/completions": "text",
    "/v1/embeddings": "embedding",
    "/v1/images/generations": "image",
    TRANSCRIPTIONS: "stt",
}
USER_DATA = "user_data"
"""The purpose of an uploaded audio file a transcription (a batch line's or a JSON-RPC
job's ``file``) names by its id."""


def _json(body: object, status: int = 200) -> Response:
    """`body`: a record (`FileObject`, `BatchObject`, ...) or a JSON value."""
    return Response(encode(body), status_code=status, media_type="application/json")


def _jobs(request: Request) -> Dispatcher:
    jobs: Dispatcher = request.app.state.ctx.jobs
    return jobs


# -- files --------------------------------------------------------------------------


def _check_lines(data: bytes, max_lines: int, max_line: int) -> int:
    """Check a JSONL batch file's shape; return its line count. Raises InvalidRequest."""
    count = 0
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        count += 1
        if count > max_lines:
            raise InvalidRequest(f"The file has more than {max_lines} requests.", param="file")
        if len(line) > max_line:
            raise InvalidRequest(f"Line {number} is longer than {max_line} bytes.", param="file")
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"Line {number} is not JSON: {exc}", param="file") from exc
        if not isinstance(item, dict) or not isinstance(item.get("custom_id"), str):
            raise InvalidRequest(
                f"Line {number} must be an object with a string 'custom_id'.", param="file"
            )
        if item.get("method") != "POST" or not isinstance(item.get("body"), dict):
            raise InvalidRequest(
                f'Line {number} must have "method": "POST" and an object \'body\'.', param="file"
            )
    if count == 0:
        raise InvalidRequest("The file has no requests.", param="file")
    return count


@router.post(FILES, responses=ERRORS, summary="Upload a batch input file (JSONL)")
async def upload_file(request: Request) -> Response:
    """The body is bounded by the app's BodyLimit (max_batch_file_bytes + FORM_OVERHEAD);
    the multipart parser spools the file part to disk past 1 MiB."""
    settings = request.app.state.ctx.settings
    limit = settings.max_batch_file_bytes
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise InvalidRequest("Upload the file as multipart/form-data.", code="invalid_content_type")
    try:
        form = await request.form(max_files=1, max_fields=8, max_part_size=1024 * 1024)
    except HTTPException:
        raise  # the body limit's 413
    except Exception as exc:
        raise InvalidRequest(
            f"The multipart body cannot be parsed: {exc}", code="invalid_multipart"
        ) from exc
    try:
        upload = form.get("file")
        purpose = form.get("purpose")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("'file' must be uploaded as a file part.", param="file")
        if purpose not in ("batch", USER_DATA):
            raise InvalidRequest(
                f"The purpose must be 'batch' (a JSONL batch) or '{USER_DATA}' (audio to "
                "transcribe).",
                param="purpose",
            )
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise too_large(limit, "The file")
        filename = (upload.filename or "batch.jsonl")[:255]
    finally:
        await form.close()
    if purpose == "batch":
        await asyncio.to_thread(
            _check_lines, data, settings.max_batch_lines, settings.proxy_max_body_bytes
        )
    elif sniff_audio(data) is None:
        raise InvalidRequest(f"A '{USER_DATA}' file must be audio: {KNOWN}.", param="file")
    now = int(time.time())
    meta = FileRecord(
        id=new_id("file"),
        bytes=len(data),
        created_at=now,
        filename=filename,
        purpose="batch" if purpose == "batch" else "user_data",
        owner=keys.current().name,
        expires_at=now + int(settings.file_ttl),
    )
    quota = (settings.file_quota_bytes, settings.files_total_bytes)
    try:
        await _jobs(request).store.put_file(meta, data, quota)
    except QuotaExceeded as exc:
        if exc.which == "key":
            raise FileQuotaExceeded(
                f"This key's file quota is full: {exc.used} of {exc.limit} bytes in use "
                f"(HOMELAB_FILE_QUOTA_BYTES); this file has {len(data)}. Delete files, or "
                "wait for them to expire.",
                param="file",
            ) from exc
        raise FileQuotaExceeded(
            f"The proxy's file storage is full: {exc.used} of {exc.limit} bytes in use by "
            f"all keys (HOMELAB_FILES_TOTAL_BYTES); this file has {len(data)}.",
            param="file",
            code="total_file_quota_exceeded",
        ) from exc
    return _json(meta.public())


async def _file(request: Request, file_id: str) -> FileRecord:
    """The file, if the caller owns it (an admin: any); else 404, as for no file at all."""
    meta = await _jobs(request).store.get_file(file_id) if len(file_id) <= 200 else None
    if meta is None or not keys.current().owns(meta.owner) or meta.expired(time.time()):
        raise NotFound(f"No file {file_id[:200]!r}.", param="file_id", code="file_not_found")
    return meta


def _limit(request: Request, default: int, most: int) -> int:
    raw = request.query_params.get("limit", str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise InvalidRequest(f"'limit' must be 1..{most}.", param="limit")
    return int(raw)


@router.get("/v1/files", responses=ERRORS, summary="List the caller's files, newest first")
async def list_files(request: Request) -> Response:
    limit = _limit(request, 100, 1000)
    after = request.query_params.get("after")
    store = _jobs(request).store
    now = time.time()
    files, more = await listing.page(
        store, "files", keys.current(), after, limit, lambda f: not f.expired(now)
    )
    return _json(
        FileList(
            data=[f.public() for f in files],
            first_id=files[0].id if files else None,
            last_id=files[-1].id if files else None,
            has_more=more is not None,
        )
    )


@router.get("/v1/files/{file_id}", responses=ERRORS, summary="One file's metadata")
async def get_file(request: Request, file_id: str) -> Response:
    return _json((await _file(request, file_id)).public())


@router.get("/v1/files/{file_id}/content", responses=ERRORS, summary="A file's content")
async def file_content(request: Request, file_id: str) -> Response:
    """Sent a piece (`proxy.jobs.store.FILE_CHUNK`) at a time as the client reads it: a
    download holds one piece of the file in memory, not the file."""
    meta = await _file(request, file_id)
    store = _jobs(request).store
    pieces = await store.file_pieces(meta)
    first = await store.file_piece(file_id, 0) if pieces else b""
    media = "application/jsonl"
    if meta.purpose == USER_DATA:
        media = MEDIA.get(sniff_audio(first) or "", "application/octet-stream")

    async def content() -> AsyncIterator[bytes]:
        yield first
        for n in range(1, pieces):
            yield await store.file_piece(file_id, n)

    # The length is known: a download cut short (the file deleted meanwhile) shows as one.
    headers = {"Content-Length": str(meta.bytes)}
    return StreamingResponse(content(), media_type=media, headers=headers)


@router.delete("/v1/files/{file_id}", responses=ERRORS, summary="Delete a file")
async def delete_file(request: Request, file_id: str) -> Response:
    await _file(request, file_id)
    await _jobs(request).store.delete_file(file_id)
    return _json({"id": file_id, "object": "file", "deleted": True})


# -- batches ------------------------------------------------------------------------


async def _parse_batch_lines(request: Request, data: bytes, endpoint: str) -> list[BatchItem]:
    """The file's lines (already shape-checked by `_check_lines`), each checked against
    the batch's endpoint and the models. Raises InvalidRequest naming the first bad line."""
    ctx = request.app.state.ctx
    want = ENDPOINTS[endpoint]
    items: list[BatchItem] = []
    seen: set[str] = set()
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        item = orjson.loads(line)
        custom_id = item["custom_id"]
        if custom_id in seen:
            raise InvalidRequest(f"Line {number}: custom_id {custom_id!r} is used twice.")
        seen.add(custom_id)
        if item.get("url") != endpoint:
            raise InvalidRequest(
                f"Line {number}: url {item.get('url')!r} is not the batch's endpoint {endpoint}."
            )
        body = item["body"]
        try:  # the direct route's checks (proxy.parsing, proxy.images), on the line's body
            check_stream(body.get("stream"))
            if body.get("stream") is True:
                raise InvalidRequest("a batch request cannot stream.", param="stream")
            model = model_name(body.get("model"))
            info = await resolve_model(ctx, model, want, endpoint, wait=False)
            if want == "image":
                check_image_request(
                    info, body.get("n"), body.get("size"), body.get("response_format")
                )
            elif want == "stt":  # the audio is there and is audio (read again when it runs)
                check_transcript_format(body.get("response_format"))
                limit = ctx.settings.max_upload_bytes
                await audio_of(ctx, body.get("file"), keys.current(), limit)
        except ProxyError as exc:
            raise InvalidRequest(
                f"Line {number}: {exc.message}", param=exc.param, code=exc.code
            ) from exc
        items.append(BatchItem(custom_id, model, body))
    return items


@router.post("/v1/batches", responses=ERRORS, summary="Create a batch from an uploaded file")
async def create_batch(request: Request) -> Response:
    ctx = request.app.state.ctx
    jobs = _jobs(request)
    data = parse_object(await read_body(request))
    endpoint = data.get("endpoint")
    if endpoint not in ENDPOINTS:
        raise InvalidRequest(f"'endpoint' must be one of {', '.join(ENDPOINTS)}.", param="endpoint")
    if data.get("completion_window", "24h") != "24h":
        raise InvalidRequest("'completion_window' must be '24h'.", param="completion_window")
    metadata = data.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidRequest("'metadata' must be an object.", param="metadata")
    file_id = data.get("input_file_id")
    if not isinstance(file_id, str):
        raise InvalidRequest("'input_file_id' is required.", param="input_file_id")
    if (await _file(request, file_id)).purpose != "batch":
        raise InvalidRequest(
            "'input_file_id' must be a file uploaded with purpose 'batch'.", param="input_file_id"
        )
    content = await jobs.store.file_content(file_id) or b""
    items = await _parse_batch_lines(request, content, endpoint)
    now = int(time.time())
    batch_id = new_id("batch")
    owner = keys.current().name
    url_base = image_url_base(ctx, request) if ENDPOINTS[endpoint] == "image" else None
    job_ids = [f"{batch_id}-{i}" for i in range(len(items))]
    batch = BatchRecord(
        id=batch_id,
        endpoint=endpoint,
        input_file_id=file_id,
        created_at=now,
        in_progress_at=now,
        expires_at=now + 86400,
        request_counts=RequestCounts(total=len(items)),
        metadata=metadata,
        jobs=job_ids,
        owner=owner,
    )
    await jobs.store.put_batch(batch)
    for job_id, item in zip(job_ids, items, strict=True):
        await jobs.submit(
            method="batch",
            model=item.model,
            endpoint=endpoint,
            body=item.body,
            url_base=url_base if item.body.get("response_format") == "url" else None,
            batch_id=batch_id,
            custom_id=item.custom_id,
            job_id=job_id,
            owner=owner,
        )
    return _json(batch.public())


async def refresh(jobs: Dispatcher, batch: BatchRecord) -> BatchRecord:
    """Current request counts; finalise (output and error files) once every job ended.
    Reads the jobs' summaries, never their request bodies; an ended batch reads nothing
    (its counts were kept when it ended, and outlive its jobs' TTL)."""
    if batch.status.terminal:
        return batch
    found = await jobs.store.get_summaries(batch.jobs)
    states = [found[j].state if j in found else None for j in batch.jobs]
    counts = RequestCounts(
        total=len(states),
        completed=states.count(TaskState.SUCCESS),
        failed=states.count(TaskState.FAILURE),
    )
    batch.request_counts = counts
    if not batch.status.terminal and all(s is not None and s.terminal for s in states):
        if await jobs.store.lock_once("finalize:" + batch.id):
            await _finalize(jobs, batch, found)
        else:
            fresh = await jobs.store.get_batch(batch.id)
            if fresh is not None:
                batch = fresh
                batch.request_counts = counts
    return batch


def _output_line(job: JobSummary, result: Any) -> BatchOutputLine:
    """A finished job's line of its batch's output (SUCCESS) or error file."""
    line = BatchOutputLine(f"batch_req_{job.id}", job.custom_id, None, None)
    if job.state is TaskState.SUCCESS:
        line.response = BatchResponse(job.status_code or 200, job.id, result)
    elif job.state is TaskState.FAILURE:
        body = result if isinstance(result, dict) else {"error": job.error}
        line.response = BatchResponse(job.status_code or 500, job.id, body)
    else:
        line.error = BatchLineError(
            "batch_cancelled", "The batch was cancelled before this request completed."
        )
    return line


class _Pieces:
    """A batch's output or error file, written to the store a piece (`FILE_CHUNK`) at a
    time as its lines are made: never whole in memory."""

    def __init__(self, store: AsyncJobStore) -> None:
        self.store, self.id = store, new_id("file")
        self.buffer, self.pieces, self.size = bytearray(), 0, 0

    async def write(self, data: bytes) -> None:
        self.buffer += data
        self.size += len(data)
        while len(self.buffer) >= FILE_CHUNK:
            await self._flush(FILE_CHUNK)

    async def _flush(self, size: int) -> None:
        await self.store.put_file_piece(self.id, self.pieces, bytes(self.buffer[:size]))
        del self.buffer[:size]
        self.pieces += 1

    async def close(self) -> None:
        if self.buffer:
            await self._flush(len(self.buffer))


async def _finalize(jobs: Dispatcher, batch: BatchRecord, found: dict[str, JobSummary]) -> None:
    """Write the output and error files (a piece at a time, each job's result read on its
    own), and move the batch to its end status."""
    out, err = _Pieces(jobs.store), _Pieces(jobs.store)
    for job_id in batch.jobs:
        job = found[job_id]
        line = _output_line(job, await jobs.store.get_result(job_id))
        await (out if job.state is TaskState.SUCCESS else err).write(encode(line) + b"\n")
    now = int(time.time())
    for pieces, kind in ((out, "output"), (err, "error")):
        if pieces.size:
            await pieces.close()
            meta = FileRecord(
                id=pieces.id,
                bytes=pieces.size,
                created_at=now,
                filename=f"{batch.id}_{kind}.jsonl",
                purpose="batch_output",
                owner=batch.owner,
                expires_at=now + int(jobs.ctx.settings.file_ttl),
            )
            await jobs.store.finish_file(meta)
            if kind == "output":
                batch.output_file_id = meta.id
            else:
                batch.error_file_id = meta.id
    batch.finalizing_at = now
    if batch.status is BatchState.CANCELLING:
        batch.move_to(BatchState.CANCELLED, now)
    else:
        batch.move_to(BatchState.COMPLETED, now)
    await jobs.store.put_batch(batch)


async def on_job_finished(jobs: Dispatcher, job: Job) -> None:
    """Dispatcher callback: finalise the job's batch when its last job ends."""
    batch_id = job.batch_id
    if not batch_id or not await jobs.store.lock_once("done:" + job.id):
        return
    done = await jobs.store.count("done:" + batch_id)
    batch = await jobs.store.get_batch(batch_id)
    if batch is not None and done >= len(batch.jobs):
        await refresh(jobs, batch)


async def _batch(request: Request, batch_id: str) -> BatchRecord:
    """The batch, if the caller owns it (an admin: any); else 404, as for no batch."""
    batch = await _jobs(request).store.get_batch(batch_id) if len(batch_id) <= 200 else None
    if batch is None or not keys.current().owns(batch.owner):
        raise NotFound(f"No batch {batch_id[:200]!r}.", param="batch_id", code="batch_not_found")
    return batch


@router.get("/v1/batches/{batch_id}", responses=ERRORS, summary="One batch")
async def get_batch(request: Request, batch_id: str) -> Response:
    batch = await refresh(_jobs(request), await _batch(request, batch_id))
    return _json(batch.public())


@router.get("/v1/batches", responses=ERRORS, summary="List the caller's batches, newest first")
async def list_batches(request: Request) -> Response:
    limit = _limit(request, 20, 100)
    after = request.query_params.get("after")
    store = _jobs(request).store
    page, more = await listing.page(store, "batches", keys.current(), after, limit)
    return _json(
        BatchList(
            data=[b.public() for b in page],
            first_id=page[0].id if page else None,
            last_id=page[-1].id if page else None,
            has_more=more is not None,
        )
    )


@router.post("/v1/batches/{batch_id}/cancel", responses=ERRORS, summary="Cancel a batch")
async def cancel_batch(request: Request, batch_id: str) -> Response:
    jobs = _jobs(request)
    batch = await _batch(request, batch_id)
    if batch.status is BatchState.IN_PROGRESS:
        batch.move_to(BatchState.CANCELLING, int(time.time()))
        await jobs.store.put_batch(batch)
        for job_id in batch.jobs:
            try:
                await jobs.cancel(job_id)
            except (JobNotFound, JobFinished):
                pass
        batch = await refresh(jobs, batch)
    return _json(batch.public())
