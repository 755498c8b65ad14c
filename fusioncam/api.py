"""The library API the CLI is thin over: load a preset, score image–text pairs, explain them.

>>> import fusioncam
>>> matcher = fusioncam.load("blip-itm-base")
>>> result = matcher.heatmap(fusioncam.load_image("dog.jpg"), "a dog")
>>> result.itm_score, result.heatmap.shape
(0.97, (24, 24))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from fusioncam.checkpoints import load_blip_itm_weights, read_state_dict
from fusioncam.explain.gradcam import compute_gradcam
from fusioncam.images import BLIP_MEAN, BLIP_STD, ImageTransform
from fusioncam.models.blip import BlipITM, BlipITMConfig
from fusioncam.text import BlipTokenizer, clean_caption
from fusioncam.weights import Preset, get_preset, resolve_file


@dataclass
class Score:
    """How well one text matches one image: ITM match probability and ITC cosine similarity."""

    text: str
    itm_score: float
    itc_score: float


@dataclass
class Heatmap:
    """Where the model looks for one (image, text) pair.

    `heatmap` is the sentence map (LAVIS row 1) on the patch grid; `word_maps` the per-word maps when asked;
    `token_maps` every token's map (position 0 = `[ENC]`).
    """

    text: str
    itm_score: float
    itc_score: float
    block: int
    heatmap: np.ndarray
    token_maps: np.ndarray
    word_maps: list[tuple[str, np.ndarray]] = field(default_factory=list)


def pick_device(device: str = "auto") -> torch.device:
    """`auto` → CUDA if available, else Apple MPS, else CPU; anything else is passed to torch."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


class BlipMatcher:
    """A loaded BLIP ITM preset: model, tokenizer and the preprocessing its weights expect."""

    def __init__(
        self,
        model: BlipITM,
        tokenizer: BlipTokenizer,
        transform: ImageTransform,
        name: str = "blip-itm",
        device: torch.device | str = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.transform = transform
        self.name = name

    @property
    def num_blocks(self) -> int:
        return self.model.config.text.num_layers

    @torch.no_grad()
    def embed_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """RGB uint8 images → image tokens [B, 1 + N, Dv] on the model's device."""
        pixels = self.transform(images).to(self.device)
        return self.model.encode_image(pixels)

    def _encode(self, texts: Sequence[str]):
        cleaned = [clean_caption(text) for text in texts]
        return cleaned, self.tokenizer(cleaned).to(self.device)

    @torch.no_grad()
    def _itc(self, image_embeds: torch.Tensor, encoding) -> torch.Tensor:
        """ITC similarity of row i of images with row i of texts."""
        image = self.model.image_features(image_embeds)
        text = self.model.text_features(encoding.input_ids, encoding.attention_mask)
        return (image * text).sum(-1)

    @torch.no_grad()
    def score(self, image: np.ndarray, texts: Sequence[str]) -> list[Score]:
        """Score many texts against one image; the image is encoded once."""
        cleaned, encoding = self._encode(texts)
        image_embeds = self.embed_images([image]).expand(len(texts), -1, -1)
        itm = self.model.itm(image_embeds, self.tokenizer.for_itm(encoding.input_ids), encoding.attention_mask)
        itc = self._itc(image_embeds, encoding)
        return [
            Score(text, float(p), float(s))
            for text, p, s in zip(cleaned, itm.match_probability.cpu(), itc.cpu(), strict=True)
        ]

    def heatmaps(
        self,
        images: Sequence[np.ndarray] | torch.Tensor,
        texts: Sequence[str],
        block: int = 6,
        per_word: bool = False,
    ) -> list[Heatmap]:
        """Grad-CAM of text i over image i at text block `block`, for a batch of pairs.

        `images` may also be image tokens from `embed_images`, to explain many texts of one image cheaply.
        """
        if not 0 <= block < self.num_blocks:
            raise ValueError(f"--block must be in 0..{self.num_blocks - 1} for this model, got {block}")
        cleaned, encoding = self._encode(texts)
        image_embeds = images if isinstance(images, torch.Tensor) else self.embed_images(images)
        if len(image_embeds) != len(texts):
            raise ValueError(f"{len(image_embeds)} images for {len(texts)} texts: pass one image per text")
        cam = compute_gradcam(
            self.model, image_embeds, self.tokenizer.for_itm(encoding.input_ids), encoding.attention_mask, block
        )
        itc = self._itc(image_embeds, encoding)
        probability = cam.itm_logits.softmax(-1)[:, 1]
        results = []
        for index, text in enumerate(cleaned):
            words = cam.word_maps(index, encoding.words[index]) if per_word else []
            results.append(
                Heatmap(
                    text=text,
                    itm_score=float(probability[index]),
                    itc_score=float(itc[index]),
                    block=block,
                    heatmap=cam.sentence_maps[index].float().cpu().numpy(),
                    token_maps=cam.token_maps[index].float().cpu().numpy(),
                    word_maps=[(word, m.float().cpu().numpy()) for word, m in words],
                )
            )
        return results

    def heatmap(self, image: np.ndarray, text: str, block: int = 6, per_word: bool = False) -> Heatmap:
        """Grad-CAM of one text over one image."""
        return self.heatmaps([image], [text], block=block, per_word=per_word)[0]


def build_blip_itm(preset: Preset) -> BlipITM:
    """An empty (meta-device) model of the preset's architecture, ready to take its checkpoint."""
    base = BlipITMConfig.preset(preset.architecture) if preset.architecture else BlipITMConfig()
    config = BlipITMConfig.from_dict(preset.config, base=base)
    with torch.device("meta"):
        return BlipITM(config)


def load(name: str = "blip-itm-base", device: str = "auto", download: bool = True) -> BlipMatcher:
    """Load a BLIP ITM preset (a name from weights.toml or a path to a preset .toml), downloading if needed."""
    preset = get_preset(name)
    if preset.kind != "blip-itm":
        raise ValueError(f"preset {preset.name!r} is a {preset.kind} model, not a BLIP ITM model")
    checkpoint = resolve_file(preset, "checkpoint", download=download)
    vocab = resolve_file(preset, "vocab", download=download)
    model = build_blip_itm(preset)
    load_blip_itm_weights(model, read_state_dict(checkpoint), preset.layout, str(checkpoint))
    model.float()  # half-precision checkpoints run in float32 like the reference
    config = model.config
    preprocess = {"image_size": config.vision.image_size, "mean": BLIP_MEAN, "std": BLIP_STD} | preset.preprocess
    transform = ImageTransform(
        image_size=int(preprocess["image_size"]),
        mean=tuple(preprocess["mean"]),
        std=tuple(preprocess["std"]),
        interpolation=preprocess.get("interpolation", "bicubic"),
    )
    if transform.image_size != config.vision.image_size:
        raise ValueError(
            f"preset {preset.name!r}: preprocess image_size {transform.image_size} differs from the model's "
            f"{config.vision.image_size}"
        )
    tokenizer = BlipTokenizer(vocab, max_length=config.max_txt_len)
    if len(tokenizer) != config.text.vocab_size:
        raise ValueError(
            f"preset {preset.name!r}: tokenizer has {len(tokenizer)} tokens but the text encoder expects "
            f"{config.text.vocab_size} (is `vocab` the right vocab.txt?)"
        )
    return BlipMatcher(model, tokenizer, transform, name=preset.name, device=pick_device(device))
