"""Turns user-supplied image files or bytes into normalised ImageParts, refusing bad input clearly.

Budgets hold before any pixel is decoded: bytes per file, pixels per image (read from the header, so a
decompression bomb is refused at once) and pixels per request (`check_request`, over every attachment's
header). A decoded image larger than `max_kept_pixels` is scaled down: no model needs more, and fifty
large screenshots must not take gigabytes.
"""

from __future__ import annotations

import hashlib
import io
import math
import warnings
from pathlib import Path

from vision_agent.core.messages import ImagePart
from vision_agent.errors import ImageDecodeError, ImageNotFoundError, ImageTooLargeError
from vision_agent.files import display_name, read_regular

SUPPORTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")


def read_image_file(
    path: str | Path, *, max_bytes: int, max_pixels: int, max_kept_pixels: int | None = None
) -> ImagePart:
    data = read_image_bytes(path, max_bytes=max_bytes)
    return decode_image(
        data, source=display_name(path), max_bytes=max_bytes, max_pixels=max_pixels, max_kept_pixels=max_kept_pixels
    )


def read_image_bytes(path: str | Path, *, max_bytes: int) -> bytes:
    return read_regular(path, max_bytes, what="image", error=ImageNotFoundError, too_large=ImageTooLargeError)


def load_images(inputs: list[str | bytes], limits) -> list[ImagePart]:
    """Images from file paths, `data:image/...;base64,...` URIs and raw bytes (a protocol request's), within
    `limits` (ImageSettings): every input read first, then the request's pixel budget, then decoding."""
    sources = []
    for number, item in enumerate(inputs, 1):
        if isinstance(item, bytes):
            sources.append((f"<image {number}>", item))
        elif item.startswith("data:"):
            sources.append((f"<image {number}>", data_uri_bytes(item, max_bytes=limits.max_bytes)))
        else:
            sources.append((display_name(item), read_image_bytes(item, max_bytes=limits.max_bytes)))
    return decode_all(sources, limits)


def decode_all(sources: list[tuple[str, bytes]], limits) -> list[ImagePart]:
    """(name, bytes) pairs decoded, after the pixel budget of all of them together is checked from headers."""
    check_request([header_pixels(data, name) for name, data in sources], limits.max_total_pixels)
    images = []
    while sources:  # popped, so that each file's encoded bytes are freed once it is decoded
        name, data = sources.pop(0)
        images.append(
            decode_image(
                data,
                source=name,
                max_bytes=limits.max_bytes,
                max_pixels=limits.max_pixels,
                max_kept_pixels=limits.max_kept_pixels,
            )
        )
    return images


def data_uri_bytes(uri: str, *, max_bytes: int) -> bytes:
    """The bytes of a base64 `data:` URI; its size is checked before decoding, its media type is not trusted
    (decoding says what the bytes are)."""
    import base64
    import binascii

    header, comma, payload = uri.partition(",")
    if not comma or not header.endswith(";base64"):
        raise ImageDecodeError("an image data URI must look like data:image/png;base64,<base64 data>")
    if len(payload) // 4 * 3 > max_bytes + 3:
        raise ImageTooLargeError(f"an image data URI of {len(payload):,} characters exceeds {max_bytes:,} bytes")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageDecodeError("an image data URI whose data is not valid base64") from None


def header_pixels(data: bytes, source: str) -> int:
    """Width × height from the image header alone (0 when it is not an image: decoding will say so)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS) as image:
            width, height = image.size
    except Exception:  # Pillow raises many kinds on garbage; decode_image reports it properly
        return 0
    return width * height


def check_request(pixels: list[int], max_total_pixels: int) -> None:
    """Refuse a request whose images together exceed the budget, before any of them is decoded."""
    total = sum(pixels)
    if total > max_total_pixels:
        raise ImageTooLargeError(
            f"{len(pixels)} images of {total:,} pixels in all exceed the limit of {max_total_pixels:,} per request"
        )


def decode_image(
    data: bytes, *, source: str, max_bytes: int, max_pixels: int, max_kept_pixels: int | None = None
) -> ImagePart:
    """Decode PNG/JPEG/WebP/BMP/GIF bytes: EXIF orientation applied, first frame, RGB, at most
    `max_kept_pixels` (scaled down, aspect kept) when that is given."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > max_bytes:
        raise ImageTooLargeError(f"image {source}: {len(data):,} bytes exceeds the limit of {max_bytes:,}")
    if not data:
        raise ImageDecodeError(f"image {source}: empty file")
    try:
        with warnings.catch_warnings():
            # PIL only warns between its soft and hard bomb limits: treat that as a refusal too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            rgb = _decode(data, source, max_pixels, max_kept_pixels)
    except (ImageTooLargeError, ImageDecodeError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"image {source}: refused as a decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(
            f"image {source}: not a supported image (expected PNG, JPEG, WebP, BMP or GIF)"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageDecodeError(f"image {source}: corrupt or truncated image ({exc})") from None

    pixels = rgb.tobytes()
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode() + pixels).hexdigest()
    return ImagePart(sha256=digest, width=rgb.width, height=rgb.height, rgb=pixels, source=source)


def _decode(data: bytes, source: str, max_pixels: int, max_kept_pixels: int | None):
    from PIL import Image, ImageOps

    # Image.open reads only the header, so the pixel count is checked before any decoding.
    with Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS) as opened:
        image: Image.Image = opened  # replaced below by decoded copies (plain Images, not ImageFiles)
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"image {source}: {width}x{height} is {width * height:,} pixels, over the limit of {max_pixels:,}"
            )
        image.seek(0)  # first frame of an animation
        if max_kept_pixels and width * height > max_kept_pixels:
            scale = math.sqrt(max_kept_pixels / (width * height))
            target = (max(1, int(width * scale)), max(1, int(height * scale)))
            image.draft("RGB", target)  # JPEG decodes at a reduced size directly
            image = image.copy() if image.mode != "P" else image.convert("RGBA")
            image.thumbnail(target, Image.Resampling.LANCZOS)
        image = ImageOps.exif_transpose(image)
        return _to_rgb(image)


def _to_rgb(image):
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Composite transparency over white, as a viewer would show it.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def encode_png(image: ImagePart) -> bytes:
    """The image as PNG bytes (for tools and for llama-cpp-python's own handlers in tests)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.frombytes("RGB", (image.width, image.height), image.rgb).save(buffer, format="PNG")
    return buffer.getvalue()
