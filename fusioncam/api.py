"""The library API the CLI is thin over: load a preset, score image–text pairs, explain them.

>>> import fusioncam
>>> matcher = fusioncam.load("blip-itm-base")
>>> result = matcher.heatmap(fusioncam.load_image("dog.jpg"), "a dog")
>>> result.itm_score, result.heatmap.shape   # illustrative values
(0.97, torch.Size([24, 24]))
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from fusioncam.checkpoints import (
    load_blip_caption_weights,
    load_blip_itm_weights,
    load_efficient_sam_weights,
    load_t5_weights,
    read_state_dict,
)
from fusioncam.choices import LabelMode, MaskBlend, MaskChoice, Precision, PrecisionChoice
from fusioncam.explain.gradcam import compute_gradcam
from fusioncam.explain.refine import Refined, SamImage, refine_heatmaps
from fusioncam.explain.refine import embed_images as embed_for_sam
from fusioncam.fusion_checkpoint import load_fusion
from fusioncam.images import BLIP_MEAN, BLIP_STD, ImageTransform
from fusioncam.models.blip import BlipCaption, BlipCaptionConfig, BlipITM, BlipITMConfig
from fusioncam.models.efficient_sam import EfficientSam, EfficientSamConfig
from fusioncam.models.fusion import BlipFusionITM
from fusioncam.models.layers import Model
from fusioncam.models.t5_fid import FusionInDecoderQA
from fusioncam.precision import resolve_precision
from fusioncam.text import BlipTokenizer, Encoding, clean_caption
from fusioncam.weights import Preset, get_preset, require_files


@dataclass
class Score:
    """How well one text matches one image: ITM match probability and ITC cosine similarity.

    `truncated`: the text was longer than the model reads, and only its beginning was scored.
    """

    text: str
    itm_score: float
    itc_score: float
    truncated: bool = False


@dataclass
class Heatmap:
    """Where the model looks for one (image, text) pair.

    `heatmap` is the sentence map (LAVIS row 1) on the patch grid; `word_maps` the per-word maps when asked;
    `token_maps` every token's map (position 0 = `[ENC]`); `truncated` that the text was longer than the model
    reads, so the maps cover its beginning only. Maps are float32 CPU tensors (`.numpy()` shares their memory).
    """

    text: str
    itm_score: float
    itc_score: float
    block: int
    heatmap: torch.Tensor
    token_maps: torch.Tensor
    word_maps: list[tuple[str, torch.Tensor]] = field(default_factory=list)
    truncated: bool = False


def pick_device(device: str = "auto") -> torch.device:
    """`auto` → CUDA if available, else Apple MPS, else CPU; anything else is passed to torch."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def to_device(pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch of pixels from host memory to `device`; to a GPU through pinned memory without waiting, so that the
    copy overlaps what the card is still computing (the kernels that read it are queued after it)."""
    if device.type == "cuda":
        return pixels.pin_memory().to(device, non_blocking=True)
    return pixels.to(device)


class BlipMatcher:
    """A loaded BLIP ITM preset: model, tokenizer and the preprocessing its weights expect.

    In the `fused` mode `model` is a `BlipFusionITM` and `sam` the EfficientSAM it was trained with: image tokens
    come from the fusion of BLIP's ViT and SAM; everything after the image tokens (ITM, ITC, Grad-CAM) is BLIP's
    own, which `BlipFusionITM` answers as `BlipITM` does, so the same methods serve both modes. `precision` (see
    `fusioncam.precision`) applies to the model and its SAM alike.
    """

    def __init__(
        self,
        model: BlipITM | BlipFusionITM,
        tokenizer: BlipTokenizer,
        transform: ImageTransform,
        name: str = "blip-itm",
        device: torch.device | str = "cpu",
        sam: EfficientSam | None = None,
        precision: Precision = "fp32",
    ) -> None:
        if isinstance(model, BlipFusionITM) != (sam is not None):
            raise ValueError("a fused model needs its EfficientSAM, and only a fused model takes one")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.model.set_precision(precision)
        if sam is not None:
            sam.set_precision(precision)
        self.tokenizer = tokenizer
        self.transform = transform
        self.name = name
        self.sam = sam

    @property
    def num_blocks(self) -> int:
        return self.model.config.text.num_layers

    @property
    def precision(self) -> Precision:
        return self.model.precision

    @torch.no_grad()
    def embed_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """RGB uint8 images → image tokens [B, 1 + N, Dv] on the model's device (fused when so loaded)."""
        pixels = to_device(self.transform(images), self.device)
        if self.sam is None:
            assert isinstance(self.model, BlipITM)
            with self.model.autocast():
                return self.model.encode_image(pixels)
        assert isinstance(self.model, BlipFusionITM)
        embedded = embed_for_sam(self.sam, images, max_side=None)  # SAM resizes them itself, as in training
        with self.model.autocast():
            return self.model.encode_image(pixels, torch.stack([image.embedding for image in embedded]).to(self.device))

    def _encode(self, texts: Sequence[str], clean: Callable[[str], str] = clean_caption) -> tuple[list[str], Encoding]:
        cleaned = [clean(text) for text in texts]
        return cleaned, self.tokenizer(cleaned).to(self.device)

    @torch.no_grad()
    def _itc(self, image_embeds: torch.Tensor, encoding: Encoding) -> torch.Tensor:
        """ITC similarity of row i of images with row i of texts."""
        with self.model.autocast():
            image = self.model.image_features(image_embeds)
            text = self.model.text_features(encoding.input_ids, encoding.attention_mask)
        return (image * text).sum(-1)

    @torch.no_grad()
    def _itm(self, image_embeds: torch.Tensor, encoding: Encoding) -> torch.Tensor:
        """ITM match probability of row i of images with row i of texts."""
        input_ids = self.tokenizer.for_itm(encoding.input_ids)
        with self.model.autocast():
            return self.model.itm(image_embeds, input_ids, encoding.attention_mask).match_probability

    def match_probabilities(self, image_embeds: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """ITM match probability [B] of text i with image tokens i (rows of `embed_images`), without ITC."""
        return self._itm(image_embeds, self._encode(texts)[1])

    @torch.no_grad()
    def scores(self, image_embeds: torch.Tensor, texts: Sequence[str]) -> list[Score]:
        """Score text i against image tokens i (rows of `embed_images`)."""
        cleaned, encoding = self._encode(texts)
        itm, itc = self._itm(image_embeds, encoding).cpu(), self._itc(image_embeds, encoding).cpu()
        return [
            Score(text, float(p), float(s), truncated)
            for text, p, s, truncated in zip(cleaned, itm, itc, encoding.truncated, strict=True)
        ]

    def score(self, image: np.ndarray, texts: Sequence[str]) -> list[Score]:
        """Score many texts against one image; the image is encoded once."""
        return self.scores(self.embed_images([image]).expand(len(texts), -1, -1), texts)

    def heatmaps(
        self,
        images: Sequence[np.ndarray] | torch.Tensor,
        texts: Sequence[str],
        block: int = 6,
        per_word: bool = False,
        clean: Callable[[str], str] = clean_caption,
    ) -> list[Heatmap]:
        """Grad-CAM of text i over image i at text block `block`, for a batch of pairs.

        `images` may also be image tokens from `embed_images`, to explain many texts of one image cheaply.
        `clean` prepares each text as LAVIS does for its use (captions by default; PNP-VQA cleans questions).
        """
        if not 0 <= block < self.num_blocks:
            raise ValueError(f"block must be in 0..{self.num_blocks - 1} for this model, got {block}")
        cleaned, encoding = self._encode(texts, clean)
        image_embeds = images if isinstance(images, torch.Tensor) else self.embed_images(images)
        if len(image_embeds) != len(texts):
            raise ValueError(f"{len(image_embeds)} images for {len(texts)} texts: pass one image per text")
        with self.model.autocast():
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
                    heatmap=cam.sentence_maps[index].float().cpu(),
                    token_maps=cam.token_maps[index].float().cpu(),
                    word_maps=[(word, m.float().cpu()) for word, m in words],
                    truncated=encoding.truncated[index],
                )
            )
        return results

    def heatmap(self, image: np.ndarray, text: str, block: int = 6, per_word: bool = False) -> Heatmap:
        """Grad-CAM of one text over one image."""
        return self.heatmaps([image], [text], block=block, per_word=per_word)[0]


@dataclass
class Captioner:
    """A loaded BLIP caption preset: model, tokenizer, preprocessing."""

    model: BlipCaption
    tokenizer: BlipTokenizer
    transform: ImageTransform
    name: str

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.no_grad()
    def embed_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        with self.model.autocast():
            return self.model.encode_image(to_device(self.transform(images), self.device))


@dataclass
class QuestionAnswerer:
    """A loaded UnifiedQA preset: the FiD model and its SentencePiece tokenizer."""

    model: FusionInDecoderQA
    tokenizer: Any
    name: str

    @property
    def device(self) -> torch.device:
        return self.model.device

    def tokenize(self, passages: Sequence[Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Passages per question → ids and mask [B, n, L], padded to the longest passage of the batch."""
        counts = {len(group) for group in passages}
        if len(counts) != 1:
            raise ValueError(f"every question needs the same number of passages, got {sorted(counts)}")
        flat = [passage for group in passages for passage in group]
        batch = self.tokenizer(flat, padding="longest", truncation=True, return_tensors="pt")
        shape = (len(passages), counts.pop(), -1)
        return batch["input_ids"].reshape(shape).to(self.device), batch["attention_mask"].reshape(shape).to(self.device)

    def decode(self, ids: torch.Tensor) -> list[str]:
        return [text.strip() for text in self.tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)]


# --- presets → ready models --------------------------------------------------------------------------------


def build_blip_itm(preset: Preset) -> BlipITM:
    """An empty (meta-device) model of the preset's architecture, ready to take its checkpoint."""
    config = BlipITMConfig.from_dict(preset.config, base=BlipITMConfig.preset(preset.architecture or "base"))
    with torch.device("meta"):
        return BlipITM(config)


def blip_preset_transform(preset: Preset, image_size: int) -> ImageTransform:
    """The preprocessing a BLIP preset's weights expect (LAVIS `blip_image_eval` unless the preset says more)."""
    preprocess: dict[str, Any] = {"image_size": image_size, "mean": BLIP_MEAN, "std": BLIP_STD} | preset.preprocess
    transform = ImageTransform(
        image_size=int(preprocess["image_size"]),
        mean=tuple(preprocess["mean"]),
        std=tuple(preprocess["std"]),
        interpolation=preprocess.get("interpolation", "bicubic"),
    )
    if transform.image_size != image_size:
        raise ValueError(
            f"preset {preset.name!r}: preprocess image_size {transform.image_size} differs from the model's "
            f"{image_size}"
        )
    return transform


def blip_preset_tokenizer(preset: Preset, vocab: Path, max_length: int, vocab_size: int) -> BlipTokenizer:
    tokenizer = BlipTokenizer(vocab, max_length=max_length)
    if len(tokenizer) != vocab_size:
        raise ValueError(
            f"preset {preset.name!r}: tokenizer has {len(tokenizer)} tokens but the text model expects "
            f"{vocab_size} (is `vocab` the right vocab.txt?)"
        )
    return tokenizer


M = TypeVar("M", bound=Model)


def _ready(model: M, device: torch.device, precision: Precision) -> M:
    """Float32 weights (half-precision checkpoints run like the reference), on `device`, frozen for inference,
    computing in `precision`."""
    model = model.float().to(device).eval().requires_grad_(False)
    model.set_precision(precision)
    return model


def _build_matcher(preset: Preset, files: dict[str, Path], device: torch.device, precision: Precision) -> BlipMatcher:
    model = build_blip_itm(preset)
    load_blip_itm_weights(model, read_state_dict(files["checkpoint"]), preset.layout, str(files["checkpoint"]))
    config = model.config
    transform = blip_preset_transform(preset, config.vision.image_size)
    tokenizer = blip_preset_tokenizer(preset, files["vocab"], config.max_txt_len, config.text.vocab_size)
    return BlipMatcher(model.float(), tokenizer, transform, name=preset.name, device=device, precision=precision)


def _build_captioner(preset: Preset, files: dict[str, Path], device: torch.device, precision: Precision) -> Captioner:
    config = BlipCaptionConfig.from_dict(preset.config, base=BlipCaptionConfig.preset(preset.architecture or "base"))
    with torch.device("meta"):
        model = BlipCaption(config)
    load_blip_caption_weights(model, read_state_dict(files["checkpoint"]), preset.layout, str(files["checkpoint"]))
    transform = blip_preset_transform(preset, config.vision.image_size)
    tokenizer = blip_preset_tokenizer(preset, files["vocab"], config.max_txt_len, config.text.vocab_size)
    return Captioner(_ready(model, device, precision), tokenizer, transform, preset.name)


def _build_qa(preset: Preset, files: dict[str, Path], device: torch.device, precision: Precision) -> QuestionAnswerer:
    from transformers import T5Tokenizer

    with torch.device("meta"):
        qa = FusionInDecoderQA.from_preset(preset.architecture or "base", **preset.config)
    load_t5_weights(qa.model, read_state_dict(files["checkpoint"]), str(files["checkpoint"]))
    # The tokenizer reads spiece.model and the companions beside it (tokenizer_config.json & co.).
    tokenizer = T5Tokenizer.from_pretrained(str(files["spiece"].parent))
    return QuestionAnswerer(_ready(qa, device, precision), tokenizer, preset.name)


def _build_sam(preset: Preset, files: dict[str, Path], device: torch.device, precision: Precision) -> EfficientSam:
    config = EfficientSamConfig.from_dict(preset.config, base=EfficientSamConfig.preset(preset.architecture or "vitt"))
    config = EfficientSamConfig.from_dict(_sam_preprocess(preset, config), base=config)
    with torch.device("meta"):
        model = EfficientSam(config)
    load_efficient_sam_weights(model, read_state_dict(files["checkpoint"]), str(files["checkpoint"]))
    return _ready(model, device, precision)


def _sam_preprocess(preset: Preset, config: EfficientSamConfig) -> dict[str, Any]:
    """A SAM preset's `[preprocess]` as config values: the input size and pixel statistics. EfficientSAM resizes
    bilinearly, and only that is implemented, so another interpolation is refused rather than ignored."""
    preprocess = preset.preprocess
    if preprocess.get("interpolation", "bilinear") != "bilinear":
        raise ValueError(
            f"preset {preset.name!r}: EfficientSAM resizes bilinearly, not {preprocess['interpolation']!r}"
        )
    values: dict[str, Any] = {}
    if "image_size" in preprocess:
        values["encoder"] = {"image_size": int(preprocess["image_size"])}
    if "mean" in preprocess:
        values["pixel_mean"] = tuple(preprocess["mean"])
    if "std" in preprocess:
        values["pixel_std"] = tuple(preprocess["std"])
    return values


_IMAGE_PREPROCESS = ("image_size", "mean", "std", "interpolation")


@dataclass(frozen=True)
class Family:
    """How presets of one `kind` become a ready model: the checkpoint layouts it converts from, the files it reads
    (`companions`: read when declared, from beside the others), the `[preprocess]` keys it honours, its builder."""

    layouts: tuple[str, ...]
    files: tuple[str, ...]
    build: Callable[[Preset, dict[str, Path], torch.device, Precision], Any]
    companions: tuple[str, ...] = ()
    preprocess: tuple[str, ...] = ()


FAMILIES: dict[str, Family] = {
    "blip-itm": Family(("lavis", "hf", "fusioncam"), ("checkpoint", "vocab"), _build_matcher, (), _IMAGE_PREPROCESS),
    "blip-caption": Family(
        ("lavis", "hf", "fusioncam"), ("checkpoint", "vocab"), _build_captioner, (), _IMAGE_PREPROCESS
    ),
    "t5-qa": Family(("t5",), ("checkpoint", "spiece"), _build_qa, ("tokenizer_config", "special_tokens_map")),
    "efficient-sam": Family(("efficient-sam",), ("checkpoint",), _build_sam, (), _IMAGE_PREPROCESS),
}


def family(preset: Preset) -> Family:
    """The family of `preset`, which must declare nothing that family would not use (refused by name)."""
    if preset.kind not in FAMILIES:
        raise ValueError(
            f"preset {preset.name!r} is of kind {preset.kind!r}, not a model; model kinds: {', '.join(FAMILIES)}"
        )
    chosen = FAMILIES[preset.kind]
    if preset.layout not in chosen.layouts:
        raise ValueError(
            f"preset {preset.name!r}: layout {preset.layout!r} is not one {preset.kind} reads "
            f"({', '.join(chosen.layouts)})"
        )
    if unused := sorted(set(preset.files) - set(chosen.files) - set(chosen.companions)):
        raise ValueError(
            f"preset {preset.name!r} declares file(s) {', '.join(unused)} that a {preset.kind} model does not read; "
            f"it reads {', '.join(chosen.files + chosen.companions)}"
        )
    if unused := sorted(set(preset.preprocess) - set(chosen.preprocess)):
        raise ValueError(
            f"preset {preset.name!r}: [preprocess] key(s) {', '.join(unused)} mean nothing to a {preset.kind} model"
            + (f"; it reads {', '.join(chosen.preprocess)}" if chosen.preprocess else "")
        )
    return chosen


def load(
    name: str | Path = "blip-itm-base",
    device: str = "auto",
    download: bool = True,
    fusion: str | Path | None = None,
    sam: str = "efficient-sam-vitt",
    precision: PrecisionChoice = "fp32",
) -> Any:
    """The ready model of a preset (a name from weights.toml or a preset .toml), downloading its files if needed.

    What comes back depends on the preset's kind: a `BlipMatcher` (blip-itm), a `Captioner` (blip-caption), a
    `QuestionAnswerer` (t5-qa) or an `EfficientSam` (efficient-sam), each with the preprocessing and tokenizer its
    weights expect. `fusion` (a file written by `fusioncam train --what fusion`) switches a BLIP ITM to the
    `fused` mode, with the EfficientSAM preset `sam` it was trained with. `precision`: `fp32` (the references'
    numbers), `bf16`/`fp16` (autocast), `int8` (CPU, quantised linears where no gradient flows) or `auto` (bf16
    where the device has it, else fp32); see `fusioncam.precision`.
    """
    preset = get_preset(name)
    chosen = family(preset)
    if fusion is not None and preset.kind != "blip-itm":
        raise ValueError(f"a fusion goes with a BLIP ITM preset, not with {preset.name!r} ({preset.kind})")
    roles = chosen.files + tuple(role for role in chosen.companions if role in preset.files)
    files = require_files(preset, roles, download=download)
    target = pick_device(device)
    resolved = resolve_precision(precision, target)
    if fusion is not None:  # the fusion wraps BLIP's float model; the precision is applied to the whole
        plain = chosen.build(preset, files, target, "fp32")
        sam_model = load_sam(sam, device=device, download=download)
        fused = load_fusion(fusion, plain.model, preset.name, get_preset(sam).name)
        return BlipMatcher(
            fused, plain.tokenizer, plain.transform, name=preset.name, device=target, sam=sam_model, precision=resolved
        )
    return chosen.build(preset, files, target, resolved)


def _load_kind(name: str | Path, kind: str, device: str, download: bool, precision: PrecisionChoice) -> Any:
    """`load`, refusing a preset of another kind (a typed entry point must return what its name says)."""
    preset = get_preset(name)
    if preset.kind != kind:
        raise ValueError(f"preset {preset.name!r} is a {preset.kind} model, not a {kind} model")
    return load(name, device=device, download=download, precision=precision)


def load_captioner(
    name: str | Path = "blip-caption-large",
    device: str = "auto",
    download: bool = True,
    precision: PrecisionChoice = "fp32",
) -> Captioner:
    """`load` for a BLIP caption preset (LAVIS, Hugging Face or fusioncam layout)."""
    return _load_kind(name, "blip-caption", device, download, precision)


def load_qa(
    name: str | Path = "unifiedqa-v2-t5-base",
    device: str = "auto",
    download: bool = True,
    precision: PrecisionChoice = "fp32",
) -> QuestionAnswerer:
    """`load` for a UnifiedQA (T5) preset; its tokenizer comes from the preset's `spiece.model` folder."""
    return _load_kind(name, "t5-qa", device, download, precision)


def load_sam(
    name: str | Path = "efficient-sam-vitt",
    device: str = "auto",
    download: bool = True,
    precision: PrecisionChoice = "fp32",
) -> EfficientSam:
    """`load` for an EfficientSAM preset (`efficient-sam-vitt`, `efficient-sam-vits`, or a preset file)."""
    return _load_kind(name, "efficient-sam", device, download, precision)


class SamRefiner:
    """EfficientSAM refinement of heatmaps with an LRU cache of image embeddings (the expensive part).

    Keys identify images (e.g. their paths): an image explained with many texts is encoded once.
    """

    def __init__(
        self,
        sam: EfficientSam,
        num_points: int = 5,
        labels: LabelMode = "fork",
        mask_choice: MaskChoice = "first",
        blend: MaskBlend = "fork",
        cache_size: int = 32,
    ) -> None:
        self.sam, self.num_points, self.labels, self.mask_choice = sam, num_points, labels, mask_choice
        self.blend = blend
        self.cache_size = cache_size
        self._cache: OrderedDict[Any, SamImage] = OrderedDict()

    def embed(self, keys: Sequence[Any], images: Sequence[np.ndarray]) -> list[SamImage]:
        missing = {key: image for key, image in zip(keys, images, strict=True) if key not in self._cache}
        if missing:
            for key, embedded in zip(missing, embed_for_sam(self.sam, list(missing.values())), strict=True):
                self._cache[key] = embedded
        for key in keys:
            self._cache.move_to_end(key)
        found = [self._cache[key] for key in keys]
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return found

    def refine(self, keys: Sequence[Any], images: Sequence[np.ndarray], heatmaps: torch.Tensor) -> list[Refined]:
        """Refine heatmap i [h, w] (a [B, h, w] tensor) of image i (keyed by keys[i])."""
        return refine_heatmaps(
            self.sam,
            self.embed(keys, images),
            heatmaps.float(),
            num_points=self.num_points,
            labels=self.labels,
            mask_choice=self.mask_choice,
            blend=self.blend,
        )


def distinct_images(images: Sequence[np.ndarray], keys: Sequence[Hashable]) -> tuple[list[np.ndarray], torch.Tensor]:
    """The distinct images of a batch (equal keys: the same image; first seen first), and for each pair the row of
    its image among them: encode the distinct ones, then index the rows, and no image is encoded twice."""
    first: dict[Hashable, int] = {}
    for position, key in enumerate(keys):
        first.setdefault(key, position)
    order = list(first)
    return [images[first[key]] for key in order], torch.tensor([order.index(key) for key in keys])


@dataclass
class Explained:
    """A pair's heatmap and, when a refiner was given, its SAM refinement; `map` is the one to show and score."""

    heatmap: Heatmap
    refined: Refined | None = None

    @property
    def map(self) -> torch.Tensor:
        return self.heatmap.heatmap if self.refined is None else self.refined.heatmap


def explain_pairs(
    matcher: BlipMatcher,
    images: Sequence[np.ndarray],
    texts: Sequence[str],
    keys: Sequence[Hashable] | None = None,
    block: int = 6,
    per_word: bool = False,
    refiner: SamRefiner | None = None,
    clean: Callable[[str], str] = clean_caption,
) -> list[Explained]:
    """Grad-CAM of text i over image i, refined by `refiner` when given, for a batch of pairs.

    Pairs whose `keys` (e.g. image paths) are equal share an image: it is encoded once, by BLIP and by SAM, however
    many texts are asked of it. Without keys every image is taken as distinct. This is the one place where
    explaining a batch of pairs is written; the commands, `evaluate` and PNP-VQA all go through it.
    """
    own = list(keys) if keys is not None else [object() for _ in images]
    distinct, rows = distinct_images(images, own)
    tokens = matcher.embed_images(distinct)
    heatmaps = matcher.heatmaps(tokens[rows.to(tokens.device)], texts, block=block, per_word=per_word, clean=clean)
    if refiner is None:
        return [Explained(heatmap) for heatmap in heatmaps]
    refined = refiner.refine(own, images, torch.stack([heatmap.heatmap for heatmap in heatmaps]))
    return [Explained(heatmap, item) for heatmap, item in zip(heatmaps, refined, strict=True)]
