"""Rendering: colormaps, normalization, upsampling, overlays, peaks, contact sheets, PNG output."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from fusioncam.explain.render import (
    COLORMAPS,
    colorize,
    contact_sheet,
    normalize_map,
    overlay,
    peak_location,
    save_png,
    upsample_map,
)
from fusioncam.images import load_image


def image(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def spot(row: int, col: int, grid: tuple[int, int] = (24, 24)) -> np.ndarray:
    heat = np.zeros(grid, np.float32)
    heat[row, col] = 1.0
    return heat


def test_colorize_returns_rgb_not_bgr() -> None:
    ramp = np.linspace(0, 1, 32, dtype=np.float32).reshape(4, 8)
    colored = colorize(ramp, "jet")
    assert colored.shape == (4, 8, 3)
    assert colored.dtype == np.uint8
    cold, hot = colored[0, 0], colored[-1, -1]
    assert cold[2] > 100 and cold[0] < 10  # jet starts dark blue
    assert hot[0] > 100 and hot[2] < 10  # and ends dark red


def test_every_colormap_renders_and_unknown_names_list_the_choices() -> None:
    ramp = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    renders = {name: colorize(ramp, name) for name in COLORMAPS}
    assert {"jet", "turbo", "viridis", "inferno", "magma", "plasma", "hot", "bone"} <= renders.keys()
    assert not np.array_equal(renders["jet"], renders["viridis"])
    with pytest.raises(ValueError, match=r"unknown colormap 'jets'.*jet.*viridis"):
        colorize(ramp, "jets")


def test_normalize_map_spans_zero_to_one() -> None:
    normalized = normalize_map(np.array([[2.0, 4.0], [6.0, 10.0]]))
    assert normalized.dtype == np.float32
    np.testing.assert_allclose(normalized, [[0.0, 0.25], [0.5, 1.0]])


def test_normalize_map_of_a_constant_map_is_zeros() -> None:
    normalized = normalize_map(np.full((3, 3), 7.5))
    np.testing.assert_array_equal(normalized, np.zeros((3, 3), np.float32))


def test_maps_with_nan_are_refused() -> None:
    with pytest.raises(ValueError, match="NaN"):
        normalize_map(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="2-D"):
        normalize_map(np.zeros((2, 2, 2)))


def test_upsample_map_keeps_cell_centres_and_never_overshoots() -> None:
    rng = np.random.default_rng(1)
    grid = rng.random((4, 5)).astype(np.float32)
    grid[2, 3] = 5.0  # a sharp peak makes bicubic ring
    up = upsample_map(grid, (12, 15))
    assert up.shape == (12, 15)
    assert up.dtype == np.float32
    # Pixel centres aligned (align_corners=False): pixel 3r+1 of a 3× upsample sits on the centre of cell r.
    np.testing.assert_allclose(up[1::3, 1::3], grid, atol=1e-6)
    assert grid.min() <= up.min() and up.max() <= grid.max()


def test_overlay_with_alpha_zero_is_the_image_and_with_alpha_one_the_colormap() -> None:
    picture, heat = image(), spot(0, 0)
    assert np.array_equal(overlay(picture, heat, alpha=0.0), picture)
    full = overlay(picture, heat, alpha=1.0)
    np.testing.assert_array_equal(full, colorize(upsample_map(normalize_map(heat), (48, 64))))
    assert full[0, 0, 0] > 100 and full[0, 0, 2] < 10  # the hot cell is red...
    assert full[-1, -1, 2] > 100 and full[-1, -1, 0] < 10  # ...and the far corner blue


def test_overlay_blends_at_the_images_resolution() -> None:
    picture = image(37, 91)
    blended = overlay(picture, spot(5, 5, (7, 9)), alpha=0.25)
    assert blended.shape == picture.shape
    assert blended.dtype == np.uint8
    color = overlay(picture, spot(5, 5, (7, 9)), alpha=1.0).astype(float)
    assert np.abs(blended - (0.75 * picture + 0.25 * color)).max() <= 1


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_overlay_rejects_alpha_outside_zero_one(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        overlay(image(), spot(0, 0), alpha=alpha)


def test_overlay_rejects_images_that_are_not_rgb_uint8() -> None:
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        overlay(image()[..., 0], spot(0, 0))


def test_peak_location_is_the_centre_of_the_hottest_cell() -> None:
    # 24×24 grid on a 384 (h) × 576 (w) image: cells of 16 × 24 pixels.
    assert peak_location(spot(5, 17), (384, 576)) == (17 * 24 + 12, 5 * 16 + 8)
    # Cells that do not divide the image: centres floored, never past the last pixel.
    assert peak_location(spot(23, 23), (50, 100)) == (math.floor(23.5 * 100 / 24), math.floor(23.5 * 50 / 24))
    assert peak_location(np.ones((1, 1)), (3, 3)) == (1, 1)


def test_peak_location_ties_go_to_the_first_cell_in_row_major_order() -> None:
    heat = spot(2, 3) + spot(1, 7)
    assert peak_location(heat, (240, 240)) == (75, 15)


def sheet_of(count: int, picture: np.ndarray, tile: int = 32, label: str = "word") -> np.ndarray:
    return contact_sheet(picture, [(f"{label}{i}", spot(i % 4, i % 5, (4, 5))) for i in range(count)], tile=tile)


@pytest.mark.parametrize(("count", "rows", "cols"), [(2, 1, 2), (6, 1, 6), (7, 2, 4), (13, 3, 5), (40, 7, 6)])
def test_contact_sheet_grid_has_at_most_six_balanced_columns(count: int, rows: int, cols: int) -> None:
    picture = image(60, 90)
    cell_h, cell_w, _ = sheet_of(1, picture).shape
    sheet = sheet_of(count, picture)
    assert sheet.dtype == np.uint8
    assert sheet.shape == (rows * cell_h, cols * cell_w, 3)


def test_contact_sheet_tiles_are_the_image_at_tile_height_with_a_label_band() -> None:
    cell_h, cell_w, _ = contact_sheet(image(60, 90), [("a", spot(0, 0))], tile=64).shape
    tile_w = round(90 * 64 / 60)
    padding = cell_w - tile_w
    assert 0 < padding <= 8
    assert 64 + padding + 12 <= cell_h <= 64 + padding + 40  # room for a readable label, not much more


def test_contact_sheet_labels_stay_inside_their_tile() -> None:
    black = np.zeros((60, 90, 3), np.uint8)  # with alpha 0 the only bright pixels are label text
    tile_w = round(90 * 64 / 60)
    for label in ("dog", "pneumonoultramicroscopicsilicovolcanoconiosis-and-then-some", "狗 dog"):
        sheet = contact_sheet(black, [(label, spot(0, 0))], alpha=0.0, tile=64)
        padding = (sheet.shape[1] - tile_w) // 2
        text_columns = np.flatnonzero((sheet.min(axis=2) > 128).any(axis=0))
        assert text_columns.size > 0, label
        assert text_columns.min() > padding and text_columns.max() < padding + tile_w - 1, label


def test_contact_sheet_copes_with_a_sliver_of_an_image() -> None:
    sheet = contact_sheet(image(500, 3), [("a long label", spot(0, 0)), ("b", spot(1, 1))], tile=64)
    assert sheet.shape[0] > 64 and sheet.shape[1] >= 2


def test_contact_sheet_needs_maps() -> None:
    with pytest.raises(ValueError, match="at least one map"):
        contact_sheet(image(), [])


def test_save_png_round_trips_and_creates_folders(tmp_path: Path) -> None:
    picture = image(21, 34)
    path = tmp_path / "nested" / "plage-狗" / "overlay.png"
    save_png(path, picture)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(load_image(path), picture)


def test_save_png_failure_names_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    target = blocker / "out.png"
    with pytest.raises(OSError, match=re.escape(str(target))):
        save_png(target, image())
