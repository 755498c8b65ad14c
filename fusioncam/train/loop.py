"""The training loop: one run from its config to its files, or the rest of one from a checkpoint.

A step: rank r takes its slice of the step's global batch (`StepBatches`), reseeds dropout and its negatives'
generator from (seed, step, r), sets the step's learning rate, computes ITC + ITM (`MatchingObjective`), updates
(DDP averages the gradients of the trainable parameters), and rank 0 appends the step's metrics, averaged over
ranks, and writes the checkpoints that fall due.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from fusioncam.models.fusion import BlipFusionITM
from fusioncam.train.checkpoint import checkpoint_path, restore, save_checkpoint
from fusioncam.train.config import TrainConfig, TrainResult
from fusioncam.train.data import ImageDataset, PairSet, StepBatches, sam_transform, text_inputs
from fusioncam.train.distributed import Launch, barrier, is_distributed, launch, mean_over_ranks
from fusioncam.train.models import SamEmbeddings, build_models
from fusioncam.train.objectives import KnownPairs, MatchingObjective
from fusioncam.train.optim import (
    autocast_dtype,
    build_optimizer,
    learning_rate,
    optimizer_step,
    set_learning_rate,
)
from fusioncam.train.outputs import Writer, append_line, start_metrics, write_model
from fusioncam.train.seeds import DROPOUT, NEGATIVES, derive_seed

# Called on rank 0 after every step with that step's metrics record (as metrics.jsonl has it): how a caller shows
# progress, since the library draws nothing itself.
StepCallback = Callable[[dict[str, float]], None]


def train(config: TrainConfig, progress: StepCallback | None = None) -> TrainResult:
    """Run (or resume) one training run; see `fusioncam.train` for what it optimises and writes.

    `progress` hears about every step on rank 0 (a resumed run's first report is the step after its checkpoint).
    """
    here = launch(config.device)
    try:
        return _train(config, here, progress)
    finally:
        here.close()


def _train(config: TrainConfig, here: Launch, progress: StepCallback | None) -> TrainResult:
    device, rank, world = here.device, here.rank, here.world
    if config.batch_size * world < 2:
        raise ValueError("ITC and ITM need at least 2 pairs per global batch (batch_size × processes)")
    resume = checkpoint_path(config.resume) if config.resume is not None else None
    if resume is None and any(config.out.glob("checkpoint-*.pt")):
        raise FileExistsError(
            f"{config.out} holds checkpoints of another run: resume it (resume={config.out}) or choose another out"
        )
    pairs = PairSet.read(config.data, config.images)
    known = KnownPairs(pairs.image_keys, pairs.text_keys)
    models = build_models(config, device)
    objective, matcher = models.objective, models.matcher
    optimizer = build_optimizer(objective, config)
    dtype = autocast_dtype(config.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    start = restore(resume, objective, optimizer, scaler, config, world) if resume is not None else 0
    # DDP averages the gradients of every trainable parameter across ranks (frozen ones it leaves alone).
    step_module: nn.Module = objective
    if is_distributed():
        step_module = DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)

    sam_embeddings = None if models.sam is None else SamEmbeddings(models.sam, config.cache_sam)
    sam_pixels = None if models.sam is None else sam_transform(models.sam.config.encoder.image_size)
    batches = StepBatches(len(pairs), config.batch_size, rank, world, config.seed, start, config.steps)
    loader = DataLoader(
        ImageDataset(pairs, matcher.transform, sam_pixels),
        batch_sampler=batches,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
    )

    writer = Writer(config.out, here.main)
    metrics = writer.write("metrics.jsonl", lambda path: start_metrics(path, start))
    checkpoints: list[Path] = []
    samples: dict[int, list[int]] = {}
    last = None
    started = time.perf_counter()
    for step, batch in zip(range(start, config.steps), loader, strict=True):
        indices = batch["index"].tolist()
        samples[step] = indices
        torch.manual_seed(derive_seed(config.seed, DROPOUT, step, rank))
        generator = torch.Generator().manual_seed(derive_seed(config.seed, NEGATIVES, step, rank))
        lr = learning_rate(config, step)
        set_learning_rate(optimizer, lr)
        input_ids, itm_ids, mask = text_inputs(matcher.tokenizer, [pairs.texts[i] for i in indices], device)
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
                known,
                generator,
                sam,
            )
        used = _step_parameters(objective)
        optimizer_step(losses.total, objective, optimizer, scaler, config.grad_clip)

        values = mean_over_ranks(torch.stack([losses.total, losses.itc, losses.itm]).detach().float())
        loss, itc, itm = values.tolist()
        seconds = time.perf_counter() - started
        last = {"step": step, "loss": loss, "itc": itc, "itm": itm, "lr": lr} | used | {"seconds": seconds}
        writer.write("metrics.jsonl", partial(append_line, record=last))

        done = step + 1
        if done == config.steps or (config.checkpoint_every and done % config.checkpoint_every == 0):
            checkpoints.append(
                writer.write(
                    f"checkpoint-{done}.pt",
                    partial(
                        save_checkpoint,
                        objective=objective,
                        optimizer=optimizer,
                        scaler=scaler,
                        step=done,
                        config=config,
                        world=world,
                    ),
                )
            )
        if progress and here.main:
            progress(last)
        started = time.perf_counter()

    weights, preset = write_model(writer, config, models)
    if config.record:
        record = {"rank": rank, "world_size": world, "samples": samples, "wrote": writer.written}
        config.out.mkdir(parents=True, exist_ok=True)
        (config.out / f"rank-{rank}.json").write_text(json.dumps(record, indent=1) + "\n")
    barrier()  # every rank returns only once rank 0's files exist
    return TrainResult(objective.model, config.out, config.steps, weights, preset, metrics, checkpoints, last)


def _step_parameters(objective: MatchingObjective) -> dict[str, float]:
    """The temperature (and a fusion's gate) a step's loss was computed with, read before the update."""
    values = {"temp": objective.temperature.item()}
    if isinstance(objective.model, BlipFusionITM):
        values["gate"] = objective.model.fusion.gate.item()
    return values
