"""Pictures without a plotting dependency: PNG encoding and a 3x5 pixel font, numpy + zlib only.

Used for a run's loss.png (when matplotlib is not installed) and the eval report's chart.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

import numpy as np

# 3x5 pixel glyphs, one string of 15 bits per character, row by row.
_GLYPHS = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001010010010",
    "8": "111101111101111", "9": "111101111001111", "A": "010101111101101", "B": "110101110101110",
    "C": "011100100100011", "D": "110101101101110", "E": "111100110100111", "F": "111100110100100",
    "G": "011100101101011", "H": "101101111101101", "I": "111010010010111", "J": "001001001101010",
    "K": "101101110101101", "L": "100100100100111", "M": "101111111101101", "N": "110101101101101",
    "O": "010101101101010", "P": "110101110100100", "Q": "010101101110011", "R": "110101110101101",
    "S": "011100010001110", "T": "111010010010010", "U": "101101101101111", "V": "101101101101010",
    "W": "101101111111101", "X": "101101010101101", "Y": "101101010010010", "Z": "111001010100111",
    ".": "000000000000010", "-": "000000111000000", "%": "101001010100101", "/": "001001010100100",
    ":": "000010000010000", "(": "010100100100010", ")": "010001001001010", "=": "000111000111000",
    " ": "000000000000000",
}


def draw_text(img: np.ndarray, x: int, y: int, text: str, color: Sequence[int], scale: int = 2) -> None:
    """Draw `text` (upper-cased; unknown characters become spaces) with its top-left at (x, y)."""
    for ch in text.upper():
        bits = _GLYPHS.get(ch, _GLYPHS[" "])
        for i, bit in enumerate(bits):
            if bit == "1":
                r, c = divmod(i, 3)
                y0, x0 = y + r * scale, x + c * scale
                img[max(y0, 0) : y0 + scale, max(x0, 0) : x0 + scale] = color
        x += 4 * scale


def text_width(text: str, scale: int = 2) -> int:
    return len(text) * 4 * scale - scale


def png_bytes(img: np.ndarray, description: str | None = None) -> bytes:
    """Encode an HxWx3 uint8 array as a PNG (8-bit RGB, no filtering), with an optional tEXt note."""
    height, width, _ = img.shape
    raw = b"".join(b"\x00" + img[row].astype(np.uint8).tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    text = chunk(b"tEXt", b"Description\x00" + description.encode("latin-1", "replace")) if description else b""
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + text
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
