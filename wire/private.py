"""Files that hold secrets or people's data: created 0600 in a 0700 folder.

*utility* (not contract): every program keeps some such file (the proxy's job store,
image store and key file; the manager's process registry), and each creates it through
these three functions, so one rule holds everywhere:

- `private_dir(path)`: the folder, made 0700 when missing. An existing folder is made
  0700 too when ``tighten`` (a folder that is ours by definition: the state folder, a
  temporary folder); a folder someone named that already exists (``/srv``, ``/tmp``) is
  left as it is, with a warning when others may enter it.
- `private_file(path)`: the file created 0600 (an existing one made 0600), empty if new.
- `write_private(path, data)`: the file replaced atomically by one that is 0600 from its
  first byte (written to a 0600 temporary file beside it, then renamed).

The mode is set with ``os.open(..., 0o600)`` and then ``fchmod`` (a umask may only take
bits away, never leave them on), never by a ``chmod`` after the data is written. POSIX.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

log = logging.getLogger("wire.private")

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path | str, *, tighten: bool = True) -> Path:
    """The folder `path`, made (with its parents) if missing; it and a new one are 0700
    (an existing one only when `tighten`). Returns it. Raises OSError."""
    path = Path(path)
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        os.chmod(path, DIR_MODE)  # mkdir's mode is masked by the umask
        return path
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        if tighten:
            try:
                os.chmod(path, DIR_MODE)
                return path
            except OSError as exc:
                log.warning("cannot make %s private (mode 700): %s", path, exc)
        else:
            log.warning(
                "%s is open to other users (mode %o): the private files in it are 600, "
                "but others can see their names",
                path,
                mode,
            )
    return path


def private_file(path: Path | str) -> Path:
    """The file `path`, created empty if missing; it is 0600 either way. Returns it."""
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    return path


def write_private(path: Path | str, data: bytes, *, tmp_name: str | None = None) -> None:
    """Replace `path` atomically with `data`, mode 0600 from the first byte. Raises OSError.

    The temporary file gets a fresh random name, or `tmp_name` (beside `path`) for a file
    with one writer: a fixed name lets a leftover be overwritten, and lets a test hold the
    write (a FIFO in its place) at a known point."""
    path = Path(path)
    if tmp_name is None:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    else:
        tmp = path.with_name(tmp_name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(tmp, flags, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), FILE_MODE)
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
