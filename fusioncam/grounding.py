"""Does a heatmap point at the region the text names? The published grounding metrics, each on one heatmap at the
image's resolution (bring a grid heatmap there first with `fusioncam.explain.render.upsample_map`):

- pointing game (Zhang et al., "Top-down neural attention by excitation backprop", and TorchRay's evaluation code):
  a hit when the map's highest pixel lies within `tolerance` (15) pixels of the ground-truth region;
- energy-based pointing game (Wang et al., Score-CAM): the share of the map's mass, negatives clamped to 0, that
  lies inside the region;
- box accuracy with proposals (ALBEF's weakly supervised grounding on RefCOCO+): every proposal box is scored by
  the map's sum over the box divided by √(box area), the best proposal is the prediction, a hit when its IoU with
  the ground-truth box is at least 0.5.

Pixels and boxes. Pixel (row r, column c) covers the square [c, c+1) × [r, r+1) and its centre is (c+½, r+½). A
`Box` is (x0, y0, x1, y1) in those continuous coordinates (floats: convert COCO's [x, y, w, h] with
`Box.from_xywh`). Where a box meets pixels it covers every pixel it touches: columns floor(x0) … ceil(x1) − 1 and
rows floor(y0) … ceil(y1) − 1, clipped to the image. ALBEF slices `int(x0):int(x0 + w)`, which drops a partly
covered last column or row, so its sums may differ from ours by that one column or row; IoU is computed on the
float boxes themselves (ALBEF's `computeIoU` counts inclusive pixel ranges for the intersection but w·h for the
union, which is neither rule).

Every metric is compared with what chance achieves, the baseline a heatmap must beat to carry information: a
uniformly random peak hits with the probability "share of pixels within `tolerance` of the region", a uniform map
puts the region's share of the image inside it, and a uniformly random proposal is right with the share of
proposals that overlap the ground truth enough.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TypeAlias

import cv2
import numpy as np

POINTING_TOLERANCE = 15.0  # pixels; the pointing game's published tolerance
IOU_THRESHOLD = 0.5  # ALBEF's (and RefCOCO's) criterion for a correct box


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixels: top-left corner (x0, y0), bottom-right corner (x1, y1), x to the right and
    y down, in continuous coordinates where pixel (r, c) covers [c, c+1) × [r, r+1)."""

    x0: float
    y0: float
    x1: float
    y1: float

    def __post_init__(self) -> None:
        corners = (self.x0, self.y0, self.x1, self.y1)
        if not all(math.isfinite(value) for value in corners):
            raise ValueError(f"box {corners} has a non-finite corner")
        if self.x1 <= self.x0 or self.y1 <= self.y0:
            raise ValueError(
                f"box {corners} is not (x0, y0, x1, y1) with x1 > x0 and y1 > y0; "
                "convert COCO's [x, y, w, h] with Box.from_xywh"
            )

    @classmethod
    def from_xywh(cls, box: Sequence[float]) -> Box:
        """COCO's [x, y, width, height] (what RefCOCO annotations and detection proposals store)."""
        x, y, width, height = (float(value) for value in box)
        return cls(x, y, x + width, y + height)

    @property
    def area(self) -> float:
        return (self.x1 - self.x0) * (self.y1 - self.y0)

    def iou(self, other: Box) -> float:
        """Intersection over union of the two boxes as continuous rectangles."""
        width = min(self.x1, other.x1) - max(self.x0, other.x0)
        height = min(self.y1, other.y1) - max(self.y0, other.y0)
        intersection = max(width, 0.0) * max(height, 0.0)
        return intersection / (self.area + other.area - intersection)

    def pixels(self, shape: tuple[int, int]) -> tuple[slice, slice]:
        """(rows, columns) slices of every pixel of an image of `shape` = (h, w) that the box touches (possibly
        none, for a box outside the image)."""
        height, width = shape
        rows = slice(_clip(math.floor(self.y0), height), _clip(math.ceil(self.y1), height))
        columns = slice(_clip(math.floor(self.x0), width), _clip(math.ceil(self.x1), width))
        return rows, columns


def _clip(index: int, size: int) -> int:
    return min(max(index, 0), size)


# A ground-truth region: a `Box`, or a bool mask of the image's shape (True on the region's pixels).
Region: TypeAlias = Box | np.ndarray


def check_saliency(saliency: np.ndarray, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """The map as a float64 array, after checking that it is 2-D, non-empty, finite and (given `shape`) of that
    (h, w) shape: a map at another resolution than the image would silently score the wrong pixels."""
    values = np.asarray(saliency)
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"a saliency map must be a non-empty 2-D array, got shape {values.shape}")
    if shape is not None and values.shape != tuple(shape):
        raise ValueError(
            f"saliency map {values.shape} does not match the image {tuple(shape)}: "
            "bring it to the image's resolution with fusioncam.explain.render.upsample_map"
        )
    if not np.isfinite(values).all():
        raise ValueError("saliency map contains NaN or infinite values")
    return values.astype(np.float64, copy=False)


def region_mask(region: Region, shape: tuple[int, int]) -> np.ndarray:
    """The region's pixels in an image of `shape` = (h, w), as a bool mask; refuses a region with none."""
    if isinstance(region, Box):
        mask = np.zeros(shape, bool)
        mask[region.pixels(shape)] = True
    else:
        mask = np.asarray(region)
        if mask.dtype != np.bool_ or mask.shape != tuple(shape):
            raise ValueError(
                f"a region mask must be a bool array of the image's shape {tuple(shape)}, got {mask.dtype} {mask.shape}"
            )
    if not mask.any():
        what = f"box {region}" if isinstance(region, Box) else "region mask (all False)"
        raise ValueError(f"{what} has no pixel inside the {shape[0]}x{shape[1]} image")
    return mask


def _distance_to(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance from every pixel centre to the nearest centre of a mask pixel (0 on the mask).

    OpenCV's precise L2 transform is exact (Felzenszwalb & Huttenlocher), returned in float32: √225 is exactly 15.
    """
    return cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def _map_and_mask(saliency: np.ndarray, region: Region) -> tuple[np.ndarray, np.ndarray]:
    """The checked map and the region's mask; a mask region fixes the image's shape, which the map must have."""
    values = check_saliency(saliency, None if isinstance(region, Box) else np.shape(region))
    return values, region_mask(region, values.shape)


def peak(saliency: np.ndarray) -> tuple[int, int]:
    """(x, y) of the map's highest pixel; of several equal highest, the first in row-major order (numpy's argmax,
    as TorchRay and most evaluation code take it)."""
    return _peak(check_saliency(saliency))


def _peak(values: np.ndarray) -> tuple[int, int]:
    y, x = np.unravel_index(int(np.argmax(values)), values.shape)
    return int(x), int(y)


def peak_distance(saliency: np.ndarray, region: Region) -> float:
    """Euclidean distance in pixels from the centre of the map's peak pixel to the nearest centre of a region
    pixel; 0 when the peak lies in the region."""
    values, mask = _map_and_mask(saliency, region)
    x, y = _peak(values)
    return float(_distance_to(mask)[y, x])


def pointing_game(saliency: np.ndarray, region: Region, tolerance: float = POINTING_TOLERANCE) -> bool:
    """A hit when the peak lies within `tolerance` pixels of the region (`peak_distance` ≤ tolerance): the
    published pointing game forgives a peak just off an object's outline."""
    _check_tolerance(tolerance)
    return peak_distance(saliency, region) <= tolerance


def _check_tolerance(tolerance: float) -> None:
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be a distance in pixels ≥ 0, got {tolerance}")


def energy_share(saliency: np.ndarray, region: Region) -> float:
    """Share of the map's mass inside the region, negative values clamped to 0 first (negative evidence is no
    evidence); 0 for a map with no positive mass."""
    return _energy(*_map_and_mask(saliency, region))


def _energy(values: np.ndarray, mask: np.ndarray) -> float:
    positive = np.clip(values, 0.0, None)
    total = positive.sum()
    return float(positive[mask].sum() / total) if total > 0 else 0.0


def proposal_score(saliency: np.ndarray, box: Box) -> float:
    """ALBEF's score of a proposal: the map's sum over the pixels the box touches divided by √(box area).

    The square root is a compromise: a plain sum favours the largest box, a mean favours a tiny box around the
    peak. The map is not clamped (ALBEF sums its bicubic-upsampled Grad-CAM as it is).
    """
    return _box_score(check_saliency(saliency), box)


def _box_score(values: np.ndarray, box: Box) -> float:
    return float(values[box.pixels(values.shape)].sum() / math.sqrt(box.area))


def best_proposal(saliency: np.ndarray, proposals: Sequence[Box]) -> int:
    """Index of the best-scoring proposal (`proposal_score`); of equal scores, the first."""
    if not proposals:
        raise ValueError("no proposal boxes to choose from")
    values = check_saliency(saliency)
    return int(np.argmax([_box_score(values, box) for box in proposals]))


def proposal_hit(saliency: np.ndarray, proposals: Sequence[Box], truth: Box, threshold: float = IOU_THRESHOLD) -> bool:
    """ALBEF's box accuracy for one expression: the best proposal's IoU with the ground-truth box ≥ `threshold`."""
    return proposals[best_proposal(saliency, proposals)].iou(truth) >= threshold


@dataclass(frozen=True)
class GroundingScore:
    """One heatmap's grounding scores against its region, with what chance would score on the same record.

    `distance`: peak to region in pixels; `hit`: distance ≤ tolerance; `energy`: mass share inside the region;
    `region_share`: the region's share of the image (a uniform map's energy); `reach_share`: share of pixels within
    tolerance of the region (a uniformly random peak's chance of a hit); `box_hit` and `proposal_share` (the share
    of proposals that would be right, a random pick's chance) are None when no proposals were given.
    """

    hit: bool
    distance: float
    energy: float
    region_share: float
    reach_share: float
    box_hit: bool | None = None
    proposal_share: float | None = None


def score_grounding(
    saliency: np.ndarray,
    region: Region,
    *,
    proposals: Sequence[Box] | None = None,
    box: Box | None = None,
    tolerance: float = POINTING_TOLERANCE,
    iou_threshold: float = IOU_THRESHOLD,
) -> GroundingScore:
    """Every grounding metric of one map (at image resolution) against one region; with `proposals`, box accuracy
    against `box`, the ground-truth box, which defaults to `region` when that is a box (RefCOCO gives a mask and a
    box per expression: pass the mask as `region` and the box as `box`)."""
    _check_tolerance(tolerance)
    values, mask = _map_and_mask(saliency, region)
    distances = _distance_to(mask)
    x, y = _peak(values)
    box_hit: bool | None = None
    proposal_share: float | None = None
    if proposals is not None:
        truth = box if box is not None else region
        if not isinstance(truth, Box):
            raise ValueError("box accuracy needs the ground-truth box: pass box=Box(...) along with a mask region")
        box_hit = proposal_hit(values, proposals, truth, iou_threshold)
        proposal_share = float(np.mean([candidate.iou(truth) >= iou_threshold for candidate in proposals]))
    return GroundingScore(
        hit=bool(distances[y, x] <= tolerance),
        distance=float(distances[y, x]),
        energy=_energy(values, mask),
        region_share=float(mask.mean()),
        reach_share=float((distances <= tolerance).mean()),
        box_hit=box_hit,
        proposal_share=proposal_share,
    )


@dataclass(frozen=True)
class GroundingReport:
    """Grounding over `count` records: pointing accuracy, mean energy share, and box accuracy over the
    `box_count` records that had proposals (None when none had), each beside its chance baseline (`random_*`)."""

    count: int
    pointing: float
    energy: float
    random_pointing: float
    random_energy: float
    box_count: int
    box_accuracy: float | None
    random_box_accuracy: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def summarize_grounding(scores: Sequence[GroundingScore]) -> GroundingReport:
    """Means over records of the scores in `scores`, and of their chance baselines."""
    if not scores:
        raise ValueError("no grounding scores to summarize")
    boxed = [score for score in scores if score.box_hit is not None]
    return GroundingReport(
        count=len(scores),
        pointing=float(np.mean([score.hit for score in scores])),
        energy=float(np.mean([score.energy for score in scores])),
        random_pointing=float(np.mean([score.reach_share for score in scores])),
        random_energy=float(np.mean([score.region_share for score in scores])),
        box_count=len(boxed),
        box_accuracy=float(np.mean([score.box_hit for score in boxed])) if boxed else None,
        random_box_accuracy=float(np.mean([score.proposal_share for score in boxed])) if boxed else None,
    )
