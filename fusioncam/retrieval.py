"""Image–text retrieval as BLIP and LAVIS evaluate it (`compute_sim_matrix`, then `itm_eval` / `_report_metrics` of
the retrieval task), in three stages a caller can follow with a progress bar each:

1. `encode_split`: every image and every text encoded once; the ITC features (projected, unit-norm CLS) of both,
   the image tokens ITM needs, and the texts' ITM ids.
2. `shortlist`: the ITC similarity of every image with every text (no temperature), and for each image its top
   `k_test` texts, for each text its top `k_test` images.
3. `rerank`: each shortlisted pair scored by the ITM head's match *logit* (column 1, not the probability) plus its
   ITC similarity; everything outside a query's shortlist scores −100. This gives LAVIS's two score matrices.

`retrieval_metrics` then ranks them as LAVIS does: an image's rank is the best rank of its ground-truth captions,
a text's rank that of its image; R@1/5/10 each way in percent, their means and the mean of the means.

Where this departs from LAVIS, and why:
- A pair shortlisted both ways (text t among image i's top k, and i among t's) is scored once, and the same score
  fills both matrices; LAVIS runs it twice and gets the same number up to float noise.
- Pairs are scored image by image: each image's tokens go to the device once for all of its pairs in both
  directions, where LAVIS copies up to `k_test` images' tokens per text. The tokens are kept in host memory between
  the stages, as LAVIS keeps them (`image_feats.cpu()`): COCO's 5,000 test images at 384 px are 8.9 GB in fp32, half
  in bf16, which would crowd a GPU's memory but not a host's.
- `k_test` larger than the gallery shortlists all of it (LAVIS's `topk` fails there).
- Texts are padded to the longest text, not to 35 tokens: padding is masked out, so no score changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusioncam.api import BlipMatcher, to_device
from fusioncam.datasets.karpathy import RetrievalSplit
from fusioncam.images import load_image
from fusioncam.inputs import batched
from fusioncam.score_journal import ScoreJournal, score_id

OUTSIDE_SHORTLIST = -100.0  # LAVIS's score for a pair that ITM did not re-rank
RECALL_AT = (1, 5, 10)


@dataclass
class RetrievalFeatures:
    """A split encoded once: image tokens [Ni, 1 + N, Dv] in host memory (the encoder's dtype), unit-norm ITC
    features of images [Ni, D] and texts [Nt, D] (float32, on the model's device), and the texts' ITM ids and
    attention mask [Nt, L] (host memory; `[ENC]` in place of `[CLS]`)."""

    image_tokens: torch.Tensor
    image_features: torch.Tensor
    text_features: torch.Tensor
    itm_ids: torch.Tensor
    attention_mask: torch.Tensor


@dataclass
class Shortlist:
    """ITC similarity of every image with every text [Ni, Nt] (float32, host memory), and the candidates ITM
    re-ranks: for each image the indices of its top texts [Ni, k], for each text those of its top images [Nt, k']."""

    similarity: torch.Tensor
    image_to_text: torch.Tensor
    text_to_image: torch.Tensor

    def pairs(self) -> torch.Tensor:
        """[Ni, Nt] True where a pair is shortlisted in either direction: the pairs ITM must score."""
        mask = torch.zeros(self.similarity.shape, dtype=torch.bool)
        mask.scatter_(1, self.image_to_text, True)
        mask.T.scatter_(1, self.text_to_image, True)
        return mask


@dataclass
class RetrievalScores:
    """LAVIS's `score_matrix_i2t` [Ni, Nt] and `score_matrix_t2i` [Nt, Ni]: ITM logit + ITC similarity inside each
    query's shortlist, −100 outside (float32, host memory)."""

    image_to_text: torch.Tensor
    text_to_image: torch.Tensor


@dataclass(frozen=True)
class RetrievalMetrics:
    """Recall at 1, 5 and 10 in percent: `txt_*` image→text (an image is found when one of its captions is), `img_*`
    text→image; named as LAVIS logs them."""

    txt_r1: float
    txt_r5: float
    txt_r10: float
    img_r1: float
    img_r5: float
    img_r10: float

    @property
    def txt_r_mean(self) -> float:
        return (self.txt_r1 + self.txt_r5 + self.txt_r10) / 3

    @property
    def img_r_mean(self) -> float:
        return (self.img_r1 + self.img_r5 + self.img_r10) / 3

    @property
    def r_mean(self) -> float:
        return (self.txt_r_mean + self.img_r_mean) / 2

    def to_dict(self) -> dict[str, float]:
        """LAVIS's result, key for key and in its order; `agg_metrics` (what LAVIS selects checkpoints by) is
        `txt_r_mean`."""
        return {
            "txt_r1": self.txt_r1,
            "txt_r5": self.txt_r5,
            "txt_r10": self.txt_r10,
            "txt_r_mean": self.txt_r_mean,
            "img_r1": self.img_r1,
            "img_r5": self.img_r5,
            "img_r10": self.img_r10,
            "img_r_mean": self.img_r_mean,
            "r_mean": self.r_mean,
            "agg_metrics": self.txt_r_mean,
        }


@dataclass
class RetrievalResult:
    scores: RetrievalScores
    metrics: RetrievalMetrics


Progress = Callable[[int], None]


def encode_split(
    matcher: BlipMatcher,
    split: RetrievalSplit,
    images_root: Path,
    batch_size: int = 128,
    on_batch: Progress | None = None,
) -> RetrievalFeatures:
    """Encode every image and text of `split` once, `batch_size` at a time; `on_batch(n)` after each batch of n
    images or texts."""
    tokens, image_features = [], []
    for paths in batched(split.image_paths(images_root), batch_size):
        embeds = matcher.embed_images([load_image(path) for path in paths])
        with torch.no_grad(), matcher.model.autocast():
            image_features.append(matcher.model.image_features(embeds).float())
        tokens.append(embeds.cpu())
        if on_batch is not None:
            on_batch(len(paths))
    encoding = matcher.tokenizer(list(split.texts))
    text_features = []
    for start in range(0, len(split.texts), batch_size):
        ids = encoding.input_ids[start : start + batch_size].to(matcher.device)
        mask = encoding.attention_mask[start : start + batch_size].to(matcher.device)
        with torch.no_grad(), matcher.model.autocast():
            text_features.append(matcher.model.text_features(ids, mask).float())
        if on_batch is not None:
            on_batch(len(ids))
    return RetrievalFeatures(
        image_tokens=torch.cat(tokens),
        image_features=torch.cat(image_features),
        text_features=torch.cat(text_features),
        itm_ids=matcher.tokenizer.for_itm(encoding.input_ids),
        attention_mask=encoding.attention_mask,
    )


def shortlist(features: RetrievalFeatures, k_test: int = 256) -> Shortlist:
    """ITC similarities and each query's top `k_test` candidates (all of them when there are fewer)."""
    similarity = features.image_features @ features.text_features.T
    images, texts = similarity.shape
    return Shortlist(
        similarity=similarity.cpu(),
        image_to_text=similarity.topk(min(k_test, texts), dim=1).indices.cpu(),
        text_to_image=similarity.topk(min(k_test, images), dim=0).indices.T.cpu(),
    )


@torch.no_grad()
def match_logits(
    matcher: BlipMatcher, image_tokens: torch.Tensor, itm_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """ITM match logit [B] (float32) of text i with image tokens i: the score LAVIS adds to the ITC similarity."""
    with matcher.model.autocast():
        return matcher.model.itm(image_tokens, itm_ids, attention_mask).logits[:, 1].float()


def rerank(
    matcher: BlipMatcher,
    features: RetrievalFeatures,
    candidates: Shortlist,
    batch_size: int = 128,
    on_batch: Progress | None = None,
    journal: ScoreJournal | None = None,
    options: Mapping[str, Any] | None = None,
) -> RetrievalScores:
    """Score every shortlisted pair by ITM logit + ITC similarity, `batch_size` pairs per forward pass, the images
    `batch_size` at a time on the device; `on_batch(n)` after each n pairs (`candidates.pairs().sum()` in all).

    With a `journal`, each block of images' logits is kept as it is computed, under an id of the block and
    `options` (everything the scores depend on); a block the journal holds with as many pairs as it has now is
    not scored again, so an interrupted re-ranking (hours on COCO) resumes where it stopped.
    """
    pairs = candidates.pairs()
    scores = candidates.similarity.clone()
    for start in range(0, len(pairs), batch_size):
        rows, columns = pairs[start : start + batch_size].nonzero(as_tuple=True)
        ident = score_id({"images": [start, start + batch_size]}, options or {})
        held = journal.done.get(ident) if journal is not None else None
        if held is not None and len(held["logits"]) == len(rows):
            logits = torch.tensor(held["logits"], dtype=torch.float32)
        else:
            logits = _block_logits(matcher, features, start, batch_size, rows, columns, on_batch)
            if journal is not None:
                journal.add(ident, {"logits": logits.tolist()})
        if held is not None and on_batch is not None:
            on_batch(len(rows))
        scores[rows + start, columns] += logits
    return RetrievalScores(
        image_to_text=_inside(scores, candidates.image_to_text),
        text_to_image=_inside(scores.T, candidates.text_to_image),
    )


def _block_logits(
    matcher: BlipMatcher,
    features: RetrievalFeatures,
    start: int,
    batch_size: int,
    rows: torch.Tensor,
    columns: torch.Tensor,
    on_batch: Progress | None,
) -> torch.Tensor:
    """ITM match logits of the shortlisted pairs (`rows` within the block of images from `start`, `columns`)."""
    tokens = to_device(features.image_tokens[start : start + batch_size], matcher.device)
    found = []
    for first in range(0, len(rows), batch_size):
        row, column = rows[first : first + batch_size], columns[first : first + batch_size]
        logits = match_logits(
            matcher,
            tokens[row.to(matcher.device)],
            features.itm_ids[column].to(matcher.device),
            features.attention_mask[column].to(matcher.device),
        )
        found.append(logits.float().cpu())
        if on_batch is not None:
            on_batch(len(row))
    return torch.cat(found) if found else torch.zeros(0)


def _inside(scores: torch.Tensor, shortlisted: torch.Tensor) -> torch.Tensor:
    """`scores` where shortlisted (per row), −100 elsewhere."""
    out = torch.full(scores.shape, OUTSIDE_SHORTLIST, dtype=torch.float32)
    return out.scatter_(1, shortlisted, scores.gather(1, shortlisted))


def best_ranks(scores: np.ndarray, targets: Sequence[Sequence[int]], chunk: int = 256) -> np.ndarray:
    """For each row of `scores`, the best 0-based rank of its target columns when the row is sorted by decreasing
    score.

    This is the position LAVIS finds in `np.argsort(row)[::-1]`. Among equal scores (the −100s, which matter only
    when `k_test` < 10) LAVIS's order is whatever numpy's unstable sort leaves; here it is fixed as a stable sort
    reversed leaves it: the later column first. Counting instead of sorting: rank = columns scoring higher, plus
    later columns scoring the same.
    """
    rows = np.repeat(np.arange(len(targets)), [len(own) for own in targets])
    columns = np.concatenate([np.asarray(own, dtype=np.int64) for own in targets])
    later = np.arange(scores.shape[1])[None, :]
    ranks = np.full(len(targets), np.iinfo(np.int64).max)
    for start in range(0, len(rows), chunk):
        row, column = rows[start : start + chunk], columns[start : start + chunk]
        block = scores[row]
        own = block[np.arange(len(row)), column][:, None]
        rank = (block > own).sum(1) + ((block == own) & (later > column[:, None])).sum(1)
        np.minimum.at(ranks, row, rank)
    return ranks


def recall(ranks: np.ndarray, k: int) -> float:
    """Share of queries ranked within the top `k`, in percent (computed as LAVIS does, to the last bit)."""
    return 100.0 * int(np.count_nonzero(ranks < k)) / len(ranks)


def retrieval_metrics(scores: RetrievalScores, split: RetrievalSplit) -> RetrievalMetrics:
    """LAVIS's retrieval figures of two score matrices over `split`'s ground truth."""
    image_ranks = best_ranks(scores.image_to_text.numpy(), split.image_texts)
    text_ranks = best_ranks(scores.text_to_image.numpy(), [[image] for image in split.text_image])
    txt = [recall(image_ranks, k) for k in RECALL_AT]
    img = [recall(text_ranks, k) for k in RECALL_AT]
    return RetrievalMetrics(*txt, *img)


def evaluate_retrieval(
    matcher: BlipMatcher,
    split: RetrievalSplit,
    images_root: Path,
    k_test: int = 256,
    batch_size: int = 128,
) -> RetrievalResult:
    """The three stages and the metrics in one call (see the module's docstring)."""
    features = encode_split(matcher, split, images_root, batch_size)
    scores = rerank(matcher, features, shortlist(features, k_test), batch_size)
    return RetrievalResult(scores, retrieval_metrics(scores, split))
