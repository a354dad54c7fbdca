"""Model states and the only moves between them.

Only the scheduler changes a model's state, and only through `transition()`,
which refuses a move that is not in `TRANSITIONS`:

    stopped  -> starting                 a request (or ensure) needs the model
    starting -> ready | failed           the readiness probe answered
    ready    -> stopping | failed        swap / idle / explicit stop; or the server died
    stopping -> stopped | failed         the runtime stopped it, or could not
    failed   -> starting | stopping      the next request retries; or clean up first

A model is *resident* (may hold the GPU) while `starting`, `ready` or
`stopping`, and also while `failed` until the scheduler has removed its server.
"""

from __future__ import annotations

from enum import StrEnum

from manager.errors import ManagerError
from wire.models import ModelStateName


class ModelState(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    FAILED = "failed"

    @property
    def wire(self) -> ModelStateName:
        """The state's name on the wire (`wire.models.ModelStateName`)."""
        return self.value


TRANSITIONS: dict[ModelState, frozenset[ModelState]] = {
    ModelState.STOPPED: frozenset({ModelState.STARTING}),
    ModelState.STARTING: frozenset({ModelState.READY, ModelState.FAILED}),
    ModelState.READY: frozenset({ModelState.STOPPING, ModelState.FAILED}),
    ModelState.STOPPING: frozenset({ModelState.STOPPED, ModelState.FAILED}),
    ModelState.FAILED: frozenset({ModelState.STARTING, ModelState.STOPPING}),
}


class IllegalTransition(ManagerError):
    """A state move that is not in the table: a scheduler bug, never a client error."""

    code = "illegal_transition"

    def __init__(self, current: ModelState, new: ModelState) -> None:
        self.current, self.new = current, new
        super().__init__(f"illegal state transition {current.value} -> {new.value}")


def can_transition(current: ModelState, new: ModelState) -> bool:
    """Whether `current -> new` is in the table."""
    return new in TRANSITIONS[current]


def transition(current: ModelState, new: ModelState) -> ModelState:
    """Return `new` if `current -> new` is allowed; raise IllegalTransition otherwise."""
    if not can_transition(current, new):
        raise IllegalTransition(current, new)
    return new
