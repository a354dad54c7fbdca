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


def test_the_image_model_may_be_measured_quantized() -> None:
    args = warm.parse_args(["--skip-text", "--image-quantize", "quanto-int8"])
    (spec,) = warm.specs(args).values()
    assert (spec.quantize, spec.load_offload) == ("quanto-int8", "none")
    assert spec.warm is not None  # parked, not stopped


def test_without_a_cuda_gpu_it_refuses_and_says_why(monkeypatch, capsys) -> None:  # noqa: ANN001
    import manager.gpu

    monkeypatch.setattr(manager.gpu, "card_total_mib", lambda: None)
    assert warm.main(["--rounds", "1"]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "no sleep mode" in err


def _row(model: str, case: str, seconds: float, asleep: int | None = None) -> dict:
    return {
        "model": model,
        "case": case,
        "seconds_to_first_token": seconds,
        "gpu_mib_asleep": asleep,
        "gpu_mib_after": 9000,
        "host_mib_asleep": asleep and 4000,
    }


def test_the_summary_compares_each_case_with_the_cold_start() -> None:
    rows = [
        _row("t", "cold", 40.0),
        _row("t", "cold", 50.0),
        _row("t", "warm L1", 0.5, asleep=600),
        _row("t", "warm L1", 1.5, asleep=600),
        _row("i", "warm (parked)", 2.0, asleep=300),  # no cold start measured
    ]
    by_case = {(s["model"], s["case"]): s for s in warm.summary(rows)}
    assert by_case[("t", "cold")]["cold_over_this"] == 1.0
    assert by_case[("t", "warm L1")]["median_s"] == 1.0
    assert by_case[("t", "warm L1")]["cold_over_this"] == 45.0
    assert by_case[("i", "warm (parked)")]["cold_over_this"] is None
    text = warm.render({"card": "NVIDIA X (24576 MiB)", "summary": warm.summary(rows)})
    assert text.startswith("NVIDIA X (24576 MiB)\n")
    assert "| 45.0x " in text and "| -  " in text


def test_the_report_names_the_command_and_card_or_says_how_to_measure() -> None:
    from bench.report import _warm_section

    missing = _warm_section(None)
    assert "Not measured yet" in missing and "python -m bench.warm" in missing
    rows = [_row("t", "cold", 30.0), _row("t", "resident", 0.1)]
    result = {"command": "python -m bench.warm", "card": "NVIDIA Y (8192 MiB)"}
    shown = _warm_section({**result, "summary": warm.summary(rows)})
    assert "`python -m bench.warm`" in shown and "NVIDIA Y (8192 MiB)" in shown
    assert "| 300.0x " in shown
