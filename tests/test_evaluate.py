"""Pointing game and energy-based pointing game: the scores, the baselines, the CLI; ITM accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tiny_presets import write_tiny_presets
from typer.testing import CliRunner

import fusioncam
from fusioncam import evaluate
from fusioncam.cli import app
from fusioncam.evaluate import (
    PEAK_IN_BOX,
    GroundingSettings,
    Referring,
    itm_accuracy,
    match_probabilities,
    mismatched_texts,
    read_referring,
    score_map,
)
from fusioncam.grounding import summarize_grounding
from fusioncam.synth import synth_scene


def _box_record(box: tuple[int, int, int, int]) -> Referring:
    return Referring(Path("scene.png"), "a thing", box)


def test_peak_inside_the_box_is_a_hit_and_energy_is_the_mass_share() -> None:
    heatmap = np.zeros((4, 4), np.float32)
    heatmap[1, 2] = 1.0  # grid cell (row 1, col 2) of a 40×40 image = pixels x 20–29, y 10–19
    inside = score_map(heatmap, _box_record((20, 10, 30, 20)), (40, 40), PEAK_IN_BOX)
    assert inside.hit and inside.region_share == pytest.approx(100 / 1600)
    outside = score_map(heatmap, _box_record((0, 30, 10, 40)), (40, 40), PEAK_IN_BOX)
    assert not outside.hit and outside.energy == 0.0
    assert 0.3 < inside.energy <= 1.0  # bilinear upsampling spreads some mass beyond the cell
    # The published game forgives 15 px: a peak at row 14 (a map at the image's resolution) is 15 px above a box
    # whose top row is 29 (a hit), 16 px above one whose top row is 30 (a miss), 15 px again with no tolerance.
    sharp = np.zeros((40, 40), np.float32)
    sharp[14, 25] = 1.0
    assert score_map(sharp, _box_record((20, 29, 30, 40)), (40, 40), GroundingSettings()).hit
    assert not score_map(sharp, _box_record((20, 30, 30, 40)), (40, 40), GroundingSettings()).hit
    assert not score_map(sharp, _box_record((20, 29, 30, 40)), (40, 40), PEAK_IN_BOX).hit

    uniform = score_map(np.ones((4, 4), np.float32), _box_record((0, 0, 20, 40)), (40, 40), PEAK_IN_BOX)
    assert uniform.energy == pytest.approx(0.5)  # a uniform map puts the box's share of mass in the box
    negative = score_map(-np.ones((4, 4), np.float32), _box_record((0, 0, 20, 40)), (40, 40), PEAK_IN_BOX)
    assert negative.energy == 0.0  # negative evidence is no evidence


def test_summary_baseline_is_the_mean_box_share() -> None:
    heatmap = np.zeros((2, 2), np.float32)
    heatmap[0, 0] = 1.0
    boxes = [(0, 0, 5, 5), (5, 5, 10, 10), (0, 0, 10, 10)]
    report = summarize_grounding([score_map(heatmap, _box_record(box), (10, 10), PEAK_IN_BOX) for box in boxes])
    assert report.count == 3 and report.pointing == pytest.approx(2 / 3)
    assert report.random_pointing == pytest.approx((0.25 + 0.25 + 1.0) / 3)  # with no tolerance: the box's share
    assert report.random_energy == pytest.approx((0.25 + 0.25 + 1.0) / 3)


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
    args = ["eval", "pointing", "--data", str(data), "--model", str(presets["itm"]), "--block", "1", "--jsonl"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["count"] == len(read_referring(data))
    assert 0 <= report["pointing"] <= 1 and 0 < report["random_pointing"] < 1

    args = ["eval", "itm", "--data", str(data), "--model", str(presets["itm"]), "--jsonl", "--seed", "3"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    matcher = fusioncam.load(str(presets["itm"]), device="cpu")
    expected = itm_accuracy(matcher, read_referring(data), negatives_seed=3)
    assert json.loads(result.stdout)["accuracy"] == pytest.approx(expected.accuracy)
    assert json.loads(result.stdout)["count"] == expected.count
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "x.png", "text": "a dog"}\nnot json\n')
    result = runner.invoke(app, ["eval", "itm", "--data", str(bad), "--model", str(presets["itm"])])
    assert result.exit_code == 2 and "bad.jsonl:2" in result.stderr


def _records(*pairs: tuple[str, str]) -> list[Referring]:
    return [Referring(Path(image), text, (0, 0, 1, 1)) for image, text in pairs]


def test_a_mismatched_text_is_never_one_said_of_the_image() -> None:
    records = _records(
        ("a.png", "the red circle"),
        ("a.png", "the blue square"),
        ("b.png", "The red circle."),  # the same text once cleaned: never a negative for a.png
        ("b.png", "the green star"),
        ("c.png", "the pink ring"),
    )
    all_texts = {"the red circle", "the blue square", "the green star", "the pink ring"}
    for seed in range(10):
        negatives = mismatched_texts(records, seed)
        for record, negative in zip(records, negatives, strict=True):
            said = {r.text.lower().rstrip(".") for r in records if r.image == record.image}
            assert negative in all_texts - said
    assert mismatched_texts(records, 3) == mismatched_texts(records, 3)
    with pytest.raises(ValueError, match="nothing to mismatch"):
        mismatched_texts(_records(("a.png", "a dog"), ("b.png", "A dog.")))


def test_itm_accuracy_averages_true_and_mismatched_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    # True pairs score 0.9 except on d.png; mismatched ones 0.1 except on a.png: 3/4 right on each side.
    def probabilities(matcher, images, texts):
        out = []
        for image, group in zip(images, texts, strict=True):
            half = len(group) // 2  # true texts first, then as many mismatched ones
            out.append([0.2 if image == "d.png" else 0.9] * half + [0.7 if image == "a.png" else 0.1] * half)
        return out

    monkeypatch.setattr(evaluate, "load_image", lambda path: path.name)
    monkeypatch.setattr(evaluate, "match_probabilities", probabilities)
    records = _records(
        ("a.png", "the red circle"), ("b.png", "the blue square"), ("c.png", "the green star"), ("d.png", "the ring")
    )
    seen = []
    result = itm_accuracy(None, records, batch_size=3, on_image=seen.append)
    assert (result.count, result.positive, result.negative, result.accuracy) == (4, 0.75, 0.75, 0.75)
    assert seen == [1, 1, 1, 1]
    assert result.to_dict()["accuracy"] == 0.75


def test_batched_match_probabilities_are_what_score_gives(tmp_path: Path) -> None:
    matcher = fusioncam.load(str(write_tiny_presets(tmp_path / "presets")["itm"]), device="cpu")
    images = [synth_scene(index, image_size=64)[0].image for index in range(2)]
    texts = [["the red circle", "a blue square left of a star"], ["two cats"]]
    got = match_probabilities(matcher, images, texts)
    for image, group, probabilities in zip(images, texts, got, strict=True):
        assert probabilities == pytest.approx([score.itm_score for score in matcher.score(image, group)], abs=1e-5)
