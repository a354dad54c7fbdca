"""The one-machine demo: manager (process runtime) + proxy + web UI on the CPU.

`./setup.sh demo` runs this after `deps` and after building the tiny image pipeline;
the end-to-end test (tests/e2e/test_demo_system.py) runs it through `./setup.sh demo`
too, so the demo is what is tested.

    python deploy/demo.py run   --dir DIR --vllm-python P --text-model D --image-model T
                                [--embed-model E] [--llama-server L --gguf G]
                                [--stt-model W --tts-voice V] [--port N]
                                [--hosts 2]
    python deploy/demo.py start ...   (the same, then detach and return once both answer)
    python deploy/demo.py stop  --dir DIR
    python deploy/demo.py status --dir DIR

Everything the demo writes lives in DIR (default `$HOMELAB_STATE_DIR/demo`):

    models.json     the demo catalogue: `smollm2` (real vLLM, CPU build; it calls tools),
                    `tiny-sd` (the real diffusers image server with the tiny offline
                    pipeline), with --embed-model `minilm` (all-MiniLM-L6-v2 on vLLM's
                    pooling runner), and with --llama-server and --gguf `smollm2-gguf` (the
                    same model's GGUF on llama.cpp's llama-server, CPU build), with
                    --stt-model and --tts-voice `whisper` (Whisper tiny.en on
                    faster-whisper) and `piper` (Piper's en_US-joe-medium voice), both on
                    the audio server (scripts/prepare_audio_models.py makes them)
    manager-token   the manager's bearer token (mode 600, generated once, never printed)
    api-key         the API key clients send to the proxy (mode 600, generated once, never
                    printed; `--open` runs the proxy without keys instead)
    pids.json       the manager's and the proxy's pid and start time (while running)
    jobs.db         the proxy's job store (docs/jobs.md)
    known-models-N.json  the proxy's last known model list (docs/hosts.md)
    catalogue.json  with --hosts 2: the proxy's catalogue naming both hosts
    logs/           manager.log, proxy.log, one log per model server, and the process
                    runtime's registry of them (`wire.procs`)

Ports: the proxy (the URL to open) on N (default 8080), the manager on N+10 and the
model servers on N+11 to N+16 (N+17 to N+19 with `--hosts 2`). Only 127.0.0.1
unless `--host` says otherwise.

`--hosts 2` (docs/hosts.md): a second manager, the host `gpu-2`, on N+17, serving the
image model (N+18) and the embeddings model (N+19) too, with its logs in logs/gpu-2; the
proxy gets a catalogue (DIR/catalogue.json) naming both hosts (the first, `gpu-1`, is the
manager on N+10), so the UI and /v1/models show each of those models once with both hosts,
and placement picks one per request.

Contracts: `run` blocks until SIGINT/SIGTERM or until the manager or the proxy exits,
then stops everything (model servers first, through the manager). `start` is
idempotent: when the demo in DIR already runs it says so and returns 0. `stop` is
idempotent and never signals a process whose pid was reused (the start time recorded
in pids.json must match). Exit status 1 with a `demo:` message on any failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO_DIR = Path(__file__).resolve().parent.parent
if str(REPO_DIR) not in sys.path:  # run as a script: the project's packages are beside it
    sys.path.insert(0, str(REPO_DIR))

from wire.procs import is_zombie, read_registry, start_time  # noqa: E402
from wire.tokens import new_token, token_problem  # noqa: E402

TEXT_MODEL = "smollm2"
TOOL_TEMPLATE = REPO_DIR / "deploy" / "chat-templates" / "smollm2-hermes.jinja"
"""SmolLM2's ChatML template with Hermes tool calls: its own ignores `tools`."""
IMAGE_MODEL = "tiny-sd"
EMBED_MODEL = "minilm"
# Model server modules: only processes running one of them are ever killed as leftovers.
SERVER_MODULES = ("vllm.entrypoints.openai.api_server", "imageserver", "audioserver")
LLAMA_SERVER = "llama-server"
"""llama.cpp's server program (killed as a leftover when the registry names it)."""
GGUF_MODEL = "smollm2-gguf"
STT_MODEL = "whisper"
TTS_MODEL = "piper"
GGUF_CONTEXT = 8192
MANAGER_OFFSET, TEXT_OFFSET, IMAGE_OFFSET, GGUF_OFFSET, EMBED_OFFSET = 10, 11, 12, 13, 14
STT_OFFSET, TTS_OFFSET = 15, 16
MANAGER2_OFFSET, IMAGE2_OFFSET, EMBED2_OFFSET = 17, 18, 19
"""The second host of `--hosts 2`: its manager and its copies of the image and embeddings
models."""
HOSTS = ("gpu-1", "gpu-2")
# Deadlines, not expectations: vLLM's CPU build loads in about 35 s on an idle machine.
LOAD_TIMEOUT_S = 900
DEMO_BUDGET_MIB = 3456
"""The GPU budget the demo declares: the vLLM model, the image model, the embeddings
model and the speech models fit together (2048 + 512 + 512 + 128 (Whisper tiny) + 0
(Piper speaks on the CPU) MiB, 256 to spare); the GGUF model (its estimate, over 256
MiB) fits beside the image, embeddings and speech models but not beside the vLLM one as
well, so asking for one of the text models swaps the other."""
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
WILDCARDS = ("0.0.0.0", "::")
"""Bind addresses that mean every interface."""
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}


class DemoError(Exception):
    """A step of the demo failed; the message says which and what to do."""


def say(message: str) -> None:
    print(f"    {message}", flush=True)


# ---------------------------------------------------------------- configuration


def demo_models(
    text_model: Path,
    image_model: Path,
    port: int,
    gguf: Path | None = None,
    embed_model: Path | None = None,
    stt_model: Path | None = None,
    tts_voice: Path | None = None,
) -> dict:
    """The demo's models.json: real vLLM on the CPU and the real image server on the CPU.

    The programs come from the manager's HOMELAB_VLLM_PYTHON / HOMELAB_IMAGESERVER_PYTHON.
    The models run on the CPU, but the file declares a GPU budget and what each model
    would take of it, as on a GPU PC: all fit together, so a chat, a picture and a chat
    again start each model once and swap nothing (docs/models-json.md, the budget).
    The text model calls tools: vLLM's `hermes` parser with the template TOOL_TEMPLATE.
    With `gguf`, the GGUF model on llama.cpp declares what it would take with every layer
    on a GPU (`manager.budget.llama_cpp_mib`), and swaps with the vLLM model. With
    `embed_model`, also an embeddings model on vLLM's pooling runner. With `stt_model`
    (a faster-whisper folder) and `tts_voice` (a Piper .onnx file), the speech models on
    the audio server.
    """
    models: dict = {
        "$gpu_budget_mib": DEMO_BUDGET_MIB,
        TEXT_MODEL: {
            "type": "text",
            "container": f"demo-{TEXT_MODEL}",
            "port": port + TEXT_OFFSET,
            "image": "vllm/vllm-openai:v0.32.0",
            "model": str(text_model),
            "args": [
                "--enforce-eager",
                "--gpu-memory-utilization",
                "0.2",
                "--max-model-len",
                "2048",
            ],
            "tool_calls": {"parser": "hermes", "chat_template": str(TOOL_TEMPLATE)},
            "env": OFFLINE_ENV,
            "gpu": False,
            "gpu_memory_mib": 2048,
            "start_timeout": LOAD_TIMEOUT_S,
            "description": "SmolLM2-135M-Instruct on vLLM's CPU build; it calls tools.",
        },
        IMAGE_MODEL: {
            "type": "image",
            "container": f"demo-{IMAGE_MODEL}",
            "port": port + IMAGE_OFFSET,
            "image": "homelab-ai/imageserver:0.1.0",
            "model": str(image_model),
            "device": "cpu",
            "dtype": "fp32",
            "sizes": ["128x128", "64x64"],
            "max_n": 2,
            "steps": 2,
            "env": OFFLINE_ENV,
            "gpu": False,
            "gpu_memory_mib": 512,
            "start_timeout": LOAD_TIMEOUT_S,
            "description": "A tiny random-weight Stable Diffusion pipeline (its pictures are noise).",
        },
    }
    if embed_model is not None:
        models[EMBED_MODEL] = {
            "type": "embedding",
            "container": f"demo-{EMBED_MODEL}",
            "port": port + EMBED_OFFSET,
            "image": "vllm/vllm-openai:v0.32.0",
            "model": str(embed_model),
            # On the CPU this is the share of RAM for vLLM's cache; 256 tokens need little.
            "args": ["--enforce-eager", "--gpu-memory-utilization", "0.05"],
            "env": OFFLINE_ENV,
            "gpu": False,
            "gpu_memory_mib": 512,
            "start_timeout": LOAD_TIMEOUT_S,
            "description": "all-MiniLM-L6-v2 sentence embeddings (384 dimensions) on vLLM's pooling runner.",
        }
    if gguf is not None:
        models[GGUF_MODEL] = gguf_model(gguf, port)
    models.update(speech_models(port, stt_model, tts_voice))
    return models


def speech_models(port: int, stt_model: Path | None, tts_voice: Path | None) -> dict:
    """The speech models' entries (each when given): Whisper on faster-whisper (int8 on
    the CPU; on a GPU it would take about 128 MiB) and a Piper voice (on the CPU anyway)."""
    models: dict = {}
    if stt_model is not None:
        models[STT_MODEL] = {
            "type": "stt",
            "container": f"demo-{STT_MODEL}",
            "port": port + STT_OFFSET,
            "image": "homelab-ai/audioserver:0.1.0",
            "model": str(stt_model),
            "device": "cpu",
            "compute_type": "int8",
            "env": OFFLINE_ENV,
            "gpu": False,
            "gpu_memory_mib": 128,
            "start_timeout": LOAD_TIMEOUT_S,
            "description": "Whisper tiny.en on faster-whisper: speech to English text.",
        }
    if tts_voice is not None:
        models[TTS_MODEL] = {
            "type": "tts",
            "container": f"demo-{TTS_MODEL}",
            "port": port + TTS_OFFSET,
            "image": "homelab-ai/audioserver:0.1.0",
            "model": str(tts_voice),
            "device": "cpu",
            "env": OFFLINE_ENV,
            "gpu": False,
            "gpu_memory_mib": 0,
            "start_timeout": LOAD_TIMEOUT_S,
            "description": "Piper's en_US-joe-medium voice: text to speech.",
        }
    return models


def second_host_models(models: dict, port: int) -> dict:
    """`--hosts 2`: the second host's models.json: the image and embeddings models of
    `models` (the first host's) on ports of their own."""
    out: dict = {"$gpu_budget_mib": models["$gpu_budget_mib"]}
    for name, offset in ((IMAGE_MODEL, IMAGE2_OFFSET), (EMBED_MODEL, EMBED2_OFFSET)):
        if name in models:
            out[name] = {
                **models[name],
                "port": port + offset,
                "container": f"demo-{HOSTS[1]}-{name}",
            }
    return out


def gguf_model(gguf: Path, port: int) -> dict:
    """The GGUF model's entry: llama.cpp on the CPU, declaring its GPU estimate."""
    from manager.budget import llama_cpp_mib
    from manager.gguf import read_shape
    from manager.spec import LLAMA_ALL_LAYERS

    return {
        "type": "text",
        "backend": "llama.cpp",
        "container": f"demo-{GGUF_MODEL}",
        "port": port + GGUF_OFFSET,
        "image": "homelab-ai/llamacpp:11434-cuda",
        "model": str(gguf),
        "context_size": GGUF_CONTEXT,
        "gpu": False,
        "gpu_memory_mib": llama_cpp_mib(read_shape(gguf), LLAMA_ALL_LAYERS, GGUF_CONTEXT),
        "start_timeout": LOAD_TIMEOUT_S,
        "description": "SmolLM2-135M-Instruct Q4_1 (GGUF) on llama.cpp's server, CPU build.",
    }


def manager_token(demo_dir: Path) -> str:
    """The demo manager's token from DIR/manager-token, generated (mode 600) on first use."""
    return secret_file(demo_dir / "manager-token")


def api_key(demo_dir: Path) -> str:
    """The proxy's API key from DIR/api-key, generated (mode 600) on first use."""
    return secret_file(demo_dir / "api-key")


def admin_key_file(python: Path, demo_dir: Path, key: str, env: dict[str, str]) -> Path:
    """DIR/keys.json with `key` as the admin key named "admin" (replacing an older entry of
    that name; keys added by hand are kept), written by the proxy's own key command."""
    path = demo_dir / "keys.json"
    subprocess.run(
        [str(python), "-m", "proxy", "keys", "--file", str(path)]
        + ["add", "admin", "--admin", "--key-stdin", "--replace"],
        cwd=REPO_DIR,
        env=env,
        input=key + "\n",
        text=True,
        capture_output=True,
        check=True,
    )
    return path


def secret_file(path: Path) -> str:
    """The secret kept in `path`, generated (32 random bytes, mode 600) on first use."""
    if path.is_file():
        token = path.read_text().strip()
        if token_problem(token) is None:
            return token
    token = new_token()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    os.chmod(path, 0o600)
    return token


# ---------------------------------------------------------------- processes


def _alive(record: dict) -> bool:
    """Whether the recorded process still runs (same pid and start time, not a zombie).

    A zombie child of ours (`run` is the parent of what it started) is reaped here.
    """
    pid = record.get("pid")
    if not (isinstance(pid, int) and pid > 1 and start_time(pid) == record.get("started")):
        return False
    if is_zombie(pid):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True


def _signal_group(record: dict, sig: int) -> None:
    if _alive(record):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(record["pid"], sig)


def _stop_record(name: str, record: dict) -> None:
    """SIGTERM the process group, SIGKILL after STOP_TIMEOUT_S. Blocks until it is gone."""
    if not _alive(record):
        return
    say(f"stopping the {name} (pid {record['pid']})")
    _signal_group(record, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while _alive(record) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(record):
        say(f"the {name} did not stop within {STOP_TIMEOUT_S:.0f} s: SIGKILL")
        _signal_group(record, signal.SIGKILL)


def _spawn(args: list[str], env: dict[str, str], log: Path) -> dict:
    """Start `args` in its own session (it survives this script), output to `log`."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            args,
            cwd=REPO_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return {"pid": proc.pid, "started": start_time(proc.pid), "log": str(log)}


def _log_tail(path: str, lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def _wait_http(name: str, record: dict, url: str) -> None:
    """Wait until `url` answers 200. Raises DemoError with the log tail if it exits or never does."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if not _alive(record):
            raise DemoError(
                f"the {name} exited while starting; last lines of {record['log']}:\n"
                f"{_log_tail(record['log'])}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise DemoError(
        f"the {name} did not answer {url} within {READY_TIMEOUT_S:.0f} s; "
        f"last lines of {record['log']}:\n{_log_tail(record['log'])}"
    )


def _read_pids(demo_dir: Path) -> dict:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads((demo_dir / "pids.json").read_text())
        if isinstance(data, dict):
            return data
    return {}


def _port_free(host: str, port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def start(opts: argparse.Namespace) -> dict:
    """Write the catalogue, start the manager and the proxy, wait until both answer.

    Returns the pids record (also in DIR/pids.json). Raises DemoError.
    """
    demo_dir: Path = opts.dir
    running = _read_pids(demo_dir)
    if running and all(_alive(running[k]) for k in ("manager", "proxy")):
        say(f"already running (pids {running['manager']['pid']}, {running['proxy']['pid']})")
        return running
    stop(demo_dir, quiet=True)  # a half-dead earlier demo: clear it first

    for path, what in (
        (opts.vllm_python, "vLLM's python"),
        (opts.image_python, "the project's python"),
    ):
        if not Path(path).is_file():
            raise DemoError(f"{what} not found at {path}: run ./setup.sh deps")
    if not (opts.text_model / "config.json").is_file():
        raise DemoError(f"no text model at {opts.text_model}: run ./setup.sh deps")
    if opts.embed_model is not None and not (opts.embed_model / "config.json").is_file():
        raise DemoError(f"no embeddings model at {opts.embed_model}: run ./setup.sh deps")
    if opts.stt_model is not None and not (opts.stt_model / "model.bin").is_file():
        raise DemoError(f"no Whisper model at {opts.stt_model}: run ./setup.sh deps")
    if opts.tts_voice is not None and not opts.tts_voice.is_file():
        raise DemoError(f"no Piper voice at {opts.tts_voice}: run ./setup.sh deps")
    if not (opts.image_model / "model_index.json").is_file():
        raise DemoError(
            f"no image pipeline at {opts.image_model}: "
            f"run python -m imageserver.tiny {opts.image_model}"
        )
    gguf = None
    if opts.llama_server is not None and opts.gguf is not None:
        if not (Path(opts.llama_server).is_file() and opts.gguf.is_file()):
            raise DemoError(f"no llama-server at {opts.llama_server} or no GGUF at {opts.gguf}")
        gguf = opts.gguf
    port = opts.port
    ports = [port, port + MANAGER_OFFSET, port + TEXT_OFFSET, port + IMAGE_OFFSET]
    ports += [port + GGUF_OFFSET] if gguf else []
    ports += [port + EMBED_OFFSET] if opts.embed_model is not None else []
    ports += [port + STT_OFFSET] if opts.stt_model is not None else []
    ports += [port + TTS_OFFSET] if opts.tts_voice is not None else []
    if opts.hosts == 2:
        ports += [port + MANAGER2_OFFSET, port + IMAGE2_OFFSET]
        ports += [port + EMBED2_OFFSET] if opts.embed_model is not None else []
    busy = [p for p in ports if not _port_free("127.0.0.1", p)]
    if busy:
        raise DemoError(
            f"port(s) {', '.join(map(str, busy))} are in use; pick other ports "
            f"with --port N (uses N, N+{MANAGER_OFFSET}..N+{max(ports) - port})"
        )

    logs = demo_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    models_file = demo_dir / "models.json"
    models = demo_models(
        opts.text_model,
        opts.image_model,
        port,
        gguf,
        opts.embed_model,
        opts.stt_model,
        opts.tts_voice,
    )
    models_file.write_text(json.dumps(models, indent=2) + "\n")
    say(f"wrote {models_file} ({', '.join(models)})")
    token = manager_token(demo_dir)

    base_env = {k: v for k, v in os.environ.items() if not k.startswith("HOMELAB_")}
    base_env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO_DIR), base_env.get("PYTHONPATH")])
    )
    base_env["PYTHONUNBUFFERED"] = "1"
    manager_port = port + MANAGER_OFFSET
    manager_env = {
        **base_env,
        "HOMELAB_MODELS_FILE": str(models_file),
        "HOMELAB_MANAGER_TOKEN": token,
        "HOMELAB_MANAGER_HOST": "127.0.0.1",
        "HOMELAB_MANAGER_PORT": str(manager_port),
        "HOMELAB_RUNTIME": "process",
        "HOMELAB_VLLM_PYTHON": str(opts.vllm_python),
        "HOMELAB_IMAGESERVER_PYTHON": str(opts.image_python),
        "HOMELAB_AUDIOSERVER_PYTHON": str(opts.image_python),
        "HOMELAB_LLAMA_SERVER": str(opts.llama_server or LLAMA_SERVER),
        "HOMELAB_LOG_DIR": str(logs),
        "HOMELAB_GPU_RELEASE_TIMEOUT": "0",
        "HOMELAB_QUEUE_TIMEOUT": str(LOAD_TIMEOUT_S),
    }
    proxy_env = {
        **base_env,
        "HOMELAB_MANAGER_URL": f"http://127.0.0.1:{manager_port}",
        "HOMELAB_MANAGER_TOKEN": token,
        "HOMELAB_PROXY_HOST": opts.host,
        "HOMELAB_PROXY_PORT": str(port),
        "HOMELAB_DEFAULT_MODEL": TEXT_MODEL,
        "HOMELAB_JOBS_URL": str(demo_dir / "jobs.db"),
        "HOMELAB_STATE_DIR": str(demo_dir),
        "HOMELAB_API_KEYS": "off" if opts.open else api_key(demo_dir),
    }
    if not opts.open:
        # The same key, named "admin" with every right, in the demo's key file
        # (docs/keys.md): `python -m proxy keys --file DIR/keys.json add ...` adds others.
        proxy_env["HOMELAB_KEY_FILE"] = str(
            admin_key_file(opts.image_python, demo_dir, api_key(demo_dir), base_env)
        )
    if opts.host not in WILDCARDS:
        # Image URLs on the address the banner prints. Bound to every interface, the
        # proxy builds them from the Host each client used (an allowed one) instead:
        # the printed loopback address would not reach another machine.
        proxy_env["HOMELAB_PUBLIC_URL"] = proxy_url(opts.host, port)
    python = opts.image_python
    pids: dict = {"port": port, "manager_port": manager_port, "models": list(models)}
    if opts.hosts == 2:
        pids["manager2_port"] = port + MANAGER2_OFFSET
        models2 = second_host_models(models, port)
        pids["models2"] = [m for m in models2 if not m.startswith("$")]
        (demo_dir / "models-gpu-2.json").write_text(json.dumps(models2, indent=2) + "\n")
        (logs / HOSTS[1]).mkdir(exist_ok=True)
        proxy_env["HOMELAB_CATALOGUE"] = str(write_catalogue(demo_dir, pids["manager2_port"]))
        say(f"wrote {demo_dir / 'catalogue.json'} (hosts {', '.join(HOSTS)})")
    try:
        say(f"starting the manager on 127.0.0.1:{manager_port} (process runtime)")
        pids["manager"] = _spawn([python, "-m", "manager"], manager_env, logs / "manager.log")
        _write_pids(demo_dir, pids)
        _wait_http("manager", pids["manager"], f"http://127.0.0.1:{manager_port}/healthz")
        if opts.hosts == 2:
            port2 = pids["manager2_port"]
            say(f"starting the second host's manager ({HOSTS[1]}) on 127.0.0.1:{port2}")
            env2 = {
                **manager_env,
                "HOMELAB_MODELS_FILE": str(demo_dir / "models-gpu-2.json"),
                "HOMELAB_MANAGER_PORT": str(port2),
                "HOMELAB_LOG_DIR": str(logs / HOSTS[1]),
            }
            log2 = logs / HOSTS[1] / "manager.log"
            pids["manager2"] = _spawn([python, "-m", "manager"], env2, log2)
            _write_pids(demo_dir, pids)
            _wait_http(HOSTS[1], pids["manager2"], f"http://127.0.0.1:{port2}/healthz")
        say(f"starting the proxy and web UI on {opts.host}:{port}")
        pids["proxy"] = _spawn([python, "-m", "proxy"], proxy_env, logs / "proxy.log")
        _write_pids(demo_dir, pids)
        _wait_http("proxy", pids["proxy"], f"http://127.0.0.1:{port}/healthz")
    except BaseException:
        stop(demo_dir, quiet=True)
        raise
    return pids


def write_catalogue(demo_dir: Path, manager2_port: int) -> Path:
    """DIR/catalogue.json for `--hosts 2`: the first host is HOMELAB_MANAGER_URL's, the
    second is reached with the same token (DIR/manager-token, mode 600)."""
    path = demo_dir / "catalogue.json"
    hosts = {
        HOSTS[0]: {},
        HOSTS[1]: {"url": f"http://127.0.0.1:{manager2_port}", "token_file": "manager-token"},
    }
    path.write_text(json.dumps({"hosts": hosts}, indent=2) + "\n")
    return path


def _write_pids(demo_dir: Path, pids: dict) -> None:
    (demo_dir / "pids.json").write_text(json.dumps(pids, indent=2) + "\n")


def _leftover_servers(logs: Path) -> list[dict]:
    """Model servers the manager's process runtime recorded (`wire.procs`) that still run
    one of ours (a manager that died leaves them behind)."""
    found = []
    for record in read_registry(logs).values():
        started = start_time(record.pid)
        if started is None or (record.started is not None and started != record.started):
            continue
        try:
            argv = Path(f"/proc/{record.pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(m.encode() in argv for m in SERVER_MODULES) or (
            Path(os.fsdecode(argv[0])).name == LLAMA_SERVER
        ):
            found.append({"pid": record.pid, "started": started})
    return found


def stop(demo_dir: Path, quiet: bool = False) -> bool:
    """Stop the model servers (through the manager), then the proxy and the manager.

    Idempotent. Returns whether anything was running.
    """
    pids = _read_pids(demo_dir)
    manager, proxy = pids.get("manager", {}), pids.get("proxy", {})
    manager2 = pids.get("manager2", {})
    was_running = _alive(manager) or _alive(proxy) or _alive(manager2)
    token_file = demo_dir / "manager-token"
    token = token_file.read_text().strip() if token_file.is_file() else ""
    for record, port_key, models_key in (
        (manager, "manager_port", "models"),
        (manager2, "manager2_port", "models2"),
    ):
        if not _alive(record):
            continue
        url = f"http://127.0.0.1:{pids.get(port_key)}"
        for name in pids.get(models_key, []):
            with contextlib.suppress(httpx.HTTPError):
                res = httpx.post(
                    f"{url}/v1/models/{name}/stop",
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=STOP_TIMEOUT_S + 30,
                )
                if res.status_code == 200 and res.json().get("state") == "stopped" and not quiet:
                    say(f"model {name}: stopped")
    _stop_record("proxy", proxy)
    _stop_record("manager", manager)
    _stop_record("manager", manager2)
    for logs in (demo_dir / "logs", demo_dir / "logs" / HOSTS[1]):
        for server in _leftover_servers(logs):
            _stop_record("model server", server)
    with contextlib.suppress(FileNotFoundError):
        (demo_dir / "pids.json").unlink()
    if not quiet:
        say("stopped" if was_running else f"no demo was running (in {demo_dir})")
    return was_running


def proxy_url(host: str, port: int) -> str:
    """The proxy's address as the banner prints it (the loopback one for a wildcard bind)."""
    host = "127.0.0.1" if host in WILDCARDS else host
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def banner(opts: argparse.Namespace, pids: dict) -> None:
    url = proxy_url(opts.host, pids["port"])
    key_file = opts.dir / "api-key"
    if opts.open:
        key_line = "no API key (--open): anyone who reaches the port may use the models"
        auth = ""
    else:
        key_line = f"in {key_file} (the web UI asks for it once)"
        auth = f'-H "Authorization: Bearer $(cat {key_file})" \\\n          '
    print(
        f"""
==================================================================== homelab-ai demo
  Web UI:           {url}/
  OpenAI base URL:  {url}/v1   (models: {", ".join(pids["models"])})
  API key:          {key_line}
  Manager:          http://127.0.0.1:{pids["manager_port"]}  (token in {opts.dir / "manager-token"}){hosts_line(pids)}
  Logs:             {opts.dir / "logs"}

  The first request for a model loads it (vLLM on the CPU: a minute or so);
  the models fit the demo's GPU budget side by side and stay loaded (the GGUF model
  takes the vLLM model's place when asked for).
  Try:  curl {url}/v1/chat/completions -H 'Content-Type: application/json' \\
          {auth}-d '{{"model": "{TEXT_MODEL}", "messages": [{{"role": "user", "content": "Hi"}}]}}'
====================================================================================""",
        flush=True,
    )


def hosts_line(pids: dict) -> str:
    """The banner's line for `--hosts 2` (empty with one host)."""
    if "manager2_port" not in pids:
        return ""
    return (
        f"\n  Hosts:            {HOSTS[0]} (that manager), {HOSTS[1]} "
        f"http://127.0.0.1:{pids['manager2_port']} ({', '.join(pids['models2'])}; "
        "docs/hosts.md)"
    )


def run(opts: argparse.Namespace) -> int:
    """Start, then block until Ctrl-C / SIGTERM or until the manager or proxy dies; stop all."""
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    pids = start(opts)
    banner(opts, pids)
    print("  Ctrl-C stops the demo (model servers included).", flush=True)
    died = None
    while not stopping:
        for name in ("manager", "proxy", "manager2"):
            if name in pids and not _alive(pids[name]):
                died = name
                stopping = True
        time.sleep(0.5)
    print(flush=True)
    if died:
        print(
            f"demo: the {died} exited; last lines of {pids[died]['log']}:\n"
            f"{_log_tail(pids[died]['log'])}",
            file=sys.stderr,
        )
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up
    print("==> Stopping the demo", flush=True)
    stop(opts.dir)
    return 1 if died else 0


def status(demo_dir: Path) -> int:
    pids = _read_pids(demo_dir)
    if pids and all(_alive(pids.get(k, {})) for k in ("manager", "proxy")):
        say(f"running: http://127.0.0.1:{pids['port']}/ (manager on {pids['manager_port']})")
        return 0
    say(f"not running (in {demo_dir})")
    return 3


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="deploy/demo.py", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["run", "start", "stop", "status"])
    parser.add_argument("--dir", type=Path, required=True, help="the demo's state folder")
    parser.add_argument("--port", type=int, default=8080, help="the proxy's port (default 8080)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="the proxy's address (default 127.0.0.1)"
    )
    parser.add_argument(
        "--open",
        action="store_true",
        help="run the proxy without API keys (default: a key generated into DIR/api-key)",
    )
    parser.add_argument("--vllm-python", type=Path, help="python of the vLLM CPU venv")
    parser.add_argument("--text-model", type=Path, help="the small text model's folder")
    parser.add_argument("--image-model", type=Path, help="the diffusers pipeline's folder")
    parser.add_argument("--llama-server", type=Path, help="llama.cpp's llama-server (optional)")
    parser.add_argument("--gguf", type=Path, help="the GGUF file it serves (with --llama-server)")
    parser.add_argument(
        "--embed-model", type=Path, help="the small embeddings model's folder (optional)"
    )
    parser.add_argument(
        "--stt-model", type=Path, help="the faster-whisper model's folder (optional)"
    )
    parser.add_argument("--tts-voice", type=Path, help="the Piper voice's .onnx file (optional)")
    parser.add_argument(
        "--hosts",
        type=int,
        choices=[1, 2],
        default=1,
        help="2: a second manager (host gpu-2) with the image and embeddings models too",
    )
    parser.add_argument(
        "--image-python",
        type=Path,
        default=Path(sys.executable),
        help="python with the project, diffusers and the audio stack (default: this one)",
    )
    opts = parser.parse_args(argv)
    if not 1024 <= opts.port <= 65535 - EMBED2_OFFSET:
        parser.error(f"--port must be between 1024 and {65535 - EMBED2_OFFSET}")
    if opts.action in ("run", "start"):
        missing = [
            f"--{n.replace('_', '-')}"
            for n in ("vllm_python", "text_model", "image_model")
            if getattr(opts, n) is None
        ]
        if missing:
            parser.error(f"{opts.action} needs {', '.join(missing)}")
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse(sys.argv[1:] if argv is None else argv)
    opts.dir.mkdir(parents=True, exist_ok=True)
    try:
        if opts.action == "run":
            return run(opts)
        if opts.action == "start":
            banner(opts, start(opts))
            print("  Stop it with: ./setup.sh demo stop", flush=True)
            return 0
        if opts.action == "stop":
            stop(opts.dir)
            return 0
        return status(opts.dir)
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
