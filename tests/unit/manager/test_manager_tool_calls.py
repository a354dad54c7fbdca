"""models.json `tool_calls`: the field, the flags it becomes, and `manager check`'s refusals
(an unknown parser, tool flags in raw `args`); the pinned parser list against the installed vLLM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from manager.errors import CatalogueError
from manager.launch import text_server_args
from manager.spec import TextModel, parse_catalogue
from manager.tool_calls import VLLM_TOOL_PARSERS, ToolCalls, args_problem, llama_cpp_args

ROOT = Path(__file__).resolve().parents[3]
TEMPLATE = "/srv/chat-templates/smollm2-hermes.jinja"


def text(**fields: object) -> dict[str, object]:
    return {
        "type": "text",
        "container": "vllm-a",
        "port": 8001,
        "image": "vllm/vllm-openai:v0.32.0",
        "model": "org/a",
        **fields,
    }


def refusal(entry: dict[str, object]) -> CatalogueError:
    with pytest.raises(CatalogueError) as caught:
        parse_catalogue({"a": entry}, source="models.json")
    return caught.value


def test_unset_tool_calls_add_no_flags() -> None:
    spec = TextModel.model_validate(text(args=["--max-model-len", "2048"]))
    assert spec.tool_calls is None
    assert text_server_args("a", spec, "127.0.0.1", 8001)[-2:] == ["--max-model-len", "2048"]
    assert "--tool-call-parser" not in text_server_args("a", spec, "127.0.0.1", 8001)


@pytest.mark.parametrize(
    ("fields", "tail"),
    [
        (
            {"tool_calls": {"parser": "hermes"}, "args": ["--max-model-len", "2048"]},
            ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
            + ["--max-model-len", "2048"],
        ),
        (
            {"tool_calls": {"parser": "llama3_json", "chat_template": TEMPLATE}},
            ["--enable-auto-tool-choice", "--tool-call-parser", "llama3_json"]
            + ["--chat-template", TEMPLATE],
        ),
    ],
)
def test_tool_calls_become_vllms_flags_before_the_raw_args(
    fields: dict[str, object], tail: list[str]
) -> None:
    argv = text_server_args("a", TextModel.model_validate(text(**fields)), "127.0.0.1", 8001)
    assert argv[-len(tail) :] == tail
    assert argv.count("--chat-template") == ("chat_template" in str(fields))


def test_llama_cpp_maps_tool_calls_to_jinja() -> None:
    assert llama_cpp_args(None) == []
    assert llama_cpp_args(ToolCalls()) == ["--jinja"]
    assert llama_cpp_args(ToolCalls(chat_template=TEMPLATE)) == [
        "--jinja",
        "--chat-template-file",
        TEMPLATE,
    ]
    assert ToolCalls().backend_problem("llama.cpp") is None
    assert "takes no parser" in str(ToolCalls(parser="hermes").backend_problem("llama.cpp"))
    assert args_problem(ToolCalls(), ["--no-jinja"], "llama.cpp") is not None
    assert args_problem(None, ["--no-jinja"], "llama.cpp") is None
    assert args_problem(
        ToolCalls(chat_template=TEMPLATE), ["--chat-template-file", "x"], "llama.cpp"
    )


@pytest.mark.parametrize(
    ("fields", "key", "reason"),
    [
        (
            {"tool_calls": {"parser": "herms"}},
            "a.tool_calls.parser",
            "unknown tool-call parser 'herms'",
        ),
        ({"tool_calls": {}}, "a.tool_calls", "vLLM needs a parser"),
        ({"tool_calls": {"parser": "hermes", "chat": "x"}}, "a.tool_calls.chat", "Extra inputs"),
        (
            {"tool_calls": {"parser": "hermes", "chat_template": "templates/x.jinja"}},
            "a.tool_calls.chat_template",
            "should match pattern",
        ),
        (
            {"tool_calls": {"parser": "hermes"}, "args": ["--tool-call-parser", "mistral"]},
            "a.tool_calls",
            "args set --tool-call-parser, which tool_calls sets",
        ),
        (
            {"tool_calls": {"parser": "hermes"}, "args": ["--enable_auto_tool_choice"]},
            "a.tool_calls",
            "args set --enable-auto-tool-choice, which tool_calls sets",
        ),
        (
            {"args": ["--enable-auto-tool-choice", "--tool-call-parser=hermes"]},
            "a.tool_calls",
            "args set --enable-auto-tool-choice: say how the model calls tools in tool_calls",
        ),
        (
            {
                "tool_calls": {"parser": "hermes", "chat_template": TEMPLATE},
                "args": ["--chat-template=/other.jinja"],
            },
            "a.tool_calls",
            "args set --chat-template and so does tool_calls.chat_template",
        ),
    ],
)
def test_refusals_name_file_key_and_reason(
    fields: dict[str, object], key: str, reason: str
) -> None:
    error = refusal(text(**fields))
    assert (error.file, error.key) == ("models.json", key), str(error)
    assert reason in error.reason, error.reason


def test_a_chat_template_in_args_is_fine_when_tool_calls_names_none() -> None:
    for fields in (
        {"args": ["--chat-template", TEMPLATE]},
        {"args": ["--chat-template", TEMPLATE], "tool_calls": {"parser": "hermes"}},
    ):
        assert TextModel.model_validate(text(**fields)).args == ["--chat-template", TEMPLATE]


def test_manager_check_refuses_an_unknown_parser(tmp_path: Path) -> None:
    bad = tmp_path / "models.json"
    bad.write_text(json.dumps({"a": text(tool_calls={"parser": "hermes2"})}))
    result = subprocess.run(
        [sys.executable, "-m", "manager", "check", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 1
    assert result.stderr.strip().startswith(f"{bad}: key 'a.tool_calls.parser': "), result.stderr
    assert "unknown tool-call parser 'hermes2'" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_shipped_models_json_configures_qwen_for_tools() -> None:
    data = json.loads((ROOT / "models.json").read_text())
    assert data["qwen2.5-14b-awq"]["tool_calls"] == {"parser": "hermes"}


def vllm_python() -> Path:
    raw = os.environ.get("HOMELAB_VLLM_PYTHON")
    if raw:
        return Path(raw)
    state = Path(os.environ.get("HOMELAB_STATE_DIR", Path.home() / ".local/share/homelab-ai"))
    return state / "vllm-venv" / "bin" / "python"


def test_the_pinned_parsers_are_the_installed_vllms() -> None:
    """VLLM_TOOL_PARSERS is what vLLM's ToolParserManager registers (skipped without the
    vLLM venv; importing vLLM takes seconds)."""
    python = vllm_python()
    if not python.exists():
        pytest.skip(f"no vLLM venv at {python} (./setup.sh deps)")
    result = subprocess.run(
        [
            str(python),
            "-c",
            "import json\n"
            "from vllm.tool_parsers import ToolParserManager\n"
            "print(json.dumps(sorted(ToolParserManager.list_registered())))",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    installed = set(json.loads(result.stdout.strip().splitlines()[-1]))
    assert installed == set(VLLM_TOOL_PARSERS), (
        f"vLLM adds {sorted(installed - VLLM_TOOL_PARSERS)}, "
        f"drops {sorted(VLLM_TOOL_PARSERS - installed)}: update manager/tool_calls.py"
    )


def test_the_reference_lists_the_fields_of_tool_calls() -> None:
    doc = (ROOT / "docs" / "models-json.md").read_text()
    for row in (
        "| `tool_calls` | object",
        "| `tool_calls.parser` |",
        "| `tool_calls.chat_template` |",
    ):
        assert row in doc
    assert '`"parser": "hermes"`' in doc
