"""Pointing game and energy-based pointing game: the scores, the baselines, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tiny_presets import write_tiny_presets
from typer.testing import CliRunner

from fusioncam.cli import app
from fusioncam.evaluate import read_referring, score_map, summarize


def test_peak_inside_the_box_is_a_hit_and_energy_is_the_mass_share() -> None:
    heatmap = np.zeros((4, 4), np.float32)
    heatmap[1, 2] = 1.0  # grid cell (row 1, col 2) of a 40×40 image = pixels x 20–29, y 10–19
    inside = score_map(heatmap, (20, 10, 30, 20), (40, 40))
    assert inside.hit and inside.box_share == pytest.approx(100 / 1600)
    outside = score_map(heatmap, (0, 30, 10, 40), (40, 40))
    assert not outside.hit and outside.energy == 0.0
    assert 0.3 < inside.energy <= 1.0  # bilinear upsampling spreads some mass beyond the cell

    uniform = score_map(np.ones((4, 4), np.float32), (0, 0, 20, 40), (40, 40))
    assert uniform.energy == pytest.approx(0.5)  # a uniform map puts the box's share of mass in the box
    negative = score_map(-np.ones((4, 4), np.float32), (0, 0, 20, 40), (40, 40))
    assert negative.energy == 0.0  # negative evidence is no evidence


def test_summary_baseline_is_the_mean_box_share() -> None:
    heatmap = np.zeros((2, 2), np.float32)
    heatmap[0, 0] = 1.0
    scores = [score_map(heatmap, box, (10, 10)) for box in [(0, 0, 5, 5), (5, 5, 10, 10), (0, 0, 10, 10)]]
    report = summarize("blip", scores)
    assert report.count == 3 and report.pointing == pytest.approx(2 / 3)
    assert report.random_pointing == pytest.approx((0.25 + 0.25 + 1.0) / 3)


def test_malformed_records_are_named(tmp_path: Path) -> None:
    data = tmp_path / "ref.jsonl"
    data.write_text('{"image": "a.png", "text": "x", "box": [0, 0, 5, 5]}\n{"image": "b.png", "text": "y"}\n')
    with pytest.raises(ValueError, match=r"ref\.jsonl:2"):
        read_referring(data)


def test_eval_pointing_cli_on_synthetic_scenes(tmp_path: Path) -> None:
    presets = write_tiny_presets(tmp_path / "presets")
    runner = CliRunner()
    made = runner.invoke(app, ["synth", "--out", str(tmp_path / "scenes"), "--n", "6", "--image-size", "64"])
    assert made.exit_code == 0, made.stderr
    assert json.loads(made.stdout)["scenes"] == 6
    again = runner.invoke(app, ["synth", "--out", str(tmp_path / "scenes"), "--n", "6"])
    assert again.exit_code == 2 and "--overwrite" in again.stderr

    data = tmp_path / "scenes" / "referring.jsonl"
    args = ["eval", "pointing", "--data", str(data), "--model", str(presets["itm"]), "--block", "1", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["count"] == len(read_referring(data))
    assert 0 <= report["pointing"] <= 1 and 0 < report["random_pointing"] < 1
