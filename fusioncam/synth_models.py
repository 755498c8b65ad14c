"""The built-in model set: a tiny BLIP ITM, EfficientSAM, BLIP captioner and UnifiedQA trained on synthetic scenes.

Why it exists: `fusioncam demo` must run on a machine with no network and no cached weights. The real checkpoints
are hundreds of megabytes that have to be downloaded; these four models take a few megabytes in all, ship inside
the package (`fusioncam/data/synth/`, presets `synth-itm`, `synth-sam`, `synth-caption` and `synth-qa` in
weights.toml) and know nothing but the synthetic world of `fusioncam.synth`: toy models that show the whole chain
working, not models for photographs.

Every model starts from random weights and learns from `fusioncam.synth` scenes ("train" split), with fixed seeds,
on one CPU thread:

- ITM: through `fusioncam.train`, what `fusioncam train --what itm --from-scratch` runs, on the referring
  expressions of 64 px scenes of 1–4 objects. `tests/test_learning.py` trains the same recipe and explains its
  values; its Grad-CAM localises at text block 0.
- EfficientSAM: on the same kind of scenes' object masks, prompted as the SAM refinement prompts it.
- captioner: its ViT first learns to name the scene's object, then is frozen while the decoder learns captions.
- UnifiedQA: a tiny T5 with a SentencePiece vocabulary of the synthetic language, trained Fusion-in-Decoder style
  on passages built as PNP-VQA builds them. `tests/test_vqa_learning.py` trains these two (on 48 px scenes) and
  explains the recipe.

The captioner and UnifiedQA learn on scenes of one object (with two, neither learnt to bind a colour to its shape
in time), and the captioner reads 64 px scenes in 8 px patches like the ITM: PNP-VQA draws patch ids from the ITM's
heatmap and gathers the captioner's tokens with them, so both models must see the same 8 × 8 grid.

`python -m fusioncam.synth_models --out fusioncam/data/synth` (what `make synth-models` runs) rebuilds the set in a
few minutes, measures it on held-out scenes ("val" split), writes `provenance.json` beside the files and prints the
weights.toml section that declares them. A run repeats its numbers exactly on one torch build and CPU; another build
may round differently, and then the printed digests differ from those in weights.toml.

For a demo: `demo_scene()` gives a held-out scene with a text to explain and a question the set answers right, and
`vqa_config()` the PNP-VQA settings the tiny captioner and UnifiedQA were trained for (block 0 of synth-itm, 5
captions from 50 of the 64 patches, top-k 3); PNP-VQA's own defaults (block 7, 100 captions) do not fit them.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib.metadata
import io
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from itertools import count
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from fusioncam.api import QuestionAnswerer, load, load_captioner, load_qa, load_sam
from fusioncam.checkpoints import T5_TIED_KEYS
from fusioncam.evaluate import PEAK_IN_BOX, evaluate_pointing, read_referring
from fusioncam.images import BLIP_MEAN, BLIP_STD, ImageTransform
from fusioncam.models.blip import BlipCaption, BlipCaptionConfig, caption_loss
from fusioncam.models.efficient_sam import EfficientSam, EfficientSamConfig
from fusioncam.models.t5_fid import FusionInDecoderQA
from fusioncam.models.vit import VisionTransformer
from fusioncam.synth import COLORS, SHAPES, VOCABULARY, Description, Scene, describe, generate, synth_scene, write_vocab
from fusioncam.text import BlipTokenizer, clean_question
from fusioncam.train import TrainConfig, TrainResult, train
from fusioncam.vqa import PNPVQA, VQAConfig, gather_patches
from fusioncam.vqa_text import qa_passages
from fusioncam.weights import get_preset, load_registry, preset_toml, write_preset

log = logging.getLogger(__name__)

SEED = 0
LICENSE = "BSD-3-Clause"  # the project's own: these weights are made here, from data made here
NAMES = {"itm": "synth-itm", "sam": "synth-sam", "caption": "synth-caption", "qa": "synth-qa"}
# Scenes of the VQA models: one object each (see the module docstring).
VQA_MAX_OBJECTS = 1
# Question kinds the VQA models are trained and judged on (kind → how its questions start), and their answers.
QUESTION_KINDS = {"color": "what color is", "shape": "what shape is"}
KIND_ANSWERS = {"color": tuple(COLORS), "shape": tuple(SHAPES)}
# Splits of `fusioncam.synth` by use: training, the build's held-out figures, the demo scene. Tests measure the
# shipped models on yet another ("test").
TRAIN_SPLIT, HELD_OUT_SPLIT, DEMO_SPLIT = "train", "val", "demo"

_TEXT_VOCAB_SIZE = len(VOCABULARY) + 2  # the synthetic vocabulary plus [DEC] and [ENC]
_PROMPT = "a picture of "

ITM_ARCHITECTURE: dict[str, Any] = {
    "embed_dim": 32,
    "max_txt_len": 32,
    "vision": {"image_size": 64, "patch_size": 8, "width": 64, "depth": 0, "num_heads": 2},
    "text": {
        "vocab_size": _TEXT_VOCAB_SIZE,
        "hidden_size": 128,
        "num_layers": 2,
        "num_heads": 8,
        "intermediate_size": 256,
        "max_position_embeddings": 32,
        "encoder_width": 64,
    },
}
SAM_ARCHITECTURE: dict[str, Any] = {
    "encoder": {"image_size": 64, "patch_size": 8, "width": 64, "depth": 2, "num_heads": 4, "neck_dim": 64},
    "decoder": {"transformer_mlp_dim": 128, "iou_head_hidden_dim": 64, "upscaling_dims": [32, 16]},
}
CAPTION_ARCHITECTURE: dict[str, Any] = {
    "prompt": _PROMPT,
    "max_txt_len": 40,
    "vision": {"image_size": 64, "patch_size": 8, "width": 64, "depth": 2, "num_heads": 4},
    "text": {
        "vocab_size": _TEXT_VOCAB_SIZE,
        "hidden_size": 64,
        "num_layers": 2,
        "num_heads": 4,
        "intermediate_size": 128,
        "max_position_embeddings": 64,
        "encoder_width": 64,
    },
}
# No dropout: it costs a quarter of a tiny T5's training step on a CPU, and a run this short does not need it.
T5_ARCHITECTURE: dict[str, Any] = {
    "d_model": 64,
    "d_ff": 128,
    "num_layers": 2,
    "num_decoder_layers": 2,
    "num_heads": 4,
    "d_kv": 16,
    "dropout_rate": 0.0,
}

# How the tiny captioner decodes in PNP-VQA. Lengths count the prompt: "[DEC] a picture of" is 10 word-pieces
# ("picture" is spelt out in the synthetic vocabulary); at least two caption tokens, at most "a small purple
# triangle" and [SEP]. Its words beyond its best few are noise, hence top-k 3.
CAPTION_MIN_LENGTH, CAPTION_MAX_LENGTH, CAPTION_TOP_K = 12, 16, 3


# --- recipes ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItmRecipe:
    """A BLIP ITM trained from random weights by `fusioncam.train` on one synth training split.

    The defaults are the built-in `synth-itm`, whose values `tests/test_learning.py` explains: a ViT of depth 0 (each
    image token sees only its patch, so the text finds objects by cross-attention alone), referring expressions as
    the training texts, 600 steps of 32 pairs, lr 1.5e-3, no clipping.
    """

    architecture: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(ITM_ARCHITECTURE))
    scenes: int = 3000
    max_objects: int = 4
    texts: str = "referring"  # the synth JSONL trained on: "referring" (expressions) or "pairs" (captions)
    steps: int = 600
    batch_size: int = 32
    lr: float = 1.5e-3
    warmup_steps: int = 20
    grad_clip: float = 0.0
    block: int = 0  # the text block whose Grad-CAM localises: with 2 layers only the first can

    @property
    def image_size(self) -> int:
        return int(self.architecture["vision"]["image_size"])

    def training(self) -> dict[str, Any]:
        """The run's `TrainConfig` values (the `fusioncam train` options of the same names)."""
        keys = ("steps", "batch_size", "lr", "warmup_steps", "grad_clip")
        return {key: getattr(self, key) for key in keys}


@dataclass(frozen=True)
class SamRecipe:
    """A tiny EfficientSAM trained from random weights on synth scenes' object masks (BCE + Dice, as SAM trains)."""

    architecture: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(SAM_ARCHITECTURE))
    scenes: int = 2000
    max_objects: int = 4
    steps: int = 500
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 30
    grad_clip: float = 1.0

    @property
    def image_size(self) -> int:
        return int(self.architecture["encoder"]["image_size"])


@dataclass(frozen=True)
class CaptionRecipe:
    """A tiny BLIP captioner: its ViT pre-trained to name the object, then frozen while the decoder learns.

    `num_patches` is how many patch tokens PNP-VQA gives the captioner per caption; every other training step
    decodes from that many random patches, as PNP-VQA feeds it. The default is 50 of the 64 patches, the share
    (28 of 36) the VQA learning test measured with.
    """

    architecture: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(CAPTION_ARCHITECTURE))
    scenes: int = 6000
    vision_steps: int = 1500
    vision_lr: float = 1e-3
    steps: int = 600
    lr: float = 2e-3
    warmup_steps: int = 50
    batch_size: int = 32
    num_patches: int = 50

    @property
    def image_size(self) -> int:
        return int(self.architecture["vision"]["image_size"])


@dataclass(frozen=True)
class QARecipe:
    """A tiny UnifiedQA (T5) taught to answer colour and shape questions from `num_captions` PNP-VQA passages.

    The captions are written from the scene with a colour wrong `wrong_color` of the time and a shape wrong
    `wrong_shape` of the time, as a sampling captioner writes them, so that the model goes with the majority.
    """

    architecture: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(T5_ARCHITECTURE))
    scenes: int = 600
    steps: int = 200
    lr: float = 3e-3
    warmup_steps: int = 50
    batch_size: int = 32
    num_captions: int = 5
    spiece_vocab_size: int = 150
    wrong_color: float = 0.2
    wrong_shape: float = 0.4


@dataclass(frozen=True)
class SynthRecipes:
    """The whole built-in set, and how many held-out scenes its figures are measured on."""

    itm: ItmRecipe = field(default_factory=ItmRecipe)
    sam: SamRecipe = field(default_factory=SamRecipe)
    caption: CaptionRecipe = field(default_factory=CaptionRecipe)
    qa: QARecipe = field(default_factory=QARecipe)
    held_out_scenes: int = 200
    vqa_held_out_scenes: int = 60


def vqa_config(
    caption: CaptionRecipe | None = None, qa: QARecipe | None = None, block: int = 0, explain: bool = True
) -> VQAConfig:
    """The PNP-VQA settings the tiny captioner and UnifiedQA were trained for; `block` is the ITM's (synth-itm: 0)."""
    caption, qa = caption or CaptionRecipe(), qa or QARecipe()
    return VQAConfig(
        block=block,
        num_captions=qa.num_captions,
        num_patches=caption.num_patches,
        caption_min_length=CAPTION_MIN_LENGTH,
        caption_max_length=CAPTION_MAX_LENGTH,
        top_k=CAPTION_TOP_K,
        max_caption_rounds=3,
        explain=explain,
    )


# --- training helpers ------------------------------------------------------------------------------------------


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread, restoring the count afterwards.

    Tiny models gain little from a second thread, and on shared cores extra threads wait on each other (a tiny T5
    step took 6 times longer on two busy threads than on one). One thread also keeps the numbers the same whatever
    the machine's core count.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Torch's global generator (model init, `fusioncam.train`) seeded for a block and restored afterwards."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


def set_lr(optimizer: torch.optim.Optimizer, peak: float, step: int, steps: int, warmup: int) -> None:
    """Linear warm-up over `warmup` steps, then a cosine down to zero at `steps`."""
    lr = peak * min(1.0, (step + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * step / steps))
    for group in optimizer.param_groups:
        group["lr"] = lr


def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, grad_clip: float = 1.0) -> None:
    optimizer.zero_grad()
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], grad_clip)
    optimizer.step()


def question_kind(question: str) -> str | None:
    """The kind of a question the VQA models learn ("color" or "shape"), else None."""
    return next((kind for kind, start in QUESTION_KINDS.items() if question.startswith(start)), None)


def vqa_scenes(count: int, seed: int, image_size: int, split: str) -> list[tuple[Scene, Description]]:
    """Scenes 0..count-1 of the one-object synth dataset (seed, split), made in memory."""
    return [
        synth_scene(index, seed, image_size=image_size, max_objects=VQA_MAX_OBJECTS, split=split)
        for index in range(count)
    ]


# --- ITM -------------------------------------------------------------------------------------------------------


def train_itm(work: Path, recipe: ItmRecipe = ItmRecipe(), seed: int = SEED) -> TrainResult:
    """`fusioncam.train` from random weights on `recipe.scenes` training scenes, which are written to `work/itm-data`;
    the run writes `work/itm` (model.safetensors, vocab.txt, preset.toml, metrics), replacing an earlier run's."""
    shutil.rmtree(work / "itm", ignore_errors=True)  # `train` refuses a folder holding another run's checkpoints
    data = generate(
        work / "itm-data",
        recipe.scenes,
        seed,
        image_size=recipe.image_size,
        max_objects=recipe.max_objects,
        split=TRAIN_SPLIT,
        overwrite=True,
    )
    # A preset without weights: `from_scratch` initialises it.
    untrained = work / "itm-untrained.toml"
    files = {"vocab": {"path": str(data.vocab_txt.resolve())}}
    write_preset(untrained, {"kind": "blip-itm", "layout": "fusioncam", "config": recipe.architecture, "files": files})
    config = TrainConfig(
        what="itm",
        data=data.root / f"{recipe.texts}.jsonl",
        out=work / "itm",
        model=str(untrained),
        from_scratch=True,
        seed=seed,
        device="cpu",
        **recipe.training(),
    )
    with seeded(seed):  # `train` reseeds torch's global generator
        return train(config)


# --- EfficientSAM ----------------------------------------------------------------------------------------------


@dataclass
class SamBatch:
    """Images [B, 3, H, W] in [0, 1], one prompt each (points [B, 1, 5, 2], labels [B, 1, 5]), the object masks."""

    images: torch.Tensor
    points: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor


def sam_batch(scenes: Sequence[Scene], rng: np.random.Generator) -> SamBatch:
    """One prompt per scene, as the SAM refinement prompts with the fork's labels.

    One foreground click (label 1) at an integer pixel of a random object, then up to four points labelled with a
    peak score in [0.1, 1) — which EfficientSAM reads as bare positions — anywhere in the image, then padding.
    """
    size = scenes[0].image.shape[0]
    images, points, labels, masks = [], [], [], []
    for scene in scenes:
        target = scene.objects[rng.integers(len(scene.objects))]
        ys, xs = np.nonzero(target.mask)
        click = rng.integers(len(xs))
        extra = int(rng.integers(5))
        points.append([[xs[click], ys[click]], *rng.integers(0, size, (extra, 2)).tolist()] + [[-1, -1]] * (4 - extra))
        labels.append([1.0, *rng.uniform(0.1, 1.0, extra).tolist()] + [-1.0] * (4 - extra))
        images.append(torch.from_numpy(scene.image).permute(2, 0, 1).float() / 255)
        masks.append(torch.from_numpy(target.mask).float())
    return SamBatch(
        torch.stack(images),
        torch.tensor(points, dtype=torch.float32)[:, None],
        torch.tensor(labels)[:, None],
        torch.stack(masks),
    )


def mask_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """BCE + Dice of mask logits [B, h, w] against full-size masks [B, H, W], area-pooled to the logits' size."""
    target = F.interpolate(masks[:, None], logits.shape[-2:], mode="area")[:, 0]
    probability = logits.sigmoid()
    overlap = 2 * (probability * target).sum((1, 2)) + 1
    dice = 1 - overlap / (probability.sum((1, 2)) + target.sum((1, 2)) + 1)
    return F.binary_cross_entropy_with_logits(logits, target) + dice.mean()


def train_sam(recipe: SamRecipe = SamRecipe(), seed: int = SEED) -> EfficientSam:
    """A tiny EfficientSAM trained from scratch on the training scenes' object masks.

    Only its first multimask output is trained — the one the SAM refinement takes — to the clicked object's mask at
    the decoder's resolution. Without it, `esam` and the fusion could only be shown with a random SAM that cuts
    arbitrary masks.
    """
    scenes = [
        synth_scene(index, seed, image_size=recipe.image_size, max_objects=recipe.max_objects, split=TRAIN_SPLIT)[0]
        for index in range(recipe.scenes)
    ]
    rng = np.random.default_rng(seed)
    with seeded(seed):
        sam = EfficientSam(EfficientSamConfig.from_dict(recipe.architecture))
        optimizer = torch.optim.AdamW(sam.parameters(), lr=recipe.lr, weight_decay=0.01)
        for step in range(recipe.steps):
            set_lr(optimizer, recipe.lr, step, recipe.steps, recipe.warmup_steps)
            batch = sam_batch([scenes[i] for i in rng.integers(len(scenes), size=recipe.batch_size)], rng)
            logits = sam(batch.images, batch.points, batch.labels).low_res_masks[:, 0, 0]
            _step(optimizer, mask_loss(logits, batch.masks), recipe.grad_clip)
    return sam.eval()


# --- captioner -------------------------------------------------------------------------------------------------


def bert_init(model: torch.nn.Module) -> None:
    """BERT's initialisation, N(0, 0.02), of linear and embedding weights: with PyTorch's N(0, 1) embeddings the
    tied LM head starts with huge logits."""
    for module in model.modules():
        if isinstance(module, torch.nn.Linear | torch.nn.Embedding):
            torch.nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, torch.nn.Linear) and module.bias is not None:
            torch.nn.init.zeros_(module.bias)


def pretrain_vision(
    vision: VisionTransformer,
    pixels: torch.Tensor,
    scenes: Sequence[tuple[Scene, Description]],
    recipe: CaptionRecipe,
    seed: int = SEED,
) -> None:
    """Teach the captioner's ViT to name its scene's object, shape and colour read off the max-pooled patch tokens:
    the stand-in for the ImageNet pre-training BLIP's ViT starts from.

    Trained with the captioner from random weights, a tiny ViT learns colours but hardly shapes within minutes:
    gathering a small object's outline by soft attention, all a captioner has, is slow to learn, and max-pooling
    learns it (tests/test_vqa_learning.py has the measurements). The head starts from torch's global generator.
    """
    shapes = torch.tensor([list(SHAPES).index(scene.objects[0].shape) for scene, _ in scenes])
    colors = torch.tensor([list(COLORS).index(scene.objects[0].color) for scene, _ in scenes])
    head = torch.nn.Linear(vision.config.width, len(SHAPES) + len(COLORS))
    optimizer = torch.optim.AdamW([*vision.parameters(), *head.parameters()], lr=recipe.vision_lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(recipe.vision_steps):
        batch = torch.randint(len(scenes), (recipe.batch_size,), generator=generator)
        logits = head(vision(pixels[batch])[:, 1:].amax(dim=1))
        loss = F.cross_entropy(logits[:, : len(SHAPES)], shapes[batch])
        _step(optimizer, loss + F.cross_entropy(logits[:, len(SHAPES) :], colors[batch]))


def train_captioner(
    scenes: Sequence[tuple[Scene, Description]], vocab: Path, recipe: CaptionRecipe = CaptionRecipe(), seed: int = SEED
) -> BlipCaption:
    """A tiny BLIP captioner taught "a picture of " + each scene's caption on its pre-trained, frozen ViT.

    Frozen, because at the captioner's learning rate the captioning loss soon erases the shapes the ViT learnt.
    """
    config = BlipCaptionConfig.from_dict(recipe.architecture)
    tokenizer = BlipTokenizer(vocab, max_length=config.max_txt_len)
    pixels = ImageTransform(config.vision.image_size, BLIP_MEAN, BLIP_STD)([scene.image for scene, _ in scenes])
    encoding = tokenizer([config.prompt + description.caption for _, description in scenes])
    ids, mask = encoding.input_ids.clone(), encoding.attention_mask
    ids[:, 0] = tokenizer.bos_token_id  # the decoder reads [DEC] where the tokenizer puts [CLS]
    prompt_length = tokenizer.prompt_ids(config.prompt, 1).shape[1]
    grid = (config.vision.image_size // config.vision.patch_size) ** 2

    generator = torch.Generator().manual_seed(seed)
    with seeded(seed):
        model = BlipCaption(config)
        bert_init(model)
        pretrain_vision(model.vision_encoder, pixels, scenes, recipe, seed)
        model.vision_encoder.requires_grad_(False)
        trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=recipe.lr, weight_decay=0.01)
        for step in range(recipe.steps):
            set_lr(optimizer, recipe.lr, step, recipe.steps, recipe.warmup_steps)
            batch = torch.randint(len(scenes), (recipe.batch_size,), generator=generator)
            length = int(mask[batch].sum(1).max())
            batch_ids, batch_mask = ids[batch, :length], mask[batch, :length]
            image_embeds = model.encode_image(pixels[batch])
            if step % 2:  # as PNP-VQA decodes: from `num_patches` patch tokens, without the class token
                draws = torch.rand(recipe.batch_size, 1, grid, generator=generator).argsort(-1)
                image_embeds = gather_patches(image_embeds, draws[..., : recipe.num_patches])
            logits = model.logits(image_embeds, batch_ids, batch_mask)
            _step(optimizer, caption_loss(logits, batch_ids, batch_mask, prompt_length))
    return model.eval()


# --- UnifiedQA -------------------------------------------------------------------------------------------------


def write_t5_tokenizer(folder: Path, texts: Iterable[str], vocab_size: int, model_type: str = "unigram") -> Path:
    """A SentencePiece model of `texts` with T5's special ids (pad 0, eos 1, unk 2, no bos) and the tokenizer
    config `T5Tokenizer.from_pretrained(folder)` reads; returns the model file (`folder/spiece.model`).

    Trained from memory, so that the model file records no corpus path: the same texts give the same bytes.
    """
    import sentencepiece

    folder.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)),
        model_writer=model,
        model_type=model_type,
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        # The synthetic language is lower-case ASCII, which NFKC (T5's rule) leaves as it is: the same pieces
        # and ids, without the 240 KB normalisation table in the model file.
        normalization_rule_name="identity",
        minloglevel=2,
    )
    (folder / "spiece.model").write_bytes(model.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps({"extra_ids": 0, "model_max_length": 512}))
    return folder / "spiece.model"


def _sometimes(rng: np.random.Generator, words: Iterable[str], word: str, probability: float) -> str:
    """`word`, or with `probability` one of `words` drawn at random."""
    return str(rng.choice(list(words))) if rng.random() < probability else word


def written_captions(scene: Scene, rng: np.random.Generator, recipe: QARecipe) -> list[str]:
    """`recipe.num_captions` captions of `scene` as a sampling captioner writes them: synth's captions (sizes named
    at random), now and then with an object's colour or shape wrong."""
    captions = []
    for _ in range(recipe.num_captions):
        objects = tuple(
            replace(
                obj,
                color=_sometimes(rng, COLORS, obj.color, recipe.wrong_color),
                shape=_sometimes(rng, SHAPES, obj.shape, recipe.wrong_shape),
            )
            for obj in scene.objects
        )
        captions.append(describe(replace(scene, objects=objects), rng).caption)
    return captions


def qa_examples(
    scenes: Sequence[tuple[Scene, Description]], recipe: QARecipe, seed: int
) -> list[tuple[list[str], str]]:
    """(passages, answer) for the colour and shape questions of `scenes`, the passages built as PNP-VQA builds them
    from each scene's `written_captions`."""
    examples = []
    for index, (scene, description) in enumerate(scenes):
        captions = written_captions(scene, np.random.default_rng((seed, index)), recipe)
        for question in description.questions:
            if question_kind(question.question):
                passages = qa_passages(clean_question(question.question), captions, recipe.num_captions, 1)
                examples.append((passages, question.answer))
    return examples


def train_qa(
    tokenizer_dir: Path, scenes: Sequence[tuple[Scene, Description]], recipe: QARecipe = QARecipe(), seed: int = SEED
) -> QuestionAnswerer:
    """A tiny UnifiedQA (T5 read Fusion-in-Decoder style) taught to answer from passages; its SentencePiece
    tokenizer, trained on the passages and answers, is written to `tokenizer_dir`."""
    from transformers import T5Tokenizer

    examples = qa_examples(scenes, recipe, seed)
    texts = [text for passages, answer in examples for text in (*passages, answer)]
    # BPE: every word of the synthetic language becomes one piece (unigram splits many).
    write_t5_tokenizer(tokenizer_dir, texts, vocab_size=recipe.spiece_vocab_size, model_type="bpe")
    tokenizer = T5Tokenizer.from_pretrained(str(tokenizer_dir))
    config = {"vocab_size": len(tokenizer), **recipe.architecture}

    generator = torch.Generator().manual_seed(seed)
    with seeded(seed):
        qa = QuestionAnswerer(FusionInDecoderQA.from_preset("base", **config), tokenizer, "tiny-qa")
        optimizer = torch.optim.AdamW(qa.model.parameters(), lr=recipe.lr, weight_decay=0.01)
        for step in range(recipe.steps):
            set_lr(optimizer, recipe.lr, step, recipe.steps, recipe.warmup_steps)
            batch = [examples[i] for i in torch.randint(len(examples), (recipe.batch_size,), generator=generator)]
            encoding = qa.model.encode(*qa.tokenize([passages for passages, _ in batch]))
            answers = tokenizer([answer for _, answer in batch], padding="longest", return_tensors="pt").input_ids
            _step(optimizer, -qa.model.answer_log_prob(encoding, answers).mean())
    qa.model.eval()
    return qa


# --- saving ----------------------------------------------------------------------------------------------------


@dataclass
class SavedModel:
    """A trained model's files and the preset that runs them: `table` holds every preset key but `files`."""

    name: str
    table: dict[str, Any]
    files: dict[str, Path]  # role → file

    def preset(self, relative_to: Path, digests: bool = False) -> dict[str, Any]:
        """The preset table, each file's `path` relative to `relative_to` (the folder of the declaring toml)."""
        files = {}
        for role, path in self.files.items():
            spec: dict[str, Any] = {"path": Path(os.path.relpath(path.resolve(), relative_to.resolve())).as_posix()}
            if digests:
                spec |= {"sha256": sha256(path), "size": path.stat().st_size}
            files[role] = spec
        return self.table | {"files": files}

    def write_preset(self, path: Path) -> Path:
        """A preset file of one's own for these files (`--model path`, `fusioncam.load(path)`)."""
        write_preset(path, self.preset(path.parent))
        return path


def sha256(path: Path) -> str:
    """The file's sha256 as weights.toml records it (lowercase hex)."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_itm(result: TrainResult, folder: Path, name: str) -> SavedModel:
    """The weights and vocabulary of a `train_itm` run, copied into `folder` as NAME.safetensors and vocab.txt."""
    trained = get_preset(str(result.preset))
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{name}.safetensors"
    shutil.copyfile(result.weights, weights)
    vocab = folder / "vocab.txt"
    trained_vocab = trained.file("vocab").path
    assert trained_vocab is not None  # `train` writes a preset whose files are local paths
    if not (vocab.exists() and vocab.samefile(trained_vocab)):
        shutil.copyfile(trained_vocab, vocab)
    table = {"kind": "blip-itm", "layout": "fusioncam", "config": trained.config, "preprocess": trained.preprocess}
    return SavedModel(name, table, {"checkpoint": weights, "vocab": vocab})


def save_sam(sam: EfficientSam, folder: Path, name: str) -> SavedModel:
    """NAME.safetensors in EfficientSAM's own layout (our module keeps its parameter names)."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{name}.safetensors"
    save_file(sam.state_dict(), weights)
    config = {key: value for key, value in asdict(sam.config).items() if key in ("encoder", "decoder")}
    return SavedModel(
        name, {"kind": "efficient-sam", "layout": "efficient-sam", "config": config}, {"checkpoint": weights}
    )


def save_captioner(model: BlipCaption, folder: Path, name: str, vocab: Path) -> SavedModel:
    """NAME.safetensors in our own layout ("fusioncam"); `vocab` is the vocab.txt it was trained with."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{name}.safetensors"
    save_file(model.state_dict(), weights)
    table = {"kind": "blip-caption", "layout": "fusioncam", "config": asdict(model.config)}
    return SavedModel(name, table, {"checkpoint": weights, "vocab": vocab})


def save_qa(qa: QuestionAnswerer, folder: Path, name: str, tokenizer_dir: Path) -> SavedModel:
    """NAME.safetensors (T5's layout, the tied embedding stored once) with the tokenizer files of `train_qa`."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{name}.safetensors"
    # One embedding under four names: safetensors stores a tensor once, and the loader ties the others back.
    state = {key: value for key, value in qa.model.model.state_dict().items() if key not in T5_TIED_KEYS[1:]}
    save_file(state, weights)
    t5 = qa.model.model.config
    sizes = ("d_model", "d_ff", "num_layers", "num_decoder_layers", "num_heads", "d_kv", "dropout_rate")
    config = {"vocab_size": t5.vocab_size} | {key: getattr(t5, key) for key in sizes}
    files = {
        "checkpoint": weights,
        "spiece": tokenizer_dir / "spiece.model",
        "tokenizer_config": tokenizer_dir / "tokenizer_config.json",
    }
    return SavedModel(name, {"kind": "t5-qa", "architecture": "base", "layout": "t5", "config": config}, files)


# --- held-out figures ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MaskFigures:
    """SAM's first mask for one foreground click on each object, against the object's mask.

    `baseline_iou` is what a mask that knows where the object is but not its shape or size gets: a square of the
    objects' mean area centred on the click.
    """

    count: int
    iou: float
    baseline_iou: float


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def _click(mask: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    ys, xs = np.nonzero(mask)
    pick = rng.integers(len(xs))
    return int(xs[pick]), int(ys[pick])


@torch.no_grad()
def segment_clicks(sam: EfficientSam, image: np.ndarray, clicks: Sequence[tuple[int, int]]) -> np.ndarray:
    """SAM's first mask [Q, H, W] (bool, image resolution) for each single foreground click (x, y) on `image`."""
    device = sam.device
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float().to(device) / 255
    points = torch.tensor(clicks, dtype=torch.float32, device=device).reshape(1, len(clicks), 1, 2)
    labels = torch.ones(1, len(clicks), 1, device=device)
    with sam.autocast():
        logits = sam(pixels, points, labels).upscaled()[0, :, 0]
    return (logits > 0).cpu().numpy()


def measure_sam(sam: EfficientSam, scenes: Sequence[Scene], seed: int = SEED) -> MaskFigures:
    """Mask IoU of one click on every object of `scenes` (the click drawn at random on the object)."""
    rng = np.random.default_rng(seed)
    objects = [obj for scene in scenes for obj in scene.objects]
    side = float(np.sqrt(np.mean([obj.mask.sum() for obj in objects])))
    ious, baseline = [], []
    for scene in scenes:
        clicks = [_click(obj.mask, rng) for obj in scene.objects]
        for obj, mask, (x, y) in zip(scene.objects, segment_clicks(sam, scene.image, clicks), clicks, strict=True):
            ious.append(_iou(mask, obj.mask))
            square = np.zeros_like(obj.mask)
            x0, y0 = round(x + 0.5 - side / 2), round(y + 0.5 - side / 2)
            square[max(y0, 0) : max(y0 + round(side), 0), max(x0, 0) : max(x0 + round(side), 0)] = True
            baseline.append(_iou(square, obj.mask))
    return MaskFigures(len(ious), float(np.mean(ious)), float(np.mean(baseline)))


@dataclass(frozen=True)
class VQAFigures:
    """Right answers per question kind, and the chance of a uniform guess among the kind's answers."""

    asked: dict[str, int]
    right: dict[str, int]

    @property
    def accuracy(self) -> float:
        return sum(self.right.values()) / sum(self.asked.values())

    @property
    def chance(self) -> float:
        return sum(self.asked[kind] / len(KIND_ANSWERS[kind]) for kind in self.asked) / sum(self.asked.values())

    def kind_accuracy(self, kind: str) -> float:
        return self.right[kind] / self.asked[kind]


def measure_vqa(
    pipeline: PNPVQA, scenes: Sequence[tuple[Scene, Description]], seed: int = SEED, batch_size: int = 16
) -> VQAFigures:
    """Answer every colour and shape question of `scenes` (captions sampled from `seed`) and count the right ones."""
    asked = [
        (scene.image, question, kind)
        for scene, description in scenes
        for question in description.questions
        if (kind := question_kind(question.question))
    ]
    generator = torch.Generator().manual_seed(seed)
    counts: dict[str, Counter[bool]] = {kind: Counter() for kind in QUESTION_KINDS}
    for start in range(0, len(asked), batch_size):
        chunk = asked[start : start + batch_size]
        results = pipeline.answer([image for image, _, _ in chunk], [q.question for _, q, _ in chunk], generator)
        for (_, question, kind), result in zip(chunk, results, strict=True):
            counts[kind][result.answer == question.answer] += 1
    kinds = [kind for kind in QUESTION_KINDS if counts[kind]]
    return VQAFigures({k: counts[k].total() for k in kinds}, {k: counts[k][True] for k in kinds})


# --- the demo scene --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoScene:
    """A held-out scene for the built-in set, what to ask about it, and the truth to check the answers against.

    `image` is HxWx3 uint8 RGB; `box` [x0, y0, x1, y1) and `mask` (HxW bool) are those of the object `text` names;
    `block` is the synth-itm text block to explain (the one whose Grad-CAM localises).
    """

    image: np.ndarray
    text: str
    box: tuple[int, int, int, int]
    mask: np.ndarray
    question: str
    answer: str
    block: int
    index: int  # the scene's index in the synth "demo" split of the seed


def demo_scene(seed: int = 0, scale: int = 4) -> DemoScene:
    """The first scene of the synth "demo" split (never trained or measured on) whose one object is large.

    Why one object: the captioner and UnifiedQA learnt on one-object scenes — with two, colours and shapes were not
    bound in time — while the ITM and SAM learnt on scenes of 1–4 objects, so a one-object scene is the one scene
    all four models handle. Large, so that the object covers several of the ITM's 8 px patches and the heatmap and
    mask are plain to see. The question asks the colour, which the built-in set answers right almost always (its
    shapes are right about half the time); the text is the object's referring expression, as the ITM was trained on.

    The scene is rendered at the models' 64 px and enlarged `scale` times by repeating pixels, so that the overlays
    drawn at the image's resolution are big enough to look at, while the models, which resize to 64 px, see the
    scene almost exactly as rendered.
    """
    size = CAPTION_ARCHITECTURE["vision"]["image_size"]
    for index in count():
        scene, description = synth_scene(index, seed, image_size=size, max_objects=VQA_MAX_OBJECTS, split=DEMO_SPLIT)
        (obj,) = scene.objects
        if obj.size == "large":
            break
    question = next(q for q in description.questions if q.question == f"what color is the {obj.shape}?")
    x0, y0, x1, y1 = obj.box
    return DemoScene(
        image=scene.image.repeat(scale, axis=0).repeat(scale, axis=1),
        text=description.expressions[0],
        box=(x0 * scale, y0 * scale, x1 * scale, y1 * scale),
        mask=obj.mask.repeat(scale, axis=0).repeat(scale, axis=1),
        question=question.question,
        answer=question.answer,
        block=ItmRecipe().block,
        index=index,
    )


# --- the build -------------------------------------------------------------------------------------------------


@dataclass
class BuiltSet:
    """What `build_synth_models` wrote: the models (files in `out`), their held-out figures and training times."""

    out: Path
    seed: int
    models: dict[str, SavedModel]  # by role: itm, sam, caption, qa
    figures: dict[str, dict[str, float]]
    seconds: dict[str, float]
    provenance: Path

    def registry_section(self, registry_dir: Path | None = None) -> str:
        """The weights.toml section declaring the set, paths relative to `registry_dir` (default: the package
        folder, where the bundled registry is read as fusioncam/weights.toml)."""
        registry_dir = registry_dir or Path(__file__).parent
        lines = [
            "# Built-in toy models, trained by this project on synthetic scenes (fusioncam.synth) so that the",
            "# demo runs with no network. Rebuild: `make synth-models` (python -m fusioncam.synth_models",
            f"# --out fusioncam/data/synth --seed {self.seed}); provenance.json beside the files holds the recipes,",
            "# training times and held-out figures. Paths are relative to the package folder: this file is read",
            "# as fusioncam/weights.toml.",
        ]
        sections = [
            preset_toml({model.name: model.preset(registry_dir, digests=True)}) for model in self.models.values()
        ]
        return "\n".join(lines) + "\n\n" + "\n\n\n".join(section.rstrip("\n") for section in sections) + "\n"


def _describe(role: str, recipes: SynthRecipes, seed: int, figures: dict[str, dict[str, float]]) -> str:
    """The preset's one-line description: what it is, how it was made, how it does on held-out scenes."""
    made = f"trained on synthetic scenes by `make synth-models` (seed {seed}"
    if role == "itm":
        itm, f = recipes.itm, figures["itm"]
        return (
            f"toy BLIP ITM ({itm.image_size} px, Grad-CAM at block {itm.block}) {made}, {itm.steps} steps); "
            f"held-out pointing game {f['pointing']:.3f} (random point {f['random_pointing']:.3f})"
        )
    if role == "sam":
        sam, f = recipes.sam, figures["sam"]
        return (
            f"toy EfficientSAM ({sam.image_size} px) {made}, {sam.steps} steps); held-out mask IoU of one click "
            f"{f['iou']:.3f} (object-sized square {f['baseline_iou']:.3f})"
        )
    f = figures["vqa"]
    vqa = (
        f"held-out PNP-VQA with synth-itm and synth-caption/synth-qa: accuracy {f['accuracy']:.3f} (chance "
        f"{f['chance']:.3f}), colours {f['color']:.3f}, shapes {f['shape']:.3f}"
    )
    if role == "caption":
        steps = f"{recipes.caption.vision_steps} ViT + {recipes.caption.steps} decoder steps"
        return f"toy BLIP captioner ({recipes.caption.image_size} px, one object) {made}, {steps}); {vqa}"
    return f"toy UnifiedQA T5 for synthetic captions {made}, {recipes.qa.steps} steps); {vqa}"


def _timed(seconds: dict[str, float], stage: str, run: Any) -> Any:
    start = time.perf_counter()
    result = run()
    seconds[stage] = round(time.perf_counter() - start, 1)
    log.info("%s: %.0f s", stage, seconds[stage])
    return result


def _train_all(
    out: Path, work: Path, recipes: SynthRecipes, seed: int, seconds: dict[str, float]
) -> dict[str, SavedModel]:
    """Train the four models and write their files into `out`."""
    vocab = write_vocab(out / "vocab.txt")
    itm = _timed(seconds, "itm", lambda: train_itm(work, recipes.itm, seed))
    sam = _timed(seconds, "sam", lambda: train_sam(recipes.sam, seed))
    scenes = vqa_scenes(recipes.caption.scenes, seed, recipes.caption.image_size, TRAIN_SPLIT)
    caption = _timed(seconds, "caption", lambda: train_captioner(scenes, vocab, recipes.caption, seed))
    qa = _timed(seconds, "qa", lambda: train_qa(out, scenes[: recipes.qa.scenes], recipes.qa, seed))
    return {
        "itm": save_itm(itm, out, NAMES["itm"]),
        "sam": save_sam(sam, out, NAMES["sam"]),
        "caption": save_captioner(caption, out, NAMES["caption"], vocab),
        "qa": save_qa(qa, out, NAMES["qa"], out),
    }


def _measure_all(
    models: dict[str, SavedModel], work: Path, recipes: SynthRecipes, seed: int
) -> dict[str, dict[str, float]]:
    """Held-out figures of the saved files, loaded back through the library's loaders as users load them."""
    presets = {role: str(model.write_preset(work / f"{model.name}.toml")) for role, model in models.items()}
    itm_size = recipes.itm.image_size
    held_out = generate(
        work / "held-out", recipes.held_out_scenes, seed, image_size=itm_size, split=HELD_OUT_SPLIT, overwrite=True
    )
    matcher = load(presets["itm"], device="cpu")
    records = read_referring(held_out.referring_jsonl)
    pointing = evaluate_pointing(matcher, records, recipes.itm.block, batch_size=64, settings=PEAK_IN_BOX)
    scenes = [
        synth_scene(index, seed, image_size=recipes.sam.image_size, split=HELD_OUT_SPLIT)[0]
        for index in range(recipes.held_out_scenes)
    ]
    masks = measure_sam(load_sam(presets["sam"], device="cpu"), scenes, seed)
    captioner, qa = load_captioner(presets["caption"], device="cpu"), load_qa(presets["qa"], device="cpu")
    pipeline = PNPVQA(matcher, captioner, qa, vqa_config(recipes.caption, recipes.qa, recipes.itm.block, explain=False))
    vqa = measure_vqa(
        pipeline, vqa_scenes(recipes.vqa_held_out_scenes, seed, recipes.caption.image_size, HELD_OUT_SPLIT), seed
    )
    return {
        "itm": {
            "expressions": pointing.count,
            "pointing": pointing.pointing,
            "random_pointing": pointing.random_pointing,
        }
        | {"energy": pointing.energy, "random_energy": pointing.random_energy},
        "sam": {"clicks": masks.count, "iou": masks.iou, "baseline_iou": masks.baseline_iou},
        "vqa": {"questions": sum(vqa.asked.values()), "accuracy": vqa.accuracy, "chance": vqa.chance}
        | {kind: vqa.kind_accuracy(kind) for kind in vqa.asked},
    }


def build_synth_models(
    out_dir: Path, seed: int = SEED, recipes: SynthRecipes = SynthRecipes(), work_dir: Path | None = None
) -> BuiltSet:
    """Train the built-in set into `out_dir`, measure it on held-out scenes, and write `out_dir/provenance.json`.

    Training data (the ITM's scenes on disk) and scratch files go to `work_dir`, a temporary folder by default.
    Runs on one CPU thread, whatever the machine, so that the files come out the same.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as scratch, one_thread():
        work = work_dir or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        models = _train_all(out_dir, work, recipes, seed, seconds)
        figures = _timed(seconds, "held-out figures", lambda: _measure_all(models, work, recipes, seed))
    for role, model in models.items():
        model.table = {"description": _describe(role, recipes, seed, figures), "license": LICENSE} | model.table
    provenance = out_dir / "provenance.json"
    record = {
        "command": f"python -m fusioncam.synth_models --out {out_dir} --seed {seed}",
        "seed": seed,
        "torch": torch.__version__,
        "fusioncam": importlib.metadata.version("fusioncam"),
        "machine": platform.machine(),
        "threads": 1,
        "seconds": seconds,
        "recipes": asdict(recipes),
        "held_out": {"split": HELD_OUT_SPLIT, "figures": figures},
        "files": {
            model.name: {role: {"file": path.name, "sha256": sha256(path), "bytes": path.stat().st_size}}
            for model in models.values()
            for role, path in model.files.items()
        },
    }
    provenance.write_text(json.dumps(record, indent=1) + "\n")
    return BuiltSet(out_dir, seed, models, figures, seconds, provenance)


def registry_differences(built: BuiltSet) -> list[str]:
    """Where the registry in use disagrees with the built files: a missing preset or file, another sha256."""
    registry = load_registry()
    problems = []
    for model in built.models.values():
        preset = registry.get(model.name)
        if preset is None:
            problems.append(f"{model.name}: not in the registry")
            continue
        for role, path in model.files.items():
            spec = preset.files.get(role)
            if spec is None:
                problems.append(f"{model.name}: no file {role}")
            elif spec.sha256 != sha256(path):
                problems.append(f"{model.name}.files.{role}: sha256 {spec.sha256 or '(none)'}, built {sha256(path)}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m fusioncam.synth_models --out DIR`: build the set, print its weights.toml section on stdout."""
    parser = argparse.ArgumentParser(prog="python -m fusioncam.synth_models", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the model files (fusioncam/data/synth)")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of every model's data and training")
    parser.add_argument("--work", type=Path, default=None, help="keep training data and scratch files here")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    built = build_synth_models(args.out, args.seed, work_dir=args.work)
    files = {path.resolve() for model in built.models.values() for path in model.files.values()}
    log.info(
        "wrote %s (%.2f MB of model files) and %s",
        args.out,
        sum(f.stat().st_size for f in files) / 1e6,
        built.provenance,
    )
    log.info("held-out figures: %s", json.dumps(built.figures))
    sys.stdout.write(built.registry_section())
    if problems := registry_differences(built):
        log.warning(
            "weights.toml's digests differ from the files built (%s): update weights.toml with the section printed "
            "above and commit it with the files.",
            "; ".join(problems),
        )
    else:
        log.info("weights.toml's digests match the files built.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
