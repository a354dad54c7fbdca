"""Speech models in the manager: the stt and tts entries of models.json (strict, with
file, key and reason), their launch recipe on both runtimes, their readiness (the real
audio server's `/health` read by the probe) and their backend in the model status."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from manager.errors import CatalogueError
from manager.health import HttpReadinessProbe
from manager.launch import server_env
from manager.process_runtime import ProcessRuntime
from manager.runtime import UPSTREAM_KEY_ENV, key_env
from manager.scheduler import _backend
from manager.settings import ManagerSettings
from manager.spec import SttModel, TtsModel, parse_catalogue

STT = {
    "type": "stt",
    "container": "audio-stt",
    "port": 8011,
    "image": "homelab-ai/audioserver:0.1.0",
    "model": "/models/whisper-tiny-en",
}
TTS = {
    "type": "tts",
    "container": "audio-tts",
    "port": 8012,
    "image": "homelab-ai/audioserver:0.1.0",
    "model": "/models/piper/en_US-joe-medium.onnx",
}
GOOD = "k9F2-pQx7_LmZr4Ws8Tb"


def test_stt_and_tts_entries_load_with_their_defaults() -> None:
    catalogue = parse_catalogue(
        {"ears": STT, "voice": TTS | {"gpu": False, "gpu_memory_mib": 0}}, source="models.json"
    )
    ears, voice = catalogue.models["ears"], catalogue.models["voice"]
    assert isinstance(ears, SttModel) and isinstance(voice, TtsModel)
    assert (ears.device, ears.compute_type, ears.max_in_flight) == ("cuda", "default", 9)
    assert (voice.device, voice.gpu_memory_mib) == ("cpu", 0)
    assert key_env(ears) == key_env(voice) == UPSTREAM_KEY_ENV["stt"] == "HOMELAB_AUDIO_API_KEY"


@pytest.mark.parametrize(
    ("entry", "key", "reason"),
    [
        (TTS | {"model": "/models/joe.onnx.json"}, "a.model", "must end in .onnx"),
        (STT | {"compute_type": "INT8!"}, "a.compute_type", "pattern"),
        (STT | {"device": "tpu"}, "a.device", "'cpu' or 'cuda'"),
        (STT | {"voice": "joe"}, "a.voice", "Extra inputs are not permitted"),
        (TTS | {"compute_type": "int8"}, "a.compute_type", "Extra inputs are not permitted"),
        (STT | {"args": ["--x"]}, "a.args", "Extra inputs are not permitted"),
    ],
)
def test_bad_speech_entries_name_file_key_and_reason(entry: dict, key: str, reason: str) -> None:
    with pytest.raises(CatalogueError) as info:
        parse_catalogue({"a": entry}, source="models.json")
    assert info.value.key == key
    assert reason in info.value.reason
    assert str(info.value).startswith(f"models.json: key '{key}': ")


def _settings(tmp_path: Path) -> ManagerSettings:
    return ManagerSettings(
        manager_token=GOOD,
        log_dir=tmp_path,
        runtime="process",
        audioserver_python="/opt/audio/bin/python",
    )


def test_the_launch_recipe_sets_the_audio_servers_variables(tmp_path: Path) -> None:
    stt = SttModel.model_validate(
        STT | {"compute_type": "int8", "env": {"HOMELAB_AUDIO_QUEUE_LIMIT": "2"}}
    )
    env = server_env("ears", stt, _settings(tmp_path), port=8000, host="10.0.0.2", api_key="k")
    assert env["HOMELAB_AUDIO_TYPE"] == "stt"
    assert env["HOMELAB_AUDIO_MODEL"] == "/models/whisper-tiny-en"
    assert env["HOMELAB_AUDIO_SERVED_NAME"] == "ears"
    assert (env["HOMELAB_AUDIO_PORT"], env["HOMELAB_AUDIO_HOST"]) == ("8000", "10.0.0.2")
    assert (env["HOMELAB_AUDIO_DEVICE"], env["HOMELAB_AUDIO_COMPUTE_TYPE"]) == ("cuda", "int8")
    assert env["HOMELAB_AUDIO_QUEUE_LIMIT"] == "2"
    assert env["HOMELAB_AUDIO_API_KEY"] == "k"
    assert not [k for k in env if k.startswith("HOMELAB_IMAGE_")]
    tts = server_env("voice", TtsModel.model_validate(TTS), _settings(tmp_path), port=8000)
    assert (tts["HOMELAB_AUDIO_TYPE"], tts["HOMELAB_AUDIO_DEVICE"]) == ("tts", "cpu")
    assert "HOMELAB_AUDIO_COMPUTE_TYPE" not in tts


def test_the_process_runtime_runs_the_audio_server_module(tmp_path: Path) -> None:
    runtime = ProcessRuntime(_settings(tmp_path))
    tts = TtsModel.model_validate(TTS)
    assert runtime.argv("voice", tts) == ["/opt/audio/bin/python", "-m", "audioserver"]
    mine = SttModel.model_validate(STT | {"command": ["/venv/bin/python", "-m", "audioserver"]})
    assert runtime.argv("ears", mine) == ["/venv/bin/python", "-m", "audioserver"]
    env = runtime.environment("voice", tts, api_key="k")
    assert env["HOMELAB_AUDIO_HOST"] == "127.0.0.1" and env["HOMELAB_AUDIO_API_KEY"] == "k"


def test_the_docker_runtime_keeps_the_images_own_command(tmp_path: Path) -> None:
    pytest.importorskip("docker", reason="the docker SDK is the manager extra")
    from manager.docker_runtime import DockerRuntime

    config = DockerRuntime(_settings(tmp_path)).container_config(
        "ears", SttModel.model_validate(STT), api_key="k"
    )
    assert config["command"] is None
    assert config["environment"]["HOMELAB_AUDIO_PORT"] == "8000"
    assert config["environment"]["HOMELAB_AUDIO_API_KEY"] == "k"
    assert "device_requests" in config  # gpu defaults to true, as for every model


def test_speech_models_are_served_by_the_audio_backend() -> None:
    assert _backend(SttModel.model_validate(STT)) == "audio"
    assert _backend(TtsModel.model_validate(TTS)) == "audio"


async def test_the_probe_reads_the_real_audio_servers_health() -> None:
    """The manager's probe against the real audio server app (a fake model behind it):
    loading, then ready; a failed load is a failed verdict with the server's reason."""
    pytest.importorskip(
        "faster_whisper", reason="the audio server's stack (pip install -e '.[audio]')"
    )
    import threading

    from audioserver.api import create_app
    from audioserver.settings import Settings

    gate = threading.Event()

    def load(_settings: Settings) -> object:
        gate.wait(timeout=30)
        return object()

    spec = SttModel.model_validate(STT)
    app = create_app(Settings(type="stt", model="m", served_name="ears", api_key="k"), load)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport) as client:
            probe = HttpReadinessProbe(client=client)
            loading = await probe.check("ears", spec, "http://audio", api_key="k")
            assert (loading.state, loading.reason) == (
                "loading",
                "the audio server is loading its model",
            )
            gate.set()
            for _ in range(500):
                verdict = await probe.check("ears", spec, "http://audio")  # /health is open
                if verdict.state == "ready":
                    break
                await asyncio.sleep(0.01)
            assert verdict.state == "ready"

    def broken(_settings: Settings) -> object:
        raise RuntimeError("model.bin is missing")

    app = create_app(Settings(type="stt", model="m", served_name="ears"), broken)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport) as client:
            probe = HttpReadinessProbe(client=client)
            for _ in range(500):
                verdict = await probe.check("ears", spec, "http://audio")
                if verdict.state != "loading":
                    break
                await asyncio.sleep(0.01)
            assert verdict.state == "failed"
            assert (
                "the audio server failed" in verdict.reason
                and "model.bin is missing" in verdict.reason
            )
