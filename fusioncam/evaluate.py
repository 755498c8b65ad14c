"""Does the heatmap point at the object the text names, does it show what the match depends on, and does the matcher
tell true pairs from mismatched ones?

Grounding (`evaluate_pointing`) on referring expressions with ground-truth boxes and, where the dataset outlines its
objects, masks: `fusioncam synth`'s `referring.jsonl` or RefCOCO/RefCOCO+/RefCOCOg in their published layouts
(`fusioncam.datasets.refcoco`). The metrics are `fusioncam.grounding`'s (pointing game within 15 px, energy,
ALBEF's box accuracy over proposals), each beside what chance scores. Faithfulness (`evaluate_faithfulness`):
deletion and insertion curves of the ITM match probability (`fusioncam.faithfulness`).

Both write every record's score to a `ScoreJournal` when given one, so that a long run resumes where it stopped.

ITM accuracy pairs each image with one of its own texts and with a text of another image that was never said of it,
and counts how often the match probability falls on the right side of 0.5.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

from fusioncam.api import BlipMatcher, SamRefiner, explain_pairs
from fusioncam.datasets.refcoco import Segmentation, object_mask, read_refcoco
from fusioncam.explain.render import upsample_map
from fusioncam.faithfulness import CausalSettings, deletion_insertion
from fusioncam.grounding import (
    POINTING_TOLERANCE,
    Box,
    GroundingReport,
    GroundingScore,
    score_grounding,
    summarize_grounding,
)
from fusioncam.images import load_image
from fusioncam.inputs import batched
from fusioncam.score_journal import ScoreJournal, score_id
from fusioncam.text import clean_caption

RegionKind = Literal["box", "mask"]


@dataclass(frozen=True)
class Referring:
    """An image, a text naming one object in it, the object's box (x0, y0, x1, y1) in pixels and, when the dataset
    outlines its objects, the COCO segmentation; `image_id` is the COCO id proposals are filed under."""

    image: Path
    text: str
    box: tuple[float, float, float, float]
    segmentation: Segmentation | None = None
    image_id: int | None = None

    def identity(self) -> dict[str, Any]:
        """What tells this record from every other of a dataset (the key of its score in a journal)."""
        return {"image": str(self.image), "text": self.text, "box": list(self.box)}


def read_referring(path: str | Path) -> list[Referring]:
    """Records `{"image", "text", "box": [x0, y0, x1, y1]}` of a JSONL file (`fusioncam synth`'s
    referring.jsonl); image paths are relative to the file."""
    path = Path(path)
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            box = tuple(float(value) for value in record["box"])
            if len(box) != 4 or box[2] <= box[0] or box[3] <= box[1]:
                raise ValueError(f"box {record['box']} is not [x0, y0, x1, y1] with x1 > x0 and y1 > y0")
            records.append(Referring(path.parent / record["image"], str(record["text"]), box))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path}:{number}: not a referring record ({error})") from error
    if not records:
        raise ValueError(f"{path}: no records")
    return records


def read_grounding_data(
    path: Path, images: Path | None = None, instances: Path | None = None, split: str | None = None
) -> list[Referring]:
    """The referring expressions of `path`: a synth `referring.jsonl` (records with "text" and "box"), or a
    RefCOCO file (refer pickle with `instances`, or a parquet/JSON/JSONL conversion) whose images lie under
    `images`, only `split` when given."""
    if _is_synth_jsonl(path):
        if split is not None or instances is not None:
            raise ValueError(f"{path} is a synth referring.jsonl: --split and --instances are for RefCOCO files")
        return read_referring(path)
    if images is None:
        raise ValueError(f"{path} is a RefCOCO file: --images must name the COCO images root (holding train2014/)")
    return [
        Referring(images / item.image, item.text, item.box, item.segmentation, item.image_id)
        for item in read_refcoco(path, split, instances)
    ]


def _is_synth_jsonl(path: Path) -> bool:
    if path.suffix != ".jsonl":
        return False
    with path.open(encoding="utf-8") as lines:
        first = next((line for line in lines if line.strip()), "")
    try:
        record = json.loads(first)
    except ValueError:
        return True  # read_referring names the broken line
    return isinstance(record, dict) and "box" in record and "sentences" not in record


def read_proposals(path: Path) -> dict[int, list[Box]]:
    """Detection proposals per image: a JSON object `{"<COCO image id>": [[x, y, w, h], …], …}`."""
    from fusioncam.datasets.json_fields import load_json

    data = load_json(path, "proposals")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: proposals are an object of image id → [[x, y, w, h], …]")
    try:
        return {int(key): [Box.from_xywh(box) for box in boxes] for key, boxes in data.items()}
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: not image id → [[x, y, w, h], …] ({error})") from None


@dataclass(frozen=True)
class GroundingSettings:
    """What a grounding score depends on besides the map: the region (the box, or the object's mask), the pointing
    tolerance in pixels, and the proposals per COCO image id (box accuracy) when given."""

    region: RegionKind = "box"
    tolerance: float = POINTING_TOLERANCE
    proposals: Mapping[int, Sequence[Box]] | None = None


# The strict pointing game, the peak inside the box: what the figures on synthetic scenes use, whose 64-192 px images a
# 15 px tolerance would largely cover (a random point would hit most of the time).
PEAK_IN_BOX = GroundingSettings(tolerance=0.0)


def score_map(
    heatmap: np.ndarray | torch.Tensor, record: Referring, image_hw: tuple[int, int], settings: GroundingSettings
) -> GroundingScore:
    """The grounding scores of a grid heatmap for one record, measured at the image's resolution (where a map meets
    pixels, so in numpy, as the pictures are drawn)."""
    full = upsample_map(np.asarray(heatmap), image_hw)
    box = Box(*record.box)
    region: Box | np.ndarray = box
    if settings.region == "mask":
        if record.segmentation is None:
            raise ValueError(f"{record.image}: {record.text!r} has no segmentation; use the box as the region")
        region = object_mask(record.segmentation, *image_hw)
    proposals = None
    if settings.proposals is not None:
        proposals = settings.proposals.get(record.image_id) if record.image_id is not None else None
        if not proposals:
            raise ValueError(f"no proposals for image {record.image_id} ({record.image})")
    return score_grounding(full, region, proposals=proposals, box=box, tolerance=settings.tolerance)


def evaluate_pointing(
    matcher: BlipMatcher,
    records: Sequence[Referring],
    block: int = 6,
    batch_size: int = 16,
    refiner: SamRefiner | None = None,
    settings: GroundingSettings = GroundingSettings(),
    on_batch: Callable[[int], None] | None = None,
    journal: ScoreJournal | None = None,
    options: Mapping[str, Any] | None = None,
) -> GroundingReport:
    """Heatmap every record (refined by SAM when a refiner is given) and score it against its object; an image
    with several records is decoded and encoded once per batch. With a `journal`, records it holds for these
    `options` (everything the caller's scores depend on) are not redone, and new ones are added as they come."""
    scores: list[GroundingScore] = []
    for batch, done, todo in _journaled(records, batch_size, journal, options):
        scores.extend(GroundingScore(**score) for score in done)
        if todo:
            images = _decoded(todo)
            explained = explain_pairs(
                matcher, images, [record.text for _, record in todo], keys=[r.image for _, r in todo], block=block,
                refiner=refiner,
            )  # fmt: skip
            for (ident, record), image, item in zip(todo, images, explained, strict=True):
                score = score_map(item.map, record, image.shape[:2], settings)
                scores.append(score)
                if journal is not None:
                    journal.add(ident, asdict(score))
        if on_batch is not None:
            on_batch(len(batch))
    return summarize_grounding(scores)


def _journaled(
    records: Sequence[Referring], batch_size: int, journal: ScoreJournal | None, options: Mapping[str, Any] | None
) -> Iterator[tuple[list[Referring], list[dict[str, Any]], list[tuple[str, Referring]]]]:
    """Batches of records, each with the scores the journal already holds for some of them and the records still
    to score (with their journal ids)."""
    for batch in batched(records, batch_size):
        ids = [score_id(record.identity(), options or {}) for record in batch]
        held = journal.done if journal is not None else {}
        done = [held[ident] for ident in ids if ident in held]
        todo = [(ident, record) for ident, record in zip(ids, batch, strict=True) if ident not in held]
        yield batch, done, todo


def _decoded(todo: Sequence[tuple[str, Referring]]) -> list[np.ndarray]:
    """The images of a batch's records, each distinct file decoded once."""
    decoded = {path: load_image(path) for path in dict.fromkeys(record.image for _, record in todo)}
    return [decoded[record.image] for _, record in todo]


@dataclass(frozen=True)
class FaithfulnessReport:
    """Mean deletion and insertion AUCs over `count` pairs (a faithful map: low deletion, high insertion)."""

    count: int
    deletion_auc: float
    insertion_auc: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_faithfulness(
    matcher: BlipMatcher,
    records: Sequence[Referring],
    block: int = 6,
    refiner: SamRefiner | None = None,
    settings: CausalSettings = CausalSettings(),
    on_record: Callable[[int], None] | None = None,
    journal: ScoreJournal | None = None,
    options: Mapping[str, Any] | None = None,
) -> FaithfulnessReport:
    """Deletion and insertion curves of every record's heatmap (refined by SAM when a refiner is given), P(match)
    given by `matcher` itself, the step images scored `settings.batch_size` at a time. Journaled as
    `evaluate_pointing` is."""
    curves: list[dict[str, Any]] = []
    for batch, done, todo in _journaled(records, 1, journal, options):
        curves.extend(done)
        for (ident, record), image in zip(todo, _decoded(todo), strict=True):
            (explained,) = explain_pairs(matcher, [image], [record.text], block=block, refiner=refiner)
            saliency = upsample_map(np.asarray(explained.map), image.shape[:2])
            result = deletion_insertion(image, saliency, _probability_of(matcher, record.text), settings)
            summary = result.to_dict()
            curves.append(summary)
            if journal is not None:
                journal.add(ident, summary)
        if on_record is not None:
            on_record(len(batch))
    return FaithfulnessReport(
        count=len(curves),
        deletion_auc=float(np.mean([curve["deletion_auc"] for curve in curves])),
        insertion_auc=float(np.mean([curve["insertion_auc"] for curve in curves])),
    )


def _probability_of(matcher: BlipMatcher, text: str) -> Callable[[list[np.ndarray]], list[float]]:
    def probability(images: list[np.ndarray]) -> list[float]:
        return [group[0] for group in match_probabilities(matcher, images, [[text]] * len(images))]

    return probability


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
