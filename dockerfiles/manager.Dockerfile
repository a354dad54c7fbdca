# homelab-ai manager: starts and stops the model containers on the GPU PC.
#
# The build context is a tarball setup.sh makes from the repository (pyproject.toml,
# wire/, manager/, dockerfiles/), so nothing else (.env, test output) is sent:
#   tar -c pyproject.toml wire manager dockerfiles \
#     | docker build -f dockerfiles/manager.Dockerfile -t homelab-ai/manager:0.1.0 -
#
# BASE must bring Python >= 3.11 with pip. The tests build it offline against a local
# Debian image (python3 + python3-pip; PIP_BREAK_SYSTEM_PACKAGES and PIP_CERT set there).
#
# `./setup.sh gpu-pc` runs it with the Docker socket mounted (it drives the engine that
# runs it: root inside the container on purpose, the socket is root's), models.json
# mounted read-only at /etc/homelab-ai/models.json, --gpus all (NVML sees GPU memory
# being released between swaps) and --restart unless-stopped. Listens on 0.0.0.0:8090.
ARG BASE=python:3.11.13-slim-bookworm
FROM ${BASE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/opt/homelab-ai

WORKDIR /opt/homelab-ai

# The pinned runtime dependencies, the `manager` extra (docker SDK) and the `gpu` extra
# (NVML), as pyproject.toml lists them.
COPY pyproject.toml /opt/homelab-ai/pyproject.toml
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; x = p['optional-dependencies']; print('\n'.join(p['dependencies'] + x['manager'] + x['gpu']))" > /tmp/requirements.txt \
    && python -m pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY wire/ /opt/homelab-ai/wire/
# The whole package: manager/gate.py too, the standby gate program the Docker runtime
# reads at start and runs in every model container.
COPY manager/ /opt/homelab-ai/manager/

ENV HOMELAB_MODELS_FILE=/etc/homelab-ai/models.json \
    HOMELAB_MANAGER_HOST=0.0.0.0 \
    HOMELAB_MANAGER_PORT=8090 \
    HOMELAB_RUNTIME=docker

EXPOSE 8090
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8090/healthz', timeout=4)"]
CMD ["python", "-m", "manager"]
