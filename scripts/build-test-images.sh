#!/usr/bin/env bash
# Build the Docker images the integration tests use, offline and idempotently.
#
#   homelab-ai/testbase:bookworm  a minimal Debian bookworm root with python3 only,
#                                 made with debootstrap + `docker import` (no registry
#                                 is reachable, so `FROM debian` cannot be pulled).
#                                 Skipped when the image already exists.
#   homelab-ai/fakevllm:test      tests/fixtures/fakevllm on top of it
#                                 (dockerfiles/fakevllm.Dockerfile). Rebuilt every run;
#                                 Docker's layer cache makes an unchanged rebuild instant.
#
# Needs: root, a running Docker engine, debootstrap and the Debian mirror.
# Env: HOMELAB_DEBIAN_MIRROR (default http://deb.debian.org/debian),
#      HOMELAB_TESTBASE_FORCE=1 rebuilds the base image.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE_IMAGE="homelab-ai/testbase:bookworm"
FAKE_IMAGE="homelab-ai/fakevllm:test"
MIRROR="${HOMELAB_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if ! docker info >/dev/null 2>&1; then
    echo "build-test-images: the Docker engine is not reachable (start dockerd first)" >&2
    exit 1
fi

# Several engineers/CI jobs may run this at once: one build at a time.
exec 9>/tmp/homelab-ai-build-test-images.lock
flock 9

if [[ "${HOMELAB_TESTBASE_FORCE:-0}" != "1" ]] && docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    echo "build-test-images: $BASE_IMAGE exists, skipping debootstrap"
else
    command -v debootstrap >/dev/null || { echo "build-test-images: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
    WORK="$(mktemp -d /tmp/homelab-testbase.XXXXXX)"
    trap 'rm -rf "$WORK"' EXIT
    echo "build-test-images: debootstrap bookworm into $WORK/root (about a minute)"
    debootstrap --variant=minbase --include=python3 bookworm "$WORK/root" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
        tail -n 30 "$WORK/debootstrap.log" >&2
        exit 1
    }
    # Drop apt lists and caches: they are not needed at run time.
    rm -rf "$WORK/root/var/cache/apt/archives/"*.deb "$WORK/root/var/lib/apt/lists/"*
    tar -C "$WORK/root" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        - "$BASE_IMAGE" >/dev/null
    echo "build-test-images: imported $BASE_IMAGE"
fi

# The legacy builder (no buildx here) warns about itself on stderr: show stderr only on failure.
if ! out="$(DOCKER_BUILDKIT=0 docker build --quiet -t "$FAKE_IMAGE" \
        -f "$ROOT/dockerfiles/fakevllm.Dockerfile" "$ROOT/tests/fixtures/fakevllm" 2>&1)"; then
    echo "$out" >&2
    exit 1
fi
echo "build-test-images: built $FAKE_IMAGE"
