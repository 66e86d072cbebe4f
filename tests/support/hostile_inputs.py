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


# --- decode bombs that stay under the pixel cap: cheap to send, dear to decode --------------------------------


def bmp_rle8_bomb(width: int = 6150, rows: int = 6500) -> bytes:
    """An 8-bit RLE BMP (26 KB) of one pixel then end-of-line per row: Pillow's decoder is pure Python and pads
    each line one byte at a time, so it loops width x rows (40 million) times."""
    body = b"\x01\x07\x00\x00" * rows + b"\x00\x01"  # run of 1 pixel, end of line; ...; end of bitmap
    palette = b"".join(bytes((i, i, i, 0)) for i in range(256))
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, rows, 1, 8, 1, len(body), 2835, 2835, 256, 0)  # 1: BI_RLE8
    return b"BM" + struct.pack("<IHHI", offset + len(body), 0, 0, offset) + info + palette + body


def png16_bomb(width: int, height: int) -> bytes:
    """A valid black 16-bit greyscale PNG: 8000 x 5000 (or 40,000,000 x 1) is 80 MB of pixels in about 78 KB."""
    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    compressor = zlib.compressobj(9)
    zeros = bytes(1 << 20)
    row_bytes = 1 + 2 * width
    parts = []
    for _ in range(height):
        remaining = row_bytes
        while remaining:
            parts.append(compressor.compress(zeros[: min(remaining, len(zeros))]))
            remaining -= min(remaining, len(zeros))
    stream = b"".join(parts) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", stream) + _chunk(b"IEND", b"")


def progressive_jpeg_bomb(side: int = 6000, scans: int = 1000) -> bytes:
    """A progressive greyscale JPEG whose first AC scan is repeated `scans` times: each repeat is a few dozen
    bytes (end-of-band runs), yet the decoder walks every block of the whole image once per scan."""
    data = encode(Image.new("L", (side, side), 200), "JPEG", progressive=True, quality=90)
    segments = _jpeg_segments(data)
    ac_first = next(s for s in segments if s[:2] == b"\xff\xda" and s[4] == 1 and s[7] != 0 and s[9] >> 4 == 0)
    at = segments.index(ac_first)
    return b"".join(segments[: at + 1] + [ac_first] * (scans - 1) + segments[at + 1 :])


def _jpeg_segments(data: bytes) -> list[bytes]:
    """A JPEG split into marker segments; an SOS segment keeps its entropy-coded data."""
    segments, at = [data[:2]], 2  # SOI
    while at < len(data):
        marker = data[at + 1]
        if marker == 0xD9:  # EOI
            segments.append(data[at:])
            break
        end = at + 2 + struct.unpack(">H", data[at + 2 : at + 4])[0]
        if marker == 0xDA:  # entropy data runs to the next marker that is not a stuffed 0xFF00 or a restart
            while not (data[end] == 0xFF and data[end + 1] not in (0x00, *range(0xD0, 0xD8))):
                end += 1
        segments.append(data[at:end])
        at = end
    return segments


def webp_lossless(width: int = 8000, height: int = 5000) -> bytes:
    """A 40-megapixel lossless WebP of one colour: a few hundred bytes that decode to 160 MB of RGBA."""
    return encode(Image.new("RGB", (width, height), (250, 250, 250)), "WEBP", lossless=True, quality=0, method=0)


def float_tiff(width: int = 6000, height: int = 6000) -> bytes:
    """A 32-bit float TIFF (mode F), deflated: 144 MB of pixels in a small file."""
    return encode(Image.new("F", (width, height), 0.5), "TIFF", compression="tiff_adobe_deflate")


def padded_png(png: bytes, total_bytes: int) -> bytes:
    """A valid PNG grown to total_bytes by a private ancillary chunk before IEND (decoders skip it): a big upload
    that is cheap to decode."""
    padding = max(total_bytes - len(png) - 12, 0)
    return png[:-12] + _chunk(b"prVt", bytes(padding)) + png[-12:]
