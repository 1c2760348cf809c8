import io
import time

import pytest
from PIL import Image

from tests.helpers import png_bytes
from vision_agent.core.images import decode_image, read_image_file
from vision_agent.errors import ImageDecodeError, ImageNotFoundError, ImageTooLargeError

LIMITS = {"max_bytes": 10_000_000, "max_pixels": 4_000_000}


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF"])
def test_supported_formats_decode_to_rgb(fmt):
    image = decode_image(png_bytes(size=(30, 20), color=(0, 0, 255), fmt=fmt), source=fmt, **LIMITS)
    assert (image.width, image.height) == (30, 20)
    assert len(image.rgb) == 30 * 20 * 3
    r, g, b = image.rgb[:3]
    assert b > 200 and r < 40 and g < 40


def test_gif_first_frame_is_used():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    image = decode_image(buffer.getvalue(), source="anim", **LIMITS)
    assert image.rgb[0] > 200 and image.rgb[1] < 50


def test_exif_orientation_is_applied():
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    Image.new("RGB", (40, 10), (9, 9, 9)).save(buffer, format="JPEG", exif=exif)
    image = decode_image(buffer.getvalue(), source="exif", **LIMITS)
    assert (image.width, image.height) == (10, 40)


def test_transparency_is_composited_over_white():
    image = decode_image(png_bytes(mode="RGBA", color=(0, 0, 0, 0)), source="alpha", **LIMITS)
    assert image.rgb[:3] == b"\xff\xff\xff"


def test_same_pixels_same_hash_whatever_the_encoding():
    a = decode_image(png_bytes(fmt="PNG"), source="a", **LIMITS)
    b = decode_image(png_bytes(fmt="BMP"), source="b", **LIMITS)
    c = decode_image(png_bytes(color=(1, 2, 3)), source="c", **LIMITS)
    assert a.sha256 == b.sha256 != c.sha256


def test_decompression_bomb_refused_before_decoding():
    # A 5000x5000 black PNG is a few tens of KB but 75 MB decoded; the limit here is 4 MP.
    bomb = png_bytes(size=(5000, 5000), color=(0, 0, 0))
    assert len(bomb) < 200_000
    started = time.perf_counter()
    with pytest.raises(ImageTooLargeError, match="25,000,000 pixels, over the limit of 4,000,000"):
        decode_image(bomb, source="bomb", **LIMITS)
    assert time.perf_counter() - started < 1.0


def test_file_too_many_bytes_refused(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(png_bytes() + b"\0" * 2000)
    with pytest.raises(ImageTooLargeError, match="larger than the limit"):
        read_image_file(path, max_bytes=1000, max_pixels=10**6)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"this is not an image", "not a supported image"),
        (b"", "empty"),
        (png_bytes()[:60], "corrupt or truncated"),
    ],
)
def test_bad_bytes_refused(data, message):
    with pytest.raises(ImageDecodeError, match=message):
        decode_image(data, source="bad", **LIMITS)


def test_missing_and_directory(tmp_path):
    with pytest.raises(ImageNotFoundError, match="no such file"):
        read_image_file(tmp_path / "nope.png", **LIMITS)
    with pytest.raises(ImageNotFoundError, match="not a regular file"):
        read_image_file(tmp_path, **LIMITS)
