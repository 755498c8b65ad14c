"""PNP-VQA: the question's heatmap picks the image patches each caption sees; captions answer the question.

Steps (LAVIS `pnp_vqa`): Grad-CAM row 1 of the question over the patch grid → per caption, `num_patches` patches
drawn from that distribution → the captioner decodes from those patches' tokens only → de-duplicated captions →
UnifiedQA-T5 with Fusion-in-Decoder reads "question \\n captions" passages → answer.
"""

from __future__ import annotations

import torch


def gather_patches(image_embeds: torch.Tensor, patch_ids: torch.Tensor) -> torch.Tensor:
    """Tokens of the chosen patches: image tokens [B, 1 + N, D], 0-based patch ids [B, K, P] → [B·K, P, D].

    Ids skip the class token (+1) and are sorted, so each caption sees its patches in raster order; row b·K + k
    is caption k of image b.
    """
    batch, captions, patches = patch_ids.shape
    index = (patch_ids + 1).sort(dim=-1).values.reshape(batch, captions * patches)
    gathered = image_embeds.gather(1, index[..., None].expand(-1, -1, image_embeds.shape[-1]))
    return gathered.reshape(batch * captions, patches, -1)
