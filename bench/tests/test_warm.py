"""bench.warm on the CPU: its arguments, the specs it launches, and its clear refusal on a
machine without a CUDA GPU (the bench itself needs one)."""

from __future__ import annotations

import pytest

from bench import warm
from manager.launch import DEV_MODE_ENV, SLEEP_MODE_FLAG, server_env, text_server_args
from manager.settings import ManagerSettings


def test_the_defaults_measure_a_text_and_an_image_model() -> None:
    args = warm.parse_args([])
    assert (args.rounds, args.skip_text, args.skip_image) == (3, False, False)
    assert sorted(warm.specs(args)) == ["bench-image", "bench-text"]


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["--rounds", "0"], "--rounds must be at least 1"),
        (["--skip-text", "--skip-image"], "leave nothing to measure"),
        (["--image-size", "500x500"], "multiples of 8"),
        (["--image-size", "big"], "WIDTHxHEIGHT"),
    ],
)
def test_bad_arguments_are_refused(argv: list[str], why: str, capsys) -> None:  # noqa: ANN001
    with pytest.raises(SystemExit) as stop:
        warm.parse_args(argv)
    assert stop.value.code == 2 and why in capsys.readouterr().err


def test_the_text_model_is_launched_with_sleep_mode() -> None:
    args = warm.parse_args(["--skip-image", "--text-model", "org/small", "--max-model-len", "2048"])
    (spec,) = warm.specs(args).values()
    argv = text_server_args("bench-text", spec, "127.0.0.1", spec.port)
    assert SLEEP_MODE_FLAG in argv and argv[argv.index("--model") + 1] == "org/small"
    assert argv[argv.index("--max-model-len") + 1] == "2048"
    settings = ManagerSettings(manager_token="bench-warm-test-Zq81xLw03kP")
    assert server_env("bench-text", spec, settings, port=spec.port)[DEV_MODE_ENV] == "1"


def test_without_a_cuda_gpu_it_refuses_and_says_why(monkeypatch, capsys) -> None:  # noqa: ANN001
    import manager.gpu

    monkeypatch.setattr(manager.gpu, "card_total_mib", lambda: None)
    assert warm.main(["--rounds", "1"]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "no sleep mode" in err
