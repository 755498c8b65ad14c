"""Deletion and insertion with a synthetic P(match) — the brightness of a fixed region — and maps whose curves and
areas are worked out by hand in each test."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fusioncam.faithfulness import (
    CausalSettings,
    deletion_curve,
    deletion_insertion,
    insertion_curve,
    salience_order,
)

WHITE = np.full((4, 4, 3), 255, np.uint8)
TOP_LEFT = (slice(0, 2), slice(0, 2))  # the 4 pixels the synthetic matcher looks at


class Brightness:
    """P(match) = mean brightness of `region` / 255; records every image and the size of every call."""

    def __init__(self, region: tuple[slice, slice] = (slice(None), slice(None))) -> None:
        self.region = region
        self.images: list[np.ndarray] = []
        self.calls: list[int] = []

    def __call__(self, images: list[np.ndarray]) -> list[float]:
        self.images += [image.copy() for image in images]
        self.calls.append(len(images))
        return [float(image[self.region].mean()) / 255 for image in images]


def ranking(first: tuple[slice, slice]) -> np.ndarray:
    """A 4×4 map that ranks the pixels of `first` above all others (distinct values, so no ties)."""
    heatmap = np.arange(16, dtype=np.float32).reshape(4, 4) / 16
    heatmap[first] += 10
    return heatmap


def test_deletion_curve_and_area_of_a_perfect_and_an_inverted_map() -> None:
    settings = CausalSettings(steps=8)  # 2 of the 16 pixels per step
    perfect = deletion_curve(WHITE, ranking(TOP_LEFT), Brightness(TOP_LEFT), settings)
    np.testing.assert_allclose(perfect.fractions, np.arange(9) / 8)
    # The region's 4 pixels go first, two per step: brightness 1, 1/2, 0, then 0 to the end.
    np.testing.assert_allclose(perfect.probabilities, [1, 0.5, 0, 0, 0, 0, 0, 0, 0])
    assert perfect.auc == pytest.approx((1 + 0.5) / 2 / 8 + (0.5 + 0) / 2 / 8)

    inverted = deletion_curve(WHITE, -ranking(TOP_LEFT), Brightness(TOP_LEFT), settings)
    np.testing.assert_allclose(inverted.probabilities, [1, 1, 1, 1, 1, 1, 1, 0.5, 0])
    assert inverted.auc == pytest.approx(6 / 8 + (1 + 0.5) / 2 / 8 + (0.5 + 0) / 2 / 8)
    assert perfect.auc < inverted.auc


def test_insertion_starts_from_the_documented_blur_and_restores_the_salient_pixels_first() -> None:
    image = np.zeros((4, 4, 3), np.uint8)
    image[TOP_LEFT] = 255
    blurred = cv2.GaussianBlur(image, (11, 11), 5)  # RISE's kernel and σ, OpenCV's reflected border
    start = blurred[TOP_LEFT].mean() / 255
    assert 0 < start < 1

    matcher = Brightness(TOP_LEFT)
    perfect = insertion_curve(image, ranking(TOP_LEFT), matcher, CausalSettings(steps=4))
    np.testing.assert_array_equal(matcher.images[0], blurred)
    np.testing.assert_array_equal(matcher.images[-1], image)
    np.testing.assert_allclose(perfect.probabilities, [start, 1, 1, 1, 1])  # the region's 4 pixels: step 1
    assert perfect.auc == pytest.approx((start + 1) / 2 / 4 + 3 / 4)

    inverted = insertion_curve(image, -ranking(TOP_LEFT), Brightness(TOP_LEFT), CausalSettings(steps=4))
    np.testing.assert_allclose(inverted.probabilities, [start, start, start, start, 1])
    assert inverted.auc == pytest.approx(3 / 4 * start + (start + 1) / 2 / 4)
    assert perfect.auc > inverted.auc


def test_unequal_steps_change_floor_of_k_n_over_steps_pixels_and_the_area_uses_the_true_fractions() -> None:
    matcher = Brightness()
    curve = deletion_curve(WHITE, np.zeros((4, 4)), matcher, CausalSettings(steps=5))
    changed = [0, 3, 6, 9, 12, 16]  # ⌊k·16/5⌋
    np.testing.assert_allclose(curve.fractions, np.array(changed) / 16)
    assert [int((image == 0).all(axis=2).sum()) for image in matcher.images] == changed
    # The whole image's brightness is 1 − x exactly, and the trapezoid rule is exact for a straight line.
    np.testing.assert_allclose(curve.probabilities, 1 - curve.fractions)
    assert curve.auc == pytest.approx(0.5)


def test_equal_values_are_taken_in_row_major_order() -> None:
    np.testing.assert_array_equal(salience_order(np.array([[1.0, 2.0], [2.0, 1.0]])), [1, 2, 0, 3])
    top_row = (slice(0, 1), slice(None))
    curve = deletion_curve(WHITE, np.ones((4, 4)), Brightness(top_row), CausalSettings(steps=4))
    np.testing.assert_allclose(curve.probabilities, [1, 0, 0, 0, 0])  # a flat map deletes the top row first


def test_deleted_pixels_take_the_fill_colour() -> None:
    matcher = Brightness()
    deletion_curve(WHITE, np.zeros((4, 4)), matcher, CausalSettings(steps=2, fill=(10, 20, 30)))
    np.testing.assert_array_equal(matcher.images[1][:2], np.broadcast_to([10, 20, 30], (2, 4, 3)))
    np.testing.assert_array_equal(matcher.images[1][2:], 255)
    np.testing.assert_array_equal(matcher.images[2], np.broadcast_to([10, 20, 30], (4, 4, 3)))


def test_images_reach_probability_in_chunks_of_batch_size() -> None:
    matcher = Brightness(TOP_LEFT)
    both = deletion_insertion(WHITE, ranking(TOP_LEFT), matcher, CausalSettings(steps=8, batch_size=4))
    assert matcher.calls == [4, 4, 1, 4, 4, 1]  # 9 images per curve
    assert both.deletion.auc == pytest.approx(0.125)
    assert both.insertion.auc == pytest.approx(1.0)  # a white image blurs to itself
    summary = both.to_dict()
    assert summary["deletion_auc"] == pytest.approx(0.125) and summary["insertion_auc"] == pytest.approx(1.0)
    assert summary["fractions"] == pytest.approx([k / 8 for k in range(9)])
    assert summary["deletion"] == pytest.approx([1, 0.5, 0, 0, 0, 0, 0, 0, 0])


def test_what_cannot_be_measured_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="upsample_map"):
        deletion_curve(WHITE, np.zeros((2, 2)), Brightness())
    with pytest.raises(ValueError, match="exceeds the image's 16 pixels"):
        deletion_curve(WHITE, np.zeros((4, 4)), Brightness(), CausalSettings(steps=17))
    with pytest.raises(ValueError, match="returned 1 values for 4 images"):
        deletion_curve(WHITE, np.zeros((4, 4)), lambda images: [0.5], CausalSettings(steps=4, batch_size=4))
    with pytest.raises(ValueError, match="odd"):
        CausalSettings(blur_kernel=10)
    with pytest.raises(ValueError, match="0–255"):
        CausalSettings(fill=300)
    with pytest.raises(ValueError, match="triple"):
        CausalSettings(fill=0.5)  # type: ignore[arg-type]
