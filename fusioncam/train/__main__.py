"""`python -m fusioncam.train CONFIG.json`: one run from a JSON file of `TrainConfig` fields.

This is the entry point for `torchrun ... -m fusioncam.train CONFIG.json` (a launcher passes no options, so the
run's settings travel as a file); `fusioncam train` calls the same `train()`. Being a command line, it shows
progress the way `fusioncam train` does.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from fusioncam.cli.training import training_progress
from fusioncam.train import TrainConfig, train


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        raise SystemExit("usage: python -m fusioncam.train CONFIG.json  (a JSON object of TrainConfig fields)")
    config = TrainConfig.from_dict(json.loads(Path(args[0]).read_text()))
    with training_progress(config.what, config.steps) as on_step:
        result = train(config, on_step)
    if result.last is not None and int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"out": str(result.out), "weights": str(result.weights)} | result.last))


if __name__ == "__main__":
    main()
