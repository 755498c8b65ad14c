"""SAM-refined heatmaps: the peaks of a Grad-CAM map prompt EfficientSAM, whose mask is blended back into the map.

This is what the `blip_esam_itm` LAVIS fork does, reproduced number for number (fixtures `esam_refine_helpers`
and `esam_refine_chain` are the spec):

1. `prompts_from_heatmap`: smooth the map like `scipy.ndimage.gaussian_filter(σ=1)`, pick peaks greedily, each
   pick suppressing its neighbourhood; a map with no positive value gets the centre and four quadrant points.
2. `embed_images`: EfficientSAM sees each image shrunk to at most 384 pixels a side (`fit_size`), and embeds it
   once; the embedding answers any number of heatmaps of that image.
3. `refine_heatmaps`: grid points scaled to that image (truncated to integers), one mask per heatmap, the mask
   logits resized to the heatmap grid like `scipy.ndimage.zoom(order=1)`, blended 0.5/0.5 with the heatmap and
   min-max normalised (`blend_mask`).

Three of the fork's choices change the result, and all are the defaults so that the numbers match it (DESIGN §5):
it passes the normalised peak scores as SAM *labels* (`labels="fork"`: EfficientSAM only recognises a label of
exactly 1, so only the top point is a foreground click and the others add nothing but their position); it takes
the first multimask output (`mask_choice="first"`); and its `blend_mask` receives SAM's *logits*, divides them by
255 (its test for a 0–255 mask) and min-max normalises, so the background's varying negative logits keep a share
of the map (`blend="fork"`). The SAM-proper alternatives, to
be compared by `eval`, are `labels="foreground"` (every point a foreground click), `mask_choice="best-iou"` and
`blend="probability"` (the mask's sigmoid probabilities are blended: background ≈ 0). Where the fork prints an
exception and carries on with the unrefined map, we raise an error that says what was wrong.

scipy is not a dependency: the two scipy operations are emulated with torch in float64 (see each function).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from fusioncam.choices import LABEL_MODES, MASK_BLENDS, MASK_CHOICES, LabelMode, MaskBlend, MaskChoice
from fusioncam.images import check_rgb
from fusioncam.models.efficient_sam import EfficientSam, ImageEmbedding, MaskPrediction

# The fork's constants.
MAX_PROMPT_SIDE = 384  # images are shrunk to this before EfficientSAM (which resizes them again to its own size)
SMOOTHING_SIGMA = 1.0
SMOOTHING_RADIUS = 4  # scipy's truncate=4 standard deviations: a 9-tap kernel
SUPPRESSION_LENGTH = 5.0  # a pick lowers the map by score·exp(−distance / this)
FALLBACK_POINTS = 5  # centre + 4 quadrant points for a map without a positive value
MIN_LABEL_WEIGHT = 0.1


def smooth_heatmap(heatmap: torch.Tensor) -> torch.Tensor:
    """`scipy.ndimage.gaussian_filter(h, sigma=1)` of float32 maps [..., h, w], batched over leading dimensions.

    scipy correlates a 9-tap kernel along axis 0 (down the columns), then along axis 1, each pass in float64 and
    written back in the float32 input's dtype; the border mode 'reflect' repeats the edge sample
    (d c b a | a b c d | d c b a), which also covers maps smaller than the kernel. We do the same passes in the same
    order and precision.
    """
    taps = torch.arange(-SMOOTHING_RADIUS, SMOOTHING_RADIUS + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * taps**2 / SMOOTHING_SIGMA**2)
    kernel = kernel / kernel.sum()
    smoothed = heatmap
    for dim in (-2, -1):
        size = smoothed.shape[dim]
        source = _reflect_indices(size, SMOOTHING_RADIUS)
        padded = smoothed.double().index_select(dim, source)
        taps_sum = sum(weight * padded.narrow(dim, tap, size) for tap, weight in enumerate(kernel.tolist()))
        smoothed = taps_sum.to(heatmap.dtype)
    return smoothed


def _reflect_indices(size: int, radius: int) -> torch.Tensor:
    """Indices of a length-`size` axis extended by `radius` on both sides in scipy's 'reflect' mode."""
    positions = torch.arange(-radius, size + radius) % (2 * size)
    return torch.where(positions < size, positions, 2 * size - 1 - positions)


@dataclass
class PointPrompt:
    """Point prompts picked from heatmaps [..., h, w]: `P` points per map, in the order they were picked.

    `points_xy` [..., P, 2] int64 grid cells (x = column, y = row); `scores` [..., P] float64, the smoothed heat
    at each pick after the suppression by earlier picks (0 once the map is exhausted; the fallback pattern's fixed
    1.0, 0.9, …); `label_weights` [..., P] float64, the scores min-max normalised to [0.1, 1] per map (all 1 when
    they are equal), which the fork hands to SAM as labels; `grid` the (h, w) the points refer to.
    """

    points_xy: torch.Tensor
    scores: torch.Tensor
    label_weights: torch.Tensor
    grid: tuple[int, int]

    def to_pixels(self, size: tuple[int, int]) -> torch.Tensor:
        """The points in the pixels of an image of `size` (H, W), truncated to integers as the fork does."""
        return scale_points(self.points_xy, self.grid, size)


def prompts_from_heatmap(heatmap: torch.Tensor | np.ndarray, num_points: int = 5) -> PointPrompt:
    """The fork's `extract_points_from_heatmap` for maps [..., h, w] (any grid; official BLIP models give 24×24).

    Greedy peaks of the smoothed float32 map: take the first maximum in row-major order, subtract
    score·exp(−distance / 5) (float64 kernel, stored back in float32) and clamp at 0. An exhausted map yields
    (0, 0) with score 0. A map whose first peak is not positive gets the centre (w//2, h//2) with score 1.0, then
    the quadrant points (w//4, h//4), (3w//4, h//4), (w//4, 3h//4), (3w//4, 3h//4) with scores 0.9 − 0.1·j. Past
    5 points such a map continues with greedy picks of the untouched smoothed map, as the fork's loop does (the
    fork then returns 4 points too many; we stop at `num_points`).
    """
    maps = _check_heatmaps(heatmap, min_dims=2)
    if num_points < 1:
        raise ValueError(f"num_points must be at least 1, got {num_points}")
    *batch, height, width = maps.shape
    smoothed = smooth_heatmap(maps).reshape(-1, height, width)
    points, scores = _greedy_peaks(smoothed, num_points)

    pattern_points, pattern_scores = _fallback_pattern(height, width, num_points)
    extra = num_points - len(pattern_scores)
    fallback_points = torch.cat([pattern_points.expand(len(points), -1, -1), points[:, :extra]], dim=1)
    fallback_scores = torch.cat([pattern_scores.expand(len(scores), -1), scores[:, :extra]], dim=1)
    no_peak = scores[:, 0] <= 0
    points = torch.where(no_peak[:, None, None], fallback_points, points)
    scores = torch.where(no_peak[:, None], fallback_scores, scores)

    return PointPrompt(
        points_xy=points.reshape(*batch, num_points, 2),
        scores=scores.reshape(*batch, num_points),
        label_weights=label_weights(scores).reshape(*batch, num_points),
        grid=(height, width),
    )


def _greedy_peaks(smoothed: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` greedy picks on each of the float32 maps [N, h, w]: int64 points [N, count, 2], float64 scores."""
    _, height, width = smoothed.shape
    rows = torch.arange(height, dtype=torch.float64)[:, None]
    cols = torch.arange(width, dtype=torch.float64)[None, :]
    remaining = smoothed.clone()
    points, scores = [], []
    for _ in range(count):
        flat_index = remaining.flatten(1).argmax(1)  # the first maximum, as numpy's argmax
        y, x = flat_index // width, flat_index % width
        score = remaining.flatten(1).gather(1, flat_index[:, None]).double()
        points.append(torch.stack([x, y], dim=-1))
        scores.append(score[:, 0])
        distance = torch.sqrt((cols - x[:, None, None]) ** 2 + (rows - y[:, None, None]) ** 2)
        suppression = torch.exp(-distance / SUPPRESSION_LENGTH) * score[:, :, None]
        remaining = (remaining.double() - suppression).to(smoothed.dtype).clamp(min=0)
    return torch.stack(points, dim=1), torch.stack(scores, dim=1)


def _fallback_pattern(height: int, width: int, num_points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first min(num_points, 5) points and scores the fork gives a map with no positive value."""
    corners = [(width // 4, height // 4), (width * 3 // 4, height // 4)]
    corners += [(width // 4, height * 3 // 4), (width * 3 // 4, height * 3 // 4)]
    points = [(width // 2, height // 2), *corners][: min(num_points, FALLBACK_POINTS)]
    scores = [1.0, *(0.9 - j * 0.1 for j in range(len(corners)))][: len(points)]
    return torch.tensor(points, dtype=torch.int64), torch.tensor(scores, dtype=torch.float64)


def label_weights(scores: torch.Tensor) -> torch.Tensor:
    """Scores [..., P] min-max normalised to [0.1, 1] per prompt, in float64; all 1 where the scores are equal."""
    scores = scores.double()
    low = scores.amin(-1, keepdim=True)
    high = scores.amax(-1, keepdim=True)
    spread = MIN_LABEL_WEIGHT + (1 - MIN_LABEL_WEIGHT) * (scores - low) / (high - low)
    return torch.where(high > low, spread, torch.ones_like(scores))


def scale_points(points: torch.Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> torch.Tensor:
    """Points [..., 2] (x, y) from a (h, w) frame to a (H, W) one, keeping their dtype.

    The products are taken in float64 and cast back, so integer points are truncated toward zero as in the fork,
    whose int64 array silently truncates on assignment (7 · 374/24 = 109.08 → 109); float points stay exact.
    """
    factors = torch.tensor([to_size[1] / from_size[1], to_size[0] / from_size[0]], dtype=torch.float64)
    return (points.double() * factors).to(points.dtype)


def fit_size(size: tuple[int, int], max_side: int = MAX_PROMPT_SIDE) -> tuple[int, int]:
    """The (H, W) the fork gives EfficientSAM: larger images shrunk to fit `max_side` with int() truncation.

    535×400 becomes 383×287, not 384×287; images that already fit are kept, never enlarged.
    """
    height, width = size
    if height <= max_side and width <= max_side:
        return height, width
    scale = min(max_side / height, max_side / width)
    return int(height * scale), int(width * scale)


def resize_mask_to_grid(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """`scipy.ndimage.zoom(mask, order=1)` of masks [..., H, W] onto a (h, w) grid, as float32.

    zoom(order=1) is bilinear with the corners aligned, except for one rule of its default mode='constant': the
    last output row is sampled at (h − 1)·((H − 1)/(h − 1)) in float64, and where that rounds above H − 1 it lies
    outside the input and is 0 (for h = 24 that happens for H = 28, 48, 55, 64, …). Likewise the last column.
    Interpolating in float64 and casting to float32 matches scipy, which computes in float64 too.
    """
    *batch, height, width = mask.shape
    flat = mask.reshape(-1, 1, height, width).double()
    resized = F.interpolate(flat, grid, mode="bilinear", align_corners=True)[:, 0]
    if _last_sample_outside(height, grid[0]):
        resized[:, -1, :] = 0
    if _last_sample_outside(width, grid[1]):
        resized[:, :, -1] = 0
    return resized.float().reshape(*batch, *grid)


def _last_sample_outside(size: int, out_size: int) -> bool:
    """Whether scipy's last sample coordinate along an axis of `size` rounds past the last input sample."""
    return out_size > 1 and (out_size - 1) * ((size - 1) / (out_size - 1)) > size - 1


def blend_mask(heatmap: torch.Tensor, mask: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """The fork's `enhance_heatmap_with_mask` for maps [..., h, w] and masks [..., H, W], batched; float32.

    The mask is resized to the heatmap grid (`resize_mask_to_grid`) and divided by 255 when its maximum exceeds 1
    (meant for 0–255 masks, it also hits SAM logits above 1, so the fork blends logits/255); then
    `alpha·heatmap + (1 − alpha)·mask` is min-max normalised per map (+1e-8 in the denominator), unless it is
    constant, which is returned as it is.
    """
    heatmap = heatmap.float()
    resized = resize_mask_to_grid(mask.float(), _size(heatmap))
    peak = resized.amax((-2, -1), keepdim=True)
    resized = torch.where(peak > 1.0, resized / 255.0, resized)
    blended = alpha * heatmap + (1 - alpha) * resized
    low = blended.amin((-2, -1), keepdim=True)
    high = blended.amax((-2, -1), keepdim=True)
    return torch.where(high > low, (blended - low) / (high - low + 1e-8), blended)


@dataclass
class SamImage:
    """One image encoded by EfficientSAM, reusable for any number of its heatmaps.

    `embedding` [C, h, w] is of the image shrunk to `prompt_size` (`fit_size`), the frame of the point prompts and
    of the mask that is blended into the heatmap; `size` is the image's own (H, W), that of the refined masks.
    """

    embedding: torch.Tensor
    size: tuple[int, int]
    prompt_size: tuple[int, int]


ImageInput = np.ndarray | torch.Tensor | SamImage


def shrink_image(pixels: torch.Tensor, max_side: int | None = MAX_PROMPT_SIDE) -> torch.Tensor:
    """Images [..., 3, H, W] resized to `fit_size` as the fork does: bilinear, no antialiasing, or kept as they are
    (always, with `max_side` None)."""
    if max_side is None:
        return pixels
    size = _size(pixels)
    target = fit_size(size, max_side)
    if target == size:
        return pixels
    flat = pixels.reshape(-1, *pixels.shape[-3:])
    return F.interpolate(flat, target, mode="bilinear", align_corners=False).reshape(*pixels.shape[:-2], *target)


@torch.no_grad()
def embed_images(
    sam: EfficientSam,
    images: torch.Tensor | Sequence[ImageInput],
    max_side: int | None = MAX_PROMPT_SIDE,
) -> list[SamImage]:
    """Encode images once for refinement: a [B, 3, H, W] float tensor in [0, 1], or a sequence of HxWx3 uint8 RGB
    arrays or [3, H, W] float tensors of any sizes.

    Images are shrunk to `fit_size` first (not with `max_side` None: SAM then resizes them itself, as the fusion
    was trained); those that end up the same size share one encoder batch. The one way from pictures to SAM
    embeddings: refinement and the fused encoder both come here.
    """
    pixels = _pixel_list(images)
    parameter = next(sam.parameters())
    shrunk = [shrink_image(image, max_side) for image in pixels]
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for index, image in enumerate(shrunk):
        groups[_size(image)].append(index)
    results: dict[int, SamImage] = {}
    for prompt_size, indices in groups.items():
        batch = torch.stack([shrunk[i] for i in indices]).to(parameter.device, parameter.dtype)
        with sam.autocast():
            embeddings = sam.embed(batch).embeddings
        for index, embedding in zip(indices, embeddings, strict=True):
            results[index] = SamImage(embedding, _size(pixels[index]), prompt_size)
    return [results[index] for index in range(len(pixels))]


def _size(tensor: torch.Tensor) -> tuple[int, int]:
    """The (H, W) of a [..., H, W] tensor."""
    return int(tensor.shape[-2]), int(tensor.shape[-1])


def _pixel_list(images: torch.Tensor | Sequence[ImageInput]) -> list[torch.Tensor]:
    """Images as a list of float [3, H, W] tensors in [0, 1], with an error naming the first bad one."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(f"an image tensor batch must be [B, 3, H, W], got {tuple(images.shape)}")
        images = list(images)
    elif isinstance(images, np.ndarray):
        raise TypeError("pass a sequence of HxWx3 images (e.g. [image]), not a single array")
    if len(images) == 0:
        raise ValueError("no images to refine")
    pixels = []
    for index, image in enumerate(images):
        what = f"images[{index}]"
        if isinstance(image, np.ndarray):
            check_rgb(image, what)
            pixels.append(torch.from_numpy(image).permute(2, 0, 1).float().div(255))
            continue
        if isinstance(image, SamImage):
            raise TypeError(f"{what} is already embedded: pass every image through embed_images, or none")
        if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
            shape = tuple(getattr(image, "shape", ()))
            raise ValueError(f"{what} must be an HxWx3 uint8 array or a [3, H, W] float tensor, got shape {shape}")
        if not image.is_floating_point():
            raise ValueError(f"{what}: a tensor image must be float in [0, 1], got {image.dtype}")
        if image.shape[1] == 0 or image.shape[2] == 0:
            raise ValueError(f"{what} is empty: shape {tuple(image.shape)}")
        pixels.append(image)
    return pixels


@dataclass
class Refined:
    """A SAM-refined heatmap of one image; leading dimension K when several heatmaps of the image were refined.

    `heatmap` [K?, h, w] float32 in [0, 1] (the blend); `mask` [K?, H, W] bool at the image's own resolution
    (the chosen mask's logits > 0, upscaled from the decoder's resolution to that size); `points` [K?, P, 2]
    float32, the prompt points (x, y) in the image's own pixels; `weights` [K?, P] the label weights (normalised
    peak scores); `labels` [K?, P] the labels SAM was given (the weights with the fork's labels, all 1 with
    foreground labels: SAM takes only a label of exactly 1 as a click); `iou` [K?] SAM's predicted IoU of the
    chosen mask; `area` [K?] the fraction of the image the mask covers.
    """

    heatmap: torch.Tensor
    mask: torch.Tensor
    points: torch.Tensor
    weights: torch.Tensor
    labels: torch.Tensor
    iou: torch.Tensor
    area: torch.Tensor


@torch.no_grad()
def refine_heatmaps(
    sam: EfficientSam,
    images: Sequence[ImageInput] | torch.Tensor,
    heatmaps: torch.Tensor | np.ndarray | Sequence[torch.Tensor | np.ndarray],
    num_points: int = 5,
    labels: LabelMode = "fork",
    mask_choice: MaskChoice = "first",
    alpha: float = 0.5,
    blend: MaskBlend = "fork",
) -> list[Refined]:
    """Refine heatmap i with image i: heatmaps [B, h, w] (one per image) or [B, K, h, w] (K per image).

    `images` are `SamImage`s from `embed_images` (to reuse their embeddings) or anything `embed_images` takes.
    Images whose prompt sizes agree are prompted in one decoder batch, a row of K heatmaps as K queries.
    """
    if labels not in LABEL_MODES:
        raise ValueError(f"labels must be one of {', '.join(LABEL_MODES)}; got {labels!r}")
    if mask_choice not in MASK_CHOICES:
        raise ValueError(f"mask_choice must be one of {', '.join(MASK_CHOICES)}; got {mask_choice!r}")
    if blend not in MASK_BLENDS:
        raise ValueError(f"blend must be one of {', '.join(MASK_BLENDS)}; got {blend!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    max_points = sam.config.max_num_points
    if not 1 <= num_points <= max_points:
        raise ValueError(f"num_points must be in 1..{max_points} (EfficientSAM takes at most {max_points} points)")
    if isinstance(heatmaps, torch.Tensor | np.ndarray):
        maps = _check_heatmaps(heatmaps, min_dims=3)
    elif len(heatmaps) == 0:
        raise ValueError("no heatmaps to refine")
    else:
        maps = torch.stack([_check_heatmaps(heatmap, min_dims=2) for heatmap in heatmaps])
    if maps.ndim > 4:
        raise ValueError(f"heatmaps must be [B, h, w] or [B, K, h, w], got {tuple(maps.shape)}")
    if isinstance(images, torch.Tensor):
        embedded = embed_images(sam, images)
    elif all(isinstance(image, SamImage) for image in images):
        embedded = [image for image in images if isinstance(image, SamImage)]
    else:
        embedded = embed_images(sam, images)  # refuses a SamImage among raw images
    if len(embedded) != len(maps):
        raise ValueError(f"{len(embedded)} images for {len(maps)} heatmaps: pass one heatmap (or one stack) per image")

    one_per_image = maps.ndim == 3
    maps = maps[:, None] if one_per_image else maps
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for index, image in enumerate(embedded):
        groups[image.prompt_size].append(index)
    by_index: dict[int, Refined] = {}
    for indices in groups.values():
        group = [embedded[i] for i in indices]
        refined = _refine_group(sam, group, maps[indices], num_points, labels, mask_choice, alpha, blend)
        by_index.update(zip(indices, refined, strict=True))
    results = [by_index[index] for index in range(len(embedded))]
    if one_per_image:
        return [Refined(**{field.name: getattr(r, field.name)[0] for field in fields(Refined)}) for r in results]
    return results


def _refine_group(
    sam: EfficientSam,
    images: list[SamImage],
    maps: torch.Tensor,
    num_points: int,
    labels: LabelMode,
    mask_choice: MaskChoice,
    alpha: float,
    blend: MaskBlend,
) -> list[Refined]:
    """One decoder batch: G images of one prompt size, each with its K heatmaps [G, K, h, w] as K queries."""
    parameter = next(sam.parameters())
    prompt_size = images[0].prompt_size
    prompts = prompts_from_heatmap(maps, num_points)
    pixels = prompts.to_pixels(prompt_size)
    sam_labels = prompts.label_weights if labels == "fork" else torch.ones_like(prompts.label_weights)
    embedding = ImageEmbedding(torch.stack([image.embedding for image in images]), prompt_size)
    with sam.autocast():
        prediction = sam.predict(
            embedding, pixels.to(parameter.device, parameter.dtype), sam_labels.to(parameter.device, parameter.dtype)
        )
    ious = prediction.iou_predictions.float()  # ranked and thresholded below: in float32 whatever the precision
    choice = ious.argmax(-1) if mask_choice == "best-iou" else torch.zeros_like(ious[..., 0], dtype=torch.int64)
    side = prediction.low_res_masks.shape[-1]
    chosen = prediction.low_res_masks.gather(2, choice[:, :, None, None, None].expand(-1, -1, 1, side, side)).float()
    iou = ious.gather(2, choice[:, :, None])[..., 0]
    # The fork blends the mask at the size SAM was prompted at; the user gets it at the image's own size.
    logits = MaskPrediction(chosen, iou, prompt_size).upscaled()[:, :, 0]
    mask_logits = logits.float().cpu()
    heatmaps = blend_mask(maps, mask_logits.sigmoid() if blend == "probability" else mask_logits, alpha)

    results = []
    for position, image in enumerate(images):
        if image.size == prompt_size:
            own_logits = logits[position]
        else:
            one = slice(position, position + 1)
            own_logits = MaskPrediction(chosen[one], iou[one], image.size).upscaled()[0, :, 0]
        mask = (own_logits > 0).cpu()
        results.append(
            Refined(
                heatmap=heatmaps[position],
                mask=mask,
                points=scale_points(pixels[position].double(), prompt_size, image.size).float(),
                weights=prompts.label_weights[position],
                labels=sam_labels[position],
                iou=iou[position].float().cpu(),
                area=mask.float().mean((-2, -1)),
            )
        )
    return results


def refine_heatmap(
    sam: EfficientSam,
    image: ImageInput,
    heatmap: torch.Tensor | np.ndarray,
    num_points: int = 5,
    labels: LabelMode = "fork",
    mask_choice: MaskChoice = "first",
    alpha: float = 0.5,
    blend: MaskBlend = "fork",
) -> Refined:
    """Refine one image's heatmap [h, w], or its K heatmaps [K, h, w] against one embedding.

    `image`: a `SamImage` (embedded once, e.g. for heatmaps of several texts), an HxWx3 uint8 RGB array or a
    [3, H, W] float tensor in [0, 1].
    """
    maps = _check_heatmaps(heatmap, min_dims=2)
    if maps.ndim > 3:
        raise ValueError(f"heatmap must be [h, w] or [K, h, w] for one image, got {tuple(maps.shape)}")
    return refine_heatmaps(sam, [image], maps[None], num_points, labels, mask_choice, alpha, blend)[0]


def _check_heatmaps(heatmap: torch.Tensor | np.ndarray, min_dims: int) -> torch.Tensor:
    """Heatmaps as float32 CPU tensors [..., h, w] (the fork's dtype; the peak search needs float64 arithmetic,
    which not every device has), or an error saying what is wrong with them."""
    if not isinstance(heatmap, torch.Tensor | np.ndarray):
        raise TypeError(f"a heatmap must be a tensor or an array, got {type(heatmap).__name__}")
    maps = torch.as_tensor(heatmap).detach()
    if maps.ndim < min_dims or maps.shape[-1] == 0 or maps.shape[-2] == 0:
        raise ValueError(f"heatmaps must have at least {min_dims} dimensions [..., h, w], got {tuple(maps.shape)}")
    if maps.is_complex() or maps.dtype == torch.bool:
        raise ValueError(f"heatmaps must be real numbers, got {maps.dtype}")
    maps = maps.to("cpu", torch.float32)
    if not torch.isfinite(maps).all():
        bad = int((~torch.isfinite(maps)).sum())
        raise ValueError(f"heatmap has {bad} NaN or infinite value(s): refine a finite Grad-CAM map")
    return maps
