"""Does the heatmap point at the object the text names? Pointing game and energy-based pointing game; and does
the matcher tell true pairs from mismatched ones (ITM accuracy)?

For referring expressions with ground-truth boxes (`fusioncam synth` writes them as `referring.jsonl`):
- pointing game: the heatmap's peak, at image resolution, falls inside the box (hit rate);
- energy-based pointing game: the share of the heatmap's mass (after clamping at 0) inside the box.
Both are compared with what a uniformly random point / a uniform map achieves, whose expected score is the box's
share of the image — the baseline a heatmap must beat to carry information.

ITM accuracy pairs each image with one of its own texts and with a text of another image that was never said of it,
and counts how often the match probability falls on the right side of 0.5.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from fusioncam.api import BlipMatcher, SamRefiner, explain_pairs
from fusioncam.explain.render import upsample_map
from fusioncam.images import load_image
from fusioncam.inputs import batched
from fusioncam.text import clean_caption


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


def score_map(
    heatmap: np.ndarray | torch.Tensor, box: tuple[int, int, int, int], image_hw: tuple[int, int]
) -> PointingScore:
    """Pointing and energy scores of a grid heatmap for a box, both measured at the image's resolution (where a
    map meets pixels, so in numpy, as the pictures are drawn)."""
    height, width = image_hw
    full = np.clip(upsample_map(np.asarray(heatmap), (height, width)), 0, None)
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
    """Heatmap every record (refined by SAM when a refiner is given) and score it against its box; an image with
    several records is decoded and encoded once per batch."""
    scores: list[PointingScore] = []
    for batch in batched(records, batch_size):
        decoded = {path: load_image(path) for path in dict.fromkeys(record.image for record in batch)}
        images = [decoded[record.image] for record in batch]
        keys = [record.image for record in batch]
        explained = explain_pairs(
            matcher, images, [record.text for record in batch], keys=keys, block=block, refiner=refiner
        )
        for record, image, item in zip(batch, images, explained, strict=True):
            scores.append(score_map(item.map, record.box, image.shape[:2]))
        if on_batch is not None:
            on_batch(len(batch))
    return summarize(encoder, scores)


class ImageText(Protocol):
    """Anything with an image and a text: a `Referring` record, a `fusioncam.inputs.Pair`."""

    @property
    def image(self) -> Path | str: ...

    @property
    def text(self) -> str: ...


@dataclass(frozen=True)
class MatchingAccuracy:
    """ITM accuracy over `count` true pairs and as many mismatched ones: `positive` is the share of true pairs
    scored above 0.5, `negative` the share of mismatched pairs scored below 0.5, `accuracy` their mean (so a
    matcher that always says "match", or always "no match", scores 0.5)."""

    count: int
    positive: float
    negative: float

    @property
    def accuracy(self) -> float:
        return (self.positive + self.negative) / 2

    def to_dict(self) -> dict:
        return asdict(self) | {"accuracy": self.accuracy}


def mismatched_texts(records: Sequence[ImageText], seed: int = 0) -> list[str]:
    """For record i, a text of another image that is not among the texts of record i's own image (compared after
    caption cleaning), drawn uniformly from those with `seed`.

    "Not said of this image" is all that is known: with referring expressions (every object of a scene has one)
    that means "names no object of the image"; with one caption per image, another scene's caption may still
    happen to be true of this one (e.g. "a red circle" of an image that also has a red circle).
    """
    texts = [clean_caption(record.text) for record in records]
    own: dict[Path, set[str]] = {}
    for record, text in zip(records, texts, strict=True):
        own.setdefault(Path(record.image), set()).add(text)
    distinct = sorted(set(texts))
    rng = np.random.default_rng(seed)
    candidates = {image: [text for text in distinct if text not in said] for image, said in own.items()}
    negatives = []
    for record in records:
        choices = candidates[Path(record.image)]
        if not choices:
            raise ValueError(f"no text of another image differs from the texts of {record.image}: nothing to mismatch")
        negatives.append(choices[int(rng.integers(len(choices)))])
    return negatives


def match_probabilities(
    matcher: BlipMatcher, images: Sequence[np.ndarray], texts: Sequence[Sequence[str]]
) -> list[list[float]]:
    """ITM match probability of every text in `texts[i]` with image i, the images encoded in one batch (plain or
    fused, as `matcher` was loaded) — what `BlipMatcher.score` gives one image at a time, without the ITC part."""
    tokens = matcher.embed_images(images)
    owner = torch.tensor([i for i, group in enumerate(texts) for _ in group], device=tokens.device)
    probabilities = matcher.match_probabilities(tokens[owner], [text for group in texts for text in group])
    flat = probabilities.float().cpu().tolist()
    out, start = [], 0
    for group in texts:
        out.append(flat[start : start + len(group)])
        start += len(group)
    return out


def itm_accuracy(
    matcher: BlipMatcher,
    records: Sequence[ImageText],
    negatives_seed: int = 0,
    batch_size: int = 16,
    on_image: Callable[[int], None] | None = None,
) -> MatchingAccuracy:
    """ITM accuracy of `matcher` (plain or fused) on the true pairs `records` and one mismatched pair per record
    (`mismatched_texts`). Each image is encoded once for all of its true and mismatched texts, `batch_size` images
    at a time."""
    if not records:
        raise ValueError("no records to score")
    negatives = mismatched_texts(records, negatives_seed)
    by_image: dict[Path, tuple[list[str], list[str]]] = {}
    for record, negative in zip(records, negatives, strict=True):
        true, false = by_image.setdefault(Path(record.image), ([], []))
        true.append(record.text)
        false.append(negative)
    hits_true = hits_false = 0
    for batch in batched(by_image.items(), batch_size):
        images = [load_image(image) for image, _ in batch]
        scores = match_probabilities(matcher, images, [[*true, *false] for _, (true, false) in batch])
        for (_, (true, _)), probabilities in zip(batch, scores, strict=True):
            hits_true += sum(p > 0.5 for p in probabilities[: len(true)])
            hits_false += sum(p < 0.5 for p in probabilities[len(true) :])
            if on_image is not None:
                on_image(len(true))
    return MatchingAccuracy(len(records), hits_true / len(records), hits_false / len(records))
