"""COCO and Flickr30k Karpathy splits in the layout BLIP and LAVIS ship them (`coco_karpathy_{train,val,test}.json`,
`flickr30k_{train,val,test}.json`, from storage.googleapis.com/sfr-vision-language-research/datasets/).

Each file is a JSON list, and `image` is a path relative to an images root ("val2014/COCO_val2014_000000391895.jpg",
"flickr30k-images/1007129816.jpg"):
- train: one record per caption, `{"caption": str, "image": str, "image_id": str}` (COCO's ids read "coco_522418",
  Flickr's "1000092795"; an integer id is read as its decimal string);
- val and test: one record per image, `{"image": str, "caption": [str, …]}` (five captions per COCO image, as a
  rule; Flickr30k has five too).
Captions are cleaned as BLIP's `pre_caption` does (`clean_caption`) and cut at `max_words`: 30 by default, what BLIP's
retrieval datasets use (`coco_karpathy_retrieval_eval`, `re_train_dataset`); LAVIS's `blip_caption` processor keeps
50, which only matters for the rare caption of more than 30 words that still fits the text encoder's 35 tokens.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusioncam.datasets.json_fields import DatasetError, load_json, require

RETRIEVAL_MAX_WORDS = 30


@dataclass(frozen=True)
class RetrievalSplit:
    """A val or test split as LAVIS's `RetrievalEvalDataset` lays it out: the images, every caption of every image
    as one flat list of texts (image by image, in file order), and the ground truth both ways.

    `text_image[t]` is the image of text t (LAVIS's `txt2img`); `image_texts[i]` the texts of image i (`img2txt`).
    """

    images: tuple[str, ...]
    texts: tuple[str, ...]
    text_image: tuple[int, ...]
    image_texts: tuple[tuple[int, ...], ...]

    def image_paths(self, root: Path) -> list[Path]:
        return [root / image for image in self.images]

    def subset(self, indices: Sequence[int]) -> RetrievalSplit:
        """The images at `indices` (in that order), each with all of its captions."""
        captions = [[self.texts[text] for text in self.image_texts[index]] for index in indices]
        return _split([self.images[index] for index in indices], captions)

    def sample(self, count: int, seed: int) -> RetrievalSplit:
        """`count` images drawn without replacement with `seed`, kept in file order, each with all its captions:
        a smaller retrieval problem of the same kind (retrieval gets easier as the gallery shrinks, so figures on a
        sample compare only with figures on a sample of the same size)."""
        if count >= len(self.images):
            return self
        return self.subset(sorted(random.Random(seed).sample(range(len(self.images)), count)))


@dataclass(frozen=True)
class CaptionPair:
    """One record of a train split: an image, one of its captions (cleaned) and the image's id."""

    image: str
    caption: str
    image_id: str


@dataclass(frozen=True)
class TrainSplit:
    """A train split: its pairs in file order and, for each image id, every (cleaned) caption of that image, so that
    a text drawn as a negative for an image can be checked not to be one of the image's own captions (COCO images
    have five, and two of them may even read the same)."""

    pairs: tuple[CaptionPair, ...]
    captions: Mapping[str, frozenset[str]]

    def is_caption_of(self, image_id: str, text: str) -> bool:
        """Whether `text` (cleaned) is one of the captions of image `image_id`."""
        return text in self.captions[image_id]


def read_karpathy_eval(path: str | Path, max_words: int = RETRIEVAL_MAX_WORDS) -> RetrievalSplit:
    """The images and captions of a val or test file (`coco_karpathy_test.json`, `flickr30k_test.json`)."""
    path = Path(path)
    data = _records(path, "Karpathy val/test")
    images: list[str] = []
    captions: list[list[str]] = []
    seen: dict[str, int] = {}
    for index, record in enumerate(data):
        where = f"{path}, record {index}"
        image = require(record, "image", str, where)
        if image in seen:
            raise DatasetError(f"{where}: image {image!r} is also record {seen[image]}; each image is one record")
        seen[image] = index
        images.append(image)
        captions.append(_eval_captions(record, where, max_words))
    return _split(images, captions)


def read_karpathy_train(path: str | Path, max_words: int = RETRIEVAL_MAX_WORDS) -> TrainSplit:
    """The pairs of a train file (`coco_karpathy_train.json`, `flickr30k_train.json`)."""
    path = Path(path)
    data = _records(path, "Karpathy train")
    pairs: list[CaptionPair] = []
    image_of: dict[str, str] = {}
    captions: dict[str, set[str]] = {}
    for index, record in enumerate(data):
        where = f"{path}, record {index}"
        pair = _train_pair(record, where, max_words)
        if image_of.setdefault(pair.image_id, pair.image) != pair.image:
            raise DatasetError(
                f"{where}: image_id {pair.image_id!r} names {pair.image!r} here and {image_of[pair.image_id]!r} before"
            )
        captions.setdefault(pair.image_id, set()).add(pair.caption)
        pairs.append(pair)
    return TrainSplit(tuple(pairs), {image_id: frozenset(texts) for image_id, texts in captions.items()})


def _records(path: Path, what: str) -> list[Any]:
    data = load_json(path, what)
    if not isinstance(data, list):
        raise DatasetError(f"{path}: a Karpathy split file is a list of records, found {type(data).__name__}")
    if not data:
        raise DatasetError(f"{path}: holds no records")
    return data


def _eval_captions(record: dict[str, Any], where: str, max_words: int) -> list[str]:
    if isinstance(record.get("caption"), str):
        raise DatasetError(
            f"{where}: 'caption' is one string, as in a train split (one record per caption); val and test "
            "splits have one record per image with a list of captions"
        )
    raw = require(record, "caption", list, where)
    if not raw:
        raise DatasetError(f"{where}: 'caption' is empty; every image needs at least one caption")
    return [_caption(caption, f"{where}, caption {index}", max_words) for index, caption in enumerate(raw)]


def _train_pair(record: Any, where: str, max_words: int) -> CaptionPair:
    if isinstance(record, dict) and isinstance(record.get("caption"), list):
        raise DatasetError(
            f"{where}: 'caption' is a list, as in a val/test split (one record per image); a train split has one "
            "record per caption"
        )
    return CaptionPair(
        image=require(record, "image", str, where),
        caption=_caption(require(record, "caption", str, where), where, max_words),
        image_id=_image_id(record, where),
    )


def _caption(text: object, where: str, max_words: int) -> str:
    from fusioncam.text import clean_caption  # here: fusioncam.text needs torch, and this package must not

    if not isinstance(text, str):
        raise DatasetError(f"{where}: a caption must be a string, found {text!r}")
    cleaned = clean_caption(text, max_words)
    if not cleaned:
        raise DatasetError(f"{where}: caption {text!r} is empty once cleaned")
    return cleaned


def _image_id(record: dict[str, Any], where: str) -> str:
    if "image_id" not in record:
        raise DatasetError(f"{where}: 'image_id' is missing")
    value = record["image_id"]
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise DatasetError(f"{where}: 'image_id' must be a string or an integer, found {value!r}")


def _split(images: Sequence[str], captions: Sequence[Sequence[str]]) -> RetrievalSplit:
    texts: list[str] = []
    text_image: list[int] = []
    image_texts: list[tuple[int, ...]] = []
    for index, own in enumerate(captions):
        image_texts.append(tuple(range(len(texts), len(texts) + len(own))))
        texts.extend(own)
        text_image.extend([index] * len(own))
    return RetrievalSplit(tuple(images), tuple(texts), tuple(text_image), tuple(image_texts))
