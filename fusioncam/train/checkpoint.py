"""Training checkpoints: the state after k steps (`checkpoint-<k>.pt`), and resuming a run from one exactly.

Everything random in a run is derived from (seed, step) (see `fusioncam.train.seeds`), so the trainable tensors,
the optimizer and scaler states and the step are all a checkpoint needs for a resumed run to end with the weights
of an uninterrupted one.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from fusioncam.train.config import LAUNCH_FIELDS, TrainConfig
from fusioncam.train.objectives import MatchingObjective

# The `format` entry of a training checkpoint; the number changes when the file's meaning does.
CHECKPOINT_FORMAT = "fusioncam.train/1"


def save_checkpoint(
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
        "trainable": {name: param.detach().cpu() for name, param in objective.trainable().items()},
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
    }
    partial = path.with_name(path.name + ".part")
    torch.save(payload, partial)
    os.replace(partial, path)


def checkpoint_path(resume: Path) -> Path:
    """A checkpoint file as given, or the latest `checkpoint-<k>.pt` of a folder."""
    if not resume.is_dir():
        return resume
    found = sorted(resume.glob("checkpoint-*.pt"), key=lambda path: int(path.stem.split("-")[-1]))
    if not found:
        raise FileNotFoundError(f"no checkpoint-<step>.pt in {resume} to resume from")
    return found[-1]


def restore(
    path: Path,
    objective: MatchingObjective,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    config: TrainConfig,
    world: int,
) -> int:
    """Restore a checkpoint of this very run (same settings, same number of processes); returns its step.

    Only the launch fields (where and how fast a run goes) may differ: any other change would make the resumed run
    a different one, so it is refused with the list of what changed.
    """
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a fusioncam training checkpoint")
    saved, current = payload["config"], config.to_dict()
    changed = [
        f"{key}: {saved.get(key)!r} → {current[key]!r}"
        for key in current
        if key not in LAUNCH_FIELDS and saved.get(key) != current[key]
    ]
    if payload["world_size"] != world:
        changed.append(f"processes: {payload['world_size']} → {world}")
    if changed:
        raise ValueError(
            f"{path} belongs to a run with other settings, which resuming would not continue: " + "; ".join(changed)
        )
    trainable = objective.trainable()
    state = payload["trainable"]
    if state.keys() != trainable.keys():
        raise ValueError(f"{path}: its trainable tensors do not match this model's")
    with torch.no_grad():
        for name, param in trainable.items():
            param.copy_(state[name])
    optimizer.load_state_dict(payload["optimizer"])
    scaler.load_state_dict(payload["scaler"])
    return int(payload["step"])
