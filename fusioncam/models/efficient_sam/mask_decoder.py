"""Image embedding + prompt embeddings → mask logits and predicted IoUs, for many prompts per image.

Output tokens (one IoU token, then the mask tokens) are prepended to the prompt tokens and run through the
two-way transformer with the image. The image side is upscaled 4× by transposed convolutions; each mask token,
through its own hypernetwork MLP, becomes the weights of a per-pixel linear readout of that upscaled map. Token 0
is the single-mask answer; tokens 1.. are the multimask answers for ambiguous prompts.

Unlike segment-anything there is no dense (mask-prompt) embedding: the image embedding enters the transformer as
it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

import torch
from torch import nn

from fusioncam.models.efficient_sam.transformer import MLPBlock, TwoWayTransformer


@dataclass
class MaskDecoderConfig:
    """Architecture of the prompt/mask side (the same for every official EfficientSAM)."""

    transformer_depth: int = 2
    transformer_mlp_dim: int = 2048
    num_heads: int = 8
    attention_downsample_rate: int = 2  # image attention runs in width / rate channels
    num_multimask_outputs: int = 3
    # Linear layers of the IoU head, the output layer included (the original builder's `iou_head_depth`).
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    # Channels after each 2× transposed convolution; the last is the width of the hypernetwork readout.
    upscaling_dims: tuple[int, ...] = field(default=(64, 32))

    @property
    def num_mask_tokens(self) -> int:
        return self.num_multimask_outputs + 1 if self.num_multimask_outputs > 1 else 1


@dataclass
class MaskDecoderOutput:
    """Low-resolution mask logits [B, Q, M, L, L] and predicted IoUs [B, Q, M] (M masks per query)."""

    masks: torch.Tensor
    iou_predictions: torch.Tensor


def _upscaling_stage(in_dim: int, out_dim: int, last: bool) -> nn.Sequential:
    """2× transposed convolution → GroupNorm(1) (all stages but the last) → GELU (every stage)."""
    norm = nn.Identity() if last else nn.GroupNorm(1, out_dim)
    return nn.Sequential(nn.ConvTranspose2d(in_dim, out_dim, kernel_size=2, stride=2), norm, nn.GELU())


class MaskDecoder(nn.Module):
    """Predicts masks for every query of every image; the image embedding is shared by an image's queries."""

    def __init__(self, width: int, config: MaskDecoderConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = TwoWayTransformer(
            width,
            config.transformer_depth,
            config.num_heads,
            config.transformer_mlp_dim,
            config.attention_downsample_rate,
        )
        self.iou_token = nn.Embedding(1, width)
        self.mask_tokens = nn.Embedding(config.num_mask_tokens, width)
        dims = [width, *config.upscaling_dims]
        last = len(config.upscaling_dims) - 1
        self.final_output_upscaling_layers = nn.ModuleList(
            _upscaling_stage(a, b, last=index == last) for index, (a, b) in enumerate(pairwise(dims))
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLPBlock(width, width, dims[-1], num_layers=2) for _ in range(config.num_mask_tokens)
        )
        self.iou_prediction_head = MLPBlock(
            width, config.iou_head_hidden_dim, config.num_mask_tokens, num_layers=config.iou_head_depth - 1
        )

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> MaskDecoderOutput:
        """Image embeddings [B, C, h, w], their positional encoding [1, C, h, w], prompts [B, Q, P, C].

        `multimask_output` returns the multimask tokens (1..), otherwise the single-mask token 0.
        """
        batch, queries, num_points, width = sparse_embeddings.shape
        _, channels, h, w = image_embeddings.shape
        # Every query of an image reads the same embedding: repeat it per query, (b, q) flattened row-major.
        image = image_embeddings[:, None].expand(-1, queries, -1, -1, -1).reshape(batch * queries, channels, h, w)
        prompts = sparse_embeddings.reshape(batch * queries, num_points, width)

        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.expand(prompts.shape[0], -1, -1), prompts], dim=1)
        tokens_out, image_out = self.transformer(image, image_pe, tokens)
        iou_token_out = tokens_out[:, 0]
        mask_tokens_out = tokens_out[:, 1 : 1 + self.config.num_mask_tokens]

        upscaled = image_out.transpose(1, 2).reshape(batch * queries, channels, h, w)
        for stage in self.final_output_upscaling_layers:
            upscaled = stage(upscaled)
        hyper = torch.stack([mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], 1)
        n, c, mask_h, mask_w = upscaled.shape
        masks = (hyper @ upscaled.reshape(n, c, mask_h * mask_w)).reshape(n, -1, mask_h, mask_w)
        iou = self.iou_prediction_head(iou_token_out)

        chosen = slice(1, None) if multimask_output and self.config.num_multimask_outputs > 1 else slice(0, 1)
        masks, iou = masks[:, chosen], iou[:, chosen]
        return MaskDecoderOutput(
            masks=masks.reshape(batch, queries, *masks.shape[1:]), iou_predictions=iou.reshape(batch, queries, -1)
        )
