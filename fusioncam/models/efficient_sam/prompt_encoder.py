"""Point prompts → sparse embeddings, and the positional encoding of the image grid the decoder attends to.

Positions are encoded with random Fourier features (a fixed Gaussian matrix, stored in the checkpoint), the same
encoding for prompt points and for the image grid so that both live in one coordinate system. EfficientSAM only
takes points: a box is two points labelled 2 (top-left) and 3 (bottom-right).
"""

from __future__ import annotations

import math

import torch
from torch import nn

# Label value → the name of the learned embedding added to that point's positional encoding. Any other label
# (0, a negative click, or the fractional weights some callers pass) adds nothing: the point keeps only its
# position. Matching is by exact equality, as in the original.
LABEL_EMBEDDINGS = {
    -1.0: "invalid_points",  # padding: its (−1, −1) position is still encoded, this embedding is added on top
    1.0: "point_embeddings",  # foreground click
    2.0: "bbox_top_left_embeddings",
    3.0: "bbox_bottom_right_embeddings",
}


class PositionEmbeddingRandom(nn.Module):
    """[..., 2] coordinates in [0, 1] (x, y) → [..., 2·F] features [sin(2π·p), cos(2π·p)], p = (2c − 1) @ G."""

    positional_encoding_gaussian_matrix: torch.Tensor  # G [2, F], a buffer

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_features))

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        matrix = self.positional_encoding_gaussian_matrix
        # The original casts to float32 here; casting to the matrix's dtype is the same in float32 and keeps a
        # float64 or half model working.
        projected = math.tau * ((2 * coords.to(matrix.dtype) - 1) @ matrix)
        return torch.cat([projected.sin(), projected.cos()], dim=-1)

    def grid(self, size: tuple[int, int]) -> torch.Tensor:
        """Encoding of every cell centre of an h×w grid, as [C, h, w]."""
        h, w = size
        matrix = self.positional_encoding_gaussian_matrix
        ys = (torch.arange(h, device=matrix.device, dtype=matrix.dtype) + 0.5) / h
        xs = (torch.arange(w, device=matrix.device, dtype=matrix.dtype) + 0.5) / w
        centres = torch.stack(torch.broadcast_tensors(xs[None, :], ys[:, None]), dim=-1)
        return self(centres).permute(2, 0, 1)


class PromptEncoder(nn.Module):
    """Points in the encoder's pixel frame ([N, P, 2], x then y) and labels [N, P] → embeddings [N, P, C]."""

    def __init__(
        self, embed_dim: int, image_embedding_size: tuple[int, int], input_image_size: tuple[int, int]
    ) -> None:
        super().__init__()
        self.image_embedding_size = image_embedding_size
        self.input_image_size = input_image_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        for name in LABEL_EMBEDDINGS.values():
            self.add_module(name, nn.Embedding(1, embed_dim))

    def dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image embedding's grid, [1, C, h, w]."""
        return self.pe_layer.grid(self.image_embedding_size).unsqueeze(0)

    def forward(self, points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h, w = self.input_image_size
        centres = points + 0.5  # a pixel index names the pixel's centre
        unit = torch.stack([centres[..., 0] / w, centres[..., 1] / h], dim=-1)
        embeddings = self.pe_layer(unit)
        for value, name in LABEL_EMBEDDINGS.items():
            table: nn.Embedding = getattr(self, name)
            embeddings = embeddings + table.weight * labels.eq(value).unsqueeze(-1)
        return embeddings
