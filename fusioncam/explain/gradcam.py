"""Cross-attention Grad-CAM of a text over an image, numerically what LAVIS `compute_gradcam` returns.

At text block `b`, A = cross-attention probabilities [B, H, L, 1 + N] and G = ∂(Σ match logit)/∂A. Per token,
the map is mean over heads of A · max(G, 0) over the patch grid (the image class column dropped, padded tokens
zeroed). The sentence map — the heatmap everybody uses — is the mean over the real word-pieces, i.e. every token
but the leading `[ENC]` and the trailing `[SEP]`.

Works with any model that has `itm(image_embeds, ids, mask, probe_block=b) -> ITMOutput` and `grid_size`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from fusioncam.models.blip import ITMOutput
from fusioncam.text import EmptyTextError, Word


class ProbedITM(Protocol):
    @property
    def grid_size(self) -> tuple[int, int]: ...

    def itm(
        self,
        image_embeds: torch.Tensor,
        itm_input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        probe_block: int | None = None,
    ) -> ITMOutput: ...


@dataclass
class GradCAM:
    """Grad-CAM maps of a batch of (image, text) pairs.

    `token_maps` [B, L, gh, gw]: map of token position p (0 = `[ENC]`; padding rows are 0).
    `sentence_maps` [B, gh, gw]: mean over the real word-pieces (LAVIS row 1).
    """

    token_maps: torch.Tensor
    sentence_maps: torch.Tensor
    itm_logits: torch.Tensor
    attention: torch.Tensor
    attention_grad: torch.Tensor

    def lavis_rows(self, index: int) -> torch.Tensor:
        """The [L + 1, gh, gw] stack LAVIS returns for sample `index`: [ENC], sentence, then tokens 1…L-1."""
        tokens = self.token_maps[index]
        return torch.cat([tokens[:1], self.sentence_maps[index][None], tokens[1:]])

    def word_maps(self, index: int, words: list[Word]) -> list[tuple[str, torch.Tensor]]:
        """One map per word: the mean of its word-pieces' maps (a user wants "kites", not "kite" + "##s")."""
        tokens = self.token_maps[index]
        return [(word.text, tokens[list(word.positions)].mean(0)) for word in words]


def compute_gradcam(
    model: ProbedITM,
    image_embeds: torch.Tensor,
    itm_input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    block: int,
) -> GradCAM:
    """Grad-CAM at text block `block` for ids whose position 0 is `[ENC]`.

    Only the gradient with respect to the probed attention is taken (`torch.autograd.grad`), so no parameter
    gradients are accumulated and the model may be frozen.
    """
    real_tokens = attention_mask.sum(-1) - 2
    if (real_tokens <= 0).any():
        raise EmptyTextError("a text has no word-pieces between [ENC] and [SEP]: nothing to explain")
    with torch.enable_grad():
        out = model.itm(image_embeds.detach(), itm_input_ids, attention_mask, probe_block=block)
        attention = out.cross_attention
        if attention is None:
            raise ValueError(f"{type(model).__name__}.itm returned no cross-attention for probe_block={block}")
        (grad,) = torch.autograd.grad(out.logits[:, 1].sum(), attention)
    attention = attention.detach()
    batch, heads, length, _ = attention.shape
    gh, gw = model.grid_size
    if attention.shape[-1] != 1 + gh * gw:
        raise ValueError(f"cross-attention over {attention.shape[-1]} tokens does not fit a {gh}×{gw} grid + CLS")
    text_mask = attention_mask[:, None, :, None, None].to(attention.dtype)
    cams = attention[..., 1:].reshape(batch, heads, length, gh, gw) * text_mask
    grads = grad[..., 1:].clamp(min=0).reshape(batch, heads, length, gh, gw) * text_mask
    token_maps = (cams * grads).mean(dim=1)
    positions = torch.arange(length, device=attention_mask.device)
    word_pieces = (positions >= 1) & (positions <= real_tokens[:, None])
    sentence_maps = (token_maps * word_pieces[:, :, None, None]).sum(1) / real_tokens[:, None, None]
    return GradCAM(token_maps, sentence_maps, out.logits.detach(), attention, grad)
