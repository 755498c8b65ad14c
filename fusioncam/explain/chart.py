"""A grouped bar chart of evaluation figures, for comparing encoders at a glance (`fusioncam eval … --out`).

Drawn with numpy, OpenCV and `text_render` rather than matplotlib, which is not a dependency: one chart per run
does not justify a plotting library, and Unifont labels any encoder or metric name in any script.

One group of bars per metric, one bar per encoder, each encoder in its own colour from the Okabe-Ito palette (told
apart with the common forms of colour blindness) and the same in every group and in the legend. Every bar carries its
value, so nobody has to read numbers off the axis; a chance baseline is a dashed black line across its group, since a
figure only means something next to what a random guess scores. The y axis starts at 0, because bars whose lengths
are not proportional to their values mislead. The image is white, for reports and slides.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fusioncam.explain.render import save_png
from fusioncam.explain.text_render import GLYPH_HEIGHT, draw_text, fit_text, text_width, wrap_text

Color = tuple[int, int, int]

# Okabe & Ito (2008), "Color Universal Design", in an order that puts the strongest colours on white first.
# Their black is kept for the baselines, so that a line never looks like an encoder.
PALETTE: tuple[Color, ...] = (
    (0, 114, 178),  # blue
    (230, 159, 0),  # orange
    (0, 158, 115),  # bluish green
    (213, 94, 0),  # vermillion
    (86, 180, 233),  # sky blue
    (204, 121, 167),  # reddish purple
    (240, 228, 66),  # yellow
)
BASELINE_COLOR: Color = (0, 0, 0)

_BACKGROUND: Color = (255, 255, 255)
_INK: Color = (40, 40, 40)  # text and axis: dark grey, so that nothing but a baseline is pure black
_GRID: Color = (225, 225, 225)

_TEXT = GLYPH_HEIGHT  # Unifont is crisp at multiples of 16 pixels
_TITLE = 2 * GLYPH_HEIGHT
_MARGIN = 16
_PLOT_HEIGHT = 320
_MIN_WIDTH = 480
_MIN_SLOT = 32  # the width one bar and its value label take up, at least
_BAR_GAP = 6  # between neighbouring bars
_LABEL_GAP = 8  # at least between neighbouring value labels
_GROUP_GAP = 32  # between groups of bars, and before the first and after the last
_MAX_NAME_WIDTH = 200  # metric and encoder names longer than this are cut short with "…"
_TICK_GAP = 8  # between a tick label and the axis
_LEGEND_GAP = 20  # between legend entries
_SWATCH_GAP = 6  # between a legend entry's sample and its name
_DASH, _DASH_GAP, _LINE = 8, 5, 2  # a baseline's dashes and gaps (along it) and thickness
_BASELINE_SAMPLE = 2 * _DASH + _DASH_GAP  # the legend's piece of baseline: two dashes
_NICE_STEPS = (1.0, 2.0, 2.5, 5.0, 10.0)  # axis ends and grid steps are one of these times a power of ten
_TICKS = 5  # about this many grid steps up to the maximum


@dataclass(frozen=True)
class _Figures:
    """The checked input: `values[m, e]` is metric m's figure for encoder e; `baselines` maps a metric's index to
    its chance baseline, for the metrics that have one."""

    metrics: tuple[str, ...]
    encoders: tuple[str, ...]
    values: np.ndarray
    baselines: dict[int, float]


@dataclass(frozen=True)
class _Axis:
    """The y scale: 0 at the axis line, `maximum` at the top of the plot, a grid line every `step`."""

    maximum: float
    step: float
    unit: str

    def ticks(self) -> list[float]:
        return [index * self.step for index in range(math.floor(self.maximum / self.step + 1e-9) + 1)]

    def tick_label(self, tick: float) -> str:
        return f"{tick:.{_decimals(self.step)}f}{self.unit}"

    def value_label(self, value: float) -> str:
        """Three significant digits at the top of the scale, and as many decimals for every bar, so that values
        line up and compare digit by digit: "0.731" on a scale to 1, "73.1" on one to 100."""
        decimals = max(0, 3 - math.ceil(math.log10(self.maximum)))
        return f"{value:.{decimals}f}{self.unit}"


@dataclass(frozen=True)
class _Layout:
    """Where things go, in pixels. Bars sit in slots of `slot` pixels, centred in groups of `group` pixels; the
    plot spans rows `axis_y - _PLOT_HEIGHT` (the maximum) to `axis_y` (zero) and starts at column `left`."""

    width: int
    height: int
    title_lines: tuple[str, ...]
    legend: tuple[tuple[int, int], ...]  # (x, y) of each legend entry: the encoders, then the baseline
    left: int
    axis_y: int
    slot: int
    group: int

    def group_left(self, metric: int) -> int:
        return self.left + _GROUP_GAP + metric * (self.group + _GROUP_GAP)

    def slot_left(self, metric: int, encoder: int, encoders: int) -> int:
        return self.group_left(metric) + (self.group - encoders * self.slot) // 2 + encoder * self.slot

    def row_of(self, value: float, axis: _Axis) -> int:
        """The pixel row a value reaches: a bar of that value covers the rows from here down to `axis_y`."""
        return self.axis_y - round(value / axis.maximum * _PLOT_HEIGHT)


def comparison_chart(
    title: str,
    figures: Mapping[str, Mapping[str, float]],
    *,
    unit: str = "",
    maximum: float | None = None,
    baselines: Mapping[str, float | None] | None = None,
    baseline_label: str = "random",
) -> np.ndarray:
    """A grouped bar chart, RGB uint8: `figures` maps each metric (a group, in the given order) to each encoder's
    value (a bar, in the order of the first metric).

    `unit` follows every value and axis label ("%", " px"). The axis runs from 0 to `maximum`, by default the
    largest value or baseline rounded up to 1, 2, 2.5 or 5 times a power of ten. `baselines` gives a metric a
    dashed line across its group, named `baseline_label` in the legend (None: no line for that metric). The image
    is as wide as its bars need for their value labels not to touch; long names are cut short with "…".
    Raises ValueError for an empty chart, metrics over different encoders, more encoders than colours, values or
    baselines that are negative, not finite, or above `maximum`, and baselines of metrics not in `figures`.
    """
    checked = _checked(figures, baselines or {})
    axis = _axis(checked, maximum, unit)
    layout = _layout(title, checked, axis, baseline_label)
    canvas = np.full((layout.height, layout.width, 3), _BACKGROUND, np.uint8)
    _draw_title(canvas, layout)
    _draw_legend(canvas, layout, checked, baseline_label)
    _draw_grid(canvas, layout, axis)
    _draw_bars(canvas, layout, checked, axis)
    _draw_baselines(canvas, layout, checked, axis)
    _draw_metric_names(canvas, layout, checked)
    return canvas


def save_comparison_chart(
    path: str | os.PathLike,
    title: str,
    figures: Mapping[str, Mapping[str, float]],
    **options: Any,
) -> None:
    """Write `comparison_chart(title, figures, **options)` as a PNG at `path`, creating parent folders."""
    save_png(path, comparison_chart(title, figures, **options))


def _checked(figures: Mapping[str, Mapping[str, float]], baselines: Mapping[str, float | None]) -> _Figures:
    if not figures:
        raise ValueError("a comparison chart needs at least one metric")
    metrics = tuple(figures)
    encoders = tuple(figures[metrics[0]])
    if not encoders:
        raise ValueError(f"metric {metrics[0]!r} has no encoders")
    if len(encoders) > len(PALETTE):
        raise ValueError(f"at most {len(PALETTE)} encoders fit in one chart (one colour each), got {len(encoders)}")
    for metric in metrics[1:]:
        if set(figures[metric]) != set(encoders):
            raise ValueError(
                f"metric {metric!r} has encoders {sorted(figures[metric])}, but {metrics[0]!r} has "
                f"{sorted(encoders)}: every metric must compare the same encoders"
            )
    values = np.array(
        [[_checked_value(figures[metric][name], f"{metric!r} of {name!r}") for name in encoders] for metric in metrics]
    )
    unknown = sorted(set(baselines) - set(metrics))
    if unknown:
        raise ValueError(f"baselines for metrics not in the chart: {unknown}; the metrics are {list(metrics)}")
    lines = {
        metrics.index(metric): _checked_value(value, f"the baseline of {metric!r}")
        for metric, value in baselines.items()
        if value is not None
    }
    return _Figures(metrics, encoders, values, lines)


def _checked_value(value: float, what: str) -> float:
    """Bars start at 0, so a negative value has no bar to draw, and NaN or infinity none to measure."""
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{what} is {value}: a bar needs a finite value of at least 0")
    return abs(number)  # -0.0 passes the test above but would be labelled "-0.000"


def _axis(figures: _Figures, maximum: float | None, unit: str) -> _Axis:
    largest = max(float(figures.values.max()), *figures.baselines.values(), 0.0)
    if maximum is None:
        maximum = _nice_ceiling(largest) if largest > 0 else 1.0
    elif not (math.isfinite(maximum) and maximum > 0):
        raise ValueError(f"maximum must be a positive number, got {maximum}")
    elif largest > maximum:
        raise ValueError(f"a value or baseline ({largest}) is above the axis maximum {maximum}")
    return _Axis(maximum, _nice_ceiling(maximum / _TICKS), unit)


def _nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten that is at least `value` (> 0): round numbers for the top
    of an axis and its grid steps."""
    power = 10.0 ** math.floor(math.log10(value))
    return next(step * power for step in _NICE_STEPS if step * power >= value * (1 - 1e-9))


def _decimals(step: float) -> int:
    """The fewest decimals that write every multiple of `step` exactly (0.25 needs 2, 20 needs none)."""
    return next(places for places in range(20) if math.isclose(round(step, places), step, rel_tol=1e-9))


def _layout(title: str, figures: _Figures, axis: _Axis, baseline_label: str) -> _Layout:
    labels = [axis.value_label(value) for value in figures.values.flat]
    slot = max(_MIN_SLOT, max(text_width(label) for label in labels) + _LABEL_GAP)
    widest_name = max(text_width(metric) for metric in figures.metrics)
    group = max(len(figures.encoders) * slot, min(widest_name, _MAX_NAME_WIDTH))
    left = _MARGIN + max(text_width(axis.tick_label(tick)) for tick in axis.ticks()) + _TICK_GAP
    groups = len(figures.metrics)
    width = max(_MIN_WIDTH, left + groups * group + (groups + 1) * _GROUP_GAP + _MARGIN)
    title_lines = tuple(wrap_text(title, width - 2 * _MARGIN, _TITLE))
    legend_top = _MARGIN + len(title_lines) * _leading(_TITLE) + _MARGIN // 2
    entries = _legend_widths(figures, baseline_label)
    legend, legend_bottom = _flow(entries, legend_top, width)
    axis_y = legend_bottom + _MARGIN + _leading(_TEXT) + _PLOT_HEIGHT  # room above for a full bar's value label
    height = axis_y + _TICK_GAP // 2 + _TEXT + _MARGIN
    return _Layout(width, height, title_lines, legend, left, axis_y, slot, group)


def _leading(height: int) -> int:
    return height + height // 4


def _legend_widths(figures: _Figures, baseline_label: str) -> list[int]:
    """Each legend entry's width: a sample (a colour swatch, or a dashed line) and its name."""
    entries = [(_TEXT, name) for name in figures.encoders]
    if figures.baselines:
        entries.append((_BASELINE_SAMPLE, baseline_label))
    return [sample + _SWATCH_GAP + text_width(fit_text(name, _MAX_NAME_WIDTH)) for sample, name in entries]


def _flow(widths: Sequence[int], top: int, width: int) -> tuple[tuple[tuple[int, int], ...], int]:
    """Positions for entries laid out left to right, onto a new row when one is full; and the row after the last."""
    positions = []
    x, y = _MARGIN, top
    for entry in widths:
        if x > _MARGIN and x + entry > width - _MARGIN:
            x, y = _MARGIN, y + _leading(_TEXT)
        positions.append((x, y))
        x += entry + _LEGEND_GAP
    return tuple(positions), y + _leading(_TEXT)


def _draw_title(canvas: np.ndarray, layout: _Layout) -> None:
    for index, line in enumerate(layout.title_lines):
        draw_text(canvas, line, (_MARGIN, _MARGIN + index * _leading(_TITLE)), _TITLE, _INK)


def _draw_legend(canvas: np.ndarray, layout: _Layout, figures: _Figures, baseline_label: str) -> None:
    encoder_entries = layout.legend[: len(figures.encoders)]
    for (x, y), name, color in zip(encoder_entries, figures.encoders, PALETTE, strict=False):
        canvas[y : y + _TEXT, x : x + _TEXT] = color
        draw_text(canvas, fit_text(name, _MAX_NAME_WIDTH), (x + _TEXT + _SWATCH_GAP, y), _TEXT, _INK)
    if figures.baselines:
        x, y = layout.legend[-1]
        _dashed_line(canvas, y + _TEXT // 2, x, x + _BASELINE_SAMPLE)
        label = fit_text(baseline_label, _MAX_NAME_WIDTH)
        draw_text(canvas, label, (x + _BASELINE_SAMPLE + _SWATCH_GAP, y), _TEXT, _INK)


def _draw_grid(canvas: np.ndarray, layout: _Layout, axis: _Axis) -> None:
    """Grid lines with their values, under everything else; the zero line is the axis itself, drawn darker."""
    right = canvas.shape[1] - _MARGIN
    for tick in axis.ticks():
        row = layout.row_of(tick, axis)
        canvas[row, layout.left : right] = _GRID
        label = axis.tick_label(tick)
        label_x = layout.left - _TICK_GAP - text_width(label)
        draw_text(canvas, label, (label_x, row - _TEXT // 2), _TEXT, _INK)
    canvas[layout.axis_y, layout.left : right] = _INK


def _draw_bars(canvas: np.ndarray, layout: _Layout, figures: _Figures, axis: _Axis) -> None:
    """Each bar covers the rows from its value's row down to (not including) the axis line, its value above it."""
    encoders = len(figures.encoders)
    for metric, row_values in enumerate(figures.values):
        for encoder, value in enumerate(row_values):
            x = layout.slot_left(metric, encoder, encoders)
            top = layout.row_of(value, axis)
            canvas[top : layout.axis_y, x + _BAR_GAP // 2 : x + layout.slot - _BAR_GAP // 2] = PALETTE[encoder]
            label = axis.value_label(value)
            label_x = x + (layout.slot - text_width(label)) // 2
            draw_text(canvas, label, (label_x, top - _TICK_GAP // 2 - _TEXT), _TEXT, _INK)


def _draw_baselines(canvas: np.ndarray, layout: _Layout, figures: _Figures, axis: _Axis) -> None:
    """Over the bars, so that a bar's height can be read against chance; a little wider than the group's bars."""
    for metric, value in figures.baselines.items():
        left = layout.group_left(metric) - _GROUP_GAP // 4
        _dashed_line(canvas, layout.row_of(value, axis), left, left + layout.group + _GROUP_GAP // 2)


def _dashed_line(canvas: np.ndarray, row: int, left: int, right: int) -> None:
    """A horizontal dashed line `_LINE` pixels thick, whose upper row is `row` (a value's row)."""
    for start in range(left, right, _DASH + _DASH_GAP):
        canvas[row : row + _LINE, start : min(start + _DASH, right)] = BASELINE_COLOR


def _draw_metric_names(canvas: np.ndarray, layout: _Layout, figures: _Figures) -> None:
    room = layout.group + _GROUP_GAP - _LABEL_GAP
    for metric, name in enumerate(figures.metrics):
        shown = fit_text(name, room)
        x = layout.group_left(metric) + (layout.group - text_width(shown)) // 2
        draw_text(canvas, shown, (x, layout.axis_y + _TICK_GAP // 2), _TEXT, _INK)
