"""Rendering: colormaps, normalization, upsampling, overlays, peaks, contact sheets, text in any script, captions,
prompt points, PNG output."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from fusioncam.explain.render import (
    COLORMAPS,
    captioned,
    colorbar,
    colorize,
    contact_sheet,
    draw_points,
    mask_overlay,
    normalize_map,
    overlay,
    peak_location,
    save_png,
    upsample_map,
)
from fusioncam.explain.text_render import ELLIPSIS, fit_text, text_mask, text_width, wrap_text
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
    maps = [(f"{label}{i}", spot(i % 4, i % 5, (4, 5))) for i in range(count)]
    return contact_sheet(picture, maps, tile=tile, colorbar=False)


@pytest.mark.parametrize(("count", "rows", "cols"), [(2, 1, 2), (6, 1, 6), (7, 2, 4), (13, 3, 5), (40, 7, 6)])
def test_contact_sheet_grid_has_at_most_six_balanced_columns(count: int, rows: int, cols: int) -> None:
    picture = image(60, 90)
    cell_h, cell_w, _ = sheet_of(1, picture).shape
    sheet = sheet_of(count, picture)
    assert sheet.dtype == np.uint8
    assert sheet.shape == (rows * cell_h, cols * cell_w, 3)


def test_contact_sheet_tiles_are_the_image_at_tile_height_with_a_label_band() -> None:
    cell_h, cell_w, _ = contact_sheet(image(60, 90), [("a", spot(0, 0))], tile=64, colorbar=False).shape
    tile_w = round(90 * 64 / 60)
    padding = cell_w - tile_w
    assert 0 < padding <= 8
    assert 64 + padding + 12 <= cell_h <= 64 + padding + 40  # room for a readable label, not much more


def test_contact_sheet_labels_stay_inside_their_tile() -> None:
    black = np.zeros((60, 90, 3), np.uint8)  # with alpha 0 the only bright pixels are label text
    tile_w = round(90 * 64 / 60)
    for label in ("dog", "pneumonoultramicroscopicsilicovolcanoconiosis-and-then-some", "狗 dog"):
        sheet = contact_sheet(black, [(label, spot(0, 0))], alpha=0.0, tile=64, colorbar=False)
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


def ink(mask: np.ndarray) -> np.ndarray:
    return mask > 0.5


def test_cjk_accented_and_cyrillic_text_draw_their_own_glyphs() -> None:
    dog, cat, question = text_mask("犬"), text_mask("猫"), text_mask("?")
    assert dog.shape == (16, 16) and question.shape == (16, 8)  # CJK is full width, "?" half width
    assert ink(dog).sum() > 10 and not np.array_equal(ink(dog), ink(cat))
    assert not np.array_equal(ink(dog)[:, :8], ink(question)) and not np.array_equal(ink(dog)[:, 8:], ink(question))
    accented, plain = text_mask("café"), text_mask("cafe")
    assert accented.shape == plain.shape
    assert np.array_equal(ink(accented)[:, :24], ink(plain)[:, :24])  # "caf" alike…
    assert ink(accented)[:5, 24:].sum() > 0 and ink(plain)[:5, 24:].sum() == 0  # …the accent above the e
    assert np.array_equal(text_mask("cafe\u0301"), accented)  # a decomposed é is composed first
    assert ink(text_mask("Жук")).sum() > 20 and not np.array_equal(text_mask("Жук"), text_mask("???"))


def test_emoji_have_glyphs_and_characters_without_one_show_a_box() -> None:
    assert ink(text_mask("😀")).sum() > 20
    assert np.array_equal(text_mask("👍\ufe0f"), text_mask("👍"))  # variation selectors are invisible
    box = ink(text_mask("\U00020000"))  # CJK extension B: not in the shipped table
    assert box.shape == (16, 16) and box[2, 1:15].all() and box[13, 1:15].all() and not box[4:12, 3:13].any()


def test_text_scales_crisp_at_multiples_of_16_and_smooth_between() -> None:
    native = text_mask("Ag犬")
    double = text_mask("Ag犬", 32)
    assert double.shape == (32, 64)
    np.testing.assert_array_equal(double[::2, ::2], native)
    small = text_mask("Ag犬", 12)
    assert small.shape == (12, text_width("Ag犬", 12)) and 0 < small.max() <= 1
    assert text_width("Ag犬", 12) == 24


def test_fit_text_ends_with_an_ellipsis_and_wrap_text_breaks_words_and_cjk() -> None:
    assert fit_text("dog", 100) == "dog"
    cut = fit_text("pneumonoultramicroscopic", 60)
    assert cut.endswith(ELLIPSIS) and text_width(cut) <= 60 and cut.startswith("pneumo")
    assert fit_text("犬犬犬", 4) == ""
    lines = wrap_text("这是一个很长的句子没有空格 and some english words", 80)
    assert all(text_width(line) <= 80 for line in lines)
    assert "".join(lines).replace(" ", "") == "这是一个很长的句子没有空格andsomeenglishwords"
    assert wrap_text("a b\nc", 200) == ["a b", "c"]


def label_band(label: str) -> np.ndarray:
    sheet = contact_sheet(np.zeros((60, 90, 3), np.uint8), [(label, spot(0, 0))], alpha=0.0, tile=64, colorbar=False)
    return sheet[66:-2]  # below the 64-pixel tile and its 2-pixel frame


def test_contact_sheet_labels_render_non_ascii_text() -> None:
    dog, question, cafe = label_band("犬"), label_band("?"), label_band("café")
    assert (dog.min(axis=2) > 128).sum() > 10
    assert not np.array_equal(dog, question) and not np.array_equal(dog, label_band("猫"))
    assert not np.array_equal(cafe, label_band("caf?")) and not np.array_equal(cafe, label_band("cafe"))


def heat(tile: np.ndarray) -> float:
    """How hot a jet-coloured tile looks: red minus blue, averaged."""
    return float(tile[..., 0].astype(float).mean() - tile[..., 2].astype(float).mean())


def sheet_tiles(sheet: np.ndarray, count: int) -> list[np.ndarray]:
    cell_w = sheet.shape[1] // count
    return [sheet[8:56, i * cell_w + 8 : i * cell_w + 88] for i in range(count)]  # inside each 64×96 tile


def test_contact_sheet_shares_one_colour_scale_unless_asked_per_panel() -> None:
    sentence = np.linspace(0.0, 1.0, 20, dtype=np.float32).reshape(4, 5)
    maps = [("sentence", sentence), ("word", sentence / 10)]
    shared = sheet_tiles(contact_sheet(image(60, 90), maps, alpha=1.0, tile=64, colorbar=False), 2)
    assert heat(shared[1]) < heat(shared[0]) - 100  # a word with a tenth of the attention looks cold
    panel = sheet_tiles(contact_sheet(image(60, 90), maps, alpha=1.0, tile=64, colorbar=False, scale="panel"), 2)
    np.testing.assert_array_equal(panel[0], panel[1])  # each stretched to its own range: equally hot
    np.testing.assert_array_equal(panel[0], shared[0])  # the map with the highest values looks the same
    with pytest.raises(ValueError, match="scale must be one of shared, panel"):
        contact_sheet(image(), maps, scale="global")  # type: ignore[arg-type]


def test_colorbar_follows_the_colormap_and_labels_both_ends() -> None:
    strip = colorbar(200, "0", "12.5", "viridis")
    ramp_rows = [r for r in range(strip.shape[0]) if np.array_equal(strip[r, 4:196], ramp(192, "viridis"))]
    assert len(ramp_rows) == 16
    below = strip[ramp_rows[-1] + 1 :]
    text = below.min(axis=2) > 128
    assert text[:, :20].any() and text[:, -40:].any() and not text[:, 60:140].any()


def ramp(width: int, colormap: str = "jet") -> np.ndarray:
    return colorize(np.linspace(0.0, 1.0, width, dtype=np.float32)[None], colormap)[0]


def test_contact_sheet_has_a_colour_bar_under_the_grid_and_a_title_above() -> None:
    maps = [("sentence", spot(1, 1, (4, 5))), ("word", spot(2, 2, (4, 5)) * 0.5)]
    bare = contact_sheet(image(60, 90), maps, tile=64, colorbar=False)
    sheet = contact_sheet(image(60, 90), maps, tile=64)
    assert sheet.shape[1] == bare.shape[1] and sheet.shape[0] > bare.shape[0]
    np.testing.assert_array_equal(sheet[: bare.shape[0]], bare)
    bar = sheet[bare.shape[0] :]
    ramp_rows = 0
    for row in bar:
        colored = np.flatnonzero(row.min(axis=1) != row.max(axis=1))  # not grey: neither background nor text
        if colored.size > 100:
            assert np.array_equal(row[colored[0] : colored[-1] + 1], ramp(colored[-1] + 1 - colored[0]))
            ramp_rows += 1
    assert ramp_rows == 16, "the colour bar is one text line high and follows the colormap"
    titled = contact_sheet(image(60, 90), maps, tile=64, title="sentence map SAM-refined")
    assert titled.shape[0] > sheet.shape[0]
    np.testing.assert_array_equal(titled[titled.shape[0] - sheet.shape[0] :], sheet)


def test_captioned_adds_a_band_of_text_and_keeps_the_image() -> None:
    picture = image(120, 160)
    answer = captioned(picture, ["Q: what colour is the circle?", "A: red"])
    grown = answer.shape[0] - picture.shape[0]
    assert answer.shape[1] == 160 and grown >= 2 * 16
    np.testing.assert_array_equal(answer[grown:], picture)
    band = answer[:grown]
    assert (band.min(axis=2) > 128).sum() > 50  # white text on the dark band
    below = captioned(picture, "A: 红色", below=True)
    np.testing.assert_array_equal(below[:120], picture)
    assert (below[120:].min(axis=2) > 128).sum() > 20
    wrapped = captioned(picture, "Q: " + "a long question " * 6)
    assert wrapped.shape[0] - picture.shape[0] > 3 * 16  # wrapped onto several lines
    assert captioned(image(900, 1000), "A: red").shape[0] - 900 > captioned(picture, "A: red").shape[0] - 120


def test_prompt_points_mark_foreground_and_other_labels_differently() -> None:
    picture = np.full((40, 60, 3), 128, np.uint8)
    mask = np.zeros((40, 60), bool)
    mask[5:35, 10:50] = True
    plain = mask_overlay(picture, mask)
    marked = mask_overlay(picture, mask, points=[(15.0, 12.0), (40.0, 28.0)], point_labels=[1.0, 0.4])
    assert tuple(marked[12, 15]) == (0, 200, 0)  # foreground: green
    assert tuple(marked[28, 40]) == (230, 30, 30)  # any other label: red
    changed = np.abs(marked.astype(int) - plain).sum(axis=2) > 0
    assert changed[8:17, 11:20].all() and not changed[:, 55:].any()
    assert np.array_equal(mask_overlay(picture, mask, points=None), plain)
    with pytest.raises(ValueError, match="2 points but 1 labels"):
        draw_points(picture, [(1, 1), (2, 2)], [1])


def test_prompt_points_grow_with_the_image() -> None:
    def marked_pixels(size: int) -> int:
        picture = np.zeros((size, size, 3), np.uint8)
        return int((draw_points(picture, [(size // 2, size // 2)]) != 0).any(axis=2).sum())

    small, large = marked_pixels(32), marked_pixels(1200)
    assert 20 <= small < 150 and large > 20 * small
