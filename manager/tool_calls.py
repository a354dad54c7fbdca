"""How a text model calls tools: models.json's `tool_calls` field and the flags it becomes.

vLLM answers a request with `tools` only when it knows how the model writes a call:
`--enable-auto-tool-choice --tool-call-parser NAME`, and where the model's own chat
template does not render tools, `--chat-template FILE`. models.json says so once, in a
typed field that `python -m manager check` validates::

    "tool_calls": {"parser": "hermes"}
    "tool_calls": {"parser": "hermes", "chat_template": "/srv/templates/smollm2-hermes.jinja"}

llama.cpp's server needs no parser: with `--jinja` it renders the model's own template
(or `--chat-template-file FILE`) and recognises the call format from it. So for a model on
llama.cpp the same field maps to `--jinja [--chat-template-file FILE]` and names no parser
(`llama_cpp_args`); `ToolCalls.backend_problem` says which shape each backend takes.

`VLLM_TOOL_PARSERS` pins the parser names vLLM 0.32 registers (its `ToolParserManager`);
a unit test compares it with the installed vLLM when its venv exists. Pure module: no
import of the rest of the manager, so `manager.spec` can import it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

VLLM_TOOL_PARSERS = frozenset(
    {
        "apertus",
        "cohere_command3",
        "cohere_command4",
        "deepseek_v3",
        "deepseek_v31",
        "deepseek_v32",
        "deepseek_v4",
        "deepseek_v41",
        "dots",
        "ernie45",
        "functiongemma",
        "gemma4",
        "gigachat3",
        "glm45",
        "glm47",
        "granite",
        "granite-20b-fc",
        "granite4",
        "hermes",
        "hf",
        "hunyuan_a13b",
        "hy_v3",
        "hy_v4",
        "inkling",
        "internlm",
        "jamba",
        "k2_horizon",
        "kimi_k2",
        "kimi_k3",
        "lfm2",
        "ling3",
        "llama3_json",
        "llama4_json",
        "llama4_pythonic",
        "longcat",
        "mimo",
        "minicpm5",
        "minimax_m2",
        "minimax_m3",
        "mistral",
        "muse_glimmer",
        "olmo3",
        "openai",
        "phi4_mini_json",
        "plamo3",
        "poolside_v1",
        "pythonic",
        "qwen3_coder",
        "qwen3_json",
        "qwen3_xml",
        "seed_oss",
        "step3",
        "step3p5",
        "xlam",
    }
)
"""`vllm.tool_parsers.ToolParserManager.list_registered()` in vLLM 0.32.0."""

TEMPLATE_FLAGS = {
    "vllm": ("--chat-template",),
    "llama.cpp": ("--chat-template", "--chat-template-file"),
}
"""Per backend, the `args` that set a chat template: they contradict `tool_calls.chat_template`."""

TOOL_FLAGS = {"vllm": ("--enable-auto-tool-choice", "--tool-call-parser"), "llama.cpp": ()}
"""Per backend, the `args` that belong in `tool_calls` (which sets them) and nowhere else."""

OFF_FLAGS = {"vllm": (), "llama.cpp": ("--no-jinja",)}
"""Per backend, the `args` that switch tool calling off: they contradict any `tool_calls`."""


class ToolCalls(BaseModel):
    """models.json `tool_calls`: how the model writes a tool call."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    parser: str | None = Field(
        default=None,
        description=(
            "vLLM's tool-call parser for this model's format (`--tool-call-parser`), one of "
            "the names vLLM 0.32 registers, e.g. `hermes` (Qwen2.5, Hermes; `<tool_call>` "
            "tags), `llama3_json` (Llama 3.1 and later), `mistral`; docs/adding-models.md has "
            "a table. Required on vLLM; a model on llama.cpp names none (`--jinja` finds the "
            "format in the chat template)."
        ),
        examples=["hermes"],
    )
    chat_template: str | None = Field(
        default=None,
        min_length=2,
        max_length=4096,
        pattern=r"^/",
        description=(
            "Absolute path, as the model server sees it (in the container on the Docker "
            "runtime), of a Jinja chat template that renders `tools`, the assistant's calls "
            "and `tool` results, for models whose own template does not (vLLM "
            "`--chat-template`, llama.cpp `--chat-template-file`). Unset: the model's own."
        ),
        examples=["/srv/chat-templates/smollm2-hermes.jinja"],
    )

    @field_validator("parser")
    @classmethod
    def _known_parser(cls, value: str | None) -> str | None:
        if value is not None and value not in VLLM_TOOL_PARSERS:
            raise ValueError(
                f"unknown tool-call parser {value!r}; vLLM 0.32 knows "
                f"{', '.join(sorted(VLLM_TOOL_PARSERS))}"
            )
        return value

    def backend_problem(self, backend: str) -> str | None:
        """Why this field does not fit a model served by `backend`, or None."""
        if backend == "vllm" and self.parser is None:
            return "vLLM needs a parser: name the model's tool-call format, e.g. 'hermes'"
        if backend != "vllm" and self.parser is not None:
            return f"{backend} takes no parser (--jinja reads the format from the chat template)"
        return None


def _flag(arg: str) -> str:
    return arg.partition("=")[0].replace("_", "-")


def args_problem(
    tool_calls: ToolCalls | None, args: list[str], backend: str = "vllm"
) -> str | None:
    """Why a model's raw `args` contradict its `tool_calls` (or carry tool flags that
    belong in it), or None. A chat template in `args` is fine without `tool_calls`
    (templates serve more than tools) and beside a `tool_calls` that names none."""
    for flag in (_flag(arg) for arg in args):
        if flag in TOOL_FLAGS.get(backend, ()):
            if tool_calls is None:
                return f"args set {flag}: say how the model calls tools in tool_calls instead"
            return f"args set {flag}, which tool_calls sets: drop it from args"
        if tool_calls is None:
            continue
        if flag in OFF_FLAGS.get(backend, ()):
            return f"args set {flag}, which switches off the tool calls tool_calls asks for"
        if flag in TEMPLATE_FLAGS.get(backend, ()) and tool_calls.chat_template is not None:
            return f"args set {flag} and so does tool_calls.chat_template: keep one"
    return None


def vllm_args(tool_calls: ToolCalls | None) -> list[str]:
    """The vLLM server arguments for `tool_calls` (none when unset)."""
    if tool_calls is None or tool_calls.parser is None:
        return []
    args = ["--enable-auto-tool-choice", "--tool-call-parser", tool_calls.parser]
    if tool_calls.chat_template is not None:
        args += ["--chat-template", tool_calls.chat_template]
    return args


def llama_cpp_args(tool_calls: ToolCalls | None) -> list[str]:
    """The llama.cpp server arguments for `tool_calls` (none when unset)."""
    if tool_calls is None:
        return []
    args = ["--jinja"]
    if tool_calls.chat_template is not None:
        args += ["--chat-template-file", tool_calls.chat_template]
    return args
