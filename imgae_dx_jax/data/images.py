"""Decode any chest X-ray file to a square single-channel uint8 array.

NIH images are 8-bit grayscale PNGs, but some are RGBA, the bundled sample is RGB, and other
datasets bring palette, 16-bit or JPEG files: all become one 8-bit channel resized to the
training size. Undecodable input raises :class:`ImageDecodeError` with the reason, so that
the pipeline can skip and count it.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image; ``reason`` is a short category for counting."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def to_grayscale_uint8(image: Image.Image) -> Image.Image:
    """Convert a Pillow image of any mode to 8-bit grayscale (``L``).

    16-bit and float images are min-max scaled to the full 8-bit range; alpha is dropped;
    palette and colour images use Pillow's luminance conversion.
    """
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        return Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")
    return image if image.mode == "L" else image.convert("L")


def decode_image(data: bytes, size: int) -> np.ndarray:
    """Decode image bytes to a ``[size, size]`` uint8 array.

    Raises:
        ImageDecodeError: for empty, truncated, corrupt or non-image bytes and images over
            Pillow's decompression-bomb pixel limit.
    """
    if not data:
        raise ImageDecodeError("empty", "zero-byte file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format == "JPEG":
                image.draft("L", (size, size))
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageDecodeError("too_large", str(err)) from None
    except UnidentifiedImageError:
        raise ImageDecodeError("not_an_image", "unrecognised image format") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageDecodeError("corrupt", str(err)) from None
    gray = to_grayscale_uint8(image)
    if gray.size != (size, size):
        gray = gray.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(gray, dtype=np.uint8)
