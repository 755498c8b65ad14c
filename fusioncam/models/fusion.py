"""BLIP whose image tokens are fused with EfficientSAM's embedding by a DIFNet encoder (DESIGN §6, "Fusion for BLIP").

    cells = area-pool(SAM embedding [B, C, h, w]) to BLIP's patch grid gh×gw    [B, gh·gw, C]
    sam   = LayerNorm(Linear([mean of cells; cells]))                            [B, 1 + gh·gw, Dv]
    fused = vit + g · DIFNet(vit, sam), vit = BLIP's ViT tokens                  [B, 1 + gh·gw, Dv]

Why it is shaped like this:
- The gate g starts at 0, so an untrained fusion gives BLIP's image tokens bit for bit (x + 0·y is x for finite y)
  and with them BLIP's ITM, ITC and Grad-CAM; training can only add to what BLIP already does. As with any
  zero-initialised gate (ReZero, Flamingo), at g = 0 only g itself gets a non-zero gradient; the rest of the
  fusion starts learning once g has moved.
- BLIP stays frozen and runs its own code for everything after the image tokens: `BlipFusionITM` only changes
  what `encode_image` returns, so Grad-CAM and scoring need no fusion-specific path.
- EfficientSAM embeddings come in precomputed: the SAM encoder runs once per image elsewhere (the same embedding
  also serves mask refinement).
- A checkpoint (`fusioncam.fusion_checkpoint.save_fusion`) holds only the fusion's parameters and says which BLIP and
  EfficientSAM presets it was trained on: a fusion means nothing on top of other frozen models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fusioncam.models.blip import BlipITM, BlipITMConfig, ITMOutput
from fusioncam.models.config import merge_config
from fusioncam.models.difnet import DifnetConfig, DifnetEncoder
from fusioncam.models.layers import Model

# DIFNet treats a row whose features sum to exactly `padding_idx` as padding. Neither stream has padding (every
# image has all its patches), yet a real row can sum to exactly 0 — e.g. an all-zero SAM cell through a projection
# that learned a zero bias — and a sample whose rows were all taken for padding would come out NaN, which even a
# zero gate passes on (0 · NaN = NaN). NaN compares unequal to everything, itself included, so no row ever matches.
NO_PADDING = float("nan")


@dataclass
class FusionConfig:
    """What a fusion trains, apart from the widths it takes from BLIP (token width Dv and patch grid).

    DIFNet's own names are kept (`Lf`, `T`, `N`; see `fusioncam.models.difnet.DifnetConfig`); its attention heads
    split Dv evenly, so queries, keys and values are Dv / heads wide.
    """

    sam_channels: int = 256  # channels of the EfficientSAM image embedding (its neck width)
    Lf: int = 3  # DIFNet layers shared by both streams before they are summed
    T: int = 2  # how many times each shared layer runs on each stream
    N: int = 6  # DIFNet layers in all
    heads: int | None = None  # None: one head per 64 channels of Dv (at least one), as in BLIP's ViTs
    d_ff: int = 2048
    dropout: float = 0.1
    attention_dropout: float = 0.1

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FusionConfig:
        """From plain values (a checkpoint's metadata); unknown keys are an error, missing ones keep defaults."""
        return merge_config(cls(), values)

    def difnet(self, width: int) -> DifnetConfig:
        """The DIFNet encoder for tokens `width` (Dv) wide."""
        heads = max(1, width // 64) if self.heads is None else self.heads
        if heads < 1 or width % heads:
            raise ValueError(f"fusion heads must divide the BLIP token width {width}, got {heads}")
        return DifnetConfig(
            Lf=self.Lf,
            T=self.T,
            N=self.N,
            d_model=width,
            heads=heads,
            d_k=width // heads,
            d_v=width // heads,
            d_ff=self.d_ff,
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            padding_idx=NO_PADDING,
            d_in=width,
        )


class SamTokens(nn.Module):
    """EfficientSAM embedding [B, C, h, w] → pixel-stream tokens [B, 1 + gh·gw, Dv], laid out like the ViT's.

    Area pooling (adaptive average) gives cell (i, j) the part of the image that ViT patch (i, j) sees, since both
    models resize the whole image to a square without padding (when the SAM grid is not a multiple of BLIP's,
    64 → 24, neighbouring cells share a row or column). The leading token, the counterpart of the ViT's class
    token, is the mean of the cells, so position 0 is a summary of the image in both streams; it goes through the
    same projection and LayerNorm as the cells, which keeps it on their scale. A learned token (alone or added to
    the mean) would tell DIFNet nothing about the image and be one more parameter to train from scratch.
    """

    def __init__(self, channels: int, width: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid = grid
        self.proj = nn.Linear(channels, width)
        self.norm = nn.LayerNorm(width)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        cells = F.adaptive_avg_pool2d(embedding, self.grid).flatten(2).transpose(1, 2)  # [B, gh·gw, C], row-major
        return self.norm(self.proj(torch.cat([cells.mean(dim=1, keepdim=True), cells], dim=1)))


class SamFusion(nn.Module):
    """Everything a fusion trains: ViT tokens + SAM embedding → ViT tokens + gate · DIFNet(ViT, SAM tokens).

    Its state dict is exactly what a fusion checkpoint holds.
    """

    def __init__(self, config: FusionConfig, width: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.config = config
        self.sam_tokens = SamTokens(config.sam_channels, width, grid)
        self.difnet = DifnetEncoder(config.difnet(width))
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, image_embeds: torch.Tensor, sam_embedding: torch.Tensor) -> torch.Tensor:
        """ViT tokens [B, 1 + N, Dv] and SAM embeddings [B, C, h, w] of the same images → fused tokens."""
        channels = self.config.sam_channels
        if sam_embedding.ndim != 4 or sam_embedding.shape[:2] != (image_embeds.shape[0], channels):
            raise ValueError(
                f"SAM embedding must be [{image_embeds.shape[0]}, {channels}, h, w] for "
                f"{image_embeds.shape[0]} images, got {tuple(sam_embedding.shape)}"
            )
        fused = self.difnet(image_embeds, self.sam_tokens(sam_embedding)).last_hidden_state
        return image_embeds + self.gate * fused


class BlipFusionITM(Model):
    """A frozen BLIP ITM model whose image tokens are fused with EfficientSAM embeddings.

    It answers the calls of `BlipITM` that Grad-CAM and scoring make; only `encode_image` differs (it needs the
    SAM embedding too), everything after the image tokens is BLIP's. `blip` is frozen in place
    (`requires_grad_(False)`): only `fusion` trains, and it is created on BLIP's device. To fuse ViT tokens
    already computed by `blip.encode_image` (e.g. to compare plain and fused heatmaps of one image), call
    `model.fusion(vit_tokens, sam_embedding)`.
    """

    def __init__(self, blip: BlipITM, fusion: FusionConfig) -> None:
        super().__init__()
        self.blip = blip.requires_grad_(False)
        self.fusion = SamFusion(fusion, blip.config.vision.width, blip.grid_size).to(blip.device)

    @property
    def config(self) -> BlipITMConfig:
        """BLIP's architecture (the fusion's is `fusion.config`), so code that reads `model.config` works as is."""
        return self.blip.config

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.blip.grid_size

    def inference_only(self) -> list[nn.Module]:
        """BLIP's ViT and the fusion: both make the image tokens, which Grad-CAM never differentiates."""
        return [self.blip.vision_encoder, self.fusion]

    def encode_image(self, pixels: torch.Tensor, sam_embedding: torch.Tensor) -> torch.Tensor:
        """BLIP-normalized pixels [B, 3, S, S] + their SAM embeddings [B, C, h, w] → fused tokens [B, 1 + N, Dv].

        `sam_embedding` is `EfficientSam.embed(images).embeddings` of the same images.
        """
        return self.fusion(self.blip.encode_image(pixels), sam_embedding)

    def itm(
        self,
        image_embeds: torch.Tensor,
        itm_input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        probe_block: int | None = None,
    ) -> ITMOutput:
        """BLIP's `itm` on fused tokens."""
        return self.blip.itm(image_embeds, itm_input_ids, attention_mask, probe_block)

    def image_features(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """BLIP's `image_features` on fused tokens."""
        return self.blip.image_features(image_embeds)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """BLIP's `text_features` (the fusion does not touch text)."""
        return self.blip.text_features(input_ids, attention_mask)

    def itc_similarity(
        self, image_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """BLIP's `itc_similarity` on fused tokens."""
        return self.blip.itc_similarity(image_embeds, input_ids, attention_mask)
