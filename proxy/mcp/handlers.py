"""What each MCP tool does: build the OpenAI request, call the model, shape the result.

Each ``run_*`` takes the proxy's context, the checked arguments (`proxy.mcp.tools`), a
`Progress` and the proxy's public address for image links, and returns a
``CallToolResult``. The result's ``structured_content`` carries the metadata: the
model, the timings (``waited_s`` for the lease including any swap, ``loaded_s`` when
the call waited for a load, ``ran_s`` on the model server) and, for pictures, the
seed, the size and the URLs. Failures raise `ToolFailure` / `ProxyError`;
`proxy.mcp.server` turns them into error results.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
import secrets
from typing import Any

import orjson
from mcp import types

from proxy import keys
from proxy.audio import FORMAT_EXT, closed_wav, sniff_audio, wav_seconds
from proxy.context import ProxyContext
from proxy.errors import UpstreamError
from proxy.keys import visible
from proxy.mcp.calls import Answer, call_model
from proxy.mcp.picture import (
    INLINE_LIMIT,
    data_url,
    picture_content,
    read_image,
)
from proxy.mcp.progress import RESIDENT, Progress
from proxy.mcp.tools import (
    ArgumentError,
    ChatArgs,
    EditArgs,
    EmbedArgs,
    ImageArgs,
    SpeechArgs,
    TranscribeArgs,
    VisionArgs,
)
from proxy.modelcall import ModelCall
from proxy.speech import (
    AUDIO_PATH,
    AudioArgumentError,
    Segment,
    multipart,
    read_audio,
    read_transcript,
    transcription_form,
)
from wire.model_server import AudioProgress, ImageProgress


def _timings(answer: Answer) -> dict[str, float | None]:
    return {
        "waited_s": round(answer.waited, 3),
        "loaded_s": round(answer.loaded, 1) if answer.loaded is not None else None,
        "ran_s": round(answer.ran, 3),
    }


def _chat_result(model: str, answer: Answer) -> types.CallToolResult:
    choices = answer.data.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    message = first.get("message") if isinstance(first, dict) else None
    text = message.get("content") if isinstance(message, dict) else None
    if not isinstance(text, str):
        raise UpstreamError(f"The answer of '{model}' has no message content")
    meta = {
        "model": model,
        "finish_reason": first.get("finish_reason") if isinstance(first, dict) else None,
        "usage": answer.data.get("usage"),
        "timings": _timings(answer),
    }
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        structured_content={"text": text, **meta},
    )


async def run_txt2txt(
    ctx: ProxyContext, args: ChatArgs, progress: Progress
) -> types.CallToolResult:
    model = args.model.id
    body = orjson.dumps({"model": model, "messages": args.messages, **args.options})
    answer = await call_model(
        ctx,
        "txt2txt",
        model,
        "/v1/chat/completions",
        body,
        "application/json",
        progress,
        running=f"{model} is writing",
    )
    return _chat_result(model, answer)


async def run_img2txt(
    ctx: ProxyContext, args: VisionArgs, progress: Progress
) -> types.CallToolResult:
    model = args.model.id
    # Only data URLs, base64 and this proxy's own image URLs: a foreign http(s) URL is
    # refused here (`read_image`), never passed on for the model server to fetch.
    data = await read_image(ctx.images, args.image, "image", ctx.settings.max_upload_bytes)
    url = data_url(data)
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": args.prompt},
                {"type": "image_url", "image_url": {"url": url}},
            ],
        }
    ]
    body = orjson.dumps({"model": model, "messages": messages, **args.options})
    if len(body) > ctx.settings.proxy_max_body_bytes:
        raise ArgumentError(
            "image", f"the request is larger than {ctx.settings.proxy_max_body_bytes} bytes"
        )
    answer = await call_model(
        ctx,
        "img2txt",
        model,
        "/v1/chat/completions",
        body,
        "application/json",
        progress,
        running=f"{model} is looking at the picture",
    )
    return _chat_result(model, answer)


def _image_fields(args: ImageArgs, seed: int) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "model": args.model.id,
        "prompt": args.prompt,
        "n": args.n,
        "seed": seed,
        "response_format": "b64_json",
        **args.extra,
    }
    if args.size:
        fields["size"] = args.size
    return fields


def _store(ctx: ProxyContext, answer: Answer, model: str, owner: str) -> list[tuple[str, str]]:
    """Keep each picture of an images answer as `owner`'s; (file name, base64) pairs.
    Blocking."""
    items = answer.data.get("data")
    if not isinstance(items, list) or not items:
        raise UpstreamError(f"The images answer of '{model}' has no pictures", code="bad_image")
    out = []
    for item in items:
        b64 = item.get("b64_json") if isinstance(item, dict) else None
        if not isinstance(b64, str):
            raise UpstreamError(f"A picture from '{model}' has no b64_json", code="bad_image")
        try:
            raw = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise UpstreamError(
                f"A picture from '{model}' is not base64", code="bad_image"
            ) from exc
        out.append((ctx.images.put(raw, owner), b64))
    return out


async def _picture_result(
    ctx: ProxyContext, args: ImageArgs, seed: int, answer: Answer, base_url: str | None
) -> types.CallToolResult:
    model = args.model.id
    pictures = await asyncio.to_thread(_store, ctx, answer, model, keys.current().name)
    urls = [f"{base_url}/images/{name}" for name, _ in pictures] if base_url else []
    size = (
        answer.data.get("size") or args.size or (args.model.sizes[0] if args.model.sizes else None)
    )
    meta = {
        "model": model,
        "seed": seed,
        "size": size,
        "n": len(pictures),
        "urls": urls,
        "timings": _timings(answer),
    }
    summary = f"{len(pictures)} picture(s) of {size} from {model} (seed {seed})" + (
        "" if not urls else ":\n" + "\n".join(urls)
    )
    content: list[Any] = [types.TextContent(type="text", text=summary)]
    content += picture_content(pictures, base_url)
    return types.CallToolResult(content=content, structured_content=meta)


async def run_txt2img(
    ctx: ProxyContext, args: ImageArgs, progress: Progress, base_url: str | None
) -> types.CallToolResult:
    seed = args.seed if args.seed is not None else secrets.randbelow(2**32)
    model = args.model.id
    body = orjson.dumps(_image_fields(args, seed))
    answer = await call_model(
        ctx,
        "txt2img",
        model,
        "/v1/images/generations",
        body,
        "application/json",
        progress,
        running=f"{model} is painting {args.n} picture(s)",
        steps=ImageProgress,
    )
    return await _picture_result(ctx, args, seed, answer, base_url)


async def run_img2img(
    ctx: ProxyContext, args: EditArgs, progress: Progress, base_url: str | None
) -> types.CallToolResult:
    limit = ctx.settings.max_upload_bytes
    files = {"image": await read_image(ctx.images, args.image, "image", limit)}
    if args.mask is not None:
        files["mask"] = await read_image(ctx.images, args.mask, "mask", limit)
    if sum(map(len, files.values())) > limit:
        raise ArgumentError("mask", f"image and mask together are larger than {limit} bytes")
    seed = args.seed if args.seed is not None else secrets.randbelow(2**32)
    model = args.model.id
    body, ctype = multipart(_image_fields(args, seed), {k: (k, v) for k, v in files.items()})
    answer = await call_model(
        ctx,
        "img2img",
        model,
        "/v1/images/edits",
        body,
        ctype,
        progress,
        running=f"{model} is editing the picture",
        steps=ImageProgress,
    )
    return await _picture_result(ctx, args, seed, answer, base_url)


def _vectors(answer: Answer, model: str, count: int) -> list[list[float]]:
    items = answer.data.get("data")
    if not isinstance(items, list) or len(items) != count:
        raise UpstreamError(f"The embeddings answer of '{model}' has no {count} vector(s)")
    ordered = sorted(items, key=lambda i: i.get("index", 0) if isinstance(i, dict) else 0)
    vectors = [i.get("embedding") if isinstance(i, dict) else None for i in ordered]
    if not all(
        isinstance(v, list) and v and all(isinstance(x, float | int) for x in v) for v in vectors
    ):
        raise UpstreamError(f"The embeddings answer of '{model}' has a vector that is not numbers")
    return [[float(x) for x in v] for v in vectors if isinstance(v, list)]


def cosine(a: list[float], b: list[float]) -> float:
    """The cosine similarity of two vectors (0 when either is all zeros)."""
    norm = math.sqrt(math.fsum(x * x for x in a) * math.fsum(y * y for y in b))
    return math.fsum(x * y for x, y in zip(a, b, strict=True)) / norm if norm else 0.0


async def run_embed(ctx: ProxyContext, args: EmbedArgs, progress: Progress) -> types.CallToolResult:
    """The vectors of `args.texts` (structured: `embeddings`, in order) and, for two texts
    or more, their cosine similarities (structured: `similarity`, a matrix; in the text,
    one row per text rounded to 3 decimals). The text never carries the vectors: an
    agent reads how the texts relate; a program reads the vectors."""
    model = args.model.id
    body = orjson.dumps({"model": model, "input": args.texts, "encoding_format": "float"})
    answer = await call_model(
        ctx,
        "embed",
        model,
        "/v1/embeddings",
        body,
        "application/json",
        progress,
        running=f"{model} is embedding {len(args.texts)} text(s)",
    )
    vectors = _vectors(answer, model, len(args.texts))
    dims = len(vectors[0])
    lines = [f"{len(vectors)} embedding(s) of {dims} dimensions from {model}."]
    meta: dict[str, Any] = {
        "model": model,
        "dimensions": dims,
        "embeddings": vectors,
        "usage": answer.data.get("usage"),
        "timings": _timings(answer),
    }
    if len(vectors) > 1:
        matrix = [[round(cosine(a, b), 4) for b in vectors] for a in vectors]
        meta["similarity"] = matrix
        lines.append("Cosine similarity (row i, column j: text i with text j):")
        lines += [f"[{i + 1}] " + " ".join(f"{x:.3f}" for x in row) for i, row in enumerate(matrix)]
    return types.CallToolResult(
        content=[types.TextContent(type="text", text="\n".join(lines))],
        structured_content=meta,
    )


def _hosts_text(row: dict[str, Any]) -> str:
    """A model's hosts: `*` where it is resident, `~` where it loads, `(away)` where the host
    is away (the web UI's /models column says the same)."""

    def one(host: str) -> str:
        if host in row["away_on"]:
            return f"{host} (away)"
        if host in row["resident_on"]:
            return f"{host}*"
        return f"{host}~" if host in row["loading_on"] else host

    return " ".join(one(h) for h in row["hosts"])


async def run_list_models(ctx: ProxyContext) -> types.CallToolResult:
    models = visible(await ctx.manager.models(max_age=0.5))
    rows: list[dict[str, Any]] = []
    for name in sorted(models):
        m = models[name]
        usual = ctx.feed.usual_load(name)
        row: dict[str, Any] = {
            "id": name,
            "type": m.type,
            "state": m.state,
            "loaded": m.state in RESIDENT,
            "vision": bool(m.vision),
            "usual_load_s": round(usual, 1) if usual is not None else None,
            "waiting": m.waiting,
            "description": m.description,
        }
        if m.type == "image":
            row["sizes"] = m.sizes
            row["max_n"] = m.max_n
        if m.hosts:  # several GPU hosts (docs/hosts.md)
            row["hosts"] = m.hosts
            row["resident_on"] = m.resident_on or []
            row["loading_on"] = m.loading_on or []
            row["away_on"] = m.away_on or []
        rows.append(row)
    resident = [r["id"] for r in rows if r["loaded"]]
    lines = [f"loaded now: {', '.join(resident) or 'nothing'}"]
    for r in rows:
        kind = "text+vision" if r["vision"] else r["type"]
        load = (
            f"usually loads in ~{r['usual_load_s']:.0f} s"
            if r["usual_load_s"]
            else "load time not seen yet"
        )
        where = f" on {_hosts_text(r)}" if r.get("hosts") else ""
        lines.append(
            f"- {r['id']} [{kind}] {r['state']}{where}; {load}. {r['description']}".rstrip()
        )
    return types.CallToolResult(
        content=[types.TextContent(type="text", text="\n".join(lines))],
        structured_content={"resident": resident, "models": rows},
    )


async def run_speech2txt(
    ctx: ProxyContext, args: TranscribeArgs, progress: Progress
) -> types.CallToolResult:
    """Transcribe through the audio server's stream: one progress notification per
    segment ("N s of M s", rising with ``end / duration``)."""
    model = args.model.id
    assert ctx.audio is not None
    limit = ctx.settings.max_upload_bytes
    try:
        audio = await read_audio(ctx.audio, args.audio, "audio", limit, keys.current())
    except AudioArgumentError as exc:
        raise ArgumentError(exc.param, exc.message) from exc
    body, ctype = transcription_form(model, audio, args.options)

    async def said(segment: Segment, fraction: float | None) -> None:
        if fraction is not None:
            await progress.say(
                80.0 + 19.0 * fraction, f"{model} is transcribing: {segment.end:.0f} s done"
            )
        else:
            await progress.say(80.0, f"{model} is transcribing: segment {segment.id + 1}")

    async def read(call: ModelCall) -> dict[str, Any]:
        return (await read_transcript(call, said)).result()

    answer = await call_model(
        ctx,
        "speech2txt",
        model,
        "/v1/audio/transcriptions",
        body,
        ctype,
        progress,
        running=f"{model} is listening",
        read_stream=read,
    )
    text = str(answer.data.get("text") or "")
    meta = {"model": model, **answer.data, "timings": _timings(answer)}
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text or "(no speech recognised)")],
        structured_content=meta,
    )


async def run_txt2speech(
    ctx: ProxyContext, args: SpeechArgs, progress: Progress, base_url: str | None
) -> types.CallToolResult:
    """Speak `args.text`; keep the audio in the proxy's audio store as the caller's and
    answer with it inline (while small) and a link to it."""
    model = args.model.id
    assert ctx.audio is not None
    fields: dict[str, Any] = {"model": model, "input": args.text, "response_format": args.format}
    if args.voice:
        fields["voice"] = args.voice
    if args.speed is not None:
        fields["speed"] = args.speed
    answer = await call_model(
        ctx,
        "txt2speech",
        model,
        "/v1/audio/speech",
        orjson.dumps(fields),
        "application/json",
        progress,
        running=f"{model} is speaking",
        steps=AudioProgress,
        step_word="sentence",
        raw=True,
    )
    raw = closed_wav(answer.raw)  # streamed WAV declares open sizes: set them
    ext = sniff_audio(raw)
    if ext != FORMAT_EXT[args.format]:
        raise UpstreamError(
            f"'{model}' answered {ext or 'no known'} audio when {args.format} was asked for",
            code="bad_audio",
        )
    name = await asyncio.to_thread(ctx.audio.put, raw, keys.current().name)
    media = ctx.audio.MEDIA[ext]
    url = f"{base_url}{AUDIO_PATH}{name}" if base_url else None
    seconds = wav_seconds(raw) if ext == "wav" else None
    meta: dict[str, Any] = {
        "model": model,
        "voice": args.voice,
        "format": args.format,
        "bytes": len(raw),
        "duration_s": round(seconds, 3) if seconds is not None else None,
        "url": url,
        "timings": _timings(answer),
    }
    how_long = f"{seconds:.1f} s of " if seconds is not None else ""
    summary = f"{how_long}{args.format} speech from {model}" + (f": {url}" if url else "")
    content: list[Any] = [types.TextContent(type="text", text=summary)]
    encoded = base64.b64encode(raw).decode()
    if len(encoded) <= INLINE_LIMIT * 3:  # MCP clients take 1 MiB per event
        content.append(types.AudioContent(type="audio", data=encoded, mime_type=media))
    if url:
        content.append(
            types.ResourceLink(
                type="resource_link",
                uri=url,
                name="speech",
                mime_type=media,
                description="The audio on the proxy, for this API key only (expires; see "
                "HOMELAB_AUDIO_TTL).",
            )
        )
    return types.CallToolResult(content=content, structured_content=meta)
