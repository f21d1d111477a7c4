"""Decoding client images: base64 data URIs and uploaded files, checked before any pixel is decoded.

The pixel limit is read from the image header (``Image.open`` is lazy), so a decompression bomb is refused
without allocating it; then the image is decoded fully here, so a truncated or corrupt file fails its own
request with 422 instead of failing a shared model batch later.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from typing import Any

from hsrl_service.errors import ServiceError

__all__ = ["decode_image", "is_data_uri", "parse_data_uri"]

_TOKEN = r"[\w.+-]+"
_DATA_URI = re.compile(rf"^data:(?P<mime>{_TOKEN}/{_TOKEN})?(;{_TOKEN}={_TOKEN})*(?P<b64>;base64)?,", re.ASCII)


def is_data_uri(text: str) -> bool:
    return text.startswith("data:")


def parse_data_uri(text: str, *, where: str) -> bytes:
    """The bytes of a ``data:[mime];base64,...`` URI; 422 when it is not one or the base64 is invalid."""
    match = _DATA_URI.match(text)
    if match is None or match.group("b64") is None:
        raise ServiceError(422, f"{where}: expected a base64 data URI like data:image/png;base64,...", "invalid_image")
    mime = match.group("mime") or ""
    if mime and not mime.startswith("image/"):
        raise ServiceError(422, f"{where}: data URI has type {mime!r}, not an image", "invalid_image")
    try:
        return base64.b64decode(text[match.end() :], validate=True)
    except (binascii.Error, ValueError) as error:
        raise ServiceError(422, f"{where}: invalid base64 ({error})", "invalid_base64") from error


def decode_image(data: bytes, *, max_pixels: int, where: str) -> Any:
    """Decode image bytes to a loaded PIL image; 422 if not an image, 413 if over ``max_pixels``."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ServiceError(422, f"{where}: empty image", "invalid_image")
    try:
        image = Image.open(io.BytesIO(data))  # lazy: reads the header only
    except Image.DecompressionBombError as error:
        raise ServiceError(413, f"{where}: image too large ({error})", "image_too_large") from error
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise ServiceError(422, f"{where}: not a readable image", "invalid_image") from error
    width, height = image.size
    if width * height > max_pixels:
        raise ServiceError(
            413, f"{where}: image is {width}x{height} = {width * height} pixels (limit {max_pixels})", "image_too_large"
        )
    if width < 1 or height < 1:
        raise ServiceError(422, f"{where}: image has no pixels", "invalid_image")
    try:
        image.load()
    except Exception as error:  # PIL raises many types for corrupt data; all mean the same to the client
        raise ServiceError(422, f"{where}: corrupt image data ({type(error).__name__})", "invalid_image") from error
    return image
