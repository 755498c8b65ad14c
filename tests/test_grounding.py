"""Grounding metrics on hand-made maps whose answers are worked out by hand (or by brute force) in each test."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fusioncam.explain.render import upsample_map
from fusioncam.grounding import (
    Box,
    best_proposal,
    energy_share,
    peak,
    peak_distance,
    pointing_game,
    proposal_hit,
    proposal_score,
    region_mask,
    score_grounding,
    summarize_grounding,
)

SHAPE = (60, 80)  # h, w
BOX = Box(20, 10, 30, 20)  # pixels: columns 20–29, rows 10–19


def spike(x: int, y: int, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """A map whose only positive pixel is (x, y)."""
    heatmap = np.zeros(shape, np.float32)
    heatmap[y, x] = 1.0
    return heatmap


def box_as_mask(box: Box, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[int(box.y0) : int(box.y1), int(box.x0) : int(box.x1)] = True
    return mask


@pytest.mark.parametrize("as_mask", [False, True], ids=["box", "mask"])
@pytest.mark.parametrize(
    ("x", "y", "distance"),
    [
        (25, 15, 0.0),  # inside
        (29, 19, 0.0),  # the region's last pixel
        (44, 15, 15.0),  # 15 columns right of column 29
        (45, 15, 16.0),
        (25, 34, 15.0),  # 15 rows below row 19
        (25, 35, 16.0),
        (38, 31, 15.0),  # off the corner (29, 19) by (9, 12): √(81 + 144)
        (38, 32, math.sqrt(81 + 169)),
    ],
)
def test_pointing_game_hits_within_15_pixels_of_the_region(x: int, y: int, distance: float, as_mask: bool) -> None:
    region = box_as_mask(BOX) if as_mask else BOX
    heatmap = spike(x, y)
    assert peak_distance(heatmap, region) == pytest.approx(distance, abs=1e-5)
    assert pointing_game(heatmap, region) == (distance <= 15)
    assert pointing_game(heatmap, region, tolerance=0) == (distance == 0)


def test_peak_distance_to_an_irregular_mask_is_the_nearest_pixel_centre() -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((30, 40)) < 0.02
    ys, xs = np.nonzero(mask)
    for _ in range(20):
        x, y = int(rng.integers(40)), int(rng.integers(30))
        brute_force = min(math.hypot(x - u, y - v) for u, v in zip(xs, ys, strict=True))
        assert peak_distance(spike(x, y, (30, 40)), mask) == pytest.approx(brute_force, abs=1e-5)


def test_a_tie_of_the_maximum_goes_to_the_first_pixel_in_row_major_order() -> None:
    heatmap = spike(50, 5) + spike(2, 40)
    assert peak(heatmap) == (50, 5)
    assert not pointing_game(heatmap, Box(0, 38, 4, 42))  # only the later of the two peaks is near this box
    assert pointing_game(heatmap, Box(48, 3, 52, 7))


def test_a_float_box_covers_every_pixel_it_touches_clipped_to_the_image() -> None:
    touched = region_mask(Box(10.2, 5.5, 12.1, 7.0), (20, 20))
    expected = np.zeros((20, 20), bool)
    expected[5:7, 10:13] = True  # columns 10, 11, 12 (12.1 reaches into 12); rows 5, 6 (7.0 ends at row 7's edge)
    np.testing.assert_array_equal(touched, expected)
    assert region_mask(Box(-5, -5, 2, 3), (10, 10)).sum() == 2 * 3
    with pytest.raises(ValueError, match="no pixel inside"):
        region_mask(Box(12, 0, 15, 5), (10, 10))


def test_energy_is_the_share_of_positive_mass_inside_the_region() -> None:
    heatmap = np.ones((10, 10), np.float32)
    heatmap[0:5, 0:5] = 2.0  # 25 pixels × 2 = 50 inside
    heatmap[9, :] = -5.0  # clamped to 0: outside keeps 75 − 10 pixels × 1 = 65
    region = Box(0, 0, 5, 5)
    assert energy_share(heatmap, region) == pytest.approx(50 / 115)
    assert energy_share(heatmap, box_as_mask(region, (10, 10))) == pytest.approx(50 / 115)
    assert energy_share(np.zeros((10, 10)), region) == 0.0
    assert energy_share(-np.ones((10, 10)), region) == 0.0


def test_box_iou_and_coco_conversion() -> None:
    assert Box.from_xywh([10, 20, 30, 40]) == Box(10, 20, 40, 60)
    assert Box(0, 0, 10, 10).iou(Box(5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert Box(0, 0, 10, 10).iou(Box(10, 0, 20, 10)) == 0.0  # sharing an edge is no overlap
    assert Box(0, 0, 2, 2).iou(Box(0.5, 0.5, 1.5, 1.5)) == pytest.approx(1 / 4)
    with pytest.raises(ValueError, match="x1 > x0"):
        Box(5, 0, 5, 10)


def hot_square_with_warm_surround() -> tuple[np.ndarray, Box, Box]:
    """A 100×100 map: 1 on the square A = [40, 50)², 0.05 on the rest of B = [20, 80)², 0 elsewhere."""
    heatmap = np.zeros((100, 100), np.float32)
    heatmap[20:80, 20:80] = 0.05
    heatmap[40:50, 40:50] = 1.0
    return heatmap, Box(40, 40, 50, 50), Box(20, 20, 80, 80)


def test_box_accuracy_picks_by_sum_over_square_root_of_area() -> None:
    heatmap, small, large = hot_square_with_warm_surround()
    # By hand: A sums 100 over area 100 → 100 / 10 = 10; B sums 100 + 3500 × 0.05 = 275 over area 3600 → 275 / 60.
    assert proposal_score(heatmap, small) == pytest.approx(10.0)
    assert proposal_score(heatmap, large) == pytest.approx(275 / 60)
    plain_sums = [heatmap[20:80, 20:80].sum(), heatmap[40:50, 40:50].sum()]
    assert int(np.argmax(plain_sums)) == 0  # a plain sum would choose the large box …
    assert best_proposal(heatmap, [large, small]) == 1  # … the √area normalisation chooses the small one

    truth = Box(41, 41, 51, 51)  # IoU with A: 81 / 119 ≥ 0.5; with B: 100 / 3600
    assert proposal_hit(heatmap, [large, small], truth)
    assert not proposal_hit(heatmap, [large, small], Box(20, 20, 79, 80))  # B's twin: the chosen A misses it


def test_proposal_score_of_a_fractional_box_counts_touched_pixels_and_the_float_area() -> None:
    heatmap, small, _ = hot_square_with_warm_surround()
    wider = Box(39.5, 40, 50, 50)  # touches column 39: ten more pixels of 0.05
    assert proposal_score(heatmap, wider) == pytest.approx((100 + 10 * 0.05) / math.sqrt(10.5 * 10))
    assert best_proposal(heatmap, [small, small]) == 0  # equal scores: the first


def reach_share_by_brute_force(box: Box, shape: tuple[int, int], tolerance: float) -> float:
    """Share of pixels whose centre is within `tolerance` of the nearest pixel centre of an integer box."""
    height, width = shape
    near = 0
    for y in range(height):
        for x in range(width):
            dx = max(box.x0 - x, 0, x - (box.x1 - 1))
            dy = max(box.y0 - y, 0, y - (box.y1 - 1))
            near += math.hypot(dx, dy) <= tolerance
    return near / (height * width)


def test_scores_and_their_summary_with_chance_baselines() -> None:
    heatmap, small, large = hot_square_with_warm_surround()
    shape = heatmap.shape
    on_target = score_grounding(heatmap, small, proposals=[large, small])
    assert on_target.hit and on_target.distance == 0.0 and on_target.box_hit
    assert on_target.energy == pytest.approx(100 / 275)
    assert on_target.region_share == pytest.approx(100 / 10_000)
    assert on_target.reach_share == pytest.approx(reach_share_by_brute_force(small, shape, 15))
    assert on_target.proposal_share == pytest.approx(1 / 2)  # of A and B, only A overlaps A ≥ 0.5

    far = Box(80, 80, 100, 100)  # peak (40, 40) is √(40² + 40²) from (80, 80)
    mask = region_mask(far, shape)
    off_target = score_grounding(heatmap, mask, proposals=[large, small], box=far)
    assert not off_target.hit and off_target.distance == pytest.approx(40 * math.sqrt(2), abs=1e-4)
    assert off_target.energy == 0.0 and not off_target.box_hit and off_target.proposal_share == 0.0
    no_proposals = score_grounding(heatmap, large)
    assert no_proposals.box_hit is None and no_proposals.proposal_share is None

    report = summarize_grounding([on_target, off_target, no_proposals])
    assert report.count == 3 and report.pointing == pytest.approx(2 / 3)
    assert report.energy == pytest.approx((100 / 275 + 0 + 1) / 3)
    assert report.random_energy == pytest.approx((100 + 400 + 3600) / 10_000 / 3)
    expected_reach = [reach_share_by_brute_force(box, shape, 15) for box in (small, far, large)]
    assert report.random_pointing == pytest.approx(np.mean(expected_reach))
    assert report.box_count == 2 and report.box_accuracy == pytest.approx(1 / 2)
    assert report.random_box_accuracy == pytest.approx(1 / 4)
    assert report.to_dict()["box_accuracy"] == pytest.approx(1 / 2)
    assert summarize_grounding([no_proposals]).box_accuracy is None


def test_a_grid_heatmap_is_scored_after_upsampling_to_the_image() -> None:
    grid = np.zeros((4, 4), np.float32)
    grid[1, 2] = 1.0  # of a 40×40 image, the cell covering x 20–29, y 10–19
    full = upsample_map(grid, (40, 40))
    assert pointing_game(full, Box(20, 10, 30, 20), tolerance=0)
    with pytest.raises(ValueError, match="upsample_map"):
        score_grounding(grid, np.zeros((40, 40), bool))


def test_inputs_that_cannot_be_scored_are_refused_with_the_reason() -> None:
    heatmap = np.zeros((10, 10))
    with pytest.raises(ValueError, match="bool array"):
        energy_share(heatmap, np.ones((10, 10), np.uint8))
    with pytest.raises(ValueError, match="tolerance"):
        pointing_game(heatmap, Box(0, 0, 5, 5), tolerance=-1)
    with pytest.raises(ValueError, match="pass box="):
        score_grounding(heatmap, np.ones((10, 10), bool), proposals=[Box(0, 0, 5, 5)])
    with pytest.raises(ValueError, match="no proposal"):
        best_proposal(heatmap, [])
    with pytest.raises(ValueError, match="NaN"):
        peak(np.full((3, 3), np.nan))
