"""Checking what clients send (sizes, uploaded images, masks) and encoding what they get.

Pure functions on bytes and PIL images, no torch. Each raises InvalidRequest
(or UploadTooLarge) with the OpenAI `param` it is about.

Mask convention: an uploaded mask with an alpha channel follows OpenAI
(transparent pixels are the area to edit); a mask without alpha follows
diffusers (white = repaint, black = keep). Either way the result handed to
the pipeline is mode 'L' with white = repaint.
"""

from __future__ import annotations

import base64
import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from imageserver.errors import InvalidRequest, UploadTooLarge
from imageserver.settings import parse_size

MAX_INPUT_SIDE = 4096
"""Largest width or height of an uploaded image; bigger ones are refused before decoding."""

OUTPUT_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def choose_size(requested: str | None, allowed: list[tuple[int, int]]) -> tuple[int, int]:
    """The (width, height) to generate: the first allowed size for None/'auto', else the
    requested one if it is well formed, a multiple of 8 and allowed."""
    if requested is None or requested.strip() in ("", "auto"):
        return allowed[0]
    try:
        width, height = parse_size(requested)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="size", code="invalid_size") from exc
    if width % 8 or height % 8:
        raise InvalidRequest(
            f"size {requested} is not allowed: width and height must be multiples of 8",
            param="size",
            code="invalid_size",
        )
    if (width, height) not in allowed:
        names = ", ".join(f"{w}x{h}" for w, h in allowed)
        raise InvalidRequest(
            f"size {requested} is not offered by this model; choose one of: {names}",
            param="size",
            code="invalid_size",
        )
    return width, height


UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP")
"""The only formats an uploaded image or mask is decoded as."""


def decode_upload(data: bytes, *, param: str, max_bytes: int) -> Image.Image:
    """Decode an uploaded PNG/JPEG/WebP. Raises UploadTooLarge or InvalidRequest.

    The pixel dimensions are checked (at most MAX_INPUT_SIDE a side) before
    the pixels are decoded, so a small file cannot expand into gigabytes.
    """
    if len(data) > max_bytes:
        raise UploadTooLarge(
            f"'{param}' is {len(data)} bytes; the limit is {max_bytes} bytes", param=param
        )
    if not data:
        raise InvalidRequest(f"'{param}' is empty", param=param, code="invalid_image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Only the formats we promise: Pillow's other decoders (dozens, some rarely
            # exercised) never see client bytes.
            image: Image.Image = Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS)
            width, height = image.size
            if width > MAX_INPUT_SIDE or height > MAX_INPUT_SIDE:
                raise InvalidRequest(
                    f"'{param}' is {width}x{height}; at most {MAX_INPUT_SIDE} pixels a side are accepted",
                    param=param,
                    code="invalid_image",
                )
            image.load()
            image = ImageOps.exif_transpose(image)
    except InvalidRequest:
        raise
    except UnidentifiedImageError as exc:
        raise InvalidRequest(
            f"'{param}' could not be decoded as an image: it is not a PNG, JPEG or WebP file",
            param=param,
            code="invalid_image",
        ) from exc
    except (OSError, ValueError, SyntaxError, Warning) as exc:
        raise InvalidRequest(
            f"'{param}' could not be decoded as an image (PNG, JPEG or WebP): {exc}",
            param=param,
            code="invalid_image",
        ) from exc
    except Image.DecompressionBombError as exc:
        raise InvalidRequest(
            f"'{param}' is too large to decode; at most {MAX_INPUT_SIDE} pixels a side are accepted",
            param=param,
            code="invalid_image",
        ) from exc
    return image


def prepare_image(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The edit input as RGB at the output size (transparent areas become white)."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    rgb = image.convert("RGB")
    return rgb if rgb.size == size else rgb.resize(size, Image.Resampling.LANCZOS)


def prepare_mask(
    mask: Image.Image, image_size: tuple[int, int], size: tuple[int, int]
) -> Image.Image:
    """The mask as mode 'L' (white = repaint) at the output size.

    Raises InvalidRequest if it is not the same size as the uploaded image.
    """
    if mask.size != image_size:
        raise InvalidRequest(
            f"mask is {mask.size[0]}x{mask.size[1]} but image is {image_size[0]}x{image_size[1]}; "
            "they must be the same size",
            param="mask",
            code="invalid_mask",
        )
    has_alpha = mask.mode in ("RGBA", "LA", "PA") or (
        mask.mode == "P" and "transparency" in mask.info
    )
    if has_alpha:
        alpha = mask.convert("RGBA").getchannel("A")
        grey = ImageOps.invert(alpha)  # transparent (0) -> 255 = repaint
    else:
        grey = mask.convert("L")
    return grey if grey.size == size else grey.resize(size, Image.Resampling.NEAREST)


def encode_image(image: Image.Image, output_format: str) -> str:
    """Base64 of the image in `output_format` ('png', 'jpeg' or 'webp')."""
    buffer = io.BytesIO()
    fmt = OUTPUT_FORMATS[output_format]
    image = image.convert("RGB") if fmt == "JPEG" else image
    image.save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
