"""`fusioncam train`: teach BLIP's matching heads (`what="itm"`) or the SAM fusion on a frozen BLIP (`what="fusion"`).

The objective is BLIP's own for image–text matching, without the momentum encoders and queues of its pre-training:

- ITC: cosine similarities of every image with every text of the *global* batch, divided by a learnable
  temperature (initialised at 0.07 and clamped to [0.001, 0.5] as BLIP does), then a symmetric cross-entropy.
  Features are all-gathered across ranks with their gradients, so every rank sees the negatives of the whole
  global batch and a run on N processes computes the same ITC as one process given the same global batch.
- ITM: each local image gets a hard negative text, and each local text a hard negative image, drawn from the
  global batch with probability ∝ softmax(similarity / temperature) — the pairs ITC finds hardest to tell apart.
  The ITM head then classifies positives (label 1) and negatives (label 0). Loss = ITC + ITM.

A pair's "positives" are all pairs that share its image or its (cleaned) caption: those are never drawn as
negatives and share the ITC target mass, so repeated captions ("a red circle") or several captions of one photo
do not teach the model that a true description is false.

What makes a run repeatable (and `resume` exact): the data order of epoch e comes from (seed, e); step s of rank r
reseeds dropout and draws its negatives from (seed, s, r); the learning rate is a function of the step. Nothing
else is random, so a checkpoint only needs the trainable tensors, the optimizer state and the step.

Under `torchrun` (RANK / WORLD_SIZE / LOCAL_RANK set) every process trains on its own slice of each global batch
(`batch_size` is per rank), DDP averages the gradients, and only rank 0 writes files.

Outputs in `out/`:
    metrics.jsonl          one record per step (0-based): loss, itc, itm (averaged over ranks), and the lr, temp
                           (and a fusion's gate) that step used, seconds (its wall time, data loading included)
    checkpoint-<k>.pt      state after k steps (every `checkpoint_every` steps and at the end); `resume` takes it
    model.safetensors      (itm) the trained BlipITM in fusioncam's own layout, with
    <run>.toml             (itm) a preset for it, named after the run (`out`'s folder name: runs/itm → itm.toml,
                           preset "itm"): `fusioncam heatmap --model runs/itm/itm.toml` works at once
    vocab.txt              (itm) a copy of the vocabulary it was trained with, so `out/` is self-contained
    fusion.safetensors     (fusion) the fusion's parameters, for `fusioncam.checkpoints.load_fusion`

A BLIP ITM preset is trained from random weights only when asked (`from_scratch=True`), and then only if it has no
weights: its `[files.checkpoint]` is not declared, or is a `path` that does not exist yet. The vocabulary and the
`[config]` come from the preset as usual. A preset with weights is fine-tuned; one without them fails unless
`from_scratch` is set, so a mistyped checkpoint path never turns into a silently random model.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from safetensors.torch import save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from fusioncam.api import (
    BlipMatcher,
    blip_preset_tokenizer,
    blip_preset_transform,
    build_blip_itm,
    load,
    load_sam,
    pick_device,
)
from fusioncam.batch import Failure, pairs_from_jsonl
from fusioncam.checkpoints import save_fusion
from fusioncam.images import ImageTransform, load_image
from fusioncam.models.blip import BlipITM
from fusioncam.models.efficient_sam import EfficientSam
from fusioncam.models.fusion import BlipFusionITM, FusionConfig
from fusioncam.text import BlipTokenizer, clean_caption
from fusioncam.weights import Preset, get_preset, resolve_file

WHAT = ("itm", "fusion")
AMP_MODES = ("auto", "bf16", "fp16", "off")
INITIAL_TEMPERATURE = 0.07
TEMPERATURE_RANGE = (0.001, 0.5)
# The `format` entry of a training checkpoint; the number changes when the file's meaning does.
CHECKPOINT_FORMAT = "fusioncam.train/1"
# Fields that only say where and how fast a run goes; everything else shapes its numbers and must not change
# when it is resumed.
_LAUNCH_FIELDS = frozenset({"out", "resume", "device", "num_workers", "checkpoint_every", "cache_sam", "record"})
# Independent random streams derived from the seed (`derive_seed`).
_INIT, _ORDER, _DROPOUT, _NEGATIVES = range(4)

_stderr = Console(stderr=True)


@dataclass
class TrainConfig:
    """One training run. Paths may be given as strings; relative ones are relative to the working directory.

    `data` is a pairs JSONL (`{"image": path, "text": caption}` per line, image paths relative to the file) such as
    `fusioncam synth` writes. `model` is the BLIP ITM preset (name or .toml) to fine-tune, to train from scratch
    (`from_scratch`, itm only; see the module docstring), or to freeze under a fusion. `sam` is the EfficientSAM
    preset of a fusion, and `fusion` its `FusionConfig` values (the SAM channel count is taken from `sam`).
    `batch_size` is per rank; `checkpoint_every` 0 writes a checkpoint only at the end; `grad_clip` 0 turns
    clipping off; `amp` "auto" is bf16 (fp16 where bf16 is unsupported) on CUDA and off elsewhere. `resume` is a
    checkpoint file, or a folder whose latest checkpoint is taken. `cache_sam` keeps every image's SAM embedding
    in CPU memory for the run (about 4 MB per image at SAM's 1024² input). `record` makes every rank write
    `rank-<r>.json`: the sample indices it trained on per step and the files it wrote (to check the data split).
    """

    what: str
    data: Path
    out: Path
    model: str = "blip-itm-base"
    sam: str | None = None
    from_scratch: bool = False
    fusion: dict[str, Any] = field(default_factory=dict)
    steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_steps: int = 100
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 0
    amp: str = "auto"
    device: str = "auto"
    resume: Path | None = None
    num_workers: int = 0
    cache_sam: bool = False
    record: bool = False

    def __post_init__(self) -> None:
        self.data, self.out = Path(self.data), Path(self.out)
        self.resume = Path(self.resume) if self.resume is not None else None
        problems = []
        if self.what not in WHAT:
            problems.append(f"what must be one of {', '.join(WHAT)}, got {self.what!r}")
        if self.what == "fusion" and not self.sam:
            problems.append("a fusion needs an EfficientSAM preset (sam)")
        if self.what == "itm" and (self.sam or self.fusion):
            problems.append("sam and fusion belong to what='fusion'; itm trains BLIP alone")
        if self.what == "fusion" and self.from_scratch:
            problems.append("from_scratch is for what='itm': a fusion is trained on a BLIP that has weights")
        if self.amp not in AMP_MODES:
            problems.append(f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "checkpoint_every", "num_workers", "seed", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must not be negative, got {getattr(self, name)}")
        if self.lr <= 0:
            problems.append(f"lr must be positive, got {self.lr}")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """From plain values (a JSON file); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        if unknown := sorted(values.keys() - known):
            raise ValueError(f"unknown training config key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (paths as strings), for checkpoints and JSON."""
        return {key: str(value) if isinstance(value, Path) else value for key, value in asdict(self).items()}


@dataclass
class TrainResult:
    """What a run did. `model` is the trained `BlipITM` (itm) or `BlipFusionITM` (fusion) on the training device;
    `weights` is model.safetensors (itm) or fusion.safetensors (fusion); `preset` the itm preset file (None for a
    fusion); `last` the metrics record of the final step (None if no step ran). Files are written by rank 0;
    other ranks get the same paths."""

    model: BlipITM | BlipFusionITM
    out: Path
    steps: int
    weights: Path
    preset: Path | None
    metrics: Path
    checkpoints: list[Path]
    last: dict[str, float] | None


# --- randomness ------------------------------------------------------------------------------------------------


def derive_seed(*parts: int) -> int:
    """A 64-bit seed mixed from non-negative integers, e.g. (seed, stream, step, rank).

    SeedSequence hashes its entropy, so nearby tuples give unrelated streams (seed 1 step 0 ≠ seed 0 step 1).
    """
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0])


# --- distributed -----------------------------------------------------------------------------------------------


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if _distributed() else (0, 1)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward hands each rank the summed gradient of its own slice.

    Every rank's loss reads every slice, so the gradient of a slice is the sum of what all ranks send back: an
    all-reduce, then this rank's part. (`torch.distributed.nn.functional.all_gather` does the same but is
    deprecated since torch 2.13 and warns on every call.)
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        rank, world = _rank_and_world()
        ctx.rank, ctx.world = rank, world
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad.chunk(ctx.world)[ctx.rank]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """[b, ...] on each rank → [world·b, ...] in rank order, differentiable; the tensor itself on one process."""
    return _GatherWithGrad.apply(tensor) if _distributed() else tensor


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """`gather_with_grad` without the gradient (ids, masks, keys)."""
    if not _distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def _pad_to_global_length(tensors: Sequence[torch.Tensor], pad_values: Sequence[int]) -> list[torch.Tensor]:
    """Pad [b, L_r] token tensors to the longest L of all ranks, so they can be gathered (padding is masked)."""
    if not _distributed():
        return list(tensors)
    length = torch.tensor(tensors[0].shape[1], device=tensors[0].device)
    dist.all_reduce(length, op=dist.ReduceOp.MAX)
    extra = int(length) - tensors[0].shape[1]
    return [F.pad(tensor, (0, extra), value=value) for tensor, value in zip(tensors, pad_values, strict=True)]


@dataclass(frozen=True)
class _Launch:
    """Where this process runs: its rank among `world` processes, its device, and whether it set up the group."""

    rank: int
    world: int
    device: torch.device
    owns_group: bool

    @property
    def main(self) -> bool:
        return self.rank == 0


def _launch(device_name: str) -> _Launch:
    """Join the process group torchrun describes (gloo on CPU, NCCL on CUDA), or run alone without one.

    A group the caller already initialised is used as it is and left for the caller to destroy.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(device_name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and device.type not in ("cpu", "cuda"):
        raise ValueError(f"distributed training runs on CPU (gloo) or CUDA (NCCL), not on {device.type}")
    owns_group = world > 1 and not dist.is_initialized()
    if owns_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, world = _rank_and_world()
    return _Launch(rank, world, device, owns_group)


# --- data ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairSet:
    """The training pairs: image path, cleaned caption, and per pair the ids of its image and of its caption
    (pairs with equal ids share that image or that caption, which makes them positives of each other)."""

    images: list[Path]
    texts: list[str]
    image_keys: list[int]
    text_keys: list[int]

    def __len__(self) -> int:
        return len(self.images)

    @classmethod
    def read(cls, path: Path) -> PairSet:
        """Read a pairs JSONL; a malformed record stops the run (training on a silently smaller set would not)."""
        if not path.is_file():
            raise FileNotFoundError(f"training pairs not found: {path}")
        images, texts = [], []
        with path.open() as lines:
            for item in pairs_from_jsonl(lines, str(path), path.parent):
                if isinstance(item, Failure):
                    raise ValueError(f"{item.origin}: {item.reason}")
                text = clean_caption(item.text)
                if not text:
                    raise ValueError(f"{item.origin}: the text is empty after cleaning")
                images.append(item.image)
                texts.append(text)
        if not images:
            raise ValueError(f"{path} holds no pairs")
        return cls(images, texts, _ids(images), _ids(texts))


def _ids(values: Sequence[Any]) -> list[int]:
    """Each value's index among the distinct values, in order of first appearance."""
    index: dict[Any, int] = {}
    return [index.setdefault(value, len(index)) for value in values]


class _ImageDataset(Dataset):
    """Decoded, preprocessed images of the pairs: BLIP's input and, for a fusion, SAM's ([0, 1], SAM's size)."""

    def __init__(self, pairs: PairSet, transform: ImageTransform, sam_transform: ImageTransform | None) -> None:
        self.pairs = pairs
        self.transform = transform
        self.sam_transform = sam_transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = load_image(self.pairs.images[index])
        item = {"index": index, "pixels": self.transform([image])[0]}
        if self.sam_transform is not None:
            item["sam_pixels"] = self.sam_transform([image])[0]
        return item


class StepBatches:
    """The sample indices of this rank for each step from `start` to `steps`, like DistributedSampler.

    Epoch e is a permutation drawn from (seed, e), cut into global batches of `world · batch_size` (the remainder
    is dropped, so every step is full); rank r takes slice r of each. Ranks therefore see disjoint samples, and
    the batch of a step depends only on the step, which is what makes resuming exact.
    """

    def __init__(self, size: int, batch_size: int, rank: int, world: int, seed: int, start: int, steps: int) -> None:
        self.global_batch = batch_size * world
        if size < self.global_batch:
            raise ValueError(
                f"{size} pairs cannot fill one global batch of {self.global_batch} "
                f"({world} process(es) × batch_size {batch_size}): use a smaller batch or more data"
            )
        self.size, self.batch_size, self.rank, self.seed = size, batch_size, rank, seed
        self.start, self.steps = start, steps
        self.per_epoch = size // self.global_batch

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def epoch_order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, _ORDER, epoch))
        return torch.randperm(self.size, generator=generator)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, order = -1, torch.empty(0, dtype=torch.long)
        for step in range(self.start, self.steps):
            if step // self.per_epoch != epoch:
                epoch = step // self.per_epoch
                order = self.epoch_order(epoch)
            first = (step % self.per_epoch) * self.global_batch + self.rank * self.batch_size
            yield order[first : first + self.batch_size].tolist()


# --- objective -------------------------------------------------------------------------------------------------


@dataclass
class Losses:
    """ITC over the global batch and ITM over this rank's positives and hard negatives (both scalars)."""

    itc: torch.Tensor
    itm: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.itc + self.itm


def sample_negatives(
    scores: torch.Tensor, positives: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One index per row drawn ∝ softmax(scores) over the row's non-positive entries; returns (index, valid).

    Positives get -inf before the softmax, which is softmax(scores) with them zeroed and renormalised, and never
    underflows to an all-zero row however sharp the temperature. A row whose entries are all positives has no
    negative: it draws an arbitrary index and is marked invalid, for the caller to leave out of the loss.
    Drawn on the CPU, where `generator` lives, so the draws do not depend on the device.
    """
    valid = ~positives.all(dim=1)
    weights = scores.float().masked_fill(positives, float("-inf")).softmax(dim=1)
    weights = torch.where(valid[:, None], weights, torch.ones_like(weights))
    index = torch.multinomial(weights.cpu(), 1, generator=generator).squeeze(1)
    return index.to(scores.device), valid


def matching_losses(
    model: BlipITM | BlipFusionITM,
    image_embeds: torch.Tensor,
    input_ids: torch.Tensor,
    itm_input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_keys: torch.Tensor,
    text_keys: torch.Tensor,
    temperature: torch.Tensor,
    generator: torch.Generator,
) -> Losses:
    """BLIP's ITC and hard-negative ITM for this rank's b pairs (pair i = image i with text i).

    Token tensors must have the same length on every rank (`_pad_to_global_length`). The ITC is the loss of the
    whole global batch on every rank; DDP's gradient average then gives the gradient one process would get.
    """
    rank, _ = _rank_and_world()
    batch = image_embeds.shape[0]
    local = slice(rank * batch, (rank + 1) * batch)
    image_features = gather_with_grad(model.image_features(image_embeds)).float()
    text_features = gather_with_grad(model.text_features(input_ids, attention_mask)).float()
    logits = image_features @ text_features.T / temperature  # [G, G]: global images × global texts
    all_image_keys, all_text_keys = gather(image_keys), gather(text_keys)
    positives = (all_image_keys[:, None] == all_image_keys[None]) | (all_text_keys[:, None] == all_text_keys[None])
    # Symmetric, so the same row-normalised targets serve image→text and text→image.
    targets = positives.float() / positives.sum(dim=1, keepdim=True)
    itc = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2

    with torch.no_grad():
        negative_texts, texts_valid = sample_negatives(logits[local], positives[local], generator)
        negative_images, images_valid = sample_negatives(logits.T[local], positives[local], generator)
    all_itm_ids, all_masks = gather(itm_input_ids), gather(attention_mask)
    all_image_embeds = gather_with_grad(image_embeds)
    output = model.itm(
        torch.cat([image_embeds, image_embeds, all_image_embeds[negative_images]]),
        torch.cat([itm_input_ids, all_itm_ids[negative_texts], itm_input_ids]),
        torch.cat([attention_mask, all_masks[negative_texts], attention_mask]),
    )
    ignore = torch.full_like(negative_texts, -100)
    labels = torch.cat(
        [
            torch.ones_like(negative_texts),
            torch.where(texts_valid, 0, ignore),
            torch.where(images_valid, 0, ignore),
        ]
    )
    itm = F.cross_entropy(output.logits.float(), labels, ignore_index=-100)
    return Losses(itc, itm)


class MatchingObjective(nn.Module):
    """Everything a step trains, as one module for DDP to wrap: the model and ITC's temperature.

    For a fusion the model is a `BlipFusionITM` whose BLIP is frozen; only its fusion (and the temperature) train.
    """

    def __init__(self, model: BlipITM | BlipFusionITM) -> None:
        super().__init__()
        self.model = model
        self.temperature = nn.Parameter(torch.tensor(INITIAL_TEMPERATURE))

    def forward(
        self,
        pixels: torch.Tensor,
        input_ids: torch.Tensor,
        itm_input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_keys: torch.Tensor,
        text_keys: torch.Tensor,
        generator: torch.Generator,
        sam_embeddings: torch.Tensor | None = None,
    ) -> Losses:
        with torch.no_grad():
            self.temperature.clamp_(*TEMPERATURE_RANGE)
        if sam_embeddings is None:
            image_embeds = self.model.encode_image(pixels)
        else:
            image_embeds = self.model.encode_image(pixels, sam_embeddings)
        return matching_losses(
            self.model,
            image_embeds,
            input_ids,
            itm_input_ids,
            attention_mask,
            image_keys,
            text_keys,
            self.temperature,
            generator,
        )


class _SamEmbeddings:
    """EfficientSAM embeddings of the training images; SAM is frozen, so an image's embedding never changes.

    With `cache`, each image is embedded once, on its own: a cached value must not depend on which batch first
    met the image, or a resumed run (which meets it in another batch) could differ in the last bits.
    """

    def __init__(self, sam: EfficientSam, cache: bool) -> None:
        self.sam = sam
        self.cache: dict[int, torch.Tensor] | None = {} if cache else None

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor, image_keys: list[int]) -> torch.Tensor:
        if self.cache is None:
            return self.sam.embed(pixels).embeddings
        for key, image in zip(image_keys, pixels, strict=True):
            if key not in self.cache:
                self.cache[key] = self.sam.embed(image[None]).embeddings[0].cpu()
        return torch.stack([self.cache[key] for key in image_keys]).to(pixels.device)


# --- optimisation ----------------------------------------------------------------------------------------------


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up over `warmup_steps`, then a cosine from `lr` down to 0 at `steps`."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))


def _optimizer(objective: MatchingObjective, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; biases, norms, the gate and the temperature (tensors of < 2 dims) are not decayed, as in LAVIS."""
    trainable = [param for param in objective.parameters() if param.requires_grad]
    groups = [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr)


def _autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if device.type != "cuda":
        raise ValueError(f"amp={amp!r} runs only on CUDA; on {device.type} use amp='off' (or 'auto')")
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


# --- models ----------------------------------------------------------------------------------------------------


@dataclass
class _Models:
    """What a run trains and what it needs around it."""

    objective: MatchingObjective
    matcher: BlipMatcher  # BLIP with its tokenizer and preprocessing (its model is the one being trained for itm)
    blip_preset: Preset
    vocab: Path
    sam: EfficientSam | None
    sam_preset: Preset | None


def _blip(config: TrainConfig) -> tuple[BlipMatcher, Preset, Path]:
    """The BLIP ITM preset with its weights, or randomly initialised under the `from_scratch` rule (on the CPU)."""
    preset = get_preset(config.model)
    spec = preset.files.get("checkpoint")
    has_weights = spec is not None and not (spec.source_kind == "path" and not spec.path.is_file())
    vocab = resolve_file(preset, "vocab")
    if has_weights and config.from_scratch:
        raise ValueError(
            f"preset {preset.name!r} has weights ({spec.origin}); from_scratch only starts presets without them. "
            "Drop from_scratch to fine-tune these weights, or point the checkpoint at a file that does not exist"
        )
    if not has_weights and not config.from_scratch:
        where = f"its checkpoint {spec.path} does not exist" if spec is not None else "it declares no checkpoint"
        raise ValueError(
            f"preset {preset.name!r} has no weights ({where}); pass from_scratch=True (--from-scratch) to train "
            "it from random weights"
        )
    if has_weights:
        return load(config.model, device="cpu"), preset, vocab
    blip_config = build_blip_itm(preset).config
    torch.manual_seed(derive_seed(config.seed, _INIT))
    model = BlipITM(blip_config)
    tokenizer = blip_preset_tokenizer(preset, vocab, blip_config.max_txt_len, blip_config.text.vocab_size)
    transform = blip_preset_transform(preset, blip_config.vision.image_size)
    return BlipMatcher(model, tokenizer, transform, name=preset.name), preset, vocab


def _models(config: TrainConfig, device: torch.device) -> _Models:
    matcher, blip_preset, vocab = _blip(config)
    if config.what == "itm":
        model: BlipITM | BlipFusionITM = matcher.model.requires_grad_(True)
        sam = sam_preset = None
    else:
        sam_preset = get_preset(config.sam)
        sam = load_sam(config.sam, device=str(device))
        fusion = FusionConfig.from_dict({"sam_channels": sam.config.encoder.neck_dim} | config.fusion)
        torch.manual_seed(derive_seed(config.seed, _INIT))
        model = BlipFusionITM(matcher.model, fusion)
    objective = MatchingObjective(model).to(device).train()
    if isinstance(model, BlipFusionITM):
        model.blip.eval()
    return _Models(objective, matcher, blip_preset, vocab, sam, sam_preset)


# --- checkpoints and outputs -----------------------------------------------------------------------------------


def _trainable(objective: MatchingObjective) -> dict[str, nn.Parameter]:
    return {name: param for name, param in objective.named_parameters() if param.requires_grad}


def _save_checkpoint(
    path: Path,
    objective: MatchingObjective,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    step: int,
    config: TrainConfig,
    world: int,
) -> None:
    """Plain tensors and values only, so `torch.load(weights_only=True)` reads it; written whole or not at all."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "world_size": world,
        "config": config.to_dict(),
        "trainable": {name: param.detach().cpu() for name, param in _trainable(objective).items()},
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
    }
    partial = path.with_name(path.name + ".part")
    torch.save(payload, partial)
    os.replace(partial, path)


def _checkpoint_path(resume: Path) -> Path:
    """A checkpoint file as given, or the latest `checkpoint-<k>.pt` of a folder."""
    if not resume.is_dir():
        return resume
    found = sorted(resume.glob("checkpoint-*.pt"), key=lambda path: int(path.stem.split("-")[-1]))
    if not found:
        raise FileNotFoundError(f"no checkpoint-<step>.pt in {resume} to resume from")
    return found[-1]


def _resume(
    path: Path,
    objective: MatchingObjective,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    config: TrainConfig,
    world: int,
) -> int:
    """Restore a checkpoint of this very run (same settings, same number of processes); returns its step."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a fusioncam training checkpoint")
    saved, current = payload["config"], config.to_dict()
    changed = [
        f"{key}: {saved.get(key)!r} → {current[key]!r}"
        for key in current
        if key not in _LAUNCH_FIELDS and saved.get(key) != current[key]
    ]
    if payload["world_size"] != world:
        changed.append(f"processes: {payload['world_size']} → {world}")
    if changed:
        raise ValueError(
            f"{path} belongs to a run with other settings, which resuming would not continue: " + "; ".join(changed)
        )
    trainable = _trainable(objective)
    state = payload["trainable"]
    if state.keys() != trainable.keys():
        raise ValueError(f"{path}: its trainable tensors do not match this model's")
    with torch.no_grad():
        for name, param in trainable.items():
            param.copy_(state[name])
    optimizer.load_state_dict(payload["optimizer"])
    scaler.load_state_dict(payload["scaler"])
    return int(payload["step"])


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def to_toml(table: dict[str, Any]) -> str:
    """A nested dict of scalars and lists as TOML: the top-level keys, then one `[a.b]` section per sub-table.

    A table holding only sub-tables gets no header of its own (TOML defines it implicitly).
    """
    sections: list[str] = []

    def add(values: dict[str, Any], name: str) -> None:
        lines = [f"{key} = {_toml_value(value)}" for key, value in values.items() if not isinstance(value, dict)]
        tables = {key: value for key, value in values.items() if isinstance(value, dict)}
        if lines or not tables:
            sections.append("\n".join(([f"[{name}]"] if name else []) + lines))
        for key, value in tables.items():
            add(value, f"{name}.{key}" if name else key)

    add(table, "")
    return "\n\n".join(sections) + "\n"


def _itm_preset(config: TrainConfig, matcher: BlipMatcher) -> dict[str, Any]:
    """The preset of a trained BLIP ITM: our layout, the full architecture, the preprocessing it was trained with."""
    transform = matcher.transform
    return {
        "kind": "blip-itm",
        "layout": "fusioncam",
        "description": f"BLIP ITM trained by fusioncam from {config.model} on {config.data} ({config.steps} steps)",
        "config": asdict(matcher.model.config),
        "preprocess": {
            "image_size": transform.image_size,
            "mean": list(transform.mean),
            "std": list(transform.std),
            "interpolation": transform.interpolation,
        },
        "files": {"checkpoint": {"path": "model.safetensors"}, "vocab": {"path": "vocab.txt"}},
    }


class _Writer:
    """Every file of a run goes through here: rank 0 writes it, other ranks only note that they did not.

    `written` lists what this process wrote (for `record`).
    """

    def __init__(self, out: Path, main: bool) -> None:
        self.out, self.main = out, main
        self.written: list[str] = []
        if main:
            out.mkdir(parents=True, exist_ok=True)

    def write(self, name: str, write: Callable[[Path], object]) -> Path:
        """Call `write(path)` for `out/name` on rank 0; returns the path on every rank."""
        path = self.out / name
        if self.main:
            write(path)
            if name not in self.written:
                self.written.append(name)
        return path


def _start_metrics(path: Path, keep_before: int) -> None:
    """Start metrics.jsonl afresh, or keep the records of the steps a resumed run does not repeat."""
    kept = []
    if keep_before and path.is_file():
        kept = [line for line in path.read_text().splitlines(True) if json.loads(line)["step"] < keep_before]
    path.write_text("".join(kept))


def _append_line(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as stream:
        stream.write(json.dumps(record) + "\n")


def _progress(enabled: bool) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=_stderr,
        disable=not enabled,
    )


# --- the loop --------------------------------------------------------------------------------------------------


def train(config: TrainConfig, progress: bool = True) -> TrainResult:
    """Run (or resume) one training run; see the module docstring for what it optimises and writes."""
    launch = _launch(config.device)
    try:
        return _train(config, launch, progress)
    finally:
        if launch.owns_group:
            dist.destroy_process_group()


def _train(config: TrainConfig, launch: _Launch, progress: bool) -> TrainResult:
    device, rank, world = launch.device, launch.rank, launch.world
    if config.batch_size * world < 2:
        raise ValueError("ITC and ITM need at least 2 pairs per global batch (batch_size × processes)")
    resume = _checkpoint_path(config.resume) if config.resume is not None else None
    if resume is None and any(config.out.glob("checkpoint-*.pt")):
        raise FileExistsError(
            f"{config.out} holds checkpoints of another run: resume it (resume={config.out}) or choose another out"
        )
    pairs = PairSet.read(config.data)
    models = _models(config, device)
    objective, matcher = models.objective, models.matcher
    optimizer = _optimizer(objective, config)
    dtype = _autocast_dtype(config.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    start = _resume(resume, objective, optimizer, scaler, config, world) if resume is not None else 0
    # DDP averages the gradients of every trainable parameter across ranks (frozen ones it leaves alone).
    step_module: nn.Module = objective
    if _distributed():
        step_module = DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)

    sam_transform = None
    sam_embeddings = None
    if models.sam is not None:
        size = models.sam.config.encoder.image_size
        # [0, 1] pixels at SAM's input size, resized as `EfficientSam.preprocess` would (which then skips it).
        sam_transform = ImageTransform(size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), interpolation="bilinear")
        sam_embeddings = _SamEmbeddings(models.sam, config.cache_sam)
    batches = StepBatches(len(pairs), config.batch_size, rank, world, config.seed, start, config.steps)
    loader = DataLoader(
        _ImageDataset(pairs, matcher.transform, sam_transform),
        batch_sampler=batches,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
    )

    writer = _Writer(config.out, launch.main)
    metrics = writer.write("metrics.jsonl", lambda path: _start_metrics(path, start))
    checkpoints: list[Path] = []
    samples: dict[int, list[int]] = {}
    last = None
    with _progress(progress and launch.main) as bar:
        task = bar.add_task(f"train {config.what}", total=config.steps, completed=start, status="")
        started = time.perf_counter()
        for step, batch in zip(range(start, config.steps), loader, strict=True):
            indices = batch["index"].tolist()
            samples[step] = indices
            torch.manual_seed(derive_seed(config.seed, _DROPOUT, step, rank))
            generator = torch.Generator().manual_seed(derive_seed(config.seed, _NEGATIVES, step, rank))
            lr = learning_rate(config, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            input_ids, itm_ids, mask = _text_inputs(matcher.tokenizer, [pairs.texts[i] for i in indices], device)
            image_keys = [pairs.image_keys[i] for i in indices]
            text_keys = [pairs.text_keys[i] for i in indices]
            pixels = batch["pixels"].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                sam = None if sam_embeddings is None else sam_embeddings(batch["sam_pixels"].to(device), image_keys)
                losses = step_module(
                    pixels,
                    input_ids,
                    itm_ids,
                    mask,
                    torch.tensor(image_keys, device=device),
                    torch.tensor(text_keys, device=device),
                    generator,
                    sam,
                )
            used = _step_parameters(objective)
            _update(losses.total, objective, optimizer, scaler, config.grad_clip)

            values = torch.stack([losses.total, losses.itc, losses.itm]).detach().float()
            if _distributed():
                dist.all_reduce(values)
                values /= world
            loss, itc, itm = values.tolist()
            seconds = time.perf_counter() - started
            last = {"step": step, "loss": loss, "itc": itc, "itm": itm, "lr": lr} | used | {"seconds": seconds}
            writer.write("metrics.jsonl", lambda path, record=last: _append_line(path, record))

            done = step + 1
            if done == config.steps or (config.checkpoint_every and done % config.checkpoint_every == 0):
                checkpoints.append(
                    writer.write(
                        f"checkpoint-{done}.pt",
                        lambda path, done=done: _save_checkpoint(
                            path, objective, optimizer, scaler, done, config, world
                        ),
                    )
                )
            bar.update(task, completed=done, status=f"loss {loss:.4f}  itc {itc:.4f}  itm {itm:.4f}")
            started = time.perf_counter()

    weights, preset = _write_model(writer, config, models)
    if config.record:
        record = {"rank": rank, "world_size": world, "samples": samples, "wrote": writer.written}
        config.out.mkdir(parents=True, exist_ok=True)
        (config.out / f"rank-{rank}.json").write_text(json.dumps(record, indent=1) + "\n")
    if _distributed():
        dist.barrier()  # every rank returns only once rank 0's files exist
    return TrainResult(objective.model, config.out, config.steps, weights, preset, metrics, checkpoints, last)


def _text_inputs(tokenizer: BlipTokenizer, texts: list[str], device: torch.device) -> list[torch.Tensor]:
    """Ids, ITM ids (`[ENC]` first) and mask of a batch's captions, padded to the longest caption of all ranks."""
    encoding = tokenizer(texts).to(device)
    return _pad_to_global_length(
        [encoding.input_ids, tokenizer.for_itm(encoding.input_ids), encoding.attention_mask],
        [tokenizer.pad_token_id, tokenizer.pad_token_id, 0],
    )


def _update(
    loss: torch.Tensor,
    objective: MatchingObjective,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    grad_clip: float,
) -> None:
    """Backward (DDP averages the gradients on the way), clip the global norm, step; fp16 goes through the scaler."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(_trainable(objective).values(), grad_clip)
    scaler.step(optimizer)
    scaler.update()


def _step_parameters(objective: MatchingObjective) -> dict[str, float]:
    """The temperature (and a fusion's gate) a step's loss was computed with, read before the update."""
    values = {"temp": objective.temperature.item()}
    if isinstance(objective.model, BlipFusionITM):
        values["gate"] = objective.model.fusion.gate.item()
    return values


def _write_model(writer: _Writer, config: TrainConfig, models: _Models) -> tuple[Path, Path | None]:
    """The trained weights: a BLIP ITM in our layout with its preset, or the fusion's parameters."""
    model = models.objective.model
    if isinstance(model, BlipFusionITM):
        assert models.sam_preset is not None
        names = (models.blip_preset.name, models.sam_preset.name)
        return writer.write("fusion.safetensors", lambda path: save_fusion(path, model, *names)), None
    tensors = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    weights = writer.write("model.safetensors", lambda path: save_file(tensors, str(path)))

    def copy_vocab(path: Path) -> None:
        if not (path.exists() and path.samefile(models.vocab)):
            shutil.copyfile(models.vocab, path)

    writer.write("vocab.txt", copy_vocab)
    preset = to_toml(_itm_preset(config, models.matcher))
    return weights, writer.write(f"{run_name(config.out)}.toml", lambda path: path.write_text(preset))


def run_name(out: Path) -> str:
    """A run's name, which its preset carries (a preset's name is its file's stem): the output folder's name."""
    return out.resolve().name or "run"


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m fusioncam.train CONFIG.json`: one run from a JSON file of `TrainConfig` fields.

    This is the entry point for `torchrun ... -m fusioncam.train CONFIG.json`; `fusioncam train` calls the same
    `train()`.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        raise SystemExit("usage: python -m fusioncam.train CONFIG.json  (a JSON object of TrainConfig fields)")
    config = TrainConfig.from_dict(json.loads(Path(args[0]).read_text()))
    result = train(config)
    if result.last is not None and int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"out": str(result.out), "weights": str(result.weights)} | result.last))


if __name__ == "__main__":
    main()
