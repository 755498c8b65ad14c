"""Pictures for humans: heatmaps coloured, blended over the image, labelled and tiled, captioned, saved as PNG.

Heatmaps arrive as small float grids (24×24 for BLIP); everything here works at the image's resolution and in
RGB uint8, converting to OpenCV's BGR only at its boundaries. Text (labels, captions, colour-bar values) is drawn
by `text_render`, which has glyphs for every script, not just ASCII.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

import cv2
import numpy as np

from fusioncam.choices import COLORMAP_NAMES
from fusioncam.explain.text_render import GLYPH_HEIGHT, draw_text, fit_text, text_width, wrap_text
from fusioncam.images import check_rgb

COLORMAPS: dict[str, int] = {name: getattr(cv2, f"COLORMAP_{name.upper()}") for name in COLORMAP_NAMES}

_MAX_COLUMNS = 6
_BACKGROUND = (32, 32, 32)
_BAND = (16, 16, 16)
_TEXT = (255, 255, 255)
_MIN_TEXT_HEIGHT = 10  # smaller text is unreadable; shorten the label instead
_FOREGROUND_POINT = (0, 200, 0)
_OTHER_POINT = (230, 30, 30)

SheetScale = Literal["shared", "panel"]
SHEET_SCALES: tuple[str, ...] = get_args(SheetScale)


def colorize(map01: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """A [0, 1] map (values outside are clipped) → HxWx3 uint8 RGB through a named colormap."""
    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}; choose one of: {', '.join(sorted(COLORMAPS))}")
    levels = np.rint(np.clip(_check_map(map01), 0.0, 1.0) * 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(levels, COLORMAPS[colormap]), cv2.COLOR_BGR2RGB)


def normalize_map(heatmap: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1] float32; a constant map (nothing stands out) becomes all zeros."""
    values = _check_map(heatmap).astype(np.float64)
    return _rescale(values, values.min(), values.max())


def _rescale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """`low` → 0 and `high` → 1, float32; all zeros when the range is empty."""
    if high <= low:
        return np.zeros(values.shape, np.float32)
    return ((values.astype(np.float64) - low) / (high - low)).astype(np.float32)


def upsample_map(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a (gh, gw) grid to `size` = (h, w), bilinear with pixel centres aligned (OpenCV INTER_LINEAR).

    Bilinear because every output is a convex combination of grid values: it never overshoots, so a [0, 1] map
    stays in [0, 1] and a non-negative one stays non-negative, where bicubic rings around a sharp peak.
    """
    height, width = size
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive (h, w), got {size}")
    grid = _check_map(heatmap).astype(np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_LINEAR)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
    """Blend the coloured, normalized heatmap over the image: `(1 - alpha) * image + alpha * color`, uint8."""
    check_rgb(image)
    _check_alpha(alpha)
    return _blend(image, normalize_map(heatmap), alpha, colormap)


def _blend(image: np.ndarray, map01: np.ndarray, alpha: float, colormap: str) -> np.ndarray:
    """`overlay` of a map already scaled to [0, 1] (by itself, or on a scale shared with other maps)."""
    color = colorize(upsample_map(map01, image.shape[:2]), colormap)
    return cv2.addWeighted(image, 1.0 - alpha, color, alpha, 0.0)


def peak_location(heatmap: np.ndarray, image_hw: tuple[int, int]) -> tuple[int, int]:
    """(x, y) image pixel at the centre of the heatmap's highest cell.

    Grid cell (r, c) covers x in [c·w/gw, (c+1)·w/gw) when pixel i covers [i, i+1); its centre (c+½)·w/gw is
    floored to a pixel index. Ties go to the first cell in row-major order.
    """
    grid = _check_map(heatmap)
    height, width = image_hw
    row, col = np.unravel_index(int(np.argmax(grid)), grid.shape)
    x = min(int((col + 0.5) * width / grid.shape[1]), width - 1)
    y = min(int((row + 0.5) * height / grid.shape[0]), height - 1)
    return x, y


def contact_sheet(
    image: np.ndarray,
    maps: Sequence[tuple[str, np.ndarray]],
    alpha: float = 0.5,
    colormap: str = "jet",
    tile: int = 256,
    *,
    scale: SheetScale = "shared",
    colorbar: bool = True,
    title: str | Sequence[str] | None = None,
) -> np.ndarray:
    """One overlay per (label, heatmap), `tile` pixels high with its label underneath, in a grid of ≤ 6 columns.

    `scale="shared"` puts every map on one colour scale, from the lowest to the highest value over all panels,
    so that a word the model barely attends to looks cool next to the sentence; `scale="panel"` stretches each
    map to its own range, as `overlay` does, which shows where each word looks but not how strongly. `colorbar`
    adds the colormap under the grid with the values (or "panel min"/"panel max") at its ends. `title` lines go
    in a band above the grid: the text, or that a panel is SAM-refined (labels are drawn as given, so the
    sentence's label can say so too).

    Rows are balanced (7 maps give 4 + 3, not 6 + 1). The image is scaled to the tile before blending, which
    looks the same as blending at full resolution and costs a fraction of it.
    """
    check_rgb(image)
    if not maps:
        raise ValueError("contact_sheet needs at least one map")
    if tile < 1:
        raise ValueError(f"tile must be positive, got {tile}")
    _check_alpha(alpha)
    grids = [_check_map(heatmap) for _, heatmap in maps]
    units, ends = _sheet_scale(grids, scale)
    height, width = image.shape[:2]
    tile_w = max(1, round(width * tile / height))
    shrinking = tile < height
    small = cv2.resize(image, (tile_w, tile), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    band = max(GLYPH_HEIGHT + 4, tile // 10)
    pad = max(2, tile // 64)
    cells = [
        _labelled(_blend(small, unit, alpha, colormap), label, band)
        for (label, _), unit in zip(maps, units, strict=True)
    ]
    sheet = _grid(cells, pad)
    text_height = _label_height(band)
    if colorbar:
        strip = _colorbar(sheet.shape[1] - 2 * pad, *ends, colormap, text_height)
        framed = cv2.copyMakeBorder(strip, 0, pad, pad, pad, cv2.BORDER_CONSTANT, value=_BACKGROUND)
        sheet = np.vstack([sheet, framed])
    if title is not None:
        sheet = captioned(sheet, title, text_height=text_height)
    return sheet


def _sheet_scale(grids: Sequence[np.ndarray], scale: str) -> tuple[list[np.ndarray], tuple[str, str]]:
    """The maps in [0, 1] for `scale`, and the colour bar's end labels that say what 0 and 1 mean."""
    if scale == "shared":
        low = min(float(grid.min()) for grid in grids)
        high = max(float(grid.max()) for grid in grids)
        return [_rescale(grid, low, high) for grid in grids], (f"{low:.3g}", f"{high:.3g}")
    if scale == "panel":
        return [normalize_map(grid) for grid in grids], ("panel min", "panel max")
    raise ValueError(f"scale must be one of {', '.join(SHEET_SCALES)}; got {scale!r}")


def colorbar(width: int, low: str, high: str, colormap: str = "jet", text_height: int = GLYPH_HEIGHT) -> np.ndarray:
    """A strip `width` pixels wide: the colormap from its low end (left) to its high end (right), with `low` and
    `high` (the values they stand for) written under the ends in white on the dark band labels use."""
    if width < 1:
        raise ValueError(f"colorbar width must be positive, got {width}")
    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}; choose one of: {', '.join(sorted(COLORMAPS))}")
    return _colorbar(width, low, high, colormap, text_height)


def _colorbar(width: int, low: str, high: str, colormap: str, text_height: int) -> np.ndarray:
    margin = max(2, text_height // 4)
    inset = min(margin, (width - 1) // 2)
    ramp_w = width - 2 * inset
    strip = np.full((3 * margin + 2 * text_height, width, 3), _BAND, np.uint8)
    ramp = np.broadcast_to(np.linspace(0.0, 1.0, ramp_w, dtype=np.float32), (text_height, ramp_w))
    strip[margin : margin + text_height, inset : inset + ramp_w] = colorize(ramp, colormap)
    text_y = 2 * margin + text_height
    half = max(0, (ramp_w - margin) // 2)
    if text_width(low, text_height) + text_width(high, text_height) + margin > ramp_w:
        low, high = fit_text(low, half, text_height), fit_text(high, half, text_height)
    draw_text(strip, low, (inset, text_y), text_height, _TEXT)
    draw_text(strip, high, (inset + ramp_w - text_width(high, text_height), text_y), text_height, _TEXT)
    return strip


def captioned(
    image: np.ndarray, lines: str | Sequence[str], *, below: bool = False, text_height: int | None = None
) -> np.ndarray:
    """The image with a dark band above it (or `below`) holding `lines` in white, each wrapped to the width.

    For pictures that must say what they show, such as a VQA answer map ("Q: what colour is the circle?",
    "A: red"). The image's pixels are kept as they are. `text_height` defaults to 16 pixels, doubled, tripled, …
    for every 400 pixels of the image's shorter side, so captions stay legible on large photos.
    """
    check_rgb(image)
    height, width = image.shape[:2]
    text_height = text_height or GLYPH_HEIGHT * max(1, min(height, width) // 400)
    if text_height < 1:
        raise ValueError(f"text_height must be positive, got {text_height}")
    margin = max(2, text_height // 2)
    leading = text_height + max(1, text_height // 4)
    given = [lines] if isinstance(lines, str) else list(lines)
    wrapped = [piece for line in given for piece in wrap_text(line, max(1, width - 2 * margin), text_height)]
    if not wrapped:
        return image.copy()
    band = np.full((2 * margin + (len(wrapped) - 1) * leading + text_height, width, 3), _BAND, np.uint8)
    for index, line in enumerate(wrapped):
        draw_text(band, line, (margin, margin + index * leading), text_height, _TEXT)
    return np.vstack([image, band] if below else [band, image])


def save_png(path: str | os.PathLike, pixels: np.ndarray) -> None:
    """Write an RGB image, an RGBA image or a single-channel mask as PNG, creating parent folders.

    Any path the OS accepts works (OpenCV's imwrite does not take non-ASCII paths on every platform, so we encode
    in memory and write the bytes).
    """
    path = Path(path)
    if pixels.ndim == 2 and pixels.dtype == np.uint8:
        encodable = pixels
    elif pixels.ndim == 3 and pixels.shape[2] == 4 and pixels.dtype == np.uint8:
        encodable = cv2.cvtColor(pixels, cv2.COLOR_RGBA2BGRA)
    else:
        check_rgb(pixels)
        encodable = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", encodable)
    if not ok:
        raise OSError(f"cannot encode {path} as PNG")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encoded.tobytes())
    except OSError as e:
        raise OSError(e.errno, f"cannot write {path}: {e.strerror or e}") from e


def mask_overlay(
    image: np.ndarray,
    mask: np.ndarray,
    alpha: float = 0.5,
    color: tuple[int, int, int] = (30, 144, 255),
    *,
    points: np.ndarray | Sequence[Sequence[float]] | None = None,
    point_labels: np.ndarray | Sequence[float] | None = None,
) -> np.ndarray:
    """The image with the mask's pixels tinted by `color` and its outline drawn, RGB uint8; with `points`, the
    SAM prompts that produced the mask marked on top (see `draw_points`)."""
    check_rgb(image)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask {mask.shape} does not match the image {image.shape[:2]}")
    tinted = image.astype(np.float32)
    tinted[mask] = (1 - alpha) * tinted[mask] + alpha * np.asarray(color, np.float32)
    out = tinted.round().astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, color, thickness=max(1, min(image.shape[:2]) // 200))
    return out if points is None else draw_points(out, points, point_labels)


def draw_points(
    image: np.ndarray,
    points: np.ndarray | Sequence[Sequence[float]],
    labels: np.ndarray | Sequence[float] | None = None,
    radius: int | None = None,
) -> np.ndarray:
    """A copy of the image with prompt points (x, y in the image's pixels) marked, each with a white rim so it
    shows on any background: a label of 1 (SAM's foreground click) as a filled green disc, any other label (0 for
    background, or the fork's fractional peak weights, which SAM does not count as clicks) as a red ring around
    a red dot. `labels` defaults to all foreground; `radius` to 1/40 of the shorter side, at least 4 pixels.
    """
    check_rgb(image)
    xy = np.asarray(points, np.float64).reshape(-1, 2)
    foreground = np.ones(len(xy), bool) if labels is None else np.asarray(labels, np.float64).reshape(-1) == 1
    if len(foreground) != len(xy):
        raise ValueError(f"{len(xy)} points but {len(foreground)} labels")
    radius = radius or max(4, round(min(image.shape[:2]) / 40))
    out = image.copy()
    for (x, y), is_foreground in zip(xy, foreground, strict=True):
        centre = (round(x), round(y))
        (_foreground_disc if is_foreground else _other_target)(out, centre, radius)
    return out


def _foreground_disc(canvas: np.ndarray, centre: tuple[int, int], radius: int) -> None:
    rim = max(1, radius // 4)
    cv2.circle(canvas, centre, radius + rim, _TEXT, -1, cv2.LINE_AA)
    cv2.circle(canvas, centre, radius, _FOREGROUND_POINT, -1, cv2.LINE_AA)


def _other_target(canvas: np.ndarray, centre: tuple[int, int], radius: int) -> None:
    """A hollow ring leaves what lies under the point visible; the dot pins its exact pixel."""
    stroke = max(1, radius // 4)
    cv2.circle(canvas, centre, radius, _TEXT, 3 * stroke, cv2.LINE_AA)
    cv2.circle(canvas, centre, radius, _OTHER_POINT, stroke, cv2.LINE_AA)
    cv2.circle(canvas, centre, 2 * stroke, _TEXT, -1, cv2.LINE_AA)
    cv2.circle(canvas, centre, stroke, _OTHER_POINT, -1, cv2.LINE_AA)


def cutout(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGBA image whose alpha is the mask: the object alone, transparent elsewhere."""
    check_rgb(image)
    return np.dstack([image, np.where(mask, 255, 0).astype(np.uint8)])


def _check_map(heatmap: np.ndarray) -> np.ndarray:
    grid = np.asarray(heatmap)
    if grid.ndim != 2 or grid.size == 0:
        raise ValueError(f"a heatmap must be a non-empty 2-D array, got shape {grid.shape}")
    if not np.isfinite(grid).all():
        raise ValueError("heatmap contains NaN or infinite values")
    return grid


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")


def _label_height(band: int) -> int:
    """Text height for a band: the most that leaves a margin, rounded down to a multiple of 16 where there is
    room for one, because Unifont is crisp at those."""
    available = band - 2 * _band_margin(band)
    return available // GLYPH_HEIGHT * GLYPH_HEIGHT if available >= GLYPH_HEIGHT else available


def _band_margin(band: int) -> int:
    return max(2, band // 8)


def _labelled(tile: np.ndarray, label: str, band: int) -> np.ndarray:
    """The tile with a dark band underneath holding its label in white, shortened to fit if need be."""
    width = tile.shape[1]
    margin = _band_margin(band)
    text, height = _fit_label(label, width - 2 * margin, _label_height(band))
    strip = np.full((band, width, 3), _BAND, np.uint8)
    if text:
        draw_text(strip, text, (margin, (band - height) // 2), height, _TEXT)
    return np.vstack([tile, strip])


def _fit_label(label: str, max_w: int, max_h: int) -> tuple[str, int]:
    """Text and height that fit a max_w × max_h box: the full height, smaller for long labels down to a readable
    minimum, then the end cut off and the cut marked with "…"."""
    if max_w < 1 or max_h < 1:
        return "", 1
    height = max_h
    full_w = text_width(label, height)
    if full_w > max_w:
        shrunk = height * max_w // full_w
        crisp = shrunk // GLYPH_HEIGHT * GLYPH_HEIGHT if shrunk >= GLYPH_HEIGHT else shrunk
        height = min(height, max(_MIN_TEXT_HEIGHT, crisp))
    return fit_text(label, max_w, height), height


def _grid(cells: Sequence[np.ndarray], pad: int) -> np.ndarray:
    """Equal-size cells, each framed by `pad` pixels of background, in balanced rows of at most 6."""
    rows = math.ceil(len(cells) / _MAX_COLUMNS)
    cols = math.ceil(len(cells) / rows)
    framed = [cv2.copyMakeBorder(c, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=_BACKGROUND) for c in cells]
    blank = np.full_like(framed[0], _BACKGROUND)
    framed += [blank] * (rows * cols - len(framed))
    return np.vstack([np.hstack(framed[r * cols : (r + 1) * cols]) for r in range(rows)])
