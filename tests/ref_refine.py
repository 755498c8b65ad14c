"""Reference checks for the SAM refinement of the `blip_esam_itm` LAVIS fork (`fusioncam.explain.refine`).

Tolerances are the cases' READMEs': points, sizes, scaled points and label weights exact, point scores rtol 1e-5,
enhanced heat maps atol 1e-5, masks 1e-4·max|ref|; the SAM outputs that `config.json` measured float32 against
float64 for are checked at `Case.atol`, the rule the other cases' tolerances are made by (stricter here).
"""

from __future__ import annotations

import torch
from converters import efficient_sam_config
from refcase import Case

from fusioncam.checkpoints import load_efficient_sam_weights, read_state_dict
from fusioncam.explain.refine import (
    blend_mask,
    fit_size,
    label_weights,
    prompts_from_heatmap,
    refine_heatmaps,
    resize_mask_to_grid,
    scale_points,
    shrink_image,
    smooth_heatmap,
)
from fusioncam.models.efficient_sam import EfficientSam

ENHANCED_ATOL = 1e-5
SCORE_RTOL = 1e-5


def _relative_atol(case: Case, name: str, rel: float) -> float:
    return rel * max(1.0, case.outputs[name].abs().max().item())


def _assert_exact(case: Case, name: str, actual: torch.Tensor) -> None:
    expected = case.outputs[name]
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
    assert torch.equal(actual, expected), f"{name}: {actual.tolist()} != {expected.tolist()}"


def _fork_2d_mask(mask: torch.Tensor) -> torch.Tensor:
    """The fork's helper squeezes a 3-D mask itself (`mask[0]` if one channel, else the channel mean); ours
    treats leading dimensions as a batch, so that squeeze is the caller's (the fork's own call passes 2-D)."""
    if mask.ndim == 2:
        return mask
    return mask[0] if mask.shape[0] == 1 else mask.float().mean(0)


def check_esam_refine_helpers(case: Case) -> None:
    heatmaps = case.inputs["heatmaps"]
    # No tolerance is given; the README's torch emulation matches to ~1e-7 relative: allow 10×.
    case.check("heatmaps_smoothed", smooth_heatmap(heatmaps), 1e-6 * case.outputs["heatmaps_smoothed"].abs().max())

    for entry in case.meta["extract_points_from_heatmap"]:
        prompt = prompts_from_heatmap(heatmaps[entry["heatmap_index"]], entry["num_points"])
        _assert_exact(case, f"extract/{entry['id']}/points", prompt.points_xy)
        expected_scores = case.outputs[f"extract/{entry['id']}/point_scores"]
        torch.testing.assert_close(prompt.scores, expected_scores, rtol=SCORE_RTOL, atol=0)

    for entry in case.meta["scale_points_to_image_size"]:
        points = case.inputs[f"scale/{entry['id']}/points_in"]
        scaled = scale_points(points, tuple(entry["orig_size_hw"]), tuple(entry["target_size_hw"]))
        _assert_exact(case, f"scale/{entry['id']}/points_out", scaled)

    for entry in case.meta["enhance_heatmap_with_mask"]:
        prefix = f"enhance/{entry['id']}"
        heatmap, mask = case.inputs[f"{prefix}/heatmap"], _fork_2d_mask(case.inputs[f"{prefix}/mask"])
        resized = resize_mask_to_grid(mask.float(), tuple(heatmap.shape))
        case.check(f"{prefix}/mask_resized", resized, _relative_atol(case, f"{prefix}/mask_resized", 1e-5))
        case.check(f"{prefix}/enhanced", blend_mask(heatmap, mask, entry["alpha"]), ENHANCED_ATOL)

    for entry in case.meta["label_weights"]:
        if not entry["point_scores"]:
            continue  # the fork's empty-prompt case: our prompts always have num_points ≥ 1 points
        prefix = f"label_weights/{entry['id']}"
        weights = label_weights(case.inputs[f"{prefix}/point_scores"])
        _assert_exact(case, f"{prefix}/normalized_scores", weights)
        _assert_exact(case, f"{prefix}/input_labels", weights.float()[None, None])

    for entry in case.meta["forward_prep"]:
        prefix = f"forward_prep/{entry['id']}"
        size = fit_size(tuple(entry["image_hw"]))
        assert list(size) == entry["resized_hw"], f"{prefix}: resized to {size}, expected {entry['resized_hw']}"
        prompt = prompts_from_heatmap(heatmaps[entry["heatmap_index"]], case.config["forward_constants"]["num_points"])
        assert prompt.points_xy.tolist() == entry["points_on_heatmap_xy"]
        pixels = prompt.to_pixels(size)
        _assert_exact(case, f"{prefix}/scaled_points", pixels)
        _assert_exact(case, f"{prefix}/input_points", pixels.float()[None, None])
        _assert_exact(case, f"{prefix}/input_labels", prompt.label_weights.float()[None, None])


def check_esam_refine_chain(case: Case) -> None:
    sam = EfficientSam(efficient_sam_config(case.config["architecture"])).eval()
    load_efficient_sam_weights(sam, read_state_dict(case.path / "weights.safetensors"), "reference weights")
    num_points = case.config["constants"]["num_points"]

    for call in case.meta["calls"]:
        images, heatmaps = case.inputs[f"call{call['call']}/image"], case.inputs[f"call{call['call']}/heat_maps"]
        # The whole step through the public, batched API: every image of the call in one encoder/decoder batch.
        refined = refine_heatmaps(sam, images, heatmaps, num_points=num_points)
        case.check(f"call{call['call']}/enhanced_heat_maps", torch.stack([r.heatmap for r in refined]), ENHANCED_ATOL)

        for sample in call["samples"]:
            index, prefix = sample["sample"], f"call{call['call']}/sample{sample['sample']}"
            prompt = prompts_from_heatmap(heatmaps[index], num_points)
            _assert_exact(case, f"{prefix}/points", prompt.points_xy)
            size = fit_size(tuple(sample["image_hw"]))
            assert list(size) == sample["resized_hw"]
            pixels = prompt.to_pixels(size)
            _assert_exact(case, f"{prefix}/scaled_points", pixels)
            points, labels = pixels.float()[None, None], prompt.label_weights.float()[None, None]
            _assert_exact(case, f"{prefix}/input_points", points)
            _assert_exact(case, f"{prefix}/input_labels", labels)

            # The fork's EfficientSAM call, one sample at a time on the shrunk image.
            with torch.no_grad():
                prediction = sam(shrink_image(images[index : index + 1]), points, labels)
            case.check(f"{prefix}/mask", prediction.upscaled()[0, 0, 0], case.atol(f"{prefix}/mask"))
            case.check(f"{prefix}/iou_predictions", prediction.iou_predictions, case.atol(f"{prefix}/iou_predictions"))
            lowres = f"{prefix}/masks_lowres_all3"
            case.check(lowres, prediction.low_res_masks, 1e-4 * case.outputs[lowres].abs().max())

            # What the batched API reports for the sample: the first mask's IoU, the fork's weights and points.
            result = refined[index]
            iou = case.outputs[f"{prefix}/iou_predictions"][0, 0, 0]
            assert (result.iou - iou).abs() <= case.atol(f"{prefix}/iou_predictions")
            assert torch.equal(result.weights.float(), labels[0, 0])
            expected_points = scale_points(pixels.double(), size, tuple(sample["image_hw"])).float()
            assert torch.equal(result.points, expected_points)
            assert result.mask.shape == images.shape[-2:] and result.mask.dtype == torch.bool


CHECKS = {"esam_refine_helpers": check_esam_refine_helpers, "esam_refine_chain": check_esam_refine_chain}
