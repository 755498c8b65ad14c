"""Reference checks for EfficientSAM (yformer/EfficientSAM `EfficientSam`, `ImageEncoderViT`).

The cases carry no `suggested_atol`; every output is checked at `Case.atol`, the rule the other cases' tolerances
are made by.
"""

from __future__ import annotations

import torch
from converters import efficient_sam_config
from refcase import Case

from fusioncam.checkpoints import load_efficient_sam_weights, read_state_dict
from fusioncam.models.efficient_sam import EfficientSam, ImageEmbedding, ImageEncoderViT


def _check(case: Case, name: str, actual: torch.Tensor) -> None:
    case.check(name, actual, case.atol(name))


def check_esam_full(case: Case) -> None:
    model = EfficientSam(efficient_sam_config(case.config["architecture"])).eval()
    load_efficient_sam_weights(model, read_state_dict(case.path / "weights.safetensors"), "reference weights")
    images, points, labels = case.inputs["images"].float(), case.inputs["points"], case.inputs["labels"]
    height, width = images.shape[-2:]

    with torch.no_grad():
        _check(case, "preprocessed_b0", model.preprocess(images)[:1])
        embedding = model.embed(images)
        _check(case, "image_embeddings", embedding.embeddings)
        _check(case, "dense_pe", model.prompt_encoder.dense_pe())

        prompt_points, prompt_labels = model.prepare_prompts(points, labels, (height, width))
        _check(case, "prompt_points_rescaled_padded", prompt_points)
        assert torch.equal(prompt_labels, case.outputs["prompt_labels_padded"])
        sparse = model.prompt_encoder(prompt_points.flatten(0, 1), prompt_labels.flatten(0, 1))
        _check(case, "sparse_embeddings", sparse.unflatten(0, prompt_points.shape[:2]))

        full = model(images, points, labels)
        _check(case, "forward_masks", full.upscaled())
        _check(case, "forward_iou_predictions", full.iou_predictions)

        # Prompting the stored embedding: the decoder alone, as the original `predict_masks` is checked.
        stored = ImageEmbedding(case.outputs["image_embeddings"], (height, width))
        for kind, multimask in (("multi", True), ("single", False)):
            prediction = model.predict(stored, points, labels, multimask_output=multimask)
            _check(case, f"predict_{kind}_lowres_masks", prediction.low_res_masks)
            _check(case, f"predict_{kind}_lowres_iou_predictions", prediction.iou_predictions)
        # The one-shot call's low-res masks are the decoder's on the freshly computed embedding.
        assert torch.equal(full.low_res_masks, model.predict(embedding, points, labels).low_res_masks)


def check_esam_encoder(case: Case) -> None:
    config = efficient_sam_config(case.config["architecture"]).encoder
    encoder = ImageEncoderViT(config).eval()
    load_efficient_sam_weights(encoder, read_state_dict(case.path / "weights.safetensors"), "reference weights")
    x = case.inputs["x"].float()

    captured: list[torch.Tensor] = []
    hook = encoder.blocks[-1].register_forward_hook(lambda _module, _inputs, output: captured.append(output))
    with torch.no_grad():
        _check(case, "embeddings", encoder(x))
        _check(case, "patch_embed", encoder.patch_embed.proj(x))
        _check(case, "pos_embed_resized", encoder.position_embedding(config.grid_size))
    hook.remove()
    _check(case, "tokens_after_blocks", captured[0].reshape(x.shape[0], *config.grid_size, -1))


CHECKS = {"esam_full": check_esam_full, "esam_encoder": check_esam_encoder}
