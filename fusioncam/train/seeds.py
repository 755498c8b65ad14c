"""The random streams of a training run, all derived from its one seed.

What makes a run repeatable (and `resume` exact): the data order of epoch e comes from (seed, ORDER, e); step s of
rank r reseeds dropout and draws its negatives from (seed, DROPOUT, s, r) and (seed, NEGATIVES, s, r); a model
trained from scratch (or a new fusion) is initialised from (seed, INIT). The learning rate is a function of the step
and nothing else is random, so a checkpoint only needs the trainable tensors, the optimizer state and the step.
"""

from __future__ import annotations

import numpy as np

# Independent streams; the numbers are part of every seed, so changing one changes every run.
INIT, ORDER, DROPOUT, NEGATIVES = range(4)


def derive_seed(*parts: int) -> int:
    """A 64-bit seed mixed from non-negative integers, e.g. (seed, stream, step, rank).

    SeedSequence hashes its entropy, so nearby tuples give unrelated streams (seed 1 step 0 ≠ seed 0 step 1).
    """
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0])
