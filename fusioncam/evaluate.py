"""Does the heatmap point at the object the text names? Pointing game and energy-based pointing game.

For referring expressions with ground-truth boxes (`fusioncam synth` writes them as `referring.jsonl`):
- pointing game: the heatmap's peak, at image resolution, falls inside the box (hit rate);
- energy-based pointing game: the share of the heatmap's mass (after clamping at 0) inside the box.
Both are compared with what a uniformly random point / a uniform map achieves, whose expected score is the box's
share of the image — the baseline a heatmap must beat to carry information.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from fusioncam.api import BlipMatcher, SamRefiner
from fusioncam.batch import batched
from fusioncam.explain.render import upsample_map
from fusioncam.images import load_image


@dataclass(frozen=True)
class Referring:
    """An image, a text naming one object in it, and that object's box [x0, y0, x1, y1) in pixels."""

    image: Path
    text: str
    box: tuple[int, int, int, int]


def read_referring(path: str | Path) -> list[Referring]:
    """Records `{"image", "text", "box"}` of a JSONL file; image paths are relative to the file."""
    path = Path(path)
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            box = tuple(int(value) for value in record["box"])
            if len(box) != 4 or box[2] <= box[0] or box[3] <= box[1]:
                raise ValueError(f"box {record['box']} is not [x0, y0, x1, y1] with x1 > x0 and y1 > y0")
            records.append(Referring(path.parent / record["image"], str(record["text"]), box))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path}:{number}: not a referring record ({error})") from error
    if not records:
        raise ValueError(f"{path}: no records")
    return records


@dataclass(frozen=True)
class PointingScore:
    """One record's scores: hit (peak in box), energy (mass share in box), and the box's share of the image."""

    hit: bool
    energy: float
    box_share: float


def score_map(heatmap: np.ndarray, box: tuple[int, int, int, int], image_hw: tuple[int, int]) -> PointingScore:
    """Pointing and energy scores of a grid heatmap for a box, both measured at the image's resolution."""
    height, width = image_hw
    full = np.clip(upsample_map(heatmap, (height, width)), 0, None)
    x0, y0, x1, y1 = (int(value) for value in box)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    y, x = np.unravel_index(int(np.argmax(full)), full.shape)
    total = float(full.sum())
    inside = float(full[y0:y1, x0:x1].sum())
    return PointingScore(
        hit=bool(x0 <= x < x1 and y0 <= y < y1),
        energy=inside / total if total > 0 else 0.0,
        box_share=(x1 - x0) * (y1 - y0) / (height * width),
    )


@dataclass
class PointingReport:
    """Accuracy of the peak, mean energy share, and the uniform baselines, over `count` records."""

    encoder: str
    count: int
    pointing: float
    energy: float
    random_pointing: float
    random_energy: float
    scores: list[PointingScore] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if key != "scores"}


def summarize(encoder: str, scores: Sequence[PointingScore]) -> PointingReport:
    shares = [score.box_share for score in scores]
    return PointingReport(
        encoder=encoder,
        count=len(scores),
        pointing=float(np.mean([score.hit for score in scores])),
        energy=float(np.mean([score.energy for score in scores])),
        # A uniformly random point lands in the box with probability = its share; a uniform map puts that share there.
        random_pointing=float(np.mean(shares)),
        random_energy=float(np.mean(shares)),
        scores=list(scores),
    )


def evaluate_pointing(
    matcher: BlipMatcher,
    records: Sequence[Referring],
    block: int = 6,
    batch_size: int = 16,
    refiner: SamRefiner | None = None,
    encoder: str = "blip",
    on_batch: Callable[[int], None] | None = None,
) -> PointingReport:
    """Heatmap every record (refined by SAM when a refiner is given) and score it against its box."""
    scores: list[PointingScore] = []
    for batch in batched(records, batch_size):
        images = [load_image(record.image) for record in batch]
        results = matcher.heatmaps(images, [record.text for record in batch], block=block)
        maps = np.stack([result.heatmap for result in results])
        if refiner is not None:
            maps = np.stack([item.heatmap.numpy() for item in refiner.refine([r.image for r in batch], images, maps)])
        for record, image, heatmap in zip(batch, images, maps, strict=True):
            scores.append(score_map(heatmap, record.box, image.shape[:2]))
        if on_batch is not None:
            on_batch(len(batch))
    return summarize(encoder, scores)
