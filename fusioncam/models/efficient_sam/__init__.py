"""EfficientSAM (yformer/EfficientSAM): promptable segmentation with a small ViT, one file per part.

`image_encoder` (ViT + neck), `prompt_encoder` (points → tokens), `transformer` (two-way attention),
`mask_decoder` (tokens → masks and IoUs); `sam` wires them and is what callers use:

>>> model = EfficientSam(EfficientSamConfig.preset("vitt"))
>>> embedding = model.embed(images)              # once per image batch
>>> prediction = model.predict(embedding, points, labels)   # per prompt set
>>> prediction.low_res_masks, prediction.iou_predictions, prediction.upscaled()
"""

from fusioncam.models.efficient_sam.image_encoder import ImageEncoderConfig, ImageEncoderViT
from fusioncam.models.efficient_sam.mask_decoder import MaskDecoder, MaskDecoderConfig, MaskDecoderOutput
from fusioncam.models.efficient_sam.prompt_encoder import PromptEncoder
from fusioncam.models.efficient_sam.sam import EfficientSam, EfficientSamConfig, ImageEmbedding, MaskPrediction

__all__ = [
    "EfficientSam",
    "EfficientSamConfig",
    "ImageEmbedding",
    "ImageEncoderConfig",
    "ImageEncoderViT",
    "MaskDecoder",
    "MaskDecoderConfig",
    "MaskDecoderOutput",
    "MaskPrediction",
    "PromptEncoder",
]
