"""The jobs' typed records: what the store keeps and what the JSON-RPC, SSE and Batch
surfaces send. msgspec Structs, for three reasons:

- the store hands JSON bytes in and out (SQLite or Redis): `msgspec.json` decodes and
  checks a record in one C pass, and encodes one straight to bytes (`encode`/`decode`
  below), where pydantic would build and validate a model tree and dataclasses would
  need hand-written conversion and no check at all;
- ``UNSET`` fields are left out of the JSON, so a view keeps its exact wire shape: keys
  that appear only in some states (``result``, ``position``, ``load_first``, an event's
  ``attempt``) stay absent rather than ``null``;
- msgspec is already the proxy's JSON reader on the hot path (`proxy.parsing`).

The field names are the stored and wire keys unchanged, so records written by an earlier
proxy (a Redis store shared across an upgrade) read back; unknown keys are ignored.
Opaque payloads stay ``dict[str, Any]`` / ``Any``: a request body, a model server's
answer, an OpenAI error object (`wire.errors` writes those).
"""

from __future__ import annotations

import time
from typing import Any, Literal, TypeVar

import msgspec
from msgspec import UNSET, UnsetType

from proxy.jobs.state import BatchState, TaskState, transition

R = TypeVar("R", bound=msgspec.Struct)

_encoder = msgspec.json.Encoder()


def encode(record: object) -> bytes:
    """A record (or any JSON value holding records) as JSON bytes."""
    return _encoder.encode(record)


def to_json_value(record: object) -> Any:
    """A record as plain JSON values (dicts, lists, ...), ``UNSET`` fields left out."""
    return msgspec.to_builtins(record)


def decode(raw: bytes | bytearray | memoryview, kind: type[R]) -> R:
    """JSON bytes as a `kind` record; raises msgspec.ValidationError on a bad shape."""
    return msgspec.json.decode(raw, type=kind)


# -- jobs (tasks) -------------------------------------------------------------------


class JobSummary(msgspec.Struct, kw_only=True):
    """A job without its request (body, endpoint, URL base, worker): what a list shows
    and a batch counts and finalises from. The store keeps one beside each job record
    (``homelab_summaries``, rewritten with it), so listing never reads a request body."""

    id: str
    method: str
    """The JSON-RPC method that made it (``create_message``, ...), or ``batch``."""
    model: str
    state: TaskState = TaskState.PENDING
    attempt: int = 0
    created_at: float = msgspec.field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    error: dict[str, Any] | None = None
    """The OpenAI error object after FAILURE, ``{"message"}`` after CANCELLED."""
    status_code: int | None = None
    batch_id: str | None = None
    custom_id: str | None = None
    owner: str | None = None
    """The name of the key (`proxy.keys.Principal.name`) that made it; None in records
    written before jobs had owners (only an admin sees those)."""

    @classmethod
    def of(cls, job: JobSummary) -> JobSummary:
        """The summary of a job (its request left out)."""
        return JobSummary(**{name: getattr(job, name) for name in JobSummary.__struct_fields__})


class Job(JobSummary, kw_only=True):
    """One job as the store keeps it (``homelab_jobs``): its summary and its request.
    Its `state` moves only through `move_to`, checked against
    `proxy.jobs.state.TASK_TRANSITIONS`."""

    endpoint: str
    """The `/v1` path the job posts to."""
    body: dict[str, Any]
    """The request body, forwarded as is."""
    url_base: str | None = None
    """Where image URLs point (an image job that answers URLs)."""
    worker: str | None = None
    """The instance that runs it while STARTED."""

    def move_to(self, new: TaskState) -> None:
        """Set the state; raises IllegalTransition for a move not in the table."""
        self.state = transition(self.state, new)


class Accepted(msgspec.Struct):
    """A ``create_*`` call's result."""

    taskId: str  # noqa: N815 (the wire's name)
    state: TaskState
    stream: str

    @classmethod
    def of(cls, job: Job) -> Accepted:
        return cls(taskId=job.id, state=job.state, stream=stream_path(job.id))


class Position(msgspec.Struct):
    """Where a PENDING job stands: its place in its model's line, the model to load first."""

    position: int | None
    load_first: str | None


class TaskView(msgspec.Struct):
    """A task as ``tasks.get`` / ``tasks.cancel`` / ``tasks.list`` show it (docs/jobs.md)."""

    taskId: str  # noqa: N815 (the wire's name)
    state: TaskState
    method: str
    model: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    attempt: int
    stream: str
    result: Any | UnsetType = UNSET
    """Only once SUCCESS."""
    error: dict[str, Any] | UnsetType = UNSET
    batch_id: str | UnsetType = UNSET
    position: int | None | UnsetType = UNSET
    """Only while PENDING (``tasks.get``)."""
    load_first: str | None | UnsetType = UNSET

    @classmethod
    def of(cls, job: JobSummary, result: Any = None, where: Position | None = None) -> TaskView:
        view = cls(
            taskId=job.id,
            state=job.state,
            method=job.method,
            model=job.model,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            attempt=job.attempt,
            stream=stream_path(job.id),
        )
        if job.state is TaskState.SUCCESS:
            view.result = result
        if job.error:
            view.error = job.error
        if job.batch_id:
            view.batch_id = job.batch_id
        if where is not None:
            view.position, view.load_first = where.position, where.load_first
        return view


class TaskList(msgspec.Struct):
    tasks: list[TaskView]
    total: int
    """How many tasks the caller has (any state and model)."""
    next: str | None = None
    """The cursor of the next page (pass it as ``after``); None on the last page."""


def stream_path(job_id: str) -> str:
    return f"/stream/{job_id}"


# -- events (the SSE stream's stored log) ------------------------------------------

EventName = Literal["state", "token", "progress", "result", "end"]


class Event(msgspec.Struct):
    """One stored event of a job's log (``homelab_events``, ``<id>:<n>``)."""

    event: EventName
    data: Any
    """A `StateEvent`, `TokenEvent` or `EndEvent` when written; JSON values when read."""
    at: float


class StateEvent(msgspec.Struct):
    """``event: state``. Which keys appear depends on the move (docs/jobs.md)."""

    state: TaskState
    model: str | UnsetType = UNSET
    """PENDING: the job's model."""
    requeued: str | UnsetType = UNSET
    """PENDING again: why."""
    attempt: int | UnsetType = UNSET
    """STARTED: which run this is."""
    error: dict[str, Any] | None | UnsetType = UNSET
    """A terminal state: the job's error (null after SUCCESS)."""
    position: int | None | UnsetType = UNSET
    """The unstored PENDING reports of `/stream`: place in line."""
    load_first: str | None | UnsetType = UNSET

    @classmethod
    def waiting(cls, where: Position) -> StateEvent:
        return cls(TaskState.PENDING, position=where.position, load_first=where.load_first)


class TokenEvent(msgspec.Struct):
    """``event: token``: chat content as it comes."""

    content: str
    attempt: int


class ProgressEvent(msgspec.Struct):
    """``event: progress``: how far a transcription is (``end / duration`` of the last
    segment the audio server recognised; docs/jobs.md)."""

    progress: float | None
    """0..1; None when the audio server gave no duration."""
    segment: dict[str, Any]
    """The last segment: ``id``, ``start``, ``end`` (seconds), ``text``."""
    attempt: int


class EndEvent(msgspec.Struct):
    """``event: end``: the last event of a job's log."""

    state: TaskState


# -- files and batches (the OpenAI Batch API) ---------------------------------------


class FileObject(msgspec.Struct, kw_only=True):
    """An OpenAI file object, as sent (stored as a `FileRecord`)."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: Literal["batch", "batch_output", "user_data"]
    status: Literal["processed"] = "processed"
    expires_at: int | None = None
    """When the file is deleted (``HOMELAB_FILE_TTL`` after its creation)."""


class FileRecord(FileObject, kw_only=True):
    """A file as the store keeps it: the OpenAI object plus its owner (`Job.owner`)."""

    owner: str | None = None

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def public(self) -> FileObject:
        """The object clients see (without the owner)."""
        fields = FileObject.__struct_fields__
        return FileObject(**{name: getattr(self, name) for name in fields})


class FileList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class RequestCounts(msgspec.Struct):
    total: int
    completed: int = 0
    failed: int = 0


class BatchObject(msgspec.Struct, kw_only=True):
    """An OpenAI batch object, as ``/v1/batches`` sends it."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: Any = None
    input_file_id: str
    completion_window: str = "24h"
    status: BatchState = BatchState.IN_PROGRESS
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts
    metadata: dict[str, Any] | None = None


class BatchListed(BatchObject, kw_only=True):
    """A batch as a list reads it from the store: the OpenAI object and its owner,
    without its jobs' ids (up to ``HOMELAB_MAX_BATCH_LINES`` of them), which the
    decoder skips."""

    owner: str | None = None
    """The name of the key that made it (`Job.owner`); its output files are that key's."""

    def public(self) -> BatchObject:
        """The object clients see (without the owner and the job ids)."""
        fields = BatchObject.__struct_fields__
        return BatchObject(**{name: getattr(self, name) for name in fields})


class BatchRecord(BatchListed, kw_only=True):
    """A batch as the store keeps it (``homelab_files``, ``batch:<id>``): the OpenAI
    object plus its jobs' ids, in input order. Its `status` moves only through
    `move_to`, checked against `proxy.jobs.state.BATCH_TRANSITIONS`."""

    jobs: list[str]

    def move_to(self, new: BatchState, at: int) -> None:
        """Set the status and its ``<status>_at`` time; raises IllegalTransition."""
        self.status = transition(self.status, new)
        setattr(self, f"{new.value}_at", at)


class BatchList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[BatchObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class BatchItem(msgspec.Struct):
    """One checked line of a batch input file."""

    custom_id: str
    model: str
    body: dict[str, Any]


class BatchResponse(msgspec.Struct):
    status_code: int
    request_id: str
    body: Any


class BatchLineError(msgspec.Struct):
    code: str
    message: str


class BatchOutputLine(msgspec.Struct):
    """One line of a batch's output or error file (OpenAI's shape)."""

    id: str
    custom_id: str | None
    response: BatchResponse | None
    error: BatchLineError | None
