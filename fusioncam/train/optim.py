"""How a step updates the weights: the learning-rate schedule, AdamW, mixed precision and the update itself."""

from __future__ import annotations

import math

import torch

from fusioncam.train.config import TrainConfig
from fusioncam.train.objectives import MatchingObjective


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up over `warmup_steps`, then a cosine from `lr` down to 0 at `steps`.

    A function of the step alone, so a resumed run needs no scheduler state.
    """
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def build_optimizer(objective: MatchingObjective, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; biases, norms, the gate and the temperature (tensors of < 2 dims) are not decayed, as in LAVIS."""
    trainable = [param for param in objective.parameters() if param.requires_grad]
    groups = [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr)


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The dtype `amp` asks for on `device` (None: full precision); fp16 also needs a `GradScaler`."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if device.type != "cuda":
        raise ValueError(f"amp={amp!r} runs only on CUDA; on {device.type} use amp='off' (or 'auto')")
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def optimizer_step(
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
        torch.nn.utils.clip_grad_norm_(objective.trainable().values(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
