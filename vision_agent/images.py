"""Turns user-supplied image files or bytes into normalised ImageParts, refusing bad input clearly."""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

from vision_agent.errors import ImageDecodeError, ImageNotFoundError, ImageTooLargeError
from vision_agent.messages import ImagePart

SUPPORTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")


def read_image_file(path: str | Path, *, max_bytes: int, max_pixels: int) -> ImagePart:
    path = Path(path)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise ImageNotFoundError(f"image {path}: not a regular file")
        if size > max_bytes:
            raise ImageTooLargeError(f"image {path}: {size:,} bytes exceeds the limit of {max_bytes:,}")
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageNotFoundError(f"image {path}: no such file") from None
    except PermissionError:
        raise ImageNotFoundError(f"image {path}: permission denied") from None
    except IsADirectoryError:
        raise ImageNotFoundError(f"image {path}: is a directory") from None
    return decode_image(data, source=str(path), max_bytes=max_bytes, max_pixels=max_pixels)


def decode_image(data: bytes, *, source: str, max_bytes: int, max_pixels: int) -> ImagePart:
    """Decode PNG/JPEG/WebP/BMP/GIF bytes: EXIF orientation applied, first frame, RGB."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > max_bytes:
        raise ImageTooLargeError(f"image {source}: {len(data):,} bytes exceeds the limit of {max_bytes:,}")
    if not data:
        raise ImageDecodeError(f"image {source}: empty file")
    try:
        with warnings.catch_warnings():
            # PIL only warns between its soft and hard bomb limits: treat that as a refusal too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            rgb = _decode(data, source, max_pixels)
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


def _decode(data: bytes, source: str, max_pixels: int):
    from PIL import Image, ImageOps

    # Image.open reads only the header, so the pixel count is checked before any decoding.
    with Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS) as image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"image {source}: {width}x{height} is {width * height:,} pixels, over the limit of {max_pixels:,}"
            )
        image.seek(0)  # first frame of an animation
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
