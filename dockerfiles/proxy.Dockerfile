# homelab-ai proxy: the OpenAI-compatible router and the web UI (runs on the server).
#
# The build context is a tarball setup.sh makes from the repository (pyproject.toml,
# wire/, proxy/, app/, dockerfiles/), so nothing else (.env, test output) is sent:
#   tar -c pyproject.toml wire proxy app dockerfiles \
#     | docker build -f dockerfiles/proxy.Dockerfile -t homelab-ai/proxy:0.1.0 -
#
# BASE must bring Python >= 3.11 with pip. The tests build it offline against a local
# Debian image (python3 + python3-pip; PIP_BREAK_SYSTEM_PACKAGES and PIP_CERT set there).
# The proxy shares only the wire contract (wire/) with the manager: no manager/, no docker SDK.
# Settings come from HOMELAB_* variables (proxy/settings.py); listens on 0.0.0.0:8080.
ARG BASE=python:3.11.13-slim-bookworm
FROM ${BASE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/opt/homelab-ai

WORKDIR /opt/homelab-ai

# The pinned runtime dependencies, exactly as pyproject.toml lists them.
COPY pyproject.toml /opt/homelab-ai/pyproject.toml
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && python -m pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY wire/ /opt/homelab-ai/wire/
COPY proxy/ /opt/homelab-ai/proxy/
COPY app/ /opt/homelab-ai/app/

# Not root: the proxy needs no privilege. Images for response_format=url go to a volume.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin homelab \
    && mkdir -p /var/lib/homelab-ai/images /var/lib/homelab-ai/state \
    && chown homelab /var/lib/homelab-ai/images /var/lib/homelab-ai/state
USER 10001
ENV HOMELAB_PROXY_HOST=0.0.0.0 \
    HOMELAB_PROXY_PORT=8080 \
    HOMELAB_IMAGE_DIR=/var/lib/homelab-ai/images \
    HOMELAB_STATE_DIR=/var/lib/homelab-ai/state

EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
CMD ["python", "-m", "proxy"]
