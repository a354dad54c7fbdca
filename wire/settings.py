"""The settings base of every program: `HOMELAB_*` environment variables, read by pydantic-settings.

Each program has one settings class built on `HomelabSettings` (manager.settings,
proxy.settings, imageserver.settings); a variable is the field's name upper-cased with
the class's prefix (`HOMELAB_`, the image server's `HOMELAB_IMAGE_`), and means one
thing wherever it is read: where two programs need a knob of the same kind with other
values, each has its own name (`HOMELAB_PROXY_MAX_CONNECTIONS`). Defaults are written
once, in the field, or where two programs' defaults hang together in a constant below
(and `wire.events.HEARTBEAT`, the event streams' keep-alive: the proxy's read timeout
on the manager's stream is four of them); code that needs one reads it from the class
(`ManagerSettings.default("...")`).
docs/settings.md is generated from these classes (`python -m scripts.settings_doc`) and
a unit test checks it.

A variable renamed in this release is still read, with a `SettingRenamed` warning, for
one release (`renamed`); one no longer read at all is named by a warning too (`retired`),
so an old `.env` does not fail silently.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from wire.events import HEARTBEAT

QUEUE_TIMEOUT = 900.0
"""Seconds a lease request may wait at the manager (`HOMELAB_QUEUE_TIMEOUT`); the proxy
waits this plus a margin for the answer (`HOMELAB_LEASE_READ_TIMEOUT`)."""
BATCH_BOUND = 8
"""Leases a resident model may still get while others wait (`HOMELAB_BATCH_BOUND`); the
proxy runs as many jobs at once by default (`HOMELAB_JOB_WORKERS`)."""


class SettingRenamed(FutureWarning):
    """An old variable name was read (it still works for one release), or one that is no
    longer read at all was set."""


def _warn(message: str) -> None:
    """A `SettingRenamed` warning that names the environment, not pydantic's code, as
    where it comes from (printed once per message, like any warning)."""
    warnings.warn_explicit(message, SettingRenamed, "environment", 0, module="wire.settings")


class HomelabSettings(BaseSettings):
    """The base of every program's settings: immutable, unknown variables ignored."""

    model_config = SettingsConfigDict(env_prefix="HOMELAB_", extra="ignore", frozen=True)

    renamed: ClassVar[Mapping[str, str]] = {}
    """Old variable -> the field that now holds its value (read with a warning)."""
    retired: ClassVar[Mapping[str, str]] = {}
    """Variable no longer read -> what became of it (a warning when it is set)."""

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for old, field in cls.renamed.items():
            if old in os.environ and field not in data:
                new = cls.env_name(field)
                _warn(f"{old} is renamed {new}; the old name is read this release only")
                data = {**data, field: os.environ[old]}
        for old, why in cls.retired.items():
            if old in os.environ:
                _warn(f"{old} is no longer read: {why}")
        return data

    @classmethod
    def env_name(cls, field: str) -> str:
        """The variable that sets `field`, e.g. `HOMELAB_QUEUE_LIMIT` (a field whose
        variable is named by the contract has it as its `validation_alias`)."""
        if field not in cls.model_fields:
            raise KeyError(f"{cls.__name__} has no setting {field!r}")
        alias = cls.model_fields[field].validation_alias
        if isinstance(alias, str):
            return alias.upper()
        return f"{cls.model_config.get('env_prefix', '')}{field}".upper()

    @classmethod
    def default(cls, field: str) -> Any:
        """The default of `field`, for code that takes the setting as an argument (its one
        source). Raises KeyError for an unknown field or one without a default."""
        info = cls.model_fields[field]
        if info.is_required():
            raise KeyError(f"{cls.__name__}.{field} has no default")
        return info.get_default(call_default_factory=True)

    @classmethod
    def describe(cls, exc: ValidationError) -> str:
        """One line per bad setting: its variable and the reason, never the value given
        (which may be a token or a key)."""
        lines = []
        aliases = {info.validation_alias: n for n, info in cls.model_fields.items()}
        for err in exc.errors(include_url=False, include_input=False):
            field = str(err["loc"][0]) if err["loc"] else ""
            field = aliases.get(field, field)
            name = cls.env_name(field) if field in cls.model_fields else "settings"
            lines.append(f"  {name}: {err['msg']}")
        return "\n".join(lines)


class ServiceSettings(HomelabSettings):
    """What the manager and the proxy (the HTTP services) both have, meaning the same."""

    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        default="info", description="Least severe log records written (and uvicorn's level)."
    )
    access_log: bool = Field(
        default=False, description="uvicorn's access log (off: it costs CPU on every request)."
    )
    sse_heartbeat: float = Field(
        default=HEARTBEAT,
        gt=0,
        description=(
            "Idle seconds before a keep-alive comment on the program's event streams "
            "(the manager's /v1/events, the proxy's /api/events)."
        ),
    )
