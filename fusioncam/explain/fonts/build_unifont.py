"""Rebuild `unifont.npz` from GNU Unifont 15.0.01 as Debian ships it (packages `unifont` and `fonts-unifont`).

Not imported by fusioncam: it records how the shipped glyph table was made, so that it can be checked or redone
for a newer Unifont. It needs fontTools (`pip install fonttools`), which fusioncam itself does not.

    apt-get download unifont fonts-unifont && for f in *.deb; do dpkg-deb -x "$f" unifont; done
    python build_unifont.py unifont/usr/share/unifont unifont/usr/share/fonts/opentype/unifont unifont.npz

Plane 0 comes from `unifont.hex` (the font's own source format) with `plane00-combining.txt`, which says how
far left each combining mark is drawn over the character before it; the private-use area is left out. Unifont
ships plane 1 only as an outline font whose outlines trace whole pixels (4 units a pixel, 64 units an em,
ascent 56), so the emoji and symbol blocks U+1F000–U+1FAFF are taken from `unifont_upper.otf` by filling those
outlines and sampling each pixel's centre. The rest of plane 1 (historic scripts, mathematical alphabets) is
left out to keep the table small.

The table: `codepoints` uint32 [N] ascending; `widths` uint8 [N], 8 or 16 pixels; `offsets` int8 [N], 0 or the
(negative) column where a combining mark starts relative to the pen; `bitmaps` uint8 [N, 16, 2], 16 rows of 16
columns packed big-endian (a glyph 8 pixels wide uses the first byte of each row).
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
from fontTools.pens.recordingPen import RecordingPen
from fontTools.ttLib import TTFont

ROWS = 16
UNITS_PER_PIXEL = 4
ASCENT = 56
PRIVATE_USE = range(0xE000, 0xF900)
PLANE1_BLOCKS = range(0x1F000, 0x1FB00)

Glyph = tuple[int, int, np.ndarray]  # width, offset, bits [16, width]


def hex_glyphs(hex_path: Path, combining_path: Path) -> dict[int, Glyph]:
    """Plane 0 from `unifont.hex`: one `CODE:BITS` line a glyph, 32 hex digits for 8 columns, 64 for 16."""
    offsets = {}
    for line in combining_path.read_text().split():
        code, offset = line.split(":")
        offsets[int(code, 16)] = int(offset)
    glyphs = {}
    for line in hex_path.read_text().split():
        code, digits = line.split(":")
        codepoint = int(code, 16)
        if codepoint in PRIVATE_USE:
            continue
        width = len(digits) // 4
        rows = np.frombuffer(bytes.fromhex(digits), np.uint8).reshape(ROWS, width // 8)
        glyphs[codepoint] = (width, offsets.get(codepoint, 0), np.unpackbits(rows, axis=1))
    return glyphs


def outline_glyphs(otf_path: Path, keep: range) -> dict[int, Glyph]:
    """Glyphs of `keep` from a Unifont OTF: its pixel-tracing outlines filled (even-odd) and sampled."""
    font = TTFont(str(otf_path))
    glyph_set = font.getGlyphSet()
    glyphs = {}
    for codepoint, name in font.getBestCmap().items():
        if codepoint not in keep:
            continue
        pen = RecordingPen()
        glyph_set[name].draw(pen)
        width = glyph_set[name].width // UNITS_PER_PIXEL
        glyphs[codepoint] = (width, 0, _sample(_fill(pen.value))[:, :width])
    return glyphs


def _fill(commands: list) -> np.ndarray:
    """Font units → a 64×64 canvas, y flipped so row 0 is the top of the em; contours XORed (even-odd)."""
    canvas = np.zeros((ROWS * UNITS_PER_PIXEL, ROWS * UNITS_PER_PIXEL), np.uint8)
    contour: list[tuple[int, int]] = []
    for operator, args in commands:
        if operator in ("moveTo", "lineTo"):
            contour.append((round(args[0][0]), ASCENT - round(args[0][1])))
        elif operator in ("closePath", "endPath"):
            layer = np.zeros_like(canvas)
            cv2.fillPoly(layer, [np.array(contour, np.int32)], 1)
            canvas ^= layer
            contour = []
        else:
            raise ValueError(f"Unifont outlines are straight lines; found {operator}")
    return canvas


def _sample(canvas: np.ndarray) -> np.ndarray:
    """One value a pixel, at its centre."""
    half = UNITS_PER_PIXEL // 2
    return canvas[half::UNITS_PER_PIXEL, half::UNITS_PER_PIXEL]


def pack(glyphs: dict[int, Glyph]) -> dict[str, np.ndarray]:
    """The arrays of the table, in code point order."""
    codepoints = sorted(glyphs)
    bitmaps = np.zeros((len(codepoints), ROWS, 16), np.uint8)
    for index, codepoint in enumerate(codepoints):
        width, _, bits = glyphs[codepoint]
        bitmaps[index, :, :width] = bits
    return {
        "codepoints": np.array(codepoints, np.uint32),
        "widths": np.array([glyphs[c][0] for c in codepoints], np.uint8),
        "offsets": np.array([glyphs[c][1] for c in codepoints], np.int8),
        "bitmaps": np.packbits(bitmaps, axis=2),
    }


def main(hex_dir: str, otf_dir: str, out: str) -> None:
    glyphs = hex_glyphs(Path(hex_dir) / "unifont.hex", Path(hex_dir) / "plane00-combining.txt")
    glyphs |= outline_glyphs(Path(otf_dir) / "unifont_upper.otf", PLANE1_BLOCKS)
    np.savez_compressed(out, allow_pickle=False, **pack(glyphs))


if __name__ == "__main__":
    main(*sys.argv[1:])
