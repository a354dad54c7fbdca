"""Unit tier for ownership (issue 22): who a job runs as, the image store's owners and
deletes, and the job and image stores' file modes (0600 in a 0700 folder). The crossings
between keys over HTTP are tested on real processes in
tests/integration/jobs/test_ownership.py."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from proxy_fakes import png_bytes

from proxy.images import ImageStore
from proxy.jobs.records import Job
from proxy.jobs.runner import UNOWNED, job_principal
from proxy.jobs.store import JobStore
from proxy.keys import OPEN, KeyRing, Principal, simple_name

ALICE, BOB = Principal(name="alice"), Principal(name="bob")
ADMIN = Principal(name="root", admin=True)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_job_runs_as_its_owners_principal_in_the_ring_now() -> None:
    ring = KeyRing.simple(["key-a", "key-b"])
    a = simple_name("key-a")
    assert job_principal(ring, a) == Principal(name=a)
    # revoked since it was accepted: no principal (the runner fails the job, key_revoked)
    assert job_principal(KeyRing.simple(["key-b"]), a) is None
    assert job_principal(ring, None) is UNOWNED  # stored before jobs had owners
    open_ring = KeyRing()
    assert job_principal(open_ring, OPEN.name) is OPEN
    assert job_principal(open_ring, a) == Principal(name=a, admin=True)


def test_an_image_is_deleted_by_its_owner_or_an_admin_only(tmp_path: Path) -> None:
    store = ImageStore(tmp_path, ttl=60)
    name = store.put(png_bytes(), ALICE.name)
    assert store.owner(name) == "alice"
    assert not store.delete(name, BOB)  # another key: as if there were no such image
    assert store.get(name) is not None
    assert store.delete(name, ALICE)
    assert store.get(name) is None and list(tmp_path.iterdir()) == []
    assert not store.delete(name, ALICE)  # gone
    other = store.put(png_bytes(), BOB.name)
    assert store.delete(other, ADMIN)
    for mangled in ("x" + name[1:], name[:-4], "../" + name, name + ".owner"):
        assert not store.delete(mangled, ADMIN)


def test_an_expired_image_cannot_be_deleted_and_leaves_no_owner_file(tmp_path: Path) -> None:
    store = ImageStore(tmp_path, ttl=60)
    name = store.put(png_bytes(), ALICE.name)
    old = os.stat(tmp_path / name).st_mtime - 120
    os.utime(tmp_path / name, (old, old))
    assert not store.delete(name, ALICE)
    assert list(tmp_path.iterdir()) == []


def test_the_image_store_is_private(tmp_path: Path) -> None:
    umask = os.umask(0)
    try:
        store = ImageStore(tmp_path / "images", ttl=60)
        name = store.put(png_bytes(), "alice")
    finally:
        os.umask(umask)
    assert mode(tmp_path / "images") == 0o700
    assert {p.name: mode(p) for p in (tmp_path / "images").iterdir()} == {
        name: 0o600,
        name + ".owner": 0o600,
    }


def test_the_job_store_is_private_and_an_older_open_one_is_closed(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    folder.mkdir()
    folder.chmod(0o755)
    db = folder / "jobs.db"
    umask = os.umask(0)
    try:
        db.touch(0o644)  # as an earlier proxy left it
        store = JobStore(str(db))
        store.put_job(Job(id="t", method="m", model="m", endpoint="/v1/x", body={}, owner="a"))
        store.close()
    finally:
        os.umask(umask)
    assert mode(folder) == 0o700
    files = {p.name: mode(p) for p in folder.iterdir()}
    assert "jobs.db" in files and all(m == 0o600 for m in files.values()), files


def test_a_job_store_in_a_named_folder_leaves_the_folder_alone(tmp_path: Path) -> None:
    folder = tmp_path / "srv"
    folder.mkdir()
    folder.chmod(0o755)
    store = JobStore(str(folder / "jobs.db"), tighten_folder=False)
    store.close()
    assert mode(folder) == 0o755
    assert mode(folder / "jobs.db") == 0o600
