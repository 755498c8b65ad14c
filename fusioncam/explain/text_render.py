"""Text in any script for the pictures: GNU Unifont's bitmap glyphs, drawn with numpy.

Labels are words of the user's text and captions are questions and answers, so they can be in any language;
OpenCV's Hershey fonts only have ASCII. Unifont has a 16-pixel-high glyph for every visible character of
Unicode's plane 0 (Latin, Greek, Cyrillic, Arabic, Hebrew, Indic scripts, CJK, Hangul, …); the shipped table
(`fonts/unifont.npz`, 840 kB, SIL OFL 1.1, made by `fonts/build_unifont.py`) adds its monochrome emoji and
symbols (U+1F000–U+1FAFF). A character it lacks is drawn as an empty box, so a missing glyph is visible as one
rather than silently dropped.

Text is laid out left to right, one glyph after another: no shaping, so Arabic letters keep their isolated forms
and right-to-left text reads in stored order. Text is NFC-composed first, which turns a decomposed "é" into the
single precomposed glyph; combining marks left over are drawn over the character before them, where Unifont
places them.

Glyphs are 16 pixels high. At multiples of 16 they are scaled by repeating pixels (crisp); other heights are
scaled from the next multiple up by area averaging, which greys the edges rather than dropping strokes.
"""

from __future__ import annotations

import functools
import math
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

GLYPH_HEIGHT = 16
ELLIPSIS = "…"
_FONT_PATH = Path(__file__).with_name("fonts") / "unifont.npz"
_WHITESPACE_CONTROLS = "\t\n\v\f\r"


@dataclass(frozen=True)
class _Font:
    """The glyph table, see `fonts/build_unifont.py` for the layout."""

    codepoints: np.ndarray  # uint32 [N], ascending
    widths: np.ndarray  # uint8 [N]: 8 or 16
    offsets: np.ndarray  # int8 [N]: 0, or where a combining mark starts relative to the pen (negative)
    bitmaps: np.ndarray  # uint8 [N, 16, 2]: rows of 16 columns, packed


@dataclass(frozen=True)
class _Run:
    """Glyphs of a prepared text at 16 px: bitmaps [n, 16, 16] bool, the column each starts at relative to the
    pen, the width it covers, and how far it moves the pen (0 for combining marks)."""

    bitmaps: np.ndarray
    offsets: np.ndarray
    widths: np.ndarray
    advances: np.ndarray


@functools.cache
def _font() -> _Font:
    """Loaded on first use and kept: most runs draw no text at all (loading took 13–18 ms on a 2-core AMD EPYC
    VM, warm file cache)."""
    with np.load(_FONT_PATH, allow_pickle=False) as table:
        return _Font(**{name: table[name] for name in ("codepoints", "widths", "offsets", "bitmaps")})


def prepare(text: str) -> str:
    """The text as it will be drawn: NFC-composed, whitespace controls (tab, newline, …) as spaces, and
    characters that are invisible by design (other controls, format characters such as zero-width joiners,
    variation selectors) removed, so an emoji sequence does not show a box for its joiner."""
    kept = []
    for char in unicodedata.normalize("NFC", text):
        if char in _WHITESPACE_CONTROLS:
            kept.append(" ")
        elif not _invisible(char):
            kept.append(char)
    return "".join(kept)


def _invisible(char: str) -> bool:
    code = ord(char)
    is_variation_selector = 0xFE00 <= code <= 0xFE0F or 0xE0100 <= code <= 0xE01EF
    return unicodedata.category(char) in ("Cc", "Cf") or is_variation_selector


def _run(text: str) -> _Run:
    """Look every character of an already prepared text up; characters without a glyph get a box."""
    font = _font()
    codes = np.fromiter((ord(c) for c in text), np.int64, len(text))
    index = np.minimum(np.searchsorted(font.codepoints, codes), len(font.codepoints) - 1)
    found = font.codepoints[index] == codes
    bitmaps = np.unpackbits(font.bitmaps[index], axis=2).astype(bool)
    widths = font.widths[index].astype(np.int64)
    offsets = font.offsets[index].astype(np.int64)
    for position in np.flatnonzero(~found):
        widths[position] = 16 if unicodedata.east_asian_width(text[position]) in "WF" else 8
        offsets[position] = 0
        bitmaps[position] = _box(widths[position])
    advances = np.where(offsets < 0, 0, widths)
    return _Run(bitmaps, offsets, widths, advances)


def _box(width: int) -> np.ndarray:
    """The outline of a box in a glyph cell: what a character with no glyph is drawn as."""
    cell = np.zeros((GLYPH_HEIGHT, 16), bool)
    cell[2:14, 1 : width - 1] = True
    cell[3:13, 2 : width - 2] = False
    return cell


def _scaled_width(native: int, height: int) -> int:
    return round(native * height / GLYPH_HEIGHT)


def text_width(text: str, height: int = GLYPH_HEIGHT) -> int:
    """Width in pixels of `text` drawn `height` pixels high (after `prepare`)."""
    return _scaled_width(int(_run(prepare(text)).advances.sum()), height)


def text_mask(text: str, height: int = GLYPH_HEIGHT) -> np.ndarray:
    """Ink coverage of `text` drawn `height` pixels high: float32 [height, text_width] in [0, 1]."""
    if height < 1:
        raise ValueError(f"text height must be positive, got {height}")
    run = _run(prepare(text))
    native = np.zeros((GLYPH_HEIGHT, int(run.advances.sum())), bool)
    pen = 0
    for bitmap, offset, width, advance in zip(run.bitmaps, run.offsets, run.widths, run.advances, strict=True):
        start, stop = max(0, pen + offset), min(native.shape[1], pen + offset + width)
        if stop > start:
            native[:, start:stop] |= bitmap[:, start - pen - offset : stop - pen - offset]
        pen += advance
    return _scale(native, height)


def _scale(native: np.ndarray, height: int) -> np.ndarray:
    """Pixel-repeat to the next multiple of 16 at or above `height`, then area-average down to it."""
    width = _scaled_width(native.shape[1], height)
    if width == 0:
        return np.zeros((height, 0), np.float32)
    factor = math.ceil(height / GLYPH_HEIGHT)
    big = np.repeat(np.repeat(native, factor, axis=0), factor, axis=1).astype(np.float32)
    if big.shape[0] == height:
        return big
    return cv2.resize(big, (width, height), interpolation=cv2.INTER_AREA)


def draw_text(
    canvas: np.ndarray, text: str, xy: tuple[int, int], height: int, color: tuple[int, int, int] = (255, 255, 255)
) -> None:
    """Blend `text` in `color` into an RGB uint8 canvas in place, its top-left corner at `xy`; what falls outside
    the canvas is cut off."""
    mask = text_mask(text, height)
    x, y = xy
    top, left = max(0, y), max(0, x)
    bottom, right = min(canvas.shape[0], y + mask.shape[0]), min(canvas.shape[1], x + mask.shape[1])
    if bottom <= top or right <= left:
        return
    cover = mask[top - y : bottom - y, left - x : right - x, None]
    region = canvas[top:bottom, left:right].astype(np.float32)
    blended = region * (1.0 - cover) + np.asarray(color, np.float32) * cover
    canvas[top:bottom, left:right] = np.rint(blended).astype(np.uint8)


def fit_text(text: str, max_width: int, height: int = GLYPH_HEIGHT) -> str:
    """`text` (prepared) if it fits in `max_width` pixels, else its longest start that fits with "…" after it,
    or "" when not even "…" fits."""
    prepared = prepare(text)
    run = _run(prepared)
    if _scaled_width(int(run.advances.sum()), height) <= max_width:
        return prepared
    ellipsis = int(_run(ELLIPSIS).advances.sum())
    widths = np.concatenate([[0], np.cumsum(run.advances)]) + ellipsis
    fitting = np.flatnonzero(np.rint(widths * height / GLYPH_HEIGHT) <= max_width)
    if fitting.size == 0:
        return ""
    return prepared[: fitting[-1]].rstrip() + ELLIPSIS


def wrap_text(text: str, max_width: int, height: int = GLYPH_HEIGHT) -> list[str]:
    """Lines no wider than `max_width` pixels: broken at spaces, words too long for a line (and scripts written
    without spaces, such as Chinese) broken between characters. Newlines in `text` start new lines."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        lines.extend(_wrap_paragraph(prepare(paragraph), max_width, height))
    return lines


def _wrap_paragraph(paragraph: str, max_width: int, height: int) -> list[str]:
    lines: list[str] = []
    line = ""
    for word in paragraph.split(" "):
        candidate = f"{line} {word}" if line else word
        if text_width(candidate, height) <= max_width:
            line = candidate
            continue
        if line:
            lines.append(line)
        pieces = _break_word(word, max_width, height)
        lines.extend(pieces[:-1])
        line = pieces[-1]
    lines.append(line)
    return lines


def _break_word(word: str, max_width: int, height: int) -> list[str]:
    """A word cut into pieces that each fit; a single character wider than the line gets a line of its own."""
    pieces = [""]
    for char in word:
        if pieces[-1] and text_width(pieces[-1] + char, height) > max_width:
            pieces.append("")
        pieces[-1] += char
    return pieces
