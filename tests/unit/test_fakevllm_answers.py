"""The fake vLLM server's pure parts: argument parsing, PNG encoding, answers, errors."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
from PIL import Image

from tests.fixtures.fakevllm import answers
from tests.fixtures.fakevllm.answers import ApiError
from tests.fixtures.fakevllm.config import parse
from tests.fixtures.fakevllm.png import solid_png


def test_vllm_arguments_are_parsed_and_unknown_ones_ignored() -> None:
    cfg = parse(
        ["--model", "org/m", "--served-model-name", "chat", "--host", "127.0.0.1",
         "--port", "9001", "--max-model-len", "8192", "--enforce-eager"],
        env={},
    )  # fmt: skip
    assert (cfg.model, cfg.served_name, cfg.host, cfg.port) == ("org/m", "chat", "127.0.0.1", 9001)
    assert cfg.ignored_args == ("--max-model-len", "8192", "--enforce-eager")
    assert cfg.kind == "text" and cfg.crash_after is None


def test_image_mode_reads_the_image_server_environment() -> None:
    env = {
        "FAKEVLLM_KIND": "image",
        "HOMELAB_IMAGE_MODEL": "org/sdxl",
        "HOMELAB_IMAGE_SERVED_NAME": "sdxl",
        "HOMELAB_IMAGE_PORT": "9100",
        "HOMELAB_IMAGE_HOST": "127.0.0.1",
        "HOMELAB_IMAGE_SIZES": "64x64, 32x48",
        "HOMELAB_IMAGE_MAX_N": "3",
        "FAKEVLLM_LOAD_SECONDS": "1.5",
    }
    cfg = parse([], env=env)
    assert (cfg.model, cfg.served_name, cfg.port, cfg.host) == (
        "org/sdxl",
        "sdxl",
        9100,
        "127.0.0.1",
    )
    assert cfg.sizes == ("64x64", "32x48") and cfg.max_n == 3 and cfg.load_seconds == 1.5


@pytest.mark.parametrize(
    "env",
    [{"FAKEVLLM_KIND": "audio"}, {"FAKEVLLM_LOAD_SECONDS": "-1"}, {"HOMELAB_IMAGE_SIZES": "big"}],
)
def test_bad_knobs_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        parse([], env=env)


def test_solid_png_is_a_real_png() -> None:
    data = solid_png(24, 16, (10, 200, 30))
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.size == (24, 16) and image.mode == "RGB"
    assert image.getpixel((23, 15)) == (10, 200, 30)
    length, kind = struct.unpack(">I4s", data[8:16])
    assert (
        kind == b"IHDR"
        and zlib.crc32(data[12 : 16 + length])
        == struct.unpack(">I", data[16 + length : 20 + length])[0]
    )
    with pytest.raises(ValueError):
        solid_png(0, 4, (0, 0, 0))


CFG = parse(["--served-model-name", "chat"], env={})


def test_chat_echoes_the_last_user_message_and_counts_words() -> None:
    generation = answers.chat(
        CFG,
        {
            "model": "chat",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "first question"}]},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": "the real question"},
            ],
        },
    )
    body = generation.full()
    assert body["object"] == "chat.completion" and body["model"] == "chat"
    assert body["choices"][0]["message"]["content"] == "[chat] the real question"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 8, "completion_tokens": 4, "total_tokens": 12}


def test_max_tokens_cuts_the_reply() -> None:
    body = answers.chat(
        CFG, {"messages": [{"role": "user", "content": "a b c d"}], "max_tokens": 2}
    ).full()
    assert body["choices"][0]["message"]["content"] == "[chat] a"
    assert body["choices"][0]["finish_reason"] == "length"


def test_stream_chunks_rebuild_the_full_reply() -> None:
    generation = answers.chat(
        CFG,
        {
            "messages": [{"role": "user", "content": "one two three"}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "n": 2,
        },
    )
    chunks = list(generation.chunks())
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    for index in (0, 1):
        text = "".join(
            choice["delta"].get("content", "")
            for c in chunks
            for choice in c["choices"]
            if choice["index"] == index
        )
        assert text == "[chat] one two three"
    assert [c["finish_reason"] for c in chunks[-2]["choices"]] == ["stop", "stop"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 8


def test_completions_accept_a_list_of_prompts() -> None:
    body = answers.completion(CFG, {"prompt": ["x y", "z"], "max_tokens": 100}).full()
    assert [c["text"] for c in body["choices"]] == ["[chat] x y", "[chat] z"]
    assert body["object"] == "text_completion"


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "other", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
        ({"messages": []}, 400, "messages"),
        ({"messages": "hi"}, 400, "messages"),
        ({"messages": [{"content": "no role"}]}, 400, "messages"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, 400, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": "9"}, 400, "max_tokens"),
        ([1, 2], 400, None),
    ],
)
def test_bad_chat_requests_get_vllm_errors(body: object, status: int, param: str | None) -> None:
    with pytest.raises(ApiError) as raised:
        answers.chat(CFG, body)
    error = raised.value.body()["error"]
    assert raised.value.status == status and error["code"] == status and error["param"] == param
    assert error["type"] == ("NotFoundError" if status == 404 else "BadRequestError")


def test_embeddings_are_deterministic_unit_vectors_in_float_and_base64() -> None:
    floats = answers.embeddings(CFG, {"input": ["a", "b"]})
    again = answers.embeddings(CFG, {"input": "a"})
    vector = floats["data"][0]["embedding"]
    assert vector == again["data"][0]["embedding"] != floats["data"][1]["embedding"]
    assert len(vector) == 8 and abs(sum(x * x for x in vector) - 1) < 1e-4
    packed = answers.embeddings(CFG, {"input": "a", "encoding_format": "base64"})
    raw = base64.b64decode(packed["data"][0]["embedding"])
    assert list(struct.unpack("<8f", raw)) == pytest.approx(vector, abs=1e-6)


IMAGE_CFG = parse([], env={"FAKEVLLM_KIND": "image", "HOMELAB_IMAGE_SERVED_NAME": "img",
                           "HOMELAB_IMAGE_SIZES": "16x16,8x24", "HOMELAB_IMAGE_MAX_N": "2"})  # fmt: skip


def _png_size(b64: str) -> tuple[int, int]:
    return Image.open(io.BytesIO(base64.b64decode(b64))).size


def test_image_generation_returns_pngs_of_the_asked_size_coloured_by_prompt() -> None:
    body = answers.image_generation(IMAGE_CFG, {"prompt": "a fox", "size": "8x24", "n": 2})
    assert [_png_size(d["b64_json"]) for d in body["data"]] == [(8, 24), (8, 24)]
    default = answers.image_generation(IMAGE_CFG, {"prompt": "a fox"})
    same = answers.image_generation(IMAGE_CFG, {"prompt": "a fox"})
    other = answers.image_generation(IMAGE_CFG, {"prompt": "a cat"})
    assert _png_size(default["data"][0]["b64_json"]) == (16, 16)
    assert default["data"][0]["b64_json"] == same["data"][0]["b64_json"]
    assert default["data"][0]["b64_json"] != other["data"][0]["b64_json"]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x", "n": 3}, "n"),
        ({"prompt": "x", "size": "1024x1024"}, "size"),
        ({"prompt": "x", "response_format": "url"}, "response_format"),
        ({"prompt": "x", "model": "nope"}, "model"),
    ],
)
def test_bad_image_requests_get_image_server_errors(fields: dict, param: str) -> None:
    with pytest.raises(ApiError) as raised:
        answers.image_generation(IMAGE_CFG, fields)
    error = raised.value.body("image")["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_image_edit_needs_an_image_and_depends_on_it() -> None:
    with pytest.raises(ApiError, match="image is required"):
        answers.image_edit(IMAGE_CFG, {"prompt": "x"}, {})
    one = answers.image_edit(IMAGE_CFG, {"prompt": "x"}, {"image": b"one"})
    two = answers.image_edit(IMAGE_CFG, {"prompt": "x"}, {"image": b"two"})
    assert one["data"][0]["b64_json"] != two["data"][0]["b64_json"]
