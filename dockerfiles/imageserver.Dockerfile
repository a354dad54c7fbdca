# homelab-ai image server: one diffusers pipeline behind OpenAI's images API.
#
# The build context holds imageserver/ and wire/ (the contract it shares with the other
# programs); setup.sh sends just those, from the repository's root:
#   tar -c imageserver wire dockerfiles/imageserver.Dockerfile \
#     | docker build -f dockerfiles/imageserver.Dockerfile -t homelab-ai/imageserver:0.1.0 -
#
# BASE must bring Python >= 3.11 with pip and torch built for the GPU (the default is
# PyTorch's CUDA 12.8 runtime image, which needs an NVIDIA driver >= 570; pick another
# pytorch/pytorch:<version>-cuda<x>-cudnn9-runtime tag for older drivers). The tests
# point BASE at a CPU torch image they build offline
# (tests/integration/imageserver/torchbase.Dockerfile).
#
# Runs as root on purpose: the manager mounts the shared Hugging Face cache volume at
# /root/.cache/huggingface (HF_HOME), the same place the vLLM containers use.
# Settings come from HOMELAB_IMAGE_* variables (see imageserver/settings.py); the server
# listens on 0.0.0.0:8000 and answers GET /health from its first second.
ARG BASE=pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime
FROM ${BASE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/root/.cache/huggingface \
    PYTHONPATH=/opt/homelab-ai

WORKDIR /opt/homelab-ai

COPY imageserver/requirements.txt /opt/homelab-ai/requirements.txt
# torch must be the base image's build: refuse to build without one, and fail if pip
# replaced it while resolving the pinned stack.
RUN before="$(python -c 'import torch; print(torch.__version__)')" \
    && python -m pip install --no-cache-dir -r /opt/homelab-ai/requirements.txt \
    && after="$(python -c 'import torch; print(torch.__version__)')" \
    && test "$before" = "$after" \
    && python -c "import diffusers, transformers, accelerate; print('torch', '$after', 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"

COPY wire/ /opt/homelab-ai/wire/
COPY imageserver/ /opt/homelab-ai/imageserver/

EXPOSE 8000
CMD ["python", "-m", "imageserver"]
