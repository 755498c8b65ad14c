"""EfficientSAM: image encoder + prompt encoder + mask decoder, and the calls that wire them.

The image embedding is the expensive part and does not depend on the prompts, so the API splits the two:
`embed(images)` once, then `predict(embedding, points, labels)` for as many prompt sets as needed. `forward` is
both in one call and gives the same numbers.

Conventions (the original's): images are [B, 3, H, W] RGB in [0, 1], of any size; points are [B, Q, P, 2] (x, y)
in input-image pixels for Q queries of P points each, a negative coordinate meaning "no point"; labels [B, Q, P]
are 1 (foreground), 0 (background), 2/3 (box corners) or −1 (padding). Masks are logits (> 0 is foreground).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from fusioncam.models.architectures import architecture
from fusioncam.models.config import merge_config
from fusioncam.models.efficient_sam.image_encoder import ImageEncoderConfig, ImageEncoderViT
from fusioncam.models.efficient_sam.mask_decoder import MaskDecoder, MaskDecoderConfig
from fusioncam.models.efficient_sam.prompt_encoder import PromptEncoder
from fusioncam.models.layers import Model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class EfficientSamConfig:
    """A whole EfficientSAM model (defaults: ViT-T) and the pixel statistics its weights expect."""

    encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    decoder: MaskDecoderConfig = field(default_factory=MaskDecoderConfig)
    # Prompts are cut or padded to exactly this many points: the decoder was trained with a fixed token count.
    max_num_points: int = 6
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD

    @classmethod
    def preset(cls, name: str) -> EfficientSamConfig:
        """An official architecture (`vitt`: ViT-Tiny, `vits`: ViT-Small; see `models.architectures`)."""
        return merge_config(cls(), architecture("efficient-sam", name))

    @classmethod
    def from_dict(cls, values: dict[str, Any], base: EfficientSamConfig | None = None) -> EfficientSamConfig:
        """Build from nested plain values (a preset's `[config]` table), on top of `base` when given."""
        return merge_config(base or cls(), values)


@dataclass
class ImageEmbedding:
    """Images encoded once, reusable for any number of prompts.

    `embeddings` is [B, C, h, w]; `input_size` the (H, W) of the images as given, which point coordinates and
    full-size masks refer to.
    """

    embeddings: torch.Tensor
    input_size: tuple[int, int]


@dataclass
class MaskPrediction:
    """Masks for [B, Q] queries, M per query (3 with multimask output, else 1).

    `low_res_masks` [B, Q, M, L, L] are logits at the decoder's resolution (4× the embedding grid);
    `iou_predictions` [B, Q, M] the decoder's estimate of each mask's IoU (not a probability: no sigmoid).
    """

    low_res_masks: torch.Tensor
    iou_predictions: torch.Tensor
    input_size: tuple[int, int]

    def upscaled(self) -> torch.Tensor:
        """Mask logits at the input image size [B, Q, M, H, W]: bicubic straight from L×L to H×W.

        Computed on demand (it is large for big images and many queries); slicing `low_res_masks` first and
        upscaling only what is needed gives the same numbers.
        """
        batch, queries, count, side, _ = self.low_res_masks.shape
        flat = self.low_res_masks.reshape(batch * queries, count, side, side)
        masks = F.interpolate(flat, self.input_size, mode="bicubic", align_corners=False)
        return masks.reshape(batch, queries, count, *self.input_size)


class EfficientSam(Model):
    """EfficientSAM with the original's parameter names (`image_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`)."""

    def __init__(self, config: EfficientSamConfig) -> None:
        super().__init__()
        self.config = config
        encoder = config.encoder
        self.image_encoder = ImageEncoderViT(encoder)
        self.prompt_encoder = PromptEncoder(
            encoder.neck_dim, encoder.grid_size, input_image_size=(encoder.image_size, encoder.image_size)
        )
        self.mask_decoder = MaskDecoder(encoder.neck_dim, config.decoder)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] RGB of any size → the encoder's square input: bilinear resize (aspect not kept), then normalise.

        Mean and std are plain config values, not buffers: they are not in the checkpoint, and a model built on
        the meta device and then loaded must not be left with meta tensors.
        """
        size = self.config.encoder.image_size
        if tuple(images.shape[-2:]) != (size, size):
            images = F.interpolate(images, (size, size), mode="bilinear", align_corners=False)
        mean = images.new_tensor(self.config.pixel_mean).view(1, 3, 1, 1)
        std = images.new_tensor(self.config.pixel_std).view(1, 3, 1, 1)
        return (images - mean) / std

    def embed(self, images: torch.Tensor) -> ImageEmbedding:
        """Encode [B, 3, H, W] images in [0, 1]; the result serves any number of `predict` calls."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        return ImageEmbedding(self.image_encoder(self.preprocess(images)), (images.shape[-2], images.shape[-1]))

    def prepare_prompts(
        self, points: torch.Tensor, labels: torch.Tensor, input_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Points [B, Q, P, 2] in input pixels → the encoder's frame, cut or padded to `max_num_points`.

        Each coordinate is scaled on its own (x by S/W, y by S/H, S = encoder image size) and becomes −1 where it
        was negative; padding points are (−1, −1) with label −1. Returns ([B, Q, max, 2], [B, Q, max]).
        """
        height, width = input_size
        size = self.config.encoder.image_size
        x, y = points[..., 0], points[..., 1]
        points = torch.stack(
            [torch.where(x >= 0, x * size / width, -1.0), torch.where(y >= 0, y * size / height, -1.0)], dim=-1
        )
        labels = labels.to(points.dtype)
        missing = self.config.max_num_points - points.shape[2]
        if missing < 0:
            return points[:, :, : self.config.max_num_points], labels[:, :, : self.config.max_num_points]
        return F.pad(points, (0, 0, 0, missing), value=-1.0), F.pad(labels, (0, missing), value=-1.0)

    def predict(
        self,
        embedding: ImageEmbedding,
        points: torch.Tensor,
        labels: torch.Tensor,
        multimask_output: bool = True,
    ) -> MaskPrediction:
        """Masks for point prompts [B, Q, P, 2] / labels [B, Q, P] against an embedding of B images."""
        batch = embedding.embeddings.shape[0]
        if points.ndim != 4 or points.shape[-1] != 2 or points.shape[0] != batch:
            raise ValueError(f"points must be [B={batch}, Q, P, 2] (x, y), got {tuple(points.shape)}")
        if labels.shape != points.shape[:-1]:
            raise ValueError(f"labels must be {tuple(points.shape[:-1])} like the points, got {tuple(labels.shape)}")
        points, labels = self.prepare_prompts(points, labels, embedding.input_size)
        sparse = self.prompt_encoder(points.flatten(0, 1), labels.flatten(0, 1)).unflatten(0, points.shape[:2])
        decoded = self.mask_decoder(embedding.embeddings, self.prompt_encoder.dense_pe(), sparse, multimask_output)
        return MaskPrediction(decoded.masks, decoded.iou_predictions, embedding.input_size)

    def forward(
        self, images: torch.Tensor, points: torch.Tensor, labels: torch.Tensor, multimask_output: bool = True
    ) -> MaskPrediction:
        """`predict(embed(images), ...)` in one call."""
        return self.predict(self.embed(images), points, labels, multimask_output)
