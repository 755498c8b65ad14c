"""SAM refinement: the options DESIGN §5 offers beside the fork's behaviour, batching, and the errors we raise
where the fork printed and carried on. The numbers themselves are checked against the fork in `ref_refine.py`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusioncam.explain.refine import (
    MAX_PROMPT_SIDE,
    blend_mask,
    embed_images,
    prompts_from_heatmap,
    refine_heatmap,
    refine_heatmaps,
    resize_mask_to_grid,
    smooth_heatmap,
)
from fusioncam.models.efficient_sam import EfficientSam, EfficientSamConfig, ImageEncoderConfig, MaskDecoderConfig


@pytest.fixture(scope="module")
def sam() -> EfficientSam:
    """A tiny random EfficientSAM: 64² input, one block, 16² low-resolution masks."""
    torch.manual_seed(0)
    config = EfficientSamConfig(
        encoder=ImageEncoderConfig(image_size=64, width=32, depth=1, num_heads=2, neck_dim=32),
        decoder=MaskDecoderConfig(
            transformer_depth=1, transformer_mlp_dim=32, num_heads=2, iou_head_hidden_dim=16, upscaling_dims=(16, 8)
        ),
    )
    return EfficientSam(config).eval()


def _image(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _heatmaps(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) ** 4


class _Recorder:
    """Wraps `sam.predict` to record what it was given and, optionally, to replace the predicted IoUs."""

    def __init__(self, sam: EfficientSam, iou: list[float] | None = None) -> None:
        self.predict, self.iou, self.calls = sam.predict, iou, []

    def __call__(self, embedding, points, labels, multimask_output=True):
        prediction = self.predict(embedding, points, labels, multimask_output)
        if self.iou is not None:
            prediction.iou_predictions = torch.tensor(self.iou).expand_as(prediction.iou_predictions).clone()
        self.calls.append((points, labels, prediction))
        return prediction


def test_fork_labels_are_the_weights_and_foreground_labels_are_ones(sam, monkeypatch) -> None:
    recorder = _Recorder(sam)
    monkeypatch.setattr(sam, "predict", recorder)
    image, heatmap = _image(40, 60, 0), _heatmaps(24, 24)
    fork = refine_heatmap(sam, image, heatmap)
    foreground = refine_heatmap(sam, image, heatmap, labels="foreground")

    (_, fork_labels, _), (_, foreground_labels, _) = recorder.calls
    assert torch.equal(fork_labels[0, 0], fork.weights.float())
    assert fork_labels[0, 0, 0] == 1 and (fork_labels[0, 0, 1:] < 1).all()  # only the top point is a click
    assert torch.equal(foreground_labels, torch.ones_like(foreground_labels))
    assert torch.equal(foreground.weights, fork.weights)  # the weights are reported whatever SAM was given


@pytest.mark.parametrize(("mask_choice", "index"), [("first", 0), ("best-iou", 1)])
def test_mask_choice_picks_first_or_best_predicted_iou(sam, monkeypatch, mask_choice: str, index: int) -> None:
    recorder = _Recorder(sam, iou=[0.2, 0.9, 0.5])
    monkeypatch.setattr(sam, "predict", recorder)
    image = _image(50, 70, 1)
    refined = refine_heatmap(sam, image, _heatmaps(24, 24, seed=1), mask_choice=mask_choice)

    (_, _, prediction) = recorder.calls[0]
    expected_mask = prediction.upscaled()[0, 0, index] > 0  # the prompt size is the image's: 50×70 fits in 384
    assert refined.iou.item() == pytest.approx([0.2, 0.9, 0.5][index])
    assert torch.equal(refined.mask, expected_mask)
    assert refined.area.item() == pytest.approx(expected_mask.float().mean().item())


def test_masks_of_the_first_and_best_choice_differ_when_the_best_is_not_first(sam, monkeypatch) -> None:
    monkeypatch.setattr(sam, "predict", _Recorder(sam, iou=[0.1, 0.2, 0.9]))
    image, heatmap = _image(50, 70, 2), _heatmaps(24, 24, seed=2)
    first = refine_heatmap(sam, image, heatmap)
    best = refine_heatmap(sam, image, heatmap, mask_choice="best-iou")
    assert not torch.equal(first.heatmap, best.heatmap)
    assert torch.equal(first.points, best.points)


def test_probability_blend_blends_the_mask_probabilities(sam, monkeypatch) -> None:
    recorder = _Recorder(sam)
    monkeypatch.setattr(sam, "predict", recorder)
    image, heatmap = _image(50, 70, 3), _heatmaps(24, 24, seed=3)
    fork = refine_heatmap(sam, image, heatmap)
    probability = refine_heatmap(sam, image, heatmap, blend="probability")

    logits = recorder.calls[1][2].upscaled()[0, 0, 0]
    assert torch.equal(probability.heatmap, blend_mask(heatmap, logits.sigmoid()))
    assert torch.equal(fork.heatmap, blend_mask(heatmap, logits))
    assert not torch.allclose(fork.heatmap, probability.heatmap)
    assert torch.equal(fork.mask, probability.mask)  # only the heatmap changes


def test_batch_equals_one_image_at_a_time(sam) -> None:
    # Two images share a prompt size (one decoder batch); the large one is shrunk to 384 on its long side.
    images = [_image(60, 80, 3), _image(500, 300, 4), _image(60, 80, 5)]
    heatmaps = _heatmaps(3, 24, 24, seed=3)
    batched = refine_heatmaps(sam, images, heatmaps)
    for image, heatmap, together in zip(images, heatmaps, batched, strict=True):
        alone = refine_heatmap(sam, image, heatmap)
        torch.testing.assert_close(together.heatmap, alone.heatmap, rtol=0, atol=1e-6)
        torch.testing.assert_close(together.iou, alone.iou, rtol=0, atol=1e-6)
        assert torch.equal(together.mask, alone.mask)
        assert torch.equal(together.points, alone.points)
        assert torch.equal(together.weights, alone.weights)
        assert together.mask.shape == image.shape[:2]


def test_one_embedding_serves_several_heatmaps(sam, monkeypatch) -> None:
    image, heatmaps = _image(64, 48, 6), _heatmaps(3, 24, 24, seed=4)
    separately = [refine_heatmap(sam, image, heatmap) for heatmap in heatmaps]

    calls = []
    embed = sam.embed
    monkeypatch.setattr(sam, "embed", lambda images: calls.append(images.shape) or embed(images))
    (embedded,) = embed_images(sam, [image])
    stacked = refine_heatmap(sam, embedded, heatmaps)
    again = refine_heatmap(sam, embedded, heatmaps[0])
    assert len(calls) == 1

    assert stacked.heatmap.shape == (3, 24, 24) and stacked.mask.shape == (3, 64, 48)
    assert stacked.points.shape == (3, 5, 2) and stacked.iou.shape == (3,)
    for k, alone in enumerate(separately):
        torch.testing.assert_close(stacked.heatmap[k], alone.heatmap, rtol=0, atol=1e-6)
        assert torch.equal(stacked.mask[k], alone.mask)
    torch.testing.assert_close(again.heatmap, separately[0].heatmap, rtol=0, atol=1e-6)


def test_large_images_are_prompted_shrunk_and_answered_at_their_own_size(sam) -> None:
    (embedded,) = embed_images(sam, [_image(1000, 500, 7)])
    assert embedded.size == (1000, 500) and embedded.prompt_size == (MAX_PROMPT_SIDE, MAX_PROMPT_SIDE // 2)
    refined = refine_heatmap(sam, embedded, _heatmaps(24, 24, seed=5))
    assert refined.mask.shape == (1000, 500)
    assert (refined.points >= 0).all() and (refined.points[:, 0] < 500).all() and (refined.points[:, 1] < 1000).all()
    assert refined.heatmap.min() == 0 and refined.heatmap.max() == pytest.approx(1, abs=1e-6)


def test_grid_comes_from_the_heatmap(sam) -> None:
    heatmap = torch.zeros(16, 20)
    heatmap[3, 15] = 1.0
    prompt = prompts_from_heatmap(heatmap, num_points=3)
    assert prompt.grid == (16, 20)
    assert prompt.points_xy[0].tolist() == [15, 3]
    assert prompt.to_pixels((160, 200))[0].tolist() == [150, 30]
    refined = refine_heatmap(sam, _image(160, 200, 8), heatmap.numpy(), num_points=3)
    assert refined.heatmap.shape == (16, 20)
    assert refined.points[0].tolist() == [150.0, 30.0]


def test_an_exhausted_map_gives_origin_points_with_zero_score() -> None:
    heatmap = torch.zeros(24, 24)
    heatmap[7, 15] = 1.0
    prompt = prompts_from_heatmap(heatmap, num_points=4)
    assert prompt.points_xy.tolist() == [[15, 7], [0, 0], [0, 0], [0, 0]]
    assert prompt.scores[1:].tolist() == [0.0, 0.0, 0.0]
    assert prompt.label_weights.tolist() == [1.0, 0.1, 0.1, 0.1]


def test_a_map_without_positive_values_gets_centre_and_quadrants_then_greedy_picks() -> None:
    heatmap = -torch.rand(20, 28, generator=torch.Generator().manual_seed(9))
    prompt = prompts_from_heatmap(heatmap, num_points=6)
    assert prompt.points_xy[:5].tolist() == [[14, 10], [7, 5], [21, 5], [7, 15], [21, 15]]
    assert prompt.scores[:5].tolist() == [1.0, 0.9, 0.8, 0.7, 0.6]
    # The sixth is what the fork's loop picks next: the (negative) maximum of the untouched smoothed map.
    smoothed = smooth_heatmap(heatmap)
    y, x = divmod(int(smoothed.argmax()), 28)
    assert prompt.points_xy[5].tolist() == [x, y]
    assert prompt.scores[5].item() == smoothed[y, x].item() < 0


def test_prompts_are_batched_over_leading_dimensions() -> None:
    heatmaps = _heatmaps(2, 3, 24, 24, seed=6)
    heatmaps[1, 2] = 0
    batched = prompts_from_heatmap(heatmaps)
    assert batched.points_xy.shape == (2, 3, 5, 2)
    for i in range(2):
        for k in range(3):
            alone = prompts_from_heatmap(heatmaps[i, k])
            assert torch.equal(batched.points_xy[i, k], alone.points_xy)
            assert torch.equal(batched.scores[i, k], alone.scores)


def test_smoothing_keeps_a_constant_map_even_smaller_than_the_kernel() -> None:
    constant = torch.full((3, 2), 0.25)
    torch.testing.assert_close(smooth_heatmap(constant), constant, rtol=0, atol=1e-7)


def test_zoom_last_line_rule() -> None:
    # scipy's last sample along 48 rows falls just outside the input (0); along 30 columns it does not.
    resized = resize_mask_to_grid(torch.ones(48, 30), (24, 24))
    assert (resized[-1] == 0).all()
    assert (resized[:-1] == 1).all()


def test_blend_divides_logits_by_255_and_keeps_a_constant_result() -> None:
    heatmap = torch.linspace(0, 1, 24 * 24).reshape(24, 24)
    logits = 250 * _heatmaps(30, 36) - 50  # 30×36: no zoom last-line rule
    torch.testing.assert_close(blend_mask(heatmap, logits), blend_mask(heatmap, logits / 255), rtol=0, atol=1e-6)
    assert not torch.allclose(blend_mask(heatmap, logits), blend_mask(heatmap, logits / 200), atol=1e-3)
    assert torch.equal(blend_mask(torch.zeros(24, 24), torch.zeros(32, 32)), torch.zeros(24, 24))


@pytest.mark.parametrize(
    ("heatmap", "message"),
    [
        (torch.full((24, 24), float("nan")), "NaN or infinite"),
        (torch.tensor([[0.0, float("inf")]]), "NaN or infinite"),
        (torch.zeros(24), "at least 2 dimensions"),
        (torch.zeros(0, 24), "at least 2 dimensions"),
        (torch.zeros(2, 3, 24, 24), "for one image"),
        ([[0.1, 0.2]], "tensor or an array"),
    ],
)
def test_bad_heatmaps_raise(sam, heatmap, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        refine_heatmap(sam, _image(32, 32, 0), heatmap)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_points": 0}, "num_points"),
        ({"num_points": 7}, "at most 6 points"),
        ({"labels": "weights"}, "labels must be one of fork, foreground"),
        ({"mask_choice": "best"}, "mask_choice must be one of first, best-iou"),
        ({"blend": "logits"}, "blend must be one of fork, probability"),
        ({"alpha": 1.5}, "alpha"),
    ],
)
def test_bad_options_raise(sam, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        refine_heatmap(sam, _image(32, 32, 0), _heatmaps(24, 24), **kwargs)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((0, 10, 3), np.uint8), "empty"),
        (np.zeros((10, 10), np.uint8), "HxWx3 uint8"),
        (torch.zeros(3, 10, 0), "empty"),
        (torch.zeros(3, 10, 10, dtype=torch.uint8), "float"),
        (torch.zeros(10, 10, 3), r"\[3, H, W\]"),
    ],
)
def test_bad_images_raise(sam, image, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        refine_heatmap(sam, image, _heatmaps(24, 24))


def test_one_heatmap_per_image(sam) -> None:
    with pytest.raises(ValueError, match="2 images for 3 heatmaps"):
        refine_heatmaps(sam, [_image(32, 32, 0), _image(32, 32, 1)], _heatmaps(3, 24, 24))
    with pytest.raises(ValueError, match="no heatmaps"):
        refine_heatmaps(sam, [_image(32, 32, 0)], [])
    with pytest.raises(ValueError, match="num_points must be at least 1"):
        prompts_from_heatmap(_heatmaps(24, 24), num_points=0)


def test_embedded_and_raw_images_are_not_mixed(sam) -> None:
    (embedded,) = embed_images(sam, [_image(32, 32, 0)])
    with pytest.raises(TypeError, match="already embedded"):
        refine_heatmaps(sam, [_image(32, 32, 1), embedded], _heatmaps(2, 24, 24))
