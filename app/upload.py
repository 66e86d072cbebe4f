"""Upload bytes -> a checked, decoded image: the one way into the service for a client's file.

`open_checked` parses the header only (tens of microseconds, whatever the size) and refuses what is not an
accepted image, or what would cost too much to decode, before any pixel is decoded; `decode_pixels` then decodes it.
app/decoder.py decides where that runs (thumbnails in the batch thread, else a decoder process with hard limits);
app/preprocess.py turns the image into what the network saw in training.

Accepted: PNG, JPEG, WebP, BMP, GIF and TIFF, one frame (a camera's MPO counts as its first frame), at most
`max_pixels`; not a progressive JPEG of more than MAX_JPEG_SCANS scans, nor an RLE-compressed BMP over
MAX_RLE_BMP_PIXELS (Pillow decodes RLE in pure Python: seconds for a few KB).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image, ImageOps, UnidentifiedImageError

from app.errors import ServiceError

ALLOWED_FORMATS: frozenset[str] = frozenset({"PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"})
JPEG_DRAFT_SIDE = 384  # JPEGs decode at the DCT scale (1/2..1/8) keeping this short side: a 10% digit spans ~40 px
MAX_JPEG_SCANS = 64  # a progressive JPEG has ~10; each scan re-walks the whole image, so 1,000 tiny ones cost seconds
MAX_RLE_BMP_PIXELS = 512 * 512  # RLE BMP decodes in pure Python, holding the GIL
BMP_RLE = (1, 2)  # BI_RLE8, BI_RLE4

_SEND = "send a PNG, JPEG, WebP, BMP, GIF or TIFF image"


class ImageError(ServiceError):
    """The upload cannot be turned into a digit; str(exc) is one sentence for the client."""


class UnsupportedImage(ImageError):
    """Empty, not an image, a format or feature not accepted, corrupt or truncated, or several frames."""

    status = 415


class ImageTooLarge(ImageError):
    """More pixels than allowed (judged from the header), or more memory or CPU than a decode may take."""

    status = 413


class NoDigitFound(ImageError):
    """Decoded fine, but nothing digit-like stands out from the background."""

    status = 422


def open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """Parse the header only and check format, size, frames and decoding cost; no pixel is decoded yet."""
    if not data:
        raise UnsupportedImage(f"The upload is empty; {_SEND}.")
    with as_image_error(max_pixels):
        image = Image.open(io.BytesIO(data), formats=sorted(ALLOWED_FORMATS))
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"The image has {width * height:,} pixels ({width}x{height}), more than the limit of {max_pixels:,}."
        )
    # A camera's MPO is a JPEG whose first frame is the photo (the others are previews): keep it.
    if image.format != "MPO" and getattr(image, "is_animated", False):
        raise UnsupportedImage("The image is animated or has several pages; send a single frame.")
    _check_decoding_cost(image, data)
    return image


def _check_decoding_cost(image: Image.Image, data: bytes) -> None:
    """Refuse the few features whose decoding cost does not follow from the pixel count."""
    if image.format in ("JPEG", "MPO"):
        if (scans := jpeg_scans(data)) > MAX_JPEG_SCANS:
            raise UnsupportedImage(
                f"The JPEG has {scans:,} progressive scans, more than the {MAX_JPEG_SCANS} accepted; "
                "save it as a baseline JPEG or a PNG."
            )
    if image.format == "BMP" and image.info.get("compression") in BMP_RLE:
        if image.width * image.height > MAX_RLE_BMP_PIXELS:
            raise UnsupportedImage("RLE-compressed BMP images over 512x512 pixels are not accepted; send a PNG.")


def decoding_bytes(image: Image.Image) -> int:
    """About the most memory decoding and preprocessing an opened image takes: its pixels, and one working copy.

    A JPEG decodes at a reduced scale (see decode_pixels), so its full size would overstate it many times.
    """
    if image.format in ("JPEG", "MPO"):
        scale = 1  # the DCT scale draft() will pick: a power of two keeping the short side >= JPEG_DRAFT_SIDE
        while scale < 8 and min(image.size) // (2 * scale) >= JPEG_DRAFT_SIDE:
            scale *= 2
        pixels = image.width * image.height // (scale * scale)
    else:
        pixels = image.width * image.height
    return 2 * pixels * _BYTES_PER_PIXEL.get(image.mode, 4)


_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "I;16": 2, "I;16B": 2, "I;16L": 2}  # else 4 (Pillow's)


def jpeg_scans(data: bytes) -> int:
    """Start-of-scan markers in a JPEG, walking its segments (a comment or EXIF thumbnail is skipped whole)."""
    pos, scans = 2, 0  # after SOI
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
        elif marker == 0xD9:  # end of image
            break
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # restart markers and TEM carry no length
            pos += 2
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
            if marker == 0xDA:  # a scan: its entropy-coded data runs to the next marker that is not a restart
                scans += 1
                found = _NEXT_MARKER.search(data, pos)
                pos = found.start() if found else len(data)
    return scans


_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # in entropy-coded data 0xFF is followed by 0x00 or RSTn


def decode_pixels(image: Image.Image) -> Image.Image:
    """Decode an opened image's pixels, upright per its EXIF orientation.

    A large JPEG comes back decoded at 1/2..1/8 scale in grey (Pillow's draft): the digit needs far
    fewer pixels than a photo has, and the decode is several times faster.
    """
    with as_image_error():
        image.draft("L", (JPEG_DRAFT_SIDE, JPEG_DRAFT_SIDE))  # no-op except for JPEG
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
    return image


@contextmanager
def as_image_error(max_pixels: int | None = None) -> Iterator[None]:
    """Only ImageError escapes: whatever Pillow raises on a hostile or broken file becomes one."""
    try:
        yield
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # the warning if -W error
        limit = f"; the limit is {max_pixels:,} pixels" if max_pixels else ""
        raise ImageTooLarge(f"The image is too large to decode safely{limit}.") from None
    except MemoryError:
        raise ImageTooLarge(
            "The image needs more memory to decode than an upload may use; send a smaller one."
        ) from None
    except UnidentifiedImageError:
        raise UnsupportedImage(f"The upload is not an image in an accepted format; {_SEND}.") from None
    except Exception:  # malformed data makes decoders raise OSError, SyntaxError, struct.error, IndexError...
        # `from None`, and no reference kept: a traceback's frames would hold the decoded pixels alive
        raise UnsupportedImage("The image data is corrupt or truncated; send the complete file.") from None
