"""What each step trains on: the pairs, their decoded images, which pairs a rank takes at a step, their tokens."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from fusioncam.datasets import DatasetError, read_karpathy_train
from fusioncam.images import ImageTransform, load_image
from fusioncam.inputs import Failure, pairs_from_jsonl
from fusioncam.text import BlipTokenizer, clean_caption
from fusioncam.train.distributed import pad_to_global_length
from fusioncam.train.seeds import ORDER, derive_seed


def is_karpathy_split(data: Path) -> bool:
    """Whether `data` is a Karpathy train split (`coco_karpathy_train.json`: one JSON list) rather than a pairs JSONL
    (one record per line). Told by the suffix, so that a run's settings can be checked before any file is read."""
    return data.suffix.lower() == ".json"


@dataclass(frozen=True)
class PairSet:
    """The training pairs: image path, cleaned caption, and per pair the ids of its image and of its caption
    (pairs with equal ids share that image or that caption, which makes them positives of each other)."""

    images: list[Path]
    texts: list[str]
    image_keys: list[int]
    text_keys: list[int]

    def __len__(self) -> int:
        return len(self.images)

    @classmethod
    def read(cls, data: Path, images: Path | None = None) -> PairSet:
        """The pairs of a Karpathy train split whose image paths are relative to `images`, or, without `images`, of
        a pairs JSONL. Every image must be there: training on a silently smaller set would be another run."""
        pairs = cls._from_jsonl(data) if images is None else cls._from_karpathy(data, images)
        pairs._require_images(data, images)
        return pairs

    @classmethod
    def _from_jsonl(cls, path: Path) -> PairSet:
        """Read a pairs JSONL; a malformed record stops the run. An image's key is its path."""
        if not path.is_file():
            raise FileNotFoundError(f"training pairs not found: {path}")
        images, texts = [], []
        with path.open() as lines:
            for item in pairs_from_jsonl(lines, str(path), path.parent):
                if isinstance(item, Failure):
                    raise ValueError(f"{item.origin}: {item.reason}")
                if not isinstance(item.image, Path):
                    raise ValueError(f"{item.origin}: training reads image files, not URLs: {item.image}")
                text = clean_caption(item.text)
                if not text:
                    raise ValueError(f"{item.origin}: the text is empty after cleaning")
                images.append(item.image)
                texts.append(text)
        if not images:
            raise ValueError(f"{path} holds no pairs")
        return cls(images, texts, _ids(images), _ids(texts))

    @classmethod
    def _from_karpathy(cls, path: Path, root: Path) -> PairSet:
        """Read a Karpathy train split (captions cleaned and cut at 30 words, as BLIP's retrieval training does).

        An image's key is its `image_id`, a text's its cleaned caption: the objective takes every (image, caption)
        the split pairs as known to be true (`KnownPairs`), so none of an image's captions, even one that another
        photo shares, is drawn as that image's hard negative or counted as its ITC negative.
        """
        try:
            split = read_karpathy_train(path)
        except DatasetError as error:
            raise DatasetError(
                f"{error}. Training needs a Karpathy train split (coco_karpathy_train.json, flickr30k_train.json); "
                "val and test splits are for `fusioncam eval retrieval`"
            ) from None
        texts = [pair.caption for pair in split.pairs]
        return cls(
            [root / pair.image for pair in split.pairs],
            texts,
            _ids([pair.image_id for pair in split.pairs]),
            _ids(texts),
        )

    def _require_images(self, data: Path, root: Path | None) -> None:
        """Fail before any step, saying how many images are missing and one of them: otherwise a wrong `--images`
        would surface only when the loader first reaches a missing image, deep into the run."""
        images = list(dict.fromkeys(self.images))
        if missing := [image for image in images if not image.is_file()]:
            hint = (
                f"images ({root}) must be the folder the split's image paths start from (COCO: the one holding "
                "train2014/)"
                if root is not None
                else "relative image paths start from the JSONL's own folder"
            )
            raise DatasetError(
                f"{len(missing)} of the {len(images)} images of {data} are not there, e.g. {missing[0]}; {hint}"
            )


def _ids(values: Sequence[Any]) -> list[int]:
    """Each value's index among the distinct values, in order of first appearance."""
    index: dict[Any, int] = {}
    return [index.setdefault(value, len(index)) for value in values]


class ImageDataset(Dataset):
    """Decoded, preprocessed images of the pairs: BLIP's input and, for a fusion, SAM's ([0, 1], SAM's size)."""

    def __init__(self, pairs: PairSet, transform: ImageTransform, sam_transform: ImageTransform | None) -> None:
        self.pairs = pairs
        self.transform = transform
        self.sam_transform = sam_transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = load_image(self.pairs.images[index])
        item = {"index": index, "pixels": self.transform([image])[0]}
        if self.sam_transform is not None:
            item["sam_pixels"] = self.sam_transform([image])[0]
        return item


class StepBatches:
    """The sample indices of this rank for each step from `start` to `steps`, like DistributedSampler.

    Epoch e is a permutation drawn from (seed, e), cut into global batches of `world · batch_size` (the remainder
    is dropped, so every step is full); rank r takes slice r of each. Ranks therefore see disjoint samples, and
    the batch of a step depends only on the step, which is what makes resuming exact.
    """

    def __init__(self, size: int, batch_size: int, rank: int, world: int, seed: int, start: int, steps: int) -> None:
        self.global_batch = batch_size * world
        if size < self.global_batch:
            raise ValueError(
                f"{size} pairs cannot fill one global batch of {self.global_batch} "
                f"({world} process(es) × batch_size {batch_size}): use a smaller batch or more data"
            )
        self.size, self.batch_size, self.rank, self.seed = size, batch_size, rank, seed
        self.start, self.steps = start, steps
        self.per_epoch = size // self.global_batch

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def epoch_order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, ORDER, epoch))
        return torch.randperm(self.size, generator=generator)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, order = -1, torch.empty(0, dtype=torch.long)
        for step in range(self.start, self.steps):
            if step // self.per_epoch != epoch:
                epoch = step // self.per_epoch
                order = self.epoch_order(epoch)
            first = (step % self.per_epoch) * self.global_batch + self.rank * self.batch_size
            yield order[first : first + self.batch_size].tolist()


def text_inputs(tokenizer: BlipTokenizer, texts: list[str], device: torch.device) -> list[torch.Tensor]:
    """Ids, ITM ids (`[ENC]` first) and mask of a batch's captions, padded to the longest caption of all ranks."""
    encoding = tokenizer(texts).to(device)
    return pad_to_global_length(
        [encoding.input_ids, tokenizer.for_itm(encoding.input_ids), encoding.attention_mask],
        [tokenizer.pad_token_id, tokenizer.pad_token_id, 0],
    )


def sam_transform(image_size: int) -> ImageTransform:
    """[0, 1] pixels at SAM's input size, resized as `EfficientSam.preprocess` would (which then skips it)."""
    return ImageTransform(image_size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), interpolation="bilinear")
