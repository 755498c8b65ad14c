"""`fusioncam train`: teach BLIP's matching heads (`what="itm"`) or the SAM fusion on a frozen BLIP (`what="fusion"`).

The objective is BLIP's own for image–text matching (ITC + ITM with hard negatives drawn from the global batch),
without the momentum encoders and queues of its pre-training. A run is repeatable and `resume` is exact; under
`torchrun` (RANK / WORLD_SIZE / LOCAL_RANK set) every process trains on its own slice of each global batch
(`batch_size` is per rank), DDP averages the gradients, and only rank 0 writes files. One module per concern:

    config        TrainConfig (what a run is asked to do), TrainResult (what it did)
    loop          `train`: the steps, from the config (or a checkpoint) to the files
    data          the pairs, their images, which pairs a rank takes at a step, their tokens
    objectives    ITC + hard-negative ITM (`MatchingObjective`), and why a shared caption is never a negative
    optim         learning-rate schedule, AdamW, mixed precision, the update
    models        the BLIP to train (fine-tune or `from_scratch`), a fusion's frozen EfficientSAM
    distributed   joining torchrun's process group, ranks, gathers that keep their gradients
    seeds         the random streams derived from the seed, which make resuming exact
    checkpoint    checkpoint-<k>.pt: saving, and resuming only the very same run
    outputs       what `out/` holds: metrics.jsonl, the weights, an itm run's preset and vocabulary

`python -m fusioncam.train CONFIG.json` (a JSON object of `TrainConfig` fields) runs one, under torchrun too.
"""

from __future__ import annotations

from fusioncam.train.config import TrainConfig, TrainResult
from fusioncam.train.loop import StepCallback, train
from fusioncam.train.outputs import run_name
from fusioncam.train.seeds import derive_seed

__all__ = ["StepCallback", "TrainConfig", "TrainResult", "derive_seed", "run_name", "train"]
