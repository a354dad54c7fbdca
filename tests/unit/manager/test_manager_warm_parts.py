"""The warm tier's small parts: the learned swap times file, the host-memory budget,
models.json's `warm` and the sleep-mode launch."""

from __future__ import annotations

from pathlib import Path

import pytest
from manager_fakes import catalogue

from manager.errors import CatalogueError
from manager.launch import DEV_MODE_ENV, SLEEP_MODE_FLAG, server_env, text_server_args
from manager.settings import ManagerSettings
from manager.warm import SwapTimes, host_budget, host_mib_of, meminfo_total_mib

VLLM = {
    "type": "text",
    "container": "c",
    "port": 18301,
    "image": "vllm/vllm-openai:v0.32.0",
    "model": "org/m",
}


def test_swap_times_survive_a_restart_and_keep_the_last_ten(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "swaptimes.json"
    times = SwapTimes(path)
    for value in range(12):
        times.record("m", "load_s", float(value))
    times.record("m", "wake_s", 0.8)
    again = SwapTimes(path)
    assert again.readings("m", "load_s") == [float(v) for v in range(2, 12)]
    assert again.usual("m", "wake_s") == 0.8 and again.usual("other", "wake_s") is None


def test_an_unreadable_swap_times_file_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "swaptimes.json"
    path.write_text("{not json")
    assert SwapTimes(path).readings("m", "load_s") == []


def test_the_host_budget_is_the_setting_else_half_of_what_the_runtime_sees() -> None:
    assert host_budget(4096, 65536) == (4096, "HOMELAB_HOST_BUDGET_MIB")
    assert host_budget(0, 65536)[0] is None  # 0 turns the warm tier off
    assert host_budget(None, 65536)[0] == 32768
    assert host_budget(None, None)[0] is None


def test_meminfo_is_read_in_mib(tmp_path: Path) -> None:
    info = tmp_path / "meminfo"
    info.write_text("MemTotal:       65843012 kB\nMemFree:         1000 kB\n")
    assert meminfo_total_mib(info) == 64299
    assert meminfo_total_mib(tmp_path / "none") is None


def test_host_memory_is_declared_else_learned() -> None:
    models = catalogue(
        {
            "a": {**VLLM, "warm": {"level": 1, "host_memory_mib": 9000}},
            "b": {**VLLM, "container": "d", "port": 18302, "warm": {"level": 2}},
            "c": {**VLLM, "container": "e", "port": 18303},
        }
    ).models
    times = SwapTimes()
    times.record("b", "host_mib", 1200)
    times.record("b", "host_mib", 1100)
    assert host_mib_of(models["a"], times, "a") == 9000
    assert host_mib_of(models["b"], times, "b") == 1200  # the largest seen
    assert host_mib_of(models["c"], times, "c") is None  # not warm


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        (
            {**VLLM, "backend": "llama.cpp", "model": "/m.gguf", "warm": {"level": 1}},
            "not supported with backend llama.cpp",
        ),
        (
            {**VLLM, "type": "image", "cpu_offload": True, "warm": {"level": 1}},
            "not possible with cpu_offload",
        ),
        (
            {**VLLM, "type": "image", "offload": "group-leaf", "warm": {"level": 1}},
            "warm is not possible: offload 'group-leaf' cannot be parked",
        ),
        (
            {**VLLM, "type": "image", "offload": "model", "warm": {"level": 1}},
            "warm is not possible: offload 'model' cannot be parked",
        ),
        ({**VLLM, "warm": {"level": 3}}, "warm.level"),
        ({**VLLM, "warm": {"level": 1, "extra": 1}}, "warm.extra"),
    ],
)
def test_models_json_refuses_a_warm_that_cannot_work(entry: dict, why: str) -> None:
    with pytest.raises(CatalogueError, match=why.replace(".", r"\.")):
        catalogue({"m": entry})


@pytest.mark.parametrize(
    "entry",
    [
        {**VLLM, "type": "stt", "model": "Systran/faster-whisper-small"},
        {**VLLM, "type": "tts", "model": "/voices/en_US-joe-medium.onnx"},
    ],
    ids=["stt", "tts"],
)
def test_a_speech_model_cannot_be_kept_warm(entry: dict) -> None:
    # the audio server has no sleep or park route: refused at the key, with the reason
    with pytest.raises(CatalogueError) as refused:
        catalogue({"voice": {**entry, "warm": {"level": 1}}})
    assert refused.value.key == "voice.warm"
    assert "speech model cannot be kept warm" in str(refused.value)
    catalogue({"voice": entry})  # without warm it loads


def test_a_quantized_image_model_may_be_kept_warm() -> None:
    # quantized weights move with .to() and stay quantized (imageserver.park)
    image = {**VLLM, "type": "image", "warm": {"level": 1}}
    for quantize in ("quanto-int8", "torchao-int8", "bnb-nf4"):
        spec = catalogue({"m": {**image, "quantize": quantize}}).models["m"]
        assert spec.warm is not None


def test_only_a_warm_vllm_model_on_the_gpu_gets_sleep_mode() -> None:
    settings = ManagerSettings(manager_token="warm-parts-test-Zq81xLw03kP")
    models = catalogue(
        {
            "gpu": {**VLLM, "warm": {"level": 1}},
            "cpu": {**VLLM, "container": "d", "port": 18302, "gpu": False, "warm": {"level": 1}},
            "cold": {**VLLM, "container": "e", "port": 18303},
        }
    ).models
    for name, spec in models.items():
        argv = text_server_args(name, spec, "127.0.0.1", spec.port)
        env = server_env(name, spec, settings, port=spec.port)
        assert (SLEEP_MODE_FLAG in argv) is (name == "gpu"), name
        assert (env.get(DEV_MODE_ENV) == "1") is (name == "gpu"), name
