"""Does the heatmap show what the model relies on? Deletion and insertion (Petsiuk et al., "RISE: Randomized Input
Sampling for Explanation of Black-box Models", BMVC 2018), here for the ITM match probability.

- Deletion: replace pixels by a constant (black by default), most salient first, and follow P(match): the faster
  it falls, the more the map found what the match depends on (lower area under the curve is better).
- Insertion: start from a blurred copy of the image (content gone, colours and layout kept) and put the original
  pixels back, most salient first: the faster P(match) rises, the better (higher area is better).

A pixel is a position: its three channels change together. Pixels are ordered by the map (at the image's
resolution: bring a grid there with `fusioncam.explain.render.upsample_map`), highest first, equal values in
row-major order. The change happens in `steps` equal shares (step k has changed the first ⌊k·N/steps⌋ of the N
pixels), and P(match) is taken before the first step, after each step and so at the end with every pixel changed:
`steps` + 1 points at x = fraction of pixels changed, from 0 to 1; the area under each curve is the trapezoid
rule over x on [0, 1].

Where this departs from RISE's `CausalMetric`, and why:
- RISE changes 224 pixels per step of a 224² image (224 steps). The default here is 50 steps (51 model calls per
  curve), enough to resolve a curve's shape at a cost a large model can bear on every image; `steps` sets it.
- Ties: RISE reverses an ascending argsort, so its equal values go last-first; a stable descending sort is the
  order a reader expects and does not depend on the sort's algorithm.
- Blur: `cv2.GaussianBlur` with RISE's 11×11 kernel and σ = 5 at the image's resolution, the borders reflected
  (OpenCV's default); RISE's zero-padded convolution darkens a 5-pixel frame, which insertion then "restores".
- The area: RISE averages its points with half weight at both ends, the trapezoid rule for equal steps only;
  the trapezoid rule over the actual fractions is the same number there and right when N is not divisible.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from fusioncam.grounding import check_saliency
from fusioncam.images import check_rgb
from fusioncam.inputs import batched

# P(match) of each of a batch of HxWx3 uint8 RGB images with the text under study, in their order: the caller
# binds the text and batches the images through the model.
Probability = Callable[[list[np.ndarray]], Sequence[float]]


@dataclass(frozen=True)
class CausalSettings:
    """How deletion and insertion change the image.

    `steps`: equal shares of the pixels changed one after another (the curves have steps + 1 points); `fill`: the
    value deleted pixels take, one level for all channels or an (R, G, B) triple, 0–255 (0 = black); `blur_kernel`
    (odd) and `blur_sigma`: the Gaussian blur insertion starts from; `batch_size`: images per `probability` call,
    which bounds memory (only that many step images exist at once).
    """

    steps: int = 50
    fill: int | tuple[int, int, int] = 0
    blur_kernel: int = 11
    blur_sigma: float = 5.0
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        levels = np.atleast_1d(np.asarray(self.fill))
        if levels.shape not in ((1,), (3,)) or not np.issubdtype(levels.dtype, np.integer):
            raise ValueError(f"fill must be one integer level or an (R, G, B) triple of them, got {self.fill!r}")
        if levels.min() < 0 or levels.max() > 255:
            raise ValueError(f"fill must lie in 0–255 (uint8 pixel values), got {self.fill!r}")
        if self.blur_kernel < 1 or self.blur_kernel % 2 == 0:
            raise ValueError(f"blur_kernel must be a positive odd size (OpenCV's rule), got {self.blur_kernel}")
        if not self.blur_sigma > 0:
            raise ValueError(f"blur_sigma must be positive, got {self.blur_sigma}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")


@dataclass(frozen=True)
class CausalCurve:
    """P(match) (`probabilities`) against the fraction of pixels changed (`fractions`, 0 to 1), steps + 1 points."""

    fractions: np.ndarray
    probabilities: np.ndarray

    @property
    def auc(self) -> float:
        """Area under the curve on [0, 1] by the trapezoid rule."""
        widths = np.diff(self.fractions)
        return float(np.sum(widths * (self.probabilities[1:] + self.probabilities[:-1]) / 2))


@dataclass(frozen=True)
class Faithfulness:
    """Both curves of one image, text and map: a faithful map has a low deletion AUC and a high insertion AUC."""

    deletion: CausalCurve
    insertion: CausalCurve

    def to_dict(self) -> dict:
        return {
            "deletion_auc": self.deletion.auc,
            "insertion_auc": self.insertion.auc,
            "fractions": self.deletion.fractions.tolist(),
            "deletion": self.deletion.probabilities.tolist(),
            "insertion": self.insertion.probabilities.tolist(),
        }


def salience_order(saliency: np.ndarray) -> np.ndarray:
    """Flat (row-major) pixel indices, highest saliency first; equal values keep their row-major order."""
    values = check_saliency(saliency)
    return np.argsort(-values.ravel(), kind="stable")


def deletion_curve(
    image: np.ndarray, saliency: np.ndarray, probability: Probability, settings: CausalSettings = CausalSettings()
) -> CausalCurve:
    """P(match) as the image's pixels, most salient first, are replaced by `settings.fill`."""
    order = _checked_order(image, saliency, settings)
    return _causal_curve(image, _filled(image, settings.fill), order, probability, settings)


def insertion_curve(
    image: np.ndarray, saliency: np.ndarray, probability: Probability, settings: CausalSettings = CausalSettings()
) -> CausalCurve:
    """P(match) as a blurred copy of the image gets its original pixels back, most salient first."""
    order = _checked_order(image, saliency, settings)
    return _causal_curve(_blurred(image, settings), image, order, probability, settings)


def deletion_insertion(
    image: np.ndarray, saliency: np.ndarray, probability: Probability, settings: CausalSettings = CausalSettings()
) -> Faithfulness:
    """Both curves, the pixel order computed once."""
    order = _checked_order(image, saliency, settings)
    return Faithfulness(
        deletion=_causal_curve(image, _filled(image, settings.fill), order, probability, settings),
        insertion=_causal_curve(_blurred(image, settings), image, order, probability, settings),
    )


def _checked_order(image: np.ndarray, saliency: np.ndarray, settings: CausalSettings) -> np.ndarray:
    check_rgb(image)
    check_saliency(saliency, image.shape[:2])
    pixels = image.shape[0] * image.shape[1]
    if settings.steps > pixels:
        raise ValueError(f"steps ({settings.steps}) exceeds the image's {pixels} pixels: use at most one per pixel")
    return salience_order(saliency)


def _filled(image: np.ndarray, fill: int | tuple[int, int, int]) -> np.ndarray:
    out = np.empty_like(image)
    out[...] = np.asarray(fill, np.uint8)
    return out


def _blurred(image: np.ndarray, settings: CausalSettings) -> np.ndarray:
    kernel = (settings.blur_kernel, settings.blur_kernel)
    return cv2.GaussianBlur(image, kernel, sigmaX=settings.blur_sigma, sigmaY=settings.blur_sigma)


def _causal_curve(
    start: np.ndarray, finish: np.ndarray, order: np.ndarray, probability: Probability, settings: CausalSettings
) -> CausalCurve:
    """P(match) along the way from `start` to `finish`, taking `finish`'s pixels in `order`, `steps` equal shares
    at a time, the images handed to `probability` `batch_size` at a time."""
    pixels = len(order)
    bounds = np.arange(settings.steps + 1) * pixels // settings.steps
    values: list[float] = []
    for chunk in batched(_step_images(start, finish, order, bounds), settings.batch_size):
        answered = list(probability(chunk))
        if len(answered) != len(chunk):
            raise ValueError(f"probability returned {len(answered)} values for {len(chunk)} images; it must score each")
        values.extend(float(value) for value in answered)
    return CausalCurve(fractions=bounds / pixels, probabilities=np.asarray(values, np.float64))


def _step_images(start: np.ndarray, finish: np.ndarray, order: np.ndarray, bounds: np.ndarray) -> Iterator[np.ndarray]:
    """`start` with the first bounds[k] pixels of `order` taken from `finish`, for each k: one image at a time,
    so that only the batch being scored is held in memory."""
    canvas = start.copy()
    flat, source = canvas.reshape(-1, 3), finish.reshape(-1, 3)
    changed = 0
    for bound in bounds:
        taken = order[changed:bound]
        flat[taken] = source[taken]
        changed = bound
        yield canvas.copy()
