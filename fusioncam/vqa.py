"""PNP-VQA: the question's heatmap picks the image patches each caption sees; captions answer the question.

Steps (LAVIS `pnp_vqa`): Grad-CAM row 1 of the question over the patch grid → per caption, `num_patches` patches
drawn from that distribution → the captioner decodes from those patches' tokens only → de-duplicated captions →
UnifiedQA-T5 with Fusion-in-Decoder reads "question \\n captions" passages → answer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from fusioncam.api import BlipMatcher, Captioner, QuestionAnswerer, SamRefiner, distinct_images, explain_pairs
from fusioncam.models.decoding import DecodingConfig
from fusioncam.models.t5_fid import DEFAULT_MAX_NEW_TOKENS, FiDEncoding
from fusioncam.text import clean_question
from fusioncam.vqa_text import add_new_captions, qa_passages, question_for_itm


def gather_patches(image_embeds: torch.Tensor, patch_ids: torch.Tensor) -> torch.Tensor:
    """Tokens of the chosen patches: image tokens [B, 1 + N, D], 0-based patch ids [B, K, P] → [B·K, P, D].

    Ids skip the class token (+1) and are sorted, so each caption sees its patches in raster order; row b·K + k
    is caption k of image b.
    """
    batch, captions, patches = patch_ids.shape
    index = (patch_ids + 1).sort(dim=-1).values.reshape(batch, captions * patches)
    gathered = image_embeds.gather(1, index[..., None].expand(-1, -1, image_embeds.shape[-1]))
    return gathered.reshape(batch * captions, patches, image_embeds.shape[-1])


@dataclass(frozen=True)
class VQAConfig:
    """PNP-VQA settings; the defaults are LAVIS's evaluation settings for `pnp_vqa` base."""

    block: int = 7  # ITM text block whose cross-attention Grad-CAM picks the patches
    num_captions: int = 100
    num_patches: int = 20
    caption_min_length: int = 10  # in tokens, prompt included
    caption_max_length: int = 20
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    captions_per_passage: int = 1
    answer_max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    answer_beams: int = 1
    # LAVIS samples until every question has `num_captions` distinct captions, however long that takes; we stop
    # after this many rounds and answer with what we have (a tiny or degenerate captioner may never get there).
    max_caption_rounds: int = 10
    explain: bool = True


@dataclass
class Evidence:
    """One caption the answer was read from: the patches it was decoded from and its effect on the answer.

    `contribution` = log p(answer | all passages) − log p(answer | all passages but this caption's): how much more
    likely the answer became because of it (negative: it argued against the answer).
    """

    caption: str
    patches: list[int]
    contribution: float | None = None


@dataclass
class VQAResult:
    """An answer, the question's heatmap and the answer map on the patch grid, the evidence, time per stage."""

    question: str
    answer: str
    heatmap: torch.Tensor
    answer_map: torch.Tensor | None
    evidence: list[Evidence]
    seconds: dict[str, float] = field(default_factory=dict)


class PNPVQA:
    """Plug-and-play VQA: BLIP ITM (where to look) → BLIP captioner (what is there) → UnifiedQA FiD (the answer)."""

    def __init__(
        self,
        matcher: BlipMatcher,
        captioner: Captioner,
        qa: QuestionAnswerer,
        config: VQAConfig,
        refiner: SamRefiner | None = None,
    ) -> None:
        """`refiner` (encoder mode `esam`) sharpens each question's heatmap with EfficientSAM before sampling."""
        self.matcher, self.captioner, self.qa, self.config, self.refiner = matcher, captioner, qa, config, refiner

    def answer(
        self,
        images: Sequence[np.ndarray],
        questions: Sequence[str],
        generator: torch.Generator | None = None,
        keys: Sequence[object] | None = None,
    ) -> list[VQAResult]:
        """Answer question i about image i, for a batch of pairs; `generator` makes sampling repeatable.

        `keys` name the images (e.g. paths): an image asked several questions is encoded once by BLIP, by SAM and by
        the captioner. Without keys every image is taken as distinct.
        """
        config, seconds = self.config, dict[str, float]()
        keys = list(keys) if keys is not None else [object() for _ in images]
        with _timed(seconds, "heatmap"):
            explained = explain_pairs(
                self.matcher,
                images,
                questions,
                keys=keys,
                block=config.block,
                refiner=self.refiner,
                clean=lambda q: question_for_itm(clean_question(q)),
            )
        maps = torch.stack([item.map for item in explained])
        with _timed(seconds, "captions"):
            evidence = self._captions(images, keys, maps.flatten(1), generator)
        grid = (maps.shape[1], maps.shape[2])
        answers: list[str] = [""] * len(questions)
        answer_maps: list[torch.Tensor | None] = [None] * len(questions)
        for group in self._groups(questions, evidence):
            with _timed(seconds, "answer"):
                passages = [group_passages for _, group_passages in group]
                with torch.inference_mode(), self.qa.model.autocast():
                    encoding = self.qa.model.encode(*self.qa.tokenize(passages))
                    answer_ids = self.qa.model.generate(
                        encoding, num_beams=config.answer_beams, max_new_tokens=config.answer_max_new_tokens
                    )
                for (index, _), text in zip(group, self.qa.decode(answer_ids), strict=True):
                    answers[index] = text
            if config.explain:
                with _timed(seconds, "explain"):
                    for row, (index, _) in enumerate(group):
                        answer_maps[index] = self._explain(encoding, row, answer_ids[row, 1:], evidence[index], grid)
        per_question = {stage: value / len(questions) for stage, value in seconds.items()}
        return [
            VQAResult(
                question,
                answers[index],
                explained[index].heatmap.heatmap,
                answer_maps[index],
                evidence[index],
                per_question,
            )
            for index, question in enumerate(questions)
        ]

    def _captions(
        self,
        images: Sequence[np.ndarray],
        keys: Sequence[object],
        gradcams: torch.Tensor,
        generator: torch.Generator | None,
    ) -> list[list[Evidence]]:
        """Sample patch sets from each question's heatmap and caption them until enough distinct captions.

        LAVIS samples `num_captions` captions per question in every round; here a later round samples, for each
        question still short, what its last round's yield says it needs (`_round_size`). Each caption is an
        independent draw and a question keeps the first distinct ones in order, so this keeps the same captions in
        distribution, without decoding a full batch to fill a few slots (a round is most of this stage's time).
        The first round's draws are LAVIS's.
        """
        config, captioner = self.config, self.captioner
        distinct, rows = distinct_images(images, keys)
        image_embeds = captioner.embed_images(distinct)
        image_embeds = image_embeds[rows.to(image_embeds.device)]
        weights = _sampling_weights(gradcams, config.num_patches).to(image_embeds.device)
        decoding = DecodingConfig(
            strategy="sample",
            max_length=config.caption_max_length,
            min_length=config.caption_min_length,
            top_k=config.top_k,
            top_p=config.top_p,
            repetition_penalty=config.repetition_penalty,
        )
        tokenizer = captioner.tokenizer
        prompt = captioner.model.config.prompt
        kept: list[list[str]] = [[] for _ in images]
        patches_of: list[dict[str, list[int]]] = [{} for _ in images]
        wanted = [config.num_captions for _ in images]
        for _ in range(config.max_caption_rounds):
            if not any(wanted):
                break
            # `wanted[i]` draws of `num_patches` patches for question i, each without replacement.
            draws = torch.multinomial(
                weights.repeat_interleave(torch.tensor(wanted, device=weights.device), dim=0),
                config.num_patches,
                generator=generator,
            ).split(wanted)
            patches = torch.cat(
                [
                    gather_patches(image_embeds[image : image + 1], image_draws[None].to(image_embeds.device))
                    for image, image_draws in enumerate(draws)
                ]
            )
            with torch.inference_mode(), captioner.model.autocast():
                ids = captioner.model.generate(
                    patches,
                    tokenizer.prompt_ids(prompt, len(patches)).to(image_embeds.device),
                    tokenizer.sep_token_id,
                    tokenizer.pad_token_id,
                    decoding,
                    generator,
                )
            decoded = tokenizer.decode(ids)
            first = 0
            for image, image_draws in enumerate(draws):
                outputs, first = decoded[first : first + len(image_draws)], first + len(image_draws)
                before = len(kept[image])
                kept[image] = add_new_captions([kept[image]], outputs, prompt, config.num_captions)[0]
                captions = [output[len(prompt) :] for output in outputs]
                for caption in kept[image][before:]:
                    patches_of[image][caption] = sorted(image_draws[captions.index(caption)].tolist())
                missing, found = config.num_captions - len(kept[image]), len(kept[image]) - before
                wanted[image] = _round_size(missing, found, len(outputs), config.num_captions)
        return [
            [Evidence(caption, patches_of[image][caption]) for caption in kept[image]] for image in range(len(images))
        ]

    def _groups(self, questions: Sequence[str], evidence: list[list[Evidence]]) -> list[list[tuple[int, list[str]]]]:
        """Questions with their passages, grouped by passage count (FiD batches need one count per batch)."""
        config = self.config
        groups: dict[int, list[tuple[int, list[str]]]] = {}
        for index, (question, found) in enumerate(zip(questions, evidence, strict=True)):
            captions = [item.caption for item in found]
            passages = qa_passages(clean_question(question), captions, config.num_captions, config.captions_per_passage)
            if not passages:
                raise RuntimeError(f"no caption could be generated for {question!r}; nothing to answer from")
            groups.setdefault(len(passages), []).append((index, passages))
        return list(groups.values())

    def _explain(
        self,
        encoding: FiDEncoding,
        row: int,
        answer_ids: torch.Tensor,
        evidence: list[Evidence],
        grid: tuple[int, int],
    ) -> torch.Tensor:
        """Each caption's contribution (log-probability drop of the answer without its passage) and the answer map.

        Why the drop and not the decoder's cross-attention mass per passage: attention says where the decoder
        read, not whether that changed the answer; removing a passage measures its effect on this very answer.
        FiD makes it cheap: passages are encoded separately, so dropping one needs no re-encoding (and the decoder's
        cross-attention keys and values are projected once for all removals). The map adds each caption's positive
        contribution onto the patches it was decoded from.
        """
        model, per_passage = self.qa.model, self.config.captions_per_passage
        one = FiDEncoding(
            encoding.last_hidden_state[row : row + 1], encoding.attention_mask[row : row + 1], encoding.num_passages
        )
        answer_map = torch.zeros(grid[0] * grid[1])
        if one.num_passages == 1:  # nothing to compare with: contributions stay unknown (None)
            return answer_map.reshape(grid)
        answer_ids = answer_ids[None]
        with torch.inference_mode(), model.autocast():
            with_all, without_each = model.leave_one_out_log_probs(one, answer_ids)
        drops = (with_all - without_each).tolist()
        for passage, drop in enumerate(drops):
            for item in evidence[passage * per_passage : (passage + 1) * per_passage]:
                item.contribution = drop
                if drop > 0:
                    answer_map[item.patches] += drop
        return answer_map.reshape(grid)


def _round_size(missing: int, found: int, drawn: int, limit: int) -> int:
    """Draws for a question's next caption round: none once it has all its captions, else twice what its last
    round's yield (`found` new captions from `drawn` draws) says the `missing` ones take, at most `limit`.

    The margin covers the yield falling as captions accumulate (more draws repeat one), so that one round usually
    completes a question, and a captioner that mostly repeats itself still gets full rounds, as in LAVIS.
    """
    if missing == 0:
        return 0
    return min(limit, math.ceil(2 * missing * drawn / max(found, 1)))


def _sampling_weights(gradcams: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Heatmaps [B, N] as sampling weights for drawing `num_patches` patches without replacement.

    LAVIS samples straight from the Grad-CAM map; a map with fewer positive cells than `num_patches` (all zero for
    an untrained model) would make `multinomial` fail, so such a row gets a tiny uniform floor. Rows with enough
    positive cells are used exactly as they are.
    """
    weights = gradcams.clamp(min=0).double()
    short = (weights > 0).sum(-1) < num_patches
    floor = weights.sum(-1, keepdim=True).clamp(min=1e-12) * 1e-6 / weights.shape[-1]
    return torch.where(short[:, None], weights + floor, weights)


@contextmanager
def _timed(seconds: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - start
