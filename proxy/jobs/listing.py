"""Listing the caller's tasks, files and batches a page at a time (keyset cursors).

Every list reads the store's listing index (`JobStore.page`: one range query, newest
first) and then only the records of one page, by id: never every record, never a
file's bytes. A cursor is the id of the last record of the previous page (OpenAI's
``after``) or the opaque ``next`` a page handed out; either names a place in the list,
so a walk sees each record once even while new ones are added in front.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from proxy.errors import InvalidRequest
from proxy.jobs.store import AsyncJobStore, JobStore
from proxy.keys import Principal

_SORT_KEY = re.compile(r"^\d{17}:[A-Za-z0-9_-]{1,200}$")


class BadCursor(InvalidRequest):
    """`after` names no record of the caller's (it may have expired): list from the start."""

    code = "invalid_cursor"


def scope(who: Principal) -> str | None:
    """The list a principal sees: its own (by name), or everyone's for an admin."""
    return None if who.admin else who.name


async def place(store: AsyncJobStore, kind: str, who: Principal, after: str | None) -> str | None:
    """The sort key a page starts after: from a ``next`` cursor, or a record id."""
    if not after:
        return None
    if _SORT_KEY.match(after):
        return after
    record = await store.find(kind, after) if len(after) <= 200 else None
    if record is None or not who.owns(record.owner):
        raise BadCursor(
            f"'after' names no {kind[:-1]} of yours (it may have expired); list from the start.",
            param="after",
        )
    return JobStore.sort_key(record.created_at, record.id)


async def page(
    store: AsyncJobStore,
    kind: str,
    who: Principal,
    after: str | None,
    limit: int,
    keep: Callable[[Any], bool] | None = None,
) -> tuple[list[Any], str | None]:
    """Up to `limit` of the caller's records after the cursor, newest first, and the
    next page's cursor (None: this was the last page)."""
    before = await place(store, kind, who, after)
    return await store.list_page(kind, scope(who), before, limit, keep)
