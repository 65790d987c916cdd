#!/usr/bin/env python3
"""Draws the push page's PNG icons (src/push/page/icon-*.png, icon-maskable-512.png): the shape of
src/push/page/icon.svg (an amber rounded square, a dark lightning bolt),
with the standard library only. Run it after changing icon.svg's shape:

    python3 scripts/make-icons.py
"""
import struct
import zlib
from pathlib import Path

AMBER = (0xF5, 0xA6, 0x23, 0xFF)
DARK = (0x1B, 0x1F, 0x23, 0xFF)
CLEAR = (0, 0, 0, 0)
# The bolt of icon.svg, in its 64-unit box.
BOLT = [(36, 6), (14, 36), (28, 36), (24, 58), (46, 28), (32, 28)]


def inside(poly, x, y):
    """Even-odd rule."""
    hit = False
    for (x1, y1), (x2, y2) in zip(poly, poly[1:] + poly[:1]):
        if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
            hit = not hit
    return hit


def in_rounded(x, y, r=12):
    cx = min(max(x, r), 64 - r)
    cy = min(max(y, r), 64 - r)
    return (x - cx) ** 2 + (y - cy) ** 2 <= r * r


def pixel(size, px, py, maskable):
    # Maskable icons are cut to a circle by the launcher: full bleed
    # background, the bolt inside the central safe zone.
    x, y = (px + 0.5) * 64 / size, (py + 0.5) * 64 / size
    if maskable:
        bx, by = 32 + (x - 32) / 0.8, 32 + (y - 32) / 0.8
        return DARK if inside(BOLT, bx, by) else AMBER
    if not in_rounded(x, y):
        return CLEAR
    return DARK if inside(BOLT, x, y) else AMBER


def png(size, maskable=False):
    rows = b"".join(
        b"\0" + b"".join(bytes(pixel(size, x, y, maskable)) for x in range(size))
        for y in range(size)
    )

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows, 9))
        + chunk(b"IEND", b"")
    )


if __name__ == "__main__":
    out = Path(__file__).resolve().parent.parent / "src" / "push" / "page"
    (out / "icon-192.png").write_bytes(png(192))
    (out / "icon-512.png").write_bytes(png(512))
    (out / "icon-maskable-512.png").write_bytes(png(512, maskable=True))
    print("wrote the icons in", out)
