"""What a training run is asked to do (`TrainConfig`) and what it did (`TrainResult`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from fusioncam.models.blip import BlipITM
from fusioncam.models.fusion import BlipFusionITM
from fusioncam.train.data import is_karpathy_split

WHAT = ("itm", "fusion")
AMP_MODES = ("auto", "bf16", "fp16", "off")
# Fields that only say where and how fast a run goes; everything else shapes its numbers and must not change
# when it is resumed.
LAUNCH_FIELDS = frozenset({"out", "resume", "device", "num_workers", "checkpoint_every", "cache_sam", "record"})


@dataclass
class TrainConfig:
    """One training run. Paths may be given as strings; relative ones are relative to the working directory.

    `data` is a pairs JSONL (`{"image": path, "text": caption}` per line, image paths relative to the file) such as
    `fusioncam synth` writes, or a Karpathy train split (`coco_karpathy_train.json`, `flickr30k_train.json`: any
    `.json`) whose image paths are relative to `images` (COCO: the folder holding train2014/); `images` is given
    with a Karpathy split and only then. `model` is the BLIP ITM preset (name or .toml) to fine-tune, to train
    from scratch (`from_scratch`, itm only; see `fusioncam.train.models`), or to freeze under a fusion. `sam` is the
    EfficientSAM preset of a fusion, and `fusion` its `FusionConfig` values (the SAM channel count is taken from
    `sam`).
    `batch_size` is per rank; `checkpoint_every` 0 writes a checkpoint only at the end; `grad_clip` 0 turns
    clipping off; `amp` "auto" is bf16 (fp16 where bf16 is unsupported) on CUDA and off elsewhere. `resume` is a
    checkpoint file, or a folder whose latest checkpoint is taken. `cache_sam` keeps every image's SAM embedding
    in CPU memory for the run (256 channels × 64 × 64 float32 = 4 MiB per image at SAM's 1024² input). `record`
    makes every rank write `rank-<r>.json`: the sample indices it trained on per step and the files it wrote (to
    check the data split).
    """

    what: str
    data: Path
    out: Path
    images: Path | None = None
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
        self.images = Path(self.images) if self.images is not None else None
        self.resume = Path(self.resume) if self.resume is not None else None
        problems = []
        karpathy = is_karpathy_split(self.data)
        if karpathy and self.images is None:
            problems.append(f"data {self.data} is a Karpathy train split: give images, the folder its paths start from")
        if not karpathy and self.images is not None:
            problems.append("images is for a Karpathy train split (.json); a pairs JSONL's paths start from its folder")
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
