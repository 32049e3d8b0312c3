"""Image file headers: the size of a JPEG, PNG, GIF or BMP file from its first bytes, without decoding it.

Read for every file of a folder data set when it is listed and for every image `predict` is given, so that a
file that is not an image, is cut short, or would decode to more than `MAX_IMAGE_PIXELS` pixels (a
decompression bomb) is refused with one line before TensorFlow decodes anything.
"""
import os
import struct

MAX_IMAGE_PIXELS = 8192 * 8192  # 64 megapixels (200 MB decoded as RGB): larger images are refused


def image_header(path):
    """(height, width) from the header of a JPEG/PNG/BMP/GIF file; None if it is none of them or the header is
    cut short. Raises ValueError naming the file if it has more than ``MAX_IMAGE_PIXELS`` pixels."""
    with open(path, "rb") as handle:
        head = handle.read(26)
        if head.startswith(b"\xff\xd8\xff"):
            size = _jpeg_size(handle)
        elif head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR" and len(head) >= 24:
            size = struct.unpack(">II", head[16:24])[::-1]
        elif head.startswith((b"GIF87a", b"GIF89a")) and len(head) >= 10:
            size = struct.unpack("<HH", head[6:10])[::-1]
        elif head.startswith(b"BM") and len(head) >= 26:
            os2 = head[14:18] == b"\x0c\0\0\0"  # OS/2 headers (12 bytes long) have 16-bit sizes
            width, height = struct.unpack("<HH", head[18:22]) if os2 else struct.unpack("<ii", head[18:26])
            size = (abs(height), width)  # a negative height means top-down rows
        else:
            return None
    if size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise ValueError(f"{path} has {size[1]}x{size[0]} pixels, more than the limit of {MAX_IMAGE_PIXELS:,} "
                         "(a guard against decompression bombs); downscale or remove it.")
    return size


def _jpeg_size(handle):
    """(height, width) from the first start-of-frame marker of a JPEG, or None if the file ends first."""
    handle.seek(2)
    while True:
        marker = handle.read(4)  # 0xFF, the marker type, a 2-byte segment length
        if len(marker) < 4 or marker[0] != 0xFF:
            return None
        if marker[1] == 0xFF:  # fill byte before a marker
            handle.seek(-3, os.SEEK_CUR)
        elif 0xC0 <= marker[1] <= 0xCF and marker[1] not in (0xC4, 0xC8, 0xCC):  # SOF0-15 but DHT, JPG, DAC
            frame = handle.read(5)  # precision, height, width
            return struct.unpack(">HH", frame[1:]) if len(frame) == 5 else None
        else:
            length = struct.unpack(">H", marker[2:])[0]  # counts its own 2 bytes
            if length < 2:
                return None
            handle.seek(length - 2, os.SEEK_CUR)
