#!/usr/bin/env bash
# Run every benchmark, then regenerate docs/benchmarks.md from bench/results/.
#
#   bench/run_all.sh            # the full run (about 10 minutes on 2 cores)
#   bench/run_all.sh --quick    # shorter runs, for checking the harness (noisier numbers)
#
# Needs: the project installed (pip install -e '.[dev]'), wrk (apt-get install wrk),
# and for the swap benchmark a running Docker engine (the test image is built by
# scripts/build-test-images.sh when missing). Ports 18600-18699 must be free.
# Env: PYTHON (default: python3).
# A benchmark that cannot run (no Docker engine, say) is reported as not run; the
# script's exit status is non-zero if any benchmark failed.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"
QUICK=0
[[ "${1:-}" == "--quick" ]] && QUICK=1

if ! command -v wrk >/dev/null; then
    echo "run_all: wrk is not installed (apt-get install wrk)" >&2
    exit 1
fi

if [[ $QUICK == 1 ]]; then
    LATENCY=(--duration 3 --repeats 1 --warmup 1 --lease-samples 300)
    STREAMING=(--streams 16 --repeats 1)
    SWAP=(--swaps 2)
    STORM=(--requests 200)
    JOBS=(--requests 60)
    MEMORY=(--duration 3 --rounds 1)
    CLIENT=(--rounds 2 --requests 300)
    SLOW=(--sockets 0,100 --duration 6 --repeats 1)
    SERVERS=(--duration 3 --repeats 1)
else
    LATENCY=() STREAMING=() SWAP=() STORM=() JOBS=() MEMORY=() CLIENT=() SLOW=() SERVERS=()
fi

failed=()
run() {
    # run NAME MODULE ARGS...: NAME is the result file under bench/results/, removed
    # first so that a failed benchmark shows as "not run" instead of an old result.
    local name="$1"
    shift
    rm -f "bench/results/$name.json" "bench/results/$name.csv"
    echo "== $name: $*" >&2
    if ! "$PY" -m "$@"; then
        failed+=("$name")
        echo "run_all: $name failed" >&2
    fi
}

run latency bench.latency "${LATENCY[@]}"
run streaming bench.streaming "${STREAMING[@]}"
run slowclients bench.slowclients "${SLOW[@]}"
run servers bench.servers "${SERVERS[@]}"
if docker info >/dev/null 2>&1; then
    run swap bench.swap "${SWAP[@]}"
else
    rm -f bench/results/swap.json bench/results/swap.csv
    echo "run_all: the Docker engine is not reachable; swap not run" >&2
    failed+=("swap (no Docker engine)")
fi
run storm bench.storm "${STORM[@]}"
run jobs bench.jobs "${JOBS[@]}"
run memory bench.memory "${MEMORY[@]}"
run faults bench.faults
run upstream-client bench.upstream_client "${CLIENT[@]}"
"$PY" -m bench.report || failed+=("report")

if ((${#failed[@]})); then
    echo "run_all: failed: ${failed[*]}" >&2
    exit 1
fi
