"""Pictures for humans: heatmaps coloured, blended over the image, labelled and tiled, saved as PNG.

Heatmaps arrive as small float grids (24×24 for BLIP); everything here works at the image's resolution and in
RGB uint8, converting to OpenCV's BGR only at its boundaries.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from fusioncam.images import check_rgb

COLORMAPS: dict[str, int] = {
    name: getattr(cv2, f"COLORMAP_{name.upper()}")
    for name in (
        "jet", "turbo", "viridis", "inferno", "magma", "plasma", "cividis", "parula", "hot", "bone", "pink",
        "ocean", "winter", "summer", "spring", "autumn", "cool", "rainbow", "hsv", "twilight", "deepgreen",
    )
}  # fmt: skip

_MAX_COLUMNS = 6
_BACKGROUND = (32, 32, 32)
_BAND = (16, 16, 16)
_TEXT = (255, 255, 255)
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_THICKNESS = 1
_MIN_FONT_SCALE = 0.3  # smaller Hershey text is unreadable; shorten the label instead


def colorize(map01: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """A [0, 1] map (values outside are clipped) → HxWx3 uint8 RGB through a named colormap."""
    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}; choose one of: {', '.join(sorted(COLORMAPS))}")
    levels = np.rint(np.clip(_check_map(map01), 0.0, 1.0) * 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(levels, COLORMAPS[colormap]), cv2.COLOR_BGR2RGB)


def normalize_map(heatmap: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1] float32; a constant map (nothing stands out) becomes all zeros."""
    values = _check_map(heatmap).astype(np.float64)
    low, high = values.min(), values.max()
    if high <= low:
        return np.zeros(values.shape, np.float32)
    return ((values - low) / (high - low)).astype(np.float32)


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
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    color = colorize(upsample_map(normalize_map(heatmap), image.shape[:2]), colormap)
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
) -> np.ndarray:
    """One overlay per (label, heatmap), `tile` pixels high with its label underneath, in a grid of ≤ 6 columns.

    Rows are balanced (7 maps give 4 + 3, not 6 + 1). The image is scaled to the tile before blending, which
    looks the same as blending at full resolution and costs a fraction of it.
    """
    check_rgb(image)
    if not maps:
        raise ValueError("contact_sheet needs at least one map")
    if tile < 1:
        raise ValueError(f"tile must be positive, got {tile}")
    height, width = image.shape[:2]
    tile_w = max(1, round(width * tile / height))
    shrinking = tile < height
    small = cv2.resize(image, (tile_w, tile), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    band = max(16, tile // 10)
    cells = [_labelled(overlay(small, heatmap, alpha, colormap), label, band) for label, heatmap in maps]
    return _grid(cells, pad=max(2, tile // 64))


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


def mask_overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5, color=(30, 144, 255)) -> np.ndarray:
    """The image with the mask's pixels tinted by `color` and its outline drawn, RGB uint8."""
    check_rgb(image)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask {mask.shape} does not match the image {image.shape[:2]}")
    tinted = image.astype(np.float32)
    tinted[mask] = (1 - alpha) * tinted[mask] + alpha * np.asarray(color, np.float32)
    out = tinted.round().astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, color, thickness=max(1, min(image.shape[:2]) // 200))
    return out


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


def _labelled(tile: np.ndarray, label: str, band: int) -> np.ndarray:
    """The tile with a dark band underneath holding its label in white, shortened to fit if need be."""
    width = tile.shape[1]
    margin = max(2, band // 6)
    text, scale = _fit_label(label, width - 2 * margin, band - 2 * margin)
    (_, ascent), descent = cv2.getTextSize(text, _FONT, scale, _THICKNESS)
    strip = np.full((band, width, 3), _BAND, np.uint8)
    baseline_y = (band - ascent - descent) // 2 + ascent
    cv2.putText(strip, text, (margin, baseline_y), _FONT, scale, _TEXT, _THICKNESS, cv2.LINE_AA)
    return np.vstack([tile, strip])


def _fit_label(label: str, max_w: int, max_h: int) -> tuple[str, float]:
    """Text and font scale that fit a max_w × max_h box: fill the height, shrink for long labels down to a
    readable minimum, then cut the end off and mark the cut with "...".

    Hershey fonts only have ASCII glyphs, so other characters are shown as "?".
    """
    text = "".join(ch if " " <= ch <= "~" else "?" for ch in label)
    (_, ascent), descent = cv2.getTextSize("Ag", _FONT, 1.0, _THICKNESS)
    scale = max(_MIN_FONT_SCALE, max_h / (ascent + descent))
    full_w = cv2.getTextSize(text, _FONT, scale, _THICKNESS)[0][0]
    if full_w <= max_w:
        return text, scale
    scale = max(_MIN_FONT_SCALE, scale * max_w / full_w)
    for end in range(len(text), 0, -1):
        candidate = text if end == len(text) else text[:end].rstrip() + "..."
        if cv2.getTextSize(candidate, _FONT, scale, _THICKNESS)[0][0] <= max_w:
            return candidate, scale
    return "", scale


def _grid(cells: Sequence[np.ndarray], pad: int) -> np.ndarray:
    """Equal-size cells, each framed by `pad` pixels of background, in balanced rows of at most 6."""
    rows = math.ceil(len(cells) / _MAX_COLUMNS)
    cols = math.ceil(len(cells) / rows)
    framed = [cv2.copyMakeBorder(c, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=_BACKGROUND) for c in cells]
    blank = np.full_like(framed[0], _BACKGROUND)
    framed += [blank] * (rows * cols - len(framed))
    return np.vstack([np.hstack(framed[r * cols : (r + 1) * cols]) for r in range(rows)])
