"""Files and bodies a hostile or careless client sends, built in a few milliseconds each, without HTTP.

Images are built from a real digit (uint8 (28, 28), white on black as in MNIST) and upscaled, because
users never send 28x28; the decompression bombs are written chunk by chunk, so a 400-megapixel PNG
costs a few KB here and never a buffer of its size.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

BOUNDARY = "hostile-boundary-7f3a"


def paper(digit: np.ndarray, side: int = 112) -> Image.Image:
    """(28, 28) white-on-black -> dark ink on white paper, side x side, grey ("L")."""
    return Image.fromarray(255 - digit).resize((side, side), Image.Resampling.BICUBIC)


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png16(digit: np.ndarray) -> bytes:
    """A 16-bit greyscale PNG (mode I;16): values 0..65535."""
    wide = np.asarray(paper(digit), dtype=np.uint16) * 257
    return encode(Image.fromarray(wide), "PNG")  # uint16 -> mode I;16


def cmyk_jpeg(digit: np.ndarray) -> bytes:
    """Blue ink on paper as a CMYK JPEG, as print workflows write them."""
    ink = np.asarray(paper(digit), dtype=np.float32) / 255  # 1 = paper
    rgb = np.stack([ink * 255, ink * 255, 80 + ink * 175], axis=-1).astype(np.uint8)
    return encode(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=90)


def palette_with_transparency(digit: np.ndarray) -> bytes:
    """A canvas drawing: black strokes on a fully transparent palette background (index 0)."""
    strokes = np.asarray(paper(digit)) < 128
    indices = np.where(strokes, 1, 0).astype(np.uint8)
    image = Image.frombytes("P", indices.shape[::-1], indices.tobytes())
    image.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)
    return encode(image, "PNG", transparency=0)


def animated_gif(digit: np.ndarray) -> bytes:
    frames = [paper(digit).convert("P"), Image.new("P", (112, 112), 255)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def multipage_tiff(digit: np.ndarray) -> bytes:
    return encode(paper(digit), "TIFF", save_all=True, append_images=[paper(digit)])


def grey(value: int, side: int = 64) -> bytes:
    return encode(Image.new("L", (side, side), value), "PNG")


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def bad_header_checksum(png: bytes) -> bytes:
    """The IHDR chunk's CRC (bytes 29..32 of every PNG) flipped."""
    return png[:29] + bytes(b ^ 0xFF for b in png[29:33]) + png[33:]


def corrupt_middle(data: bytes, length: int = 40) -> bytes:
    """The file with `length` bytes in its middle scrambled: for a PNG, the compressed pixel data."""
    mid = len(data) // 2
    return data[:mid] + bytes(b ^ 0x5A for b in data[mid : mid + length]) + data[mid + length :]


def lab_tiff() -> bytes:
    """A TIFF in the CIE L*a*b* colour mode, which Pillow decodes but cannot turn into grey."""
    return encode(Image.new("LAB", (64, 64)), "TIFF")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int, bit_depth: int = 1) -> bytes:
    """A valid black greyscale PNG of width x height: 1-bit, about 1 KB per 8 megapixels of zeros; or 16-bit."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)  # greyscale, no interlace
    row = bytes(1 + (width * bit_depth + 7) // 8)  # filter byte 0 + the packed pixels
    compressor = zlib.compressobj(9)
    stream = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", stream) + _chunk(b"IEND", b"")


def rle_bmp(width: int, height: int) -> bytes:
    """An 8-bit RLE-compressed BMP of width x height whose data is one end-of-bitmap code: a few hundred bytes."""
    palette = b"".join(bytes((v, v, v, 0)) for v in range(256))
    data = b"\x00\x01"  # end of bitmap
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(data), 2835, 2835, 256, 0)  # 1 = BI_RLE8
    return b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset) + info + palette + data


def many_scans_jpeg(digit: np.ndarray, scans: int) -> bytes:
    """A progressive JPEG whose last scan is repeated until it has `scans` scans (header and frame stay valid)."""
    jpeg = encode(paper(digit), "JPEG", progressive=True)
    last_scan = jpeg.rindex(b"\xff\xda")
    body, end = jpeg[last_scan:-2], jpeg[-2:]  # the last scan with its data; EOI
    return jpeg[:-2] + body * (scans - jpeg.count(b"\xff\xda")) + end


def gif_bomb(width: int = 65535, height: int = 65535) -> bytes:
    """A GIF whose header claims a huge screen and image, with one pixel of data."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return screen + image + b"\x3b"


SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="28" height="28"><text x="4" y="24" font-size="24">7</text></svg>'


def multipart(parts: list[tuple[str, bytes, str | None]], boundary: str = BOUNDARY) -> bytes:
    """A multipart/form-data body by hand: (name, content, filename or None for a text field)."""
    lines = []
    for name, content, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        lines.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n")
    return b"".join(lines) + f"--{boundary}--\r\n".encode()
