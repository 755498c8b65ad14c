"""What a step optimises: BLIP's image–text matching objective, without the momentum encoders and queues of its
pre-training.

- ITC: cosine similarities of every image with every text of the *global* batch, divided by a learnable
  temperature (initialised at 0.07 and clamped to [0.001, 0.5] as BLIP does), then a symmetric cross-entropy.
  Features are all-gathered across ranks with their gradients, so every rank sees the negatives of the whole
  global batch and a run on N processes computes the same ITC as one process given the same global batch.
- ITM: each local image gets a hard negative text, and each local text a hard negative image, drawn from the
  global batch with probability ∝ softmax(similarity / temperature) — the pairs ITC finds hardest to tell apart.
  The ITM head then classifies positives (label 1) and negatives (label 0). Loss = ITC + ITM.

Which texts are true of which images comes from the whole training set (`KnownPairs`): text j is a positive of
image i when the set pairs i's image with j's (cleaned) caption anywhere, so another caption of the same photo, a
repeated caption ("a red circle") or a caption some other photo shares is never drawn as a negative, and shares
the ITC target mass, instead of teaching the model that a true description is false.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fusioncam.models.blip import BlipITM
from fusioncam.models.fusion import BlipFusionITM
from fusioncam.train.distributed import gather, gather_with_grad, rank_and_world

INITIAL_TEMPERATURE = 0.07
TEMPERATURE_RANGE = (0.001, 0.5)


@dataclass
class Losses:
    """ITC over the global batch and ITM over this rank's positives and hard negatives (both scalars)."""

    itc: torch.Tensor
    itm: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.itc + self.itm


class KnownPairs:
    """Every (image key, text key) the training set pairs: the texts known to be true of each image.

    Kept as one sorted tensor of codes `image · T + text` (T distinct texts), so the [images × texts] matrix of a
    global batch is one `isin` (COCO's 566k pairs: 4.5 MB).
    """

    def __init__(self, image_keys: Sequence[int], text_keys: Sequence[int]) -> None:
        self.texts = max(text_keys) + 1
        self.codes = torch.unique(torch.tensor(image_keys) * self.texts + torch.tensor(text_keys))

    def matrix(self, image_keys: torch.Tensor, text_keys: torch.Tensor) -> torch.Tensor:
        """[i, j] = text j is known to be true of image i (bool; the diagonal of a batch's own pairs is True)."""
        codes = image_keys[:, None] * self.texts + text_keys[None]
        return torch.isin(codes, self.codes.to(codes.device))


def sample_negatives(
    scores: torch.Tensor, positives: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One index per row drawn ∝ softmax(scores) over the row's non-positive entries; returns (index, valid).

    Positives get -inf before the softmax, which is softmax(scores) with them zeroed and renormalised, and never
    underflows to an all-zero row however sharp the temperature. A row whose entries are all positives has no
    negative: it draws an arbitrary index and is marked invalid, for the caller to leave out of the loss.
    Drawn on the CPU, where `generator` lives, so the draws do not depend on the device.
    """
    valid = ~positives.all(dim=1)
    weights = scores.float().masked_fill(positives, float("-inf")).softmax(dim=1)
    weights = torch.where(valid[:, None], weights, torch.ones_like(weights))
    index = torch.multinomial(weights.cpu(), 1, generator=generator).squeeze(1)
    return index.to(scores.device), valid


def matching_losses(
    model: BlipITM | BlipFusionITM,
    image_embeds: torch.Tensor,
    input_ids: torch.Tensor,
    itm_input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_keys: torch.Tensor,
    text_keys: torch.Tensor,
    known: KnownPairs,
    temperature: torch.Tensor,
    generator: torch.Generator,
) -> Losses:
    """BLIP's ITC and hard-negative ITM for this rank's b pairs (pair i = image i with text i).

    Token tensors must have the same length on every rank (`pad_to_global_length`). The ITC is the loss of the
    whole global batch on every rank; DDP's gradient average then gives the gradient one process would get.
    """
    rank, _ = rank_and_world()
    batch = image_embeds.shape[0]
    local = slice(rank * batch, (rank + 1) * batch)
    image_features = gather_with_grad(model.image_features(image_embeds)).float()
    text_features = gather_with_grad(model.text_features(input_ids, attention_mask)).float()
    logits = image_features @ text_features.T / temperature  # [G, G]: global images × global texts
    positives = known.matrix(gather(image_keys), gather(text_keys))  # [G images, G texts]
    itc = (F.cross_entropy(logits, _spread(positives)) + F.cross_entropy(logits.T, _spread(positives.T))) / 2

    with torch.no_grad():
        negative_texts, texts_valid = sample_negatives(logits[local], positives[local], generator)
        negative_images, images_valid = sample_negatives(logits.T[local], positives.T[local], generator)
    all_itm_ids, all_masks = gather(itm_input_ids), gather(attention_mask)
    all_image_embeds = gather_with_grad(image_embeds)
    output = model.itm(
        torch.cat([image_embeds, image_embeds, all_image_embeds[negative_images]]),
        torch.cat([itm_input_ids, all_itm_ids[negative_texts], itm_input_ids]),
        torch.cat([attention_mask, all_masks[negative_texts], attention_mask]),
    )
    ignore = torch.full_like(negative_texts, -100)
    labels = torch.cat(
        [
            torch.ones_like(negative_texts),
            torch.where(texts_valid, 0, ignore),
            torch.where(images_valid, 0, ignore),
        ]
    )
    itm = F.cross_entropy(output.logits.float(), labels, ignore_index=-100)
    return Losses(itc, itm)


def _spread(positives: torch.Tensor) -> torch.Tensor:
    """ITC targets: each row's mass shared equally by its positives (a batch's own pair always among them)."""
    return positives.float() / positives.sum(dim=1, keepdim=True)


class MatchingObjective(nn.Module):
    """Everything a step trains, as one module for DDP to wrap: the model and ITC's temperature.

    For a fusion the model is a `BlipFusionITM` whose BLIP is frozen; only its fusion (and the temperature) train.
    """

    def __init__(self, model: BlipITM | BlipFusionITM) -> None:
        super().__init__()
        self.model = model
        self.temperature = nn.Parameter(torch.tensor(INITIAL_TEMPERATURE))

    def trainable(self) -> dict[str, nn.Parameter]:
        """The parameters a step updates, by name: what a checkpoint saves and gradient clipping measures."""
        return {name: param for name, param in self.named_parameters() if param.requires_grad}

    def forward(
        self,
        pixels: torch.Tensor,
        input_ids: torch.Tensor,
        itm_input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_keys: torch.Tensor,
        text_keys: torch.Tensor,
        known: KnownPairs,
        generator: torch.Generator,
        sam_embeddings: torch.Tensor | None = None,
    ) -> Losses:
        with torch.no_grad():
            self.temperature.clamp_(*TEMPERATURE_RANGE)
        if isinstance(self.model, BlipFusionITM) and sam_embeddings is not None:
            image_embeds = self.model.encode_image(pixels, sam_embeddings)
        elif isinstance(self.model, BlipITM) and sam_embeddings is None:
            image_embeds = self.model.encode_image(pixels)
        else:
            raise ValueError("a fusion model needs SAM embeddings and a BLIP ITM takes none")
        return matching_losses(
            self.model,
            image_embeds,
            input_ids,
            itm_input_ids,
            attention_mask,
            image_keys,
            text_keys,
            known,
            self.temperature,
            generator,
        )
