# homelab-ai/fakevllm:test — the stdlib-only fake vLLM / image server for the integration tests.
# Built by scripts/build-test-images.sh with tests/fixtures/fakevllm as the build context.
# The base image is made offline (debootstrap + docker import): python3 and nothing else.
FROM homelab-ai/testbase:bookworm
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=/opt/fakevllm
COPY . /opt/fakevllm/fakevllm/
# -m finds the package from the working directory even if PYTHONPATH is overridden.
WORKDIR /opt/fakevllm
EXPOSE 8000
# Like vllm/vllm-openai: the container's arguments are the server's arguments.
ENTRYPOINT ["python3", "-m", "fakevllm"]
