"""Model states and the only moves between them.

Only the scheduler changes a model's state, and only through `transition()`,
which refuses a move that is not in `TRANSITIONS`:

    stopped        -> starting                   a request (or ensure) needs the model
    stopped        -> sleeping                   adoption found its server asleep
    starting       -> ready | failed             the readiness probe answered
    ready          -> stopping | falling_asleep | failed
                                                 swap / idle / explicit stop; or the
                                                 policy keeps it warm; or the server died
    falling_asleep -> sleeping | failed          the server moved its weights to host
                                                 memory (vLLM ``POST /sleep``, the image
                                                 server's ``POST /park``), or could not
    sleeping       -> waking | stopping | failed a request needs it again; or its host
                                                 memory is wanted (or idle, or an explicit
                                                 stop); or the sleeping server died
    waking         -> ready | failed             the weights are back on the GPU; or the
                                                 wake failed (the scheduler then stops it
                                                 and the request cold-starts it)
    stopping       -> stopped | failed           the runtime stopped it, or could not
    failed         -> starting | stopping        the next request retries; or clean up first

Three tiers: a model is *on the GPU* (`on_gpu`) while `starting`, `ready`,
`falling_asleep`, `waking` or `stopping` (and while `failed` until the scheduler has
removed its server); *warm* while `sleeping` (its server runs, its weights wait in host
memory); *cold* while `stopped`. The Docker runtime's *standby* container (created,
gated, nothing loaded: `manager.runtime.Instance.standby`) is a kind of cold: the model
is `stopped`, and a standby is never called sleeping.
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
    FALLING_ASLEEP = "falling_asleep"
    SLEEPING = "sleeping"
    WAKING = "waking"

    @property
    def wire(self) -> ModelStateName:
        """The state's name on the wire (`wire.models.ModelStateName`)."""
        return self.value

    @property
    def on_gpu(self) -> bool:
        """Whether a model in this state may hold its GPU memory (all but stopped and
        sleeping)."""
        return self not in (ModelState.STOPPED, ModelState.SLEEPING)


TRANSITIONS: dict[ModelState, frozenset[ModelState]] = {
    ModelState.STOPPED: frozenset({ModelState.STARTING, ModelState.SLEEPING}),
    ModelState.STARTING: frozenset({ModelState.READY, ModelState.FAILED}),
    ModelState.READY: frozenset(
        {ModelState.STOPPING, ModelState.FALLING_ASLEEP, ModelState.FAILED}
    ),
    ModelState.FALLING_ASLEEP: frozenset({ModelState.SLEEPING, ModelState.FAILED}),
    ModelState.SLEEPING: frozenset({ModelState.WAKING, ModelState.STOPPING, ModelState.FAILED}),
    ModelState.WAKING: frozenset({ModelState.READY, ModelState.FAILED}),
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
