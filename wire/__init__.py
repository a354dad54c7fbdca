"""The contract between the programs, written once.

The manager sends and the proxy reads these types; the manager, the proxy and the
image server answer errors, limit bodies and notice disconnected clients through
these helpers. `wire` depends on the standard library, pydantic (with
pydantic-settings) and starlette only, and imports none of the programs (a unit test
checks this).

Modules:

- `wire.errors`: the OpenAI error envelope with its ``source``, `ApiError` (an
  exception that carries its own status, type, code and param) and
  `install_error_handlers`, the one set of exception handlers every app uses.
- `wire.limits`: `BodyLimit`, the one body-size middleware (413 ``request_too_large``).
- `wire.disconnect`: `watch_disconnect`, cancelling work when the client goes away
  (a utility, not contract).
- `wire.fanout`: `Fanout`, the one fan-out of every event stream (a utility, not
  contract: kept here because every program imports `wire` and none imports another).
- `wire.lease`: the lease request and answer (``POST /v1/leases``) and the renewal answer.
- `wire.models`: `ModelStatus`, one model as the manager's ``GET /v1/models`` reports it.
- `wire.events`: the event payloads of ``GET /v1/events``; SSE framing and keep-alive
  for every stream, and parsing.
- `wire.model_server`: the upstream-key variables and the image server's ``/health``
  and ``/v1/progress`` bodies.
- `wire.tokens`: the rules for the manager token and API keys; ``python -m wire.tokens new``.
- `wire.procs`: the process runtime's registry file and ``/proc/PID/stat``.
- `wire.settings`: `HomelabSettings`, the base of every program's ``HOMELAB_*`` settings
  (renamed variables, defaults read by code, error lines), and the defaults two programs
  share.
"""
