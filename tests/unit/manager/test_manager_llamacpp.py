"""A text model on llama.cpp's server: its models.json fields, launch recipe, upstream key,
readiness (503 while loading) and GPU estimate from its GGUF header. Fakes only: the real
llama-server runs in tests/e2e/test_demo_system.py."""

from __future__ import annotations

import struct
from pathlib import Path

import httpx
import pytest

from manager.__main__ import budgeted
from manager.budget import LLAMA_COMPUTE_MIB, llama_cpp_mib, resolve
from manager.errors import CatalogueError
from manager.gguf import GgufError, GgufShape, read_shape
from manager.health import HttpReadinessProbe
from manager.launch import server_env, text_server_args
from manager.process_runtime import ProcessRuntime
from manager.runtime import KEY_ENVS, key_env, spec_hash
from manager.settings import ManagerSettings
from manager.spec import TextModel, parse_catalogue
from wire.model_server import LLAMA_API_KEY_ENV, VLLM_API_KEY_ENV

GOOD = "k9F2-pQx7_LmZr4Ws8Tb"


def entry(**fields: object) -> dict[str, object]:
    return {
        "type": "text",
        "backend": "llama.cpp",
        "container": "gguf",
        "port": 18200,
        "image": "homelab-ai/llamacpp:11434-cuda",
        "model": "/models/chat.Q4_K_M.gguf",
        **fields,
    }


def spec(**fields: object) -> TextModel:
    model = parse_catalogue({"gguf": entry(**fields)}).models["gguf"]
    assert isinstance(model, TextModel)
    return model


# ---- models.json --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "key", "reason"),
    [
        ({"model": "/models/chat"}, "gguf", "must end in .gguf"),
        ({"vision": True}, "gguf", "vision is not supported"),
        ({"backend": "llamacpp"}, "gguf.backend", "'vllm' or 'llama.cpp'"),
        (
            {"backend": "vllm", "context_size": 4096},
            "gguf",
            "context_size is for backend llama.cpp",
        ),
        ({"backend": "vllm", "gpu_layers": 4}, "gguf", "gpu_layers is for backend llama.cpp"),
        ({"gpu_layers": -1}, "gguf.gpu_layers", "greater than or equal to 0"),
    ],
)
def test_models_json_refuses_a_llama_cpp_model_that_cannot_run(
    fields: dict[str, object], key: str, reason: str
) -> None:
    with pytest.raises(CatalogueError) as caught:
        parse_catalogue({"gguf": entry(**fields)}, source="models.json")
    assert f"models.json: key '{key}'" in str(caught.value)
    assert reason in str(caught.value)


def test_a_vllm_models_hash_is_its_fields_without_the_llama_cpp_ones_and_with_the_guard() -> None:
    """Adding the backend fields must not restart every running vLLM model on upgrade; the
    guard (issue 23) must: a vLLM server launched without it answers paths without the key."""
    vllm = TextModel.model_validate(
        {"type": "text", "container": "c", "port": 18201, "image": "a/b:1", "model": "m"}
    )
    legacy = dict(vllm.model_dump(mode="json"))
    for key in ("backend", "context_size", "gpu_layers"):
        legacy.pop(key)
    import hashlib
    import json

    legacy.pop("max_in_flight")
    legacy.pop("warm")  # unset, it keeps the hash from before it existed (issue 27)
    from manager import model_guard

    legacy["$guard"] = model_guard.revision()
    blob = json.dumps(legacy, sort_keys=True).encode()
    assert spec_hash(vllm) == hashlib.sha256(blob).hexdigest()[:16]
    assert spec_hash(spec()) != spec_hash(spec(context_size=8192))


# ---- launch ------------------------------------------------------------------------------


def test_llama_server_gets_the_file_alias_context_layers_and_jinja() -> None:
    argv = text_server_args("gguf", spec(context_size=8192, args=["-t", "4"]), "0.0.0.0", 8000)
    assert argv == [
        "-m", "/models/chat.Q4_K_M.gguf", "--alias", "gguf", "--host", "0.0.0.0",
        "--port", "8000", "-c", "8192", "-ngl", "999", "--jinja", "--no-webui", "-t", "4",
    ]  # fmt: skip
    assert text_server_args("gguf", spec(gpu=False), "h", 1)[9:12] == ["4096", "-ngl", "0"]
    assert text_server_args("gguf", spec(gpu_layers=12), "h", 1)[11] == "12"


def test_the_process_runtime_runs_llama_server_with_the_key_in_its_own_variable(
    tmp_path: Path,
) -> None:
    settings = ManagerSettings(
        manager_token=GOOD, log_dir=tmp_path, runtime="process", llama_server="/opt/llama-server"
    )
    runtime = ProcessRuntime(settings)
    model = spec(gpu=False)
    argv = runtime.argv("gguf", model)
    assert argv[:3] == ["/opt/llama-server", "-m", "/models/chat.Q4_K_M.gguf"]
    assert "--api-key" not in argv  # the key stays out of the process list
    env = runtime.environment("gguf", model, api_key="secret-key")
    assert env[LLAMA_API_KEY_ENV] == "secret-key"
    assert VLLM_API_KEY_ENV not in server_env("gguf", model, settings, port=1, api_key="k")
    assert key_env(model) == LLAMA_API_KEY_ENV


def test_the_docker_runtime_gates_llama_server_with_its_key_variable(tmp_path: Path) -> None:
    pytest.importorskip("docker", reason="the docker SDK is the manager extra")
    from manager.docker_runtime import DockerRuntime

    settings = ManagerSettings(manager_token=GOOD, log_dir=tmp_path)
    config = DockerRuntime(settings).container_config(
        "gguf", spec(), api_key="k", image_argv=(["/opt/llama.cpp/bin/llama-server"], [])
    )
    assert config["environment"][LLAMA_API_KEY_ENV] == "k"
    assert config["command"][1] == LLAMA_API_KEY_ENV  # the gate checks this variable
    assert config["command"][2:5] == ["/opt/llama.cpp/bin/llama-server", "-m", spec().model]


def test_an_adopted_llama_server_gives_back_its_key() -> None:
    """Both runtimes read a key back from every variable in KEY_ENVS."""
    assert LLAMA_API_KEY_ENV in KEY_ENVS


# ---- readiness ---------------------------------------------------------------------------


def llama_like(status: dict[str, int], listed: str) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            code = status["health"]
            return httpx.Response(code, json={"status": "ok"} if code == 200 else {})
        if request.headers.get("authorization") != "Bearer k":
            return httpx.Response(401, json={"error": {"message": "Invalid API Key"}})
        return httpx.Response(200, json={"data": [{"id": listed}]})

    return httpx.MockTransport(handle)


async def test_llama_server_loading_is_503_then_200_and_listed() -> None:
    status = {"health": 503}
    client = httpx.AsyncClient(transport=llama_like(status, "gguf"))
    async with HttpReadinessProbe(client=client) as probe:
        loading = await probe.check("gguf", spec(), "http://m", api_key="k")
        assert (loading.state, loading.reason) == (
            "loading",
            "llama.cpp is loading the model (GET /health 503)",
        )
        status["health"] = 200
        assert (await probe.check("gguf", spec(), "http://m", api_key="k")).state == "ready"
        vllm = spec().model_copy(update={"backend": "vllm"})
        status["health"] = 503
        assert (await probe.check("gguf", vllm, "http://m", api_key="k")).state == "failed"
    await client.aclose()


# ---- the GPU estimate ----------------------------------------------------------------------


def gguf_file(path: Path, meta: dict[str, object], padding: int = 0) -> Path:
    def string(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("<Q", len(raw)) + raw

    body = b""
    for key, value in meta.items():
        body += string(key)
        if isinstance(value, str):
            body += struct.pack("<I", 8) + string(value)
        elif isinstance(value, list):  # an array of strings (a tokenizer's vocabulary)
            body += struct.pack("<IIQ", 9, 8, len(value)) + b"".join(string(v) for v in value)
        else:
            body += struct.pack("<II", 4, value)
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(meta)) + body + b"\0" * padding)
    return path


SHAPE_META: dict[str, object] = {
    "general.architecture": "llama",
    "tokenizer.ggml.tokens": ["a", "b", "c"],
    "llama.block_count": 31,
    "llama.embedding_length": 4096,
    "llama.attention.head_count": 32,
    "llama.attention.head_count_kv": 8,
}


def test_the_gguf_header_gives_layers_heads_and_head_lengths(tmp_path: Path) -> None:
    path = gguf_file(tmp_path / "m.gguf", SHAPE_META, padding=1000)
    assert read_shape(path) == GgufShape(
        file_bytes=path.stat().st_size, layers=31, kv_heads=8, key_length=128, value_length=128
    )
    (tmp_path / "bad.gguf").write_bytes(b"GGML" + b"\0" * 32)
    with pytest.raises(GgufError, match="no GGUF magic"):
        read_shape(tmp_path / "bad.gguf")


def test_the_estimate_is_the_offloaded_weights_plus_the_kv_cache_plus_compute() -> None:
    # 32 layers + output of 4 GiB; 8 kv heads of 128: 128 KiB of f16 K+V per token.
    shape = GgufShape(
        file_bytes=33 * 128 * 1024 * 1024, layers=32, kv_heads=8, key_length=128, value_length=128
    )
    assert llama_cpp_mib(shape, 999, 8192) == 33 * 128 + 1024 + LLAMA_COMPUTE_MIB
    assert llama_cpp_mib(shape, 16, 8192) == 16 * 128 + 512 + LLAMA_COMPUTE_MIB
    assert llama_cpp_mib(shape, 0, 8192) == LLAMA_COMPUTE_MIB


def test_an_undeclared_gguf_model_gets_its_estimate_and_a_declared_one_keeps_its_own(
    tmp_path: Path,
) -> None:
    path = gguf_file(tmp_path / "m.gguf", SHAPE_META, padding=1000)
    catalogue = parse_catalogue(
        {
            "gguf": entry(model=str(path), context_size=1024),
            "mine": entry(model=str(path), container="c2", port=18202, gpu_memory_mib=700),
            "gone": entry(model=str(tmp_path / "nope.gguf"), container="c3", port=18203),
        }
    )
    budget = resolve(setting_mib=20000, catalogue_mib=None, card_mib=24000, reserve_mib=0)
    models = budgeted(catalogue, budget).models
    shape = read_shape(path)
    assert models["gguf"].gpu_memory_mib == llama_cpp_mib(shape, 999, 1024)
    assert models["mine"].gpu_memory_mib == 700
    assert models["gone"].gpu_memory_mib is None  # unreadable: it runs alone
    assert "--gpu-memory-utilization" not in models["gguf"].args  # vLLM's flag only
