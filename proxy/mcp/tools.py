"""The MCP tools, generated from the manager's model list, and their argument checks.

`tool_list(models)` turns the manager's `wire.models.ModelStatus` objects (what
``GET /v1/models`` shows) into the eight tools, so a model added to models.json appears in the enums
as soon as the proxy's model list is fresh. The ``parse_*`` functions check a
call's arguments against the same list and raise `ArgumentError` naming the
argument; the JSON schemas say the same things up front, so a careful agent
never sees those errors.

Pure functions: no I/O.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

from mcp import types

from proxy.audio import KNOWN
from proxy.errors import InvalidRequest
from proxy.images import check_image_request
from wire.models import ModelStatus

MAX_PROMPT_CHARS = 32_000
MAX_MESSAGES = 200
MAX_TOKENS = 32_768
MAX_SEED = 2**32 - 1
MAX_EMBED_INPUTS = 32
"""Most texts one `embed` call takes (its result carries every vector)."""
MAX_SPEECH_CHARS = 4096
"""Longest text `txt2speech` speaks in one call (OpenAI's limit on /v1/audio/speech)."""
SPEECH_FORMATS = ("wav", "mp3", "opus", "flac")
"""What `txt2speech` may ask the audio server for (not ``pcm``: it has no header)."""
ROLES = ("system", "user", "assistant")

Models = dict[str, ModelStatus]
"""The manager's model list as `ManagerClient.models()` gives it, keyed by id."""


class ToolFailure(Exception):
    """A call failed in a way the caller should read: becomes an ``isError`` result."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ArgumentError(ToolFailure):
    """A bad argument: the message names it (``param``)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"Invalid argument '{param}': {message}")
        self.param = param


def _names(models: Models, *, kind: str, vision: bool = False) -> list[str]:
    return sorted(
        name for name, m in models.items() if m.type == kind and (not vision or m.vision is True)
    )


def _model_prop(names: list[str], what: str) -> dict[str, Any]:
    prop: dict[str, Any] = {"type": "string", "description": what}
    if names:
        prop["enum"] = names
        prop["default"] = names[0]
    return prop


def _described(models: Models, names: list[str]) -> str:
    lines = []
    for name in names:
        m = models[name]
        extra = ""
        if m.type == "image":
            extra = f" sizes {', '.join(m.sizes or [])}; max_n {m.max_n}."
        if m.hosts and len(m.hosts) > 1:  # several GPU hosts serve it (docs/hosts.md)
            extra += f" Served by the hosts {', '.join(m.hosts)}."
        desc = m.description.strip()
        lines.append(f"- {name}: {desc or '(no description)'}{extra}")
    return "\n".join(lines) if lines else "- (none configured)"


_LOAD_NOTE = (
    " Models share the GPU within its memory budget: a call for a model that is not "
    "loaded waits while the manager loads it, first unloading others if it does not fit "
    "(tens of seconds to minutes); progress notifications say what is happening. Call "
    "list_models to see what is loaded now."
)


def tool_list(models: Models) -> list[types.Tool]:
    """The eight tools for the models in `models` (the manager's ModelStatus by id)."""
    text = _names(models, kind="text")
    embedding = _names(models, kind="embedding")
    image = _names(models, kind="image")
    vision = _names(models, kind="text", vision=True)
    sizes = sorted({s for n in image for s in models[n].sizes or []})
    max_n = max((models[n].max_n or 1 for n in image), default=1)
    image_input = {
        "type": "string",
        "description": (
            "The image: an image URL this proxy returned (…/images/<id>.png), a data URL "
            "(data:image/png;base64,...) or plain base64 of a PNG, JPEG, WebP or GIF file."
        ),
    }
    prompt = {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT_CHARS}
    seed = {
        "type": "integer",
        "minimum": 0,
        "maximum": MAX_SEED,
        "description": "Random seed; the same seed and arguments give the same picture. "
        "Omitted: a random one (reported in the result).",
    }
    size: dict[str, Any] = {
        "type": "string",
        "description": "Width x height. Each model takes only its own sizes (see above); "
        "omitted: the model's first size.",
    }
    if sizes:
        size["enum"] = sizes
    n = {"type": "integer", "minimum": 1, "maximum": max_n, "default": 1}
    n["description"] = "How many pictures (at most the model's max_n)."
    sampling = {
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "max_tokens": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_TOKENS,
            "description": "Longest answer, in tokens.",
        },
    }
    return [
        types.Tool(
            name="txt2txt",
            title="Chat with a text model",
            description=(
                "Ask a text model (an LLM) something and get its answer as text. Give either a "
                "plain `prompt` (with an optional `system` instruction) or a whole `messages` "
                "conversation.\nText models:\n" + _described(models, text) + "\n" + _LOAD_NOTE
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "model": _model_prop(text, "The text model."),
                    "prompt": {**prompt, "description": "The question or instruction."},
                    "system": {
                        "type": "string",
                        "maxLength": MAX_PROMPT_CHARS,
                        "description": "A system instruction (with `prompt` only).",
                    },
                    "messages": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": MAX_MESSAGES,
                        "description": "The conversation so far, instead of `prompt`.",
                        "items": {
                            "type": "object",
                            "properties": {
                                "role": {"type": "string", "enum": list(ROLES)},
                                "content": {"type": "string"},
                            },
                            "required": ["role", "content"],
                            "additionalProperties": False,
                        },
                    },
                    **sampling,
                },
                "additionalProperties": False,
            },
        ),
        types.Tool(
            name="txt2img",
            title="Make a picture from a text prompt",
            description=(
                "Generate pictures from a text description with an image model. Returns each "
                "picture as a PNG (inline when small) and a link to it on this proxy (valid for "
                "a limited time), plus the seed used.\nImage models:\n"
                + _described(models, image)
                + "\n"
                + _LOAD_NOTE
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "model": _model_prop(image, "The image model."),
                    "prompt": {**prompt, "description": "What the picture shows."},
                    "size": size,
                    "n": n,
                    "seed": seed,
                    "negative_prompt": {
                        "type": "string",
                        "maxLength": MAX_PROMPT_CHARS,
                        "description": "What the picture should not show.",
                    },
                },
                "required": ["prompt"],
                "additionalProperties": False,
            },
        ),
        types.Tool(
            name="img2img",
            title="Edit a picture with a text prompt",
            description=(
                "Change an existing picture as a text prompt says (optionally only where a mask "
                "is white) with an image model. Pass a picture from txt2img by its URL. Returns "
                "the new pictures like txt2img.\nImage models:\n"
                + _described(models, image)
                + "\n"
                + _LOAD_NOTE
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "model": _model_prop(image, "The image model."),
                    "image": image_input,
                    "prompt": {**prompt, "description": "What to change, or the picture wanted."},
                    "mask": {
                        **image_input,
                        "description": "Optional mask, same forms as `image`: white = change, "
                        "black = keep (inpainting models only).",
                    },
                    "strength": {
                        "type": "number",
                        "exclusiveMinimum": 0,
                        "maximum": 1,
                        "description": "How much to change (0..1; the model's default if omitted).",
                    },
                    "size": size,
                    "n": n,
                    "seed": seed,
                },
                "required": ["image", "prompt"],
                "additionalProperties": False,
            },
        ),
        types.Tool(
            name="img2txt",
            title="Ask a vision model about a picture",
            description=(
                "Ask a vision-capable text model a question about a picture and get its answer "
                "as text.\nVision models:\n"
                + (
                    _described(models, vision)
                    if vision
                    else '- (none: no text model in models.json has "vision": true, so this '
                    "tool cannot be used)"
                )
                + "\n"
                + _LOAD_NOTE
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "model": _model_prop(vision, "The vision model."),
                    "image": {
                        **image_input,
                        "description": image_input["description"]
                        + " Any other http(s) URL is passed to the model server, which fetches it.",
                    },
                    "prompt": {
                        **prompt,
                        "description": "The question about the picture.",
                        "default": "Describe this picture.",
                    },
                    **sampling,
                },
                "required": ["image"],
                "additionalProperties": False,
            },
        ),
        types.Tool(
            name="embed",
            title="Embed texts as vectors",
            description=(
                "Turn texts into embedding vectors with an embeddings model, for semantic "
                "search, clustering or deduplication. The result's text says how similar the "
                "texts are to each other (cosine similarity, 1 = same meaning, about 0 = "
                "unrelated); the vectors themselves are in the structured result "
                "(`embeddings`, one list of numbers per text, in order).\nEmbedding models:\n"
                + _described(models, embedding)
                + "\n"
                + _LOAD_NOTE
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "model": _model_prop(embedding, "The embeddings model."),
                    "input": {
                        "description": (
                            f"One text, or a list of 1 to {MAX_EMBED_INPUTS} texts to embed "
                            "and compare."
                        ),
                        "anyOf": [
                            prompt,
                            {
                                "type": "array",
                                "minItems": 1,
                                "maxItems": MAX_EMBED_INPUTS,
                                "items": prompt,
                            },
                        ],
                    },
                },
                "required": ["input"],
                "additionalProperties": False,
            },
        ),
        *_speech_tools(models),
        types.Tool(
            name="list_models",
            title="List the models",
            description=(
                "Every model this endpoint serves: its type (text/image/embedding/stt/tts), "
                "whether it "
                "takes images, "
                "its state (stopped, starting = loading, ready, stopping, failed), which one is "
                "loaded now, and how long a load usually takes."
            ),
            input_schema={"type": "object", "properties": {}, "additionalProperties": False},
        ),
    ]


def _speech_tools(models: Models) -> list[types.Tool]:
    stt = _names(models, kind="stt")
    tts = _names(models, kind="tts")
    return [
        types.Tool(
            name="speech2txt",
            title="Transcribe speech to text",
            description=(
                "Write down what is said in a recording with a speech-to-text model. Returns "
                "the text, and in the structured result each segment with its start and end "
                "seconds. Progress notifications follow the recording as it is transcribed."
                "\nSpeech-to-text models:\n" + _described(models, stt) + "\n" + _LOAD_NOTE
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "model": _model_prop(stt, "The speech-to-text model."),
                    "audio": {
                        "type": "string",
                        "description": (
                            "The recording: a data URL (data:audio/wav;base64,...) or plain "
                            f"base64 of a {KNOWN} file, or a link "
                            "txt2speech returned (…/v1/audio/files/<id>). Other URLs are "
                            "refused: the proxy fetches nothing."
                        ),
                    },
                    "language": {
                        "type": "string",
                        "maxLength": 16,
                        "description": "The spoken language (ISO 639-1, e.g. 'en'); omitted: "
                        "detected.",
                    },
                    "prompt": {
                        "type": "string",
                        "maxLength": MAX_PROMPT_CHARS,
                        "description": "Text that guides the spelling (names, terms).",
                    },
                },
                "required": ["audio"],
                "additionalProperties": False,
            },
        ),
        types.Tool(
            name="txt2speech",
            title="Speak a text aloud",
            description=(
                "Turn a text into speech with a text-to-speech model. Returns the audio (inline "
                "when small) and a link to it on this proxy (for this API key only; it expires), "
                "plus its duration.\nText-to-speech models:\n"
                + _described(models, tts)
                + "\n"
                + _LOAD_NOTE
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "model": _model_prop(tts, "The text-to-speech model."),
                    "input": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": MAX_SPEECH_CHARS,
                        "description": "The text to speak.",
                    },
                    "voice": {
                        "type": "string",
                        "maxLength": 200,
                        "description": "The voice (GET /v1/audio/voices?model=... lists them); "
                        "omitted: the model's first.",
                    },
                    "format": {
                        "type": "string",
                        "enum": list(SPEECH_FORMATS),
                        "default": "wav",
                        "description": "The audio file's format.",
                    },
                    "speed": {"type": "number", "minimum": 0.25, "maximum": 4.0, "default": 1.0},
                },
                "required": ["input"],
                "additionalProperties": False,
            },
        ),
    ]


# -- argument checks ----------------------------------------------------------------


def _check_keys(args: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(args) - allowed)
    if unknown:
        takes = ", ".join(sorted(allowed)) if allowed else "no arguments"
        raise ArgumentError(unknown[0], f"unknown argument; this tool takes {takes}")


def _text(
    args: dict[str, Any], name: str, *, required: bool = False, default: str | None = None
) -> str | None:
    value = args.get(name)
    if value is None:
        if required:
            raise ArgumentError(name, "is required")
        return default
    if not isinstance(value, str) or (required and not value.strip()):
        raise ArgumentError(name, "must be a non-empty string")
    if len(value) > MAX_PROMPT_CHARS:
        raise ArgumentError(name, f"is longer than {MAX_PROMPT_CHARS} characters")
    return value


def _int(args: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = args.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ArgumentError(name, f"must be an integer from {low} to {high}")
    return value


def _number(
    args: dict[str, Any], name: str, low: float, high: float, *, open_low: bool = False
) -> float | None:
    value = args.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ArgumentError(name, "must be a number")
    if value > high or value < low or (open_low and value == low):
        raise ArgumentError(
            name, f"must be {'above' if open_low else 'at least'} {low:g} and at most {high:g}"
        )
    return float(value)


def pick_model(
    models: Models, args: dict[str, Any], *, kind: str, vision: bool = False
) -> ModelStatus:
    """The ModelStatus of the `model` argument (default: the first of its kind)."""
    names = _names(models, kind=kind, vision=vision)
    what = "vision model" if vision else f"{kind} model"
    value = args.get("model")
    if value is None:
        if not names:
            if vision:
                raise ToolFailure(
                    "No vision model is configured: mark a text model that takes images with "
                    '"vision": true in models.json.'
                )
            raise ToolFailure(f"No {what} is configured in models.json.")
        return models[names[0]]
    if not isinstance(value, str) or value not in names:
        known = ", ".join(names) or "(none)"
        raise ArgumentError("model", f"{str(value)[:100]!r} is not a {what}; use one of: {known}")
    return models[value]


@dataclass
class ChatArgs:
    model: ModelStatus
    messages: list[dict[str, Any]]
    options: dict[str, Any] = field(default_factory=dict)


def _sampling(args: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    temperature = _number(args, "temperature", 0, 2)
    if temperature is not None:
        options["temperature"] = temperature
    max_tokens = _int(args, "max_tokens", 1, MAX_TOKENS)
    if max_tokens is not None:
        options["max_tokens"] = max_tokens
    return options


def parse_txt2txt(models: Models, args: dict[str, Any]) -> ChatArgs:
    _check_keys(args, {"model", "prompt", "system", "messages", "temperature", "max_tokens"})
    model = pick_model(models, args, kind="text")
    prompt = _text(args, "prompt")
    system = _text(args, "system")
    raw = args.get("messages")
    if raw is not None and prompt is not None:
        raise ArgumentError("messages", "give either 'messages' or 'prompt', not both")
    if raw is None:
        if prompt is None or not prompt.strip():
            raise ArgumentError("prompt", "is required (or give 'messages')")
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}
        ]
    else:
        if system is not None:
            raise ArgumentError("system", "goes with 'prompt'; put it into 'messages' instead")
        if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_MESSAGES:
            raise ArgumentError("messages", f"must be a list of 1 to {MAX_MESSAGES} messages")
        messages = []
        for i, item in enumerate(raw):
            if (
                not isinstance(item, dict)
                or item.get("role") not in ROLES
                or not isinstance(item.get("content"), str)
                or set(item) - {"role", "content"}
            ):
                raise ArgumentError(
                    f"messages[{i}]",
                    'must be {"role": "system"|"user"|"assistant", "content": text}',
                )
            messages.append({"role": item["role"], "content": item["content"]})
    return ChatArgs(model=model, messages=messages, options=_sampling(args))


@dataclass
class ImageArgs:
    model: ModelStatus
    prompt: str
    size: str | None
    n: int
    seed: int | None
    extra: dict[str, Any] = field(default_factory=dict)


def _image_common(models: Models, args: dict[str, Any]) -> ImageArgs:
    model = pick_model(models, args, kind="image")
    prompt = _text(args, "prompt", required=True)
    assert prompt is not None
    size, n = args.get("size"), args.get("n")
    if isinstance(n, float) and n.is_integer():  # JSON clients may send 3.0
        n = int(n)
    try:  # the direct route's checks (proxy.images), so every entry refuses the same
        check_image_request(model, n, size, None)
    except InvalidRequest as exc:
        raise ArgumentError(exc.param or "size", exc.message) from exc
    seed = _int(args, "seed", 0, MAX_SEED)
    return ImageArgs(model=model, prompt=prompt, size=size, n=n or 1, seed=seed)


def parse_txt2img(models: Models, args: dict[str, Any]) -> ImageArgs:
    _check_keys(args, {"model", "prompt", "size", "n", "seed", "negative_prompt"})
    parsed = _image_common(models, args)
    negative = _text(args, "negative_prompt")
    if negative:
        parsed.extra["negative_prompt"] = negative
    return parsed


@dataclass
class EditArgs(ImageArgs):
    image: str = ""
    mask: str | None = None


def parse_img2img(models: Models, args: dict[str, Any]) -> EditArgs:
    _check_keys(args, {"model", "image", "prompt", "mask", "strength", "size", "n", "seed"})
    image = args.get("image")
    if not isinstance(image, str) or not image.strip():
        raise ArgumentError("image", "is required: a proxy image URL, a data URL or base64")
    mask = args.get("mask")
    if mask is not None and (not isinstance(mask, str) or not mask.strip()):
        raise ArgumentError("mask", "must be a proxy image URL, a data URL or base64")
    common = _image_common(models, args)
    strength = _number(args, "strength", 0, 1, open_low=True)
    parsed = EditArgs(**vars(common), image=image, mask=mask)
    if strength is not None:
        parsed.extra["strength"] = f"{strength:g}"
    return parsed


@dataclass
class VisionArgs:
    model: ModelStatus
    image: str
    prompt: str
    options: dict[str, Any] = field(default_factory=dict)


def parse_img2txt(models: Models, args: dict[str, Any]) -> VisionArgs:
    _check_keys(args, {"model", "image", "prompt", "temperature", "max_tokens"})
    model = pick_model(models, args, kind="text", vision=True)
    image = args.get("image")
    if not isinstance(image, str) or not image.strip():
        raise ArgumentError("image", "is required: a proxy image URL, a data URL or base64")
    prompt = _text(args, "prompt", default="Describe this picture.")
    assert prompt is not None
    if not prompt.strip():
        raise ArgumentError("prompt", "must be a non-empty string")
    return VisionArgs(model=model, image=image, prompt=prompt, options=_sampling(args))


@dataclass
class EmbedArgs:
    model: ModelStatus
    texts: list[str]


def parse_embed(models: Models, args: dict[str, Any]) -> EmbedArgs:
    _check_keys(args, {"model", "input"})
    model = pick_model(models, args, kind="embedding")
    raw = args.get("input")
    texts = [raw] if isinstance(raw, str) else raw
    if (
        not isinstance(texts, list)
        or not 1 <= len(texts) <= MAX_EMBED_INPUTS
        or not all(isinstance(t, str) and t.strip() for t in texts)
    ):
        raise ArgumentError(
            "input", f"must be a non-empty text or a list of 1 to {MAX_EMBED_INPUTS} of them"
        )
    if any(len(t) > MAX_PROMPT_CHARS for t in texts):
        raise ArgumentError("input", f"a text is longer than {MAX_PROMPT_CHARS} characters")
    return EmbedArgs(model=model, texts=texts)


def parse_list_models(args: dict[str, Any]) -> None:
    _check_keys(args, set())


def b64decode_strict(text: str, param: str) -> bytes:
    """Decode base64 (standard alphabet, whitespace ignored) or raise ArgumentError."""
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ArgumentError(param, "is not valid base64") from exc


@dataclass
class TranscribeArgs:
    model: ModelStatus
    audio: str
    options: dict[str, Any] = field(default_factory=dict)


def parse_speech2txt(models: Models, args: dict[str, Any]) -> TranscribeArgs:
    _check_keys(args, {"model", "audio", "language", "prompt"})
    model = pick_model(models, args, kind="stt")
    audio = args.get("audio")
    if not isinstance(audio, str) or not audio.strip():
        raise ArgumentError("audio", "is required: a data URL or an audio link this proxy returned")
    options: dict[str, Any] = {}
    language = _text(args, "language")
    if language is not None:
        if not language.strip() or len(language) > 16:
            raise ArgumentError("language", "must be a language code such as 'en'")
        options["language"] = language.strip()
    prompt = _text(args, "prompt")
    if prompt:
        options["prompt"] = prompt
    return TranscribeArgs(model=model, audio=audio, options=options)


@dataclass
class SpeechArgs:
    model: ModelStatus
    text: str
    voice: str | None
    format: str
    speed: float | None


def parse_txt2speech(models: Models, args: dict[str, Any]) -> SpeechArgs:
    _check_keys(args, {"model", "input", "voice", "format", "speed"})
    model = pick_model(models, args, kind="tts")
    text = _text(args, "input", required=True)
    assert text is not None
    if len(text) > MAX_SPEECH_CHARS:
        raise ArgumentError("input", f"is longer than {MAX_SPEECH_CHARS} characters")
    voice = args.get("voice")
    if voice is not None and (not isinstance(voice, str) or not voice.strip() or len(voice) > 200):
        raise ArgumentError("voice", "must be a voice name")
    fmt = args.get("format", "wav")
    if fmt not in SPEECH_FORMATS:
        raise ArgumentError("format", f"must be one of {', '.join(SPEECH_FORMATS)}")
    speed = _number(args, "speed", 0.25, 4.0)
    return SpeechArgs(model=model, text=text, voice=voice, format=fmt, speed=speed)
