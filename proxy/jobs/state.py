"""Task and batch states, and the only moves between them.

A task's (job's) state changes only through `Job.move_to` (proxy/jobs/records.py),
which calls `transition()`: a move that is not in `TASK_TRANSITIONS` raises
`IllegalTransition`, as the manager's `manager/state.py` does for models:

    PENDING -> STARTED | CANCELLED              a worker claimed it; or cancelled while queued
    STARTED -> SUCCESS | FAILURE | CANCELLED    the forward answered, failed, or was cancelled
    STARTED -> PENDING                          requeued: its proxy stopped, or the manager was busy
    SUCCESS, FAILURE, CANCELLED                 terminal: never left

A batch's status changes only through `BatchRecord.move_to`, checked against
`BATCH_TRANSITIONS`. A batch is created ``in_progress`` (its lines are checked before
`POST /v1/batches` answers, so OpenAI's ``validating`` never shows), and is finalised
(output and error files written) in the same step that moves it on:

    in_progress -> completed | cancelling       its last job ended; or a cancel came
    cancelling  -> cancelled                    its last job ended after the cancel
    completed, cancelled                        terminal

The names are the wire's (JSON-RPC ``state``, the OpenAI batch ``status``) and the
store's: a record written by any proxy version reads back as the same state.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import TypeVar


class TaskState(StrEnum):
    PENDING = "PENDING"
    STARTED = "STARTED"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        """A state the task never leaves."""
        return not TASK_TRANSITIONS[self]


class BatchState(StrEnum):
    IN_PROGRESS = "in_progress"
    CANCELLING = "cancelling"
    COMPLETED = "completed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """A status the batch never leaves."""
        return not BATCH_TRANSITIONS[self]


TASK_TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    TaskState.PENDING: frozenset({TaskState.STARTED, TaskState.CANCELLED}),
    TaskState.STARTED: frozenset(
        {TaskState.SUCCESS, TaskState.FAILURE, TaskState.CANCELLED, TaskState.PENDING}
    ),
    TaskState.SUCCESS: frozenset(),
    TaskState.FAILURE: frozenset(),
    TaskState.CANCELLED: frozenset(),
}

BATCH_TRANSITIONS: dict[BatchState, frozenset[BatchState]] = {
    BatchState.IN_PROGRESS: frozenset({BatchState.COMPLETED, BatchState.CANCELLING}),
    BatchState.CANCELLING: frozenset({BatchState.CANCELLED}),
    BatchState.COMPLETED: frozenset(),
    BatchState.CANCELLED: frozenset(),
}

TERMINAL: frozenset[TaskState] = frozenset(s for s in TaskState if s.terminal)
"""Task states a job never leaves."""


class IllegalTransition(RuntimeError):
    """A state move that is not in its table: a bug in the proxy, never a client error
    (a JSON-RPC call that hits one answers -32603, an HTTP route 500)."""

    def __init__(self, current: StrEnum, new: StrEnum) -> None:
        self.current, self.new = current, new
        super().__init__(f"illegal state transition {current.value} -> {new.value}")


S = TypeVar("S", TaskState, BatchState)


def _table(state: S) -> Mapping[S, frozenset[S]]:
    table: Mapping[S, frozenset[S]] = (
        TASK_TRANSITIONS if isinstance(state, TaskState) else BATCH_TRANSITIONS
    )
    return table


def can_transition(current: S, new: S) -> bool:
    """Whether `current -> new` is in its table (tasks' or batches')."""
    return type(new) is type(current) and new in _table(current)[current]


def transition(current: S, new: S) -> S:
    """Return `new` if `current -> new` is allowed; raise IllegalTransition otherwise."""
    if not can_transition(current, new):
        raise IllegalTransition(current, new)
    return new
