# homelab-ai/torchbase:test: a CPU stand-in for the CUDA PyTorch base image of
# dockerfiles/imageserver.Dockerfile, built offline by test_imageserver_dockerfile.py.
# Context: a temp folder holding the host's torch wheel and its CA bundle (so pip in the
# container trusts what the host trusts). No registry is reachable here, so it starts
# from the debootstrap-made homelab-ai/testbase:bookworm (python3 only).
FROM homelab-ai/testbase:bookworm
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-pip python-is-python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY host-ca.crt /usr/local/share/ca-certificates/host-ca.crt
ENV PIP_CERT=/usr/local/share/ca-certificates/host-ca.crt \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY wheels/ /tmp/wheels/
RUN python -m pip install --no-cache-dir /tmp/wheels/torch-*.whl && rm -rf /tmp/wheels
