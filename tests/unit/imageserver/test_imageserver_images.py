"""Sizes, uploads, masks and encodings."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
from PIL import Image

from imageserver.errors import InvalidRequest, UploadTooLarge
from imageserver.images import (
    MAX_INPUT_SIDE,
    choose_size,
    decode_upload,
    encode_image,
    prepare_image,
    prepare_mask,
)

ALLOWED = [(1024, 1024), (768, 512)]


def png(size, mode="RGB", color=(1, 2, 3)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_choose_size() -> None:
    assert choose_size(None, ALLOWED) == (1024, 1024)
    assert choose_size("auto", ALLOWED) == (1024, 1024)
    assert choose_size("768x512", ALLOWED) == (768, 512)


@pytest.mark.parametrize(
    "size,fragment",
    [
        ("769x512", "multiples of 8"),
        ("512x512", "choose one of"),
        ("1024", "WIDTHxHEIGHT"),
        ("-8x8", "WIDTHxHEIGHT"),
    ],
)
def test_choose_size_refuses(size: str, fragment: str) -> None:
    with pytest.raises(InvalidRequest, match=fragment) as info:
        choose_size(size, ALLOWED)
    assert info.value.param == "size"


def test_decode_upload_round_trips_and_limits() -> None:
    image = decode_upload(png((30, 20)), param="image", max_bytes=10_000)
    assert image.size == (30, 20)
    with pytest.raises(UploadTooLarge):
        decode_upload(png((30, 20)), param="image", max_bytes=10)
    with pytest.raises(InvalidRequest, match="could not be decoded"):
        decode_upload(b"GIF89a-but-not-really", param="mask", max_bytes=10_000)
    truncated = png((64, 64), color=(9, 9, 9))[:-30]
    with pytest.raises(InvalidRequest):
        decode_upload(truncated, param="image", max_bytes=10_000)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge image: it must be refused before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def test_a_huge_claimed_size_is_refused_before_decoding() -> None:
    data = _png_header_only(60000, 60000)
    with pytest.raises(InvalidRequest, match=f"at most {MAX_INPUT_SIDE}"):
        decode_upload(data, param="image", max_bytes=10_000)


def test_prepare_image_flattens_alpha_and_resizes() -> None:
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    out = prepare_image(rgba, (16, 8))
    assert out.mode == "RGB" and out.size == (16, 8) and out.getpixel((0, 0)) == (255, 255, 255)


def test_mask_alpha_follows_openai_and_grey_follows_diffusers() -> None:
    alpha = Image.new("RGBA", (4, 2), (0, 0, 0, 255))
    alpha.putpixel((0, 0), (0, 0, 0, 0))
    out = prepare_mask(alpha, (4, 2), (4, 2))
    assert out.mode == "L" and out.getpixel((0, 0)) == 255 and out.getpixel((1, 0)) == 0
    grey = Image.new("L", (4, 2), 0)
    grey.putpixel((3, 1), 255)
    out = prepare_mask(grey, (4, 2), (8, 4))
    assert out.size == (8, 4) and out.getpixel((7, 3)) == 255 and out.getpixel((0, 0)) == 0


def test_mask_must_match_the_image() -> None:
    with pytest.raises(InvalidRequest, match="same size") as info:
        prepare_mask(Image.new("L", (4, 4)), (4, 2), (8, 8))
    assert info.value.param == "mask" and info.value.code == "invalid_mask"


@pytest.mark.parametrize("fmt,pil", [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_encode_image(fmt: str, pil: str) -> None:
    decoded = Image.open(io.BytesIO(base64.b64decode(encode_image(Image.new("RGB", (8, 16)), fmt))))
    assert decoded.format == pil and decoded.size == (8, 16)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "ICO"])
def test_only_png_jpeg_and_webp_are_decoded(fmt: str) -> None:
    """A real file of another format Pillow knows is refused before any decoder runs."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(buf, format=fmt)
    with pytest.raises(InvalidRequest, match="not a PNG, JPEG or WebP"):
        decode_upload(buf.getvalue(), param="mask", max_bytes=100_000)
    for ok in ("PNG", "JPEG", "WEBP"):
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (1, 2, 3)).save(buf, format=ok)
        assert decode_upload(buf.getvalue(), param="image", max_bytes=100_000).size == (16, 16)
