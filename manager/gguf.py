"""The shape of a GGUF model, read from its file's header: what the GPU estimate needs.

A GGUF file (llama.cpp's format, github.com/ggml-org/ggml docs/gguf.md) starts with
``GGUF``, a version (3), the tensor count and the metadata count, then the metadata:
key, type, value. `read_shape` walks the metadata (skipping the tokenizer's long
arrays) for the architecture's layer count, embedding length, head counts and key/value
lengths; the weights' size is the file's size. Blocking file reads: call it at start-up
or through `asyncio.to_thread`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY = 8, 9
_MAX_KEYS = 100_000


class GgufError(ValueError):
    """The file is not a GGUF file this reader understands."""


@dataclass(frozen=True)
class GgufShape:
    """What the estimate needs of a GGUF model (`manager.budget.llama_cpp_mib`)."""

    file_bytes: int
    layers: int
    """``<arch>.block_count``: the repeating layers (llama.cpp's -ngl counts these, plus one
    for the output layer)."""
    kv_heads: int
    key_length: int
    value_length: int


def _read(f: BinaryIO, fmt: str) -> int | float | bool:
    size = struct.calcsize("<" + fmt)
    data = f.read(size)
    if len(data) != size:
        raise GgufError("the file ends inside its metadata")
    value: int | float | bool = struct.unpack("<" + fmt, data)[0]
    return value


def _string(f: BinaryIO) -> str:
    length = int(_read(f, "Q"))
    data = f.read(length)
    if len(data) != length:
        raise GgufError("the file ends inside its metadata")
    return data.decode("utf-8", "replace")


def _value(f: BinaryIO, kind: int) -> object:
    if kind in _SCALARS:
        return _read(f, _SCALARS[kind])
    if kind == _STRING:
        return _string(f)
    if kind == _ARRAY:
        item, count = int(_read(f, "I")), int(_read(f, "Q"))
        if item in _SCALARS:  # skipped: a tokenizer's scores or types
            f.seek(count * struct.calcsize("<" + _SCALARS[item]), 1)
        else:
            for _ in range(count):
                _value(f, item)
        return None
    raise GgufError(f"unknown metadata type {kind}")


def read_metadata(path: str | Path) -> dict[str, object]:
    """The file's scalar and string metadata (arrays are skipped). Raises GgufError or OSError."""
    with Path(path).open("rb") as f:
        if f.read(4) != b"GGUF":
            raise GgufError("not a GGUF file (no GGUF magic)")
        version = int(_read(f, "I"))
        if version < 2:
            raise GgufError(f"GGUF version {version} is too old")
        _read(f, "Q")  # tensors
        count = int(_read(f, "Q"))
        if count > _MAX_KEYS:
            raise GgufError(f"{count} metadata keys: not a sane GGUF header")
        meta: dict[str, object] = {}
        for _ in range(count):
            key = _string(f)
            meta[key] = _value(f, int(_read(f, "I")))
        return meta


def read_shape(path: str | Path) -> GgufShape:
    """The model's shape from its GGUF header. Raises GgufError or OSError."""
    meta = read_metadata(path)
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise GgufError("no general.architecture in the metadata")

    def number(key: str, default: int | None = None) -> int:
        value = meta.get(f"{arch}.{key}", default)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise GgufError(f"no usable {arch}.{key} in the metadata")
        return value

    embedding, heads = number("embedding_length"), number("attention.head_count")
    head = embedding // heads
    return GgufShape(
        file_bytes=Path(path).stat().st_size,
        layers=number("block_count"),
        kv_heads=number("attention.head_count_kv", heads),
        key_length=number("attention.key_length", head),
        value_length=number("attention.value_length", head),
    )
