"""The comparison chart, read back from its pixels: bars as tall as their values, in their encoder's colour and
order, with their values above them; chance baselines at their value's row; bad figures refused; PNG output."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from fusioncam.explain.chart import BASELINE_COLOR, PALETTE, comparison_chart, save_comparison_chart
from fusioncam.explain.text_render import text_mask, text_width

BLUE, ORANGE, GREEN = PALETTE[:3]
TEXT_PAD = 4


@dataclass(frozen=True)
class Box:
    """A solid rectangle of one colour found in the image; `bottom` and `right` are exclusive."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def centre_x(self) -> float:
        return (self.left + self.right) / 2


def regions(image: np.ndarray, color: tuple[int, int, int]) -> list[Box]:
    """Connected areas of exactly `color`, left to right."""
    mask = np.all(image == color, axis=2).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
    boxes = [Box(int(x), int(y), int(x + w), int(y + h)) for x, y, w, h, _ in stats[1:count]]
    return sorted(boxes, key=lambda box: box.left)


def bars(image: np.ndarray, color: tuple[int, int, int]) -> list[Box]:
    """The bars of one colour: its areas standing on the lowest row it reaches (the axis); the legend's swatch
    sits higher up."""
    found = regions(image, color)
    floor = max(box.bottom for box in found)
    return [box for box in found if box.bottom == floor]


def swatch(image: np.ndarray, color: tuple[int, int, int]) -> Box:
    """The legend's sample of a colour: its area nearest the top."""
    return min(regions(image, color), key=lambda box: box.top)


def find_text(image: np.ndarray, text: str, height: int = 16) -> list[tuple[int, int]]:
    """Top-left corners where `text` is drawn in the chart's dark grey ink, pixel for pixel, with no ink for a few
    pixels either side (so "1.0" is not found at the start of "1.000")."""
    ink = np.all(image == (40, 40, 40), axis=2).astype(np.float32)
    template = np.pad(text_mask(text, height) > 0.5, ((0, 0), (TEXT_PAD, TEXT_PAD))).astype(np.float32)
    difference = cv2.matchTemplate(np.pad(ink, ((0, 0), (TEXT_PAD, TEXT_PAD))), template, cv2.TM_SQDIFF)
    rows, cols = np.nonzero(difference < 0.5)
    return [(int(x), int(y)) for x, y in zip(cols, rows, strict=True)]


def chart_width(metrics: int, encoders: int, **options: object) -> int:
    figures = {f"m{m}": {f"e{e}": 0.5 for e in range(encoders)} for m in range(metrics)}
    return comparison_chart("t", figures, **options).shape[1]


def test_bar_heights_are_proportional_to_values_and_stand_on_one_axis() -> None:
    figures = {"pointing": {"blip": 0.8, "esam": 0.4}, "energy": {"blip": 0.3, "esam": 0.6}}
    image = comparison_chart("grounding", figures, maximum=1.0)
    blip, esam = bars(image, BLUE), bars(image, ORANGE)
    assert [len(blip), len(esam)] == [2, 2]
    assert abs(blip[0].height - 2 * esam[0].height) <= 2  # 0.8 : 0.4
    assert abs(esam[1].height - 2 * blip[1].height) <= 2  # 0.6 : 0.3
    pixels_per_unit = blip[0].height / 0.8
    for box, value in zip([*blip, *esam], [0.8, 0.3, 0.4, 0.6], strict=True):
        assert abs(box.height - value * pixels_per_unit) <= 1
    assert len({box.bottom for box in [*blip, *esam]}) == 1


def test_the_axis_runs_from_zero_to_the_maximum_with_labels_at_both_ends() -> None:
    image = comparison_chart("t", {"pointing": {"blip": 1.0, "esam": 0.5}}, maximum=1.0)
    full = bars(image, BLUE)[0]
    top_label, zero_label = find_text(image, "1.0"), find_text(image, "0.0")
    assert len(top_label) == 1 and len(zero_label) == 1
    assert top_label[0][0] + text_width("1.0") < full.left  # left of the bars
    assert abs(top_label[0][1] + 8 - full.top) <= 1  # a label's middle is at its value's row
    assert abs(zero_label[0][1] + 8 - full.bottom) <= 1


def test_the_default_maximum_is_the_largest_value_rounded_up_to_a_round_number() -> None:
    figures = {"pointing": {"blip": 0.45, "esam": 0.3}}
    to_one = bars(comparison_chart("t", figures, maximum=1.0), BLUE)[0]
    automatic = comparison_chart("t", figures)
    assert abs(bars(automatic, BLUE)[0].height - 2 * to_one.height) <= 1  # 0.45 of 0.5, not of 1
    assert find_text(automatic, "0.5") and not find_text(automatic, "1.0")


@pytest.mark.parametrize(
    ("figures", "options", "label"),
    [
        ({"pointing": {"blip": 0.731, "esam": 0.5}}, {"maximum": 1.0}, "0.731"),
        ({"pointing": {"blip": 73.1, "esam": 50.0}}, {"maximum": 100.0, "unit": "%"}, "73.1%"),
        ({"pointing": {"blip": 1234.0, "esam": 50.0}}, {"unit": " px"}, "1234 px"),
    ],
)
def test_each_bar_has_its_value_written_just_above_it(
    figures: Mapping[str, Mapping[str, float]], options: dict, label: str
) -> None:
    image = comparison_chart("t", figures, **options)
    bar = bars(image, BLUE)[0]
    (x, y), *others = find_text(image, label)
    assert not others
    assert 0 <= bar.top - (y + 16) <= 8
    assert abs(x + text_width(label) / 2 - bar.centre_x) <= 1


def test_names_are_written_where_they_belong() -> None:
    figures = {"pointing": {"blip": 0.6, "esam": 0.4}, "energy": {"blip": 0.3, "esam": 0.5}}
    image = comparison_chart("Grounding on RefCOCO", figures, maximum=1.0)
    assert find_text(image, "Grounding on RefCOCO", 32)[0][1] < swatch(image, BLUE).top  # title on top
    blip, esam = bars(image, BLUE), bars(image, ORANGE)
    for metric, left, right in [("pointing", blip[0], esam[0]), ("energy", blip[1], esam[1])]:
        (x, y), *_ = find_text(image, metric)
        assert y >= left.bottom  # under the axis
        assert abs(x + text_width(metric) / 2 - (left.left + right.right) / 2) <= 2  # centred under the group


def test_encoders_keep_the_first_metrics_order_and_one_colour_throughout() -> None:
    figures = {
        "pointing": {"blip": 0.8, "esam": 0.4, "fused": 0.6},
        "energy": {"fused": 0.3, "blip": 0.2, "esam": 0.5},  # same encoders, other order: values go by name
    }
    image = comparison_chart("t", figures, maximum=1.0)
    blip, esam, fused = bars(image, BLUE), bars(image, ORANGE), bars(image, GREEN)
    for group in range(2):
        assert blip[group].left < esam[group].left < fused[group].left
    unit = blip[0].height / 0.8
    assert [round(box.height / unit, 2) for box in (blip[1], esam[1], fused[1])] == [0.2, 0.5, 0.3]
    samples = [swatch(image, color) for color in (BLUE, ORANGE, GREEN)]
    assert samples[0].left < samples[1].left < samples[2].left
    assert len({box.top for box in samples}) == 1  # one legend row
    for name, sample in zip(["blip", "esam", "fused"], samples, strict=True):
        (x, y), *_ = find_text(image, name)
        assert y == sample.top and 0 < x - sample.right <= 8  # each name right after its colour


def test_a_baseline_is_a_dashed_line_at_its_values_row_across_its_group_only() -> None:
    figures = {"pointing": {"blip": 0.5, "esam": 0.6}, "energy": {"blip": 0.25, "esam": 0.1}}
    image = comparison_chart("t", figures, maximum=1.0, baselines={"pointing": 0.25, "energy": None})
    at_quarter = bars(image, BLUE)[1]  # the line should be level with the top of this bar
    pointing = slice(bars(image, BLUE)[0].left, bars(image, ORANGE)[0].right)
    black = np.all(image[:, pointing] == BASELINE_COLOR, axis=2)
    rows = np.flatnonzero(black.any(axis=1) & (np.arange(len(image)) > swatch(image, BLUE).bottom))
    assert abs(rows.min() - at_quarter.top) <= 1 and rows.max() - rows.min() <= 2
    dashes = np.diff(black[rows.min()].astype(np.int8))
    assert (dashes == 1).sum() >= 3  # broken into dashes, not a solid line
    energy = slice(at_quarter.left, bars(image, ORANGE)[1].right)
    assert not np.all(image[swatch(image, BLUE).bottom :, energy] == BASELINE_COLOR, axis=2).any()
    assert find_text(image, "random")  # named in the legend


def test_without_baselines_nothing_is_black() -> None:
    """Black is the baselines' colour alone, so a chart without any has none, not even in its legend."""
    figures = {"pointing": {"blip": 0.5, "esam": 0.6}}
    for baselines in (None, {"pointing": None}):
        image = comparison_chart("t", figures, baselines=baselines)
        assert not np.all(image == BASELINE_COLOR, axis=2).any()
        assert not find_text(image, "random")


@pytest.mark.parametrize(
    ("figures", "options", "message"),
    [
        ({}, {}, "at least one metric"),
        ({"pointing": {}}, {}, "no encoders"),
        ({"pointing": {"blip": -0.1}}, {}, "'pointing' of 'blip' is -0.1"),
        ({"pointing": {"blip": math.nan}}, {}, "is nan"),
        ({"pointing": {"blip": math.inf}}, {}, "is inf"),
        ({"a": {"blip": 0.1, "esam": 0.2}, "b": {"blip": 0.1}}, {}, "every metric must compare the same encoders"),
        ({"a": {"blip": 0.1}, "b": {"blip": 0.1, "esam": 0.2}}, {}, "every metric must compare the same encoders"),
        ({"a": {"blip": 0.1}, "b": {"esam": 0.2}}, {}, "every metric must compare the same encoders"),
        ({"a": {f"e{i}": 0.1 for i in range(len(PALETTE) + 1)}}, {}, "at most 7 encoders"),
        ({"a": {"blip": 1.2}}, {"maximum": 1.0}, "above the axis maximum"),
        ({"a": {"blip": 0.2}}, {"maximum": 0.0}, "maximum must be a positive number"),
        ({"a": {"blip": 0.2}}, {"baselines": {"a": 1.5}, "maximum": 1.0}, "above the axis maximum"),
        ({"a": {"blip": 0.2}}, {"baselines": {"a": -0.5}}, "the baseline of 'a' is -0.5"),
        ({"a": {"blip": 0.2}}, {"baselines": {"b": 0.5}}, r"baselines for metrics not in the chart: \['b'\]"),
    ],
)
def test_figures_a_bar_chart_cannot_show_are_refused(
    figures: Mapping[str, Mapping[str, float]], options: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        comparison_chart("t", figures, **options)


def test_the_image_is_rgb_and_the_png_written_holds_the_same_pixels(tmp_path: Path) -> None:
    figures = {"pointing": {"blip": 0.7, "esam": 0.8}, "energy": {"blip": 0.4, "esam": 0.45}}
    options = {"maximum": 1.0, "baselines": {"pointing": 0.2}}
    image = comparison_chart("Grounding", figures, **options)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    path = tmp_path / "new folder" / "pointing-chart.png"
    save_comparison_chart(path, "Grounding", figures, **options)
    with Image.open(path) as written:
        assert written.format == "PNG" and written.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(written), image)


def test_more_bars_make_a_wider_chart_whose_value_labels_keep_apart() -> None:
    widths = [chart_width(metrics, encoders) for metrics, encoders in [(3, 3), (3, 5), (3, 7), (5, 7)]]
    assert widths == sorted(widths) and len(set(widths)) == len(widths)
    figures = {f"metric {m}": {f"e{e}": 12345.6 + e for e in range(7)} for m in range(3)}
    image = comparison_chart("t", figures, unit=" px")
    lefts = [box.left for color in PALETTE for box in bars(image, color)]
    pitch = min(np.diff(sorted(lefts)))
    assert pitch >= text_width("12351 px") + 4  # neighbouring labels, centred on their bars, do not touch


def test_long_names_are_shortened_rather_than_widening_the_chart() -> None:
    long_name = "the share of peaks inside the object's box " * 10
    wide = comparison_chart("t", {long_name: {"blip": 0.5}, "energy": {"blip": 0.5}})
    capped = comparison_chart("t", {long_name[:60]: {"blip": 0.5}, "energy": {"blip": 0.5}})
    assert wide.shape == capped.shape
    assert wide.shape[1] < text_width(long_name)
    (_, y), *_ = find_text(wide, long_name[:12])
    assert y >= bars(wide, BLUE)[0].bottom  # its start is still shown under the group
