"""The files a run writes into `out/`:

    metrics.jsonl          one record per step (0-based): loss, itc, itm (averaged over ranks), and the lr, temp
                           (and a fusion's gate) that step used, seconds (its wall time, data loading included)
    checkpoint-<k>.pt      state after k steps (every `checkpoint_every` steps and at the end); `resume` takes it
    model.safetensors      (itm) the trained BlipITM in fusioncam's own layout, with
    <run>.toml             (itm) a preset for it, named after the run (`out`'s folder name: runs/itm → itm.toml,
                           preset "itm"): `fusioncam heatmap --model runs/itm/itm.toml` works at once
    vocab.txt              (itm) a copy of the vocabulary it was trained with, so `out/` is self-contained
    fusion.safetensors     (fusion) the fusion's parameters, for `fusioncam.fusion_checkpoint.load_fusion`

Other ranks write none of them (`Writer`); with `record`, every rank writes its own `rank-<r>.json`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from fusioncam.api import BlipMatcher
from fusioncam.fusion_checkpoint import save_fusion
from fusioncam.models.fusion import BlipFusionITM
from fusioncam.train.config import TrainConfig
from fusioncam.train.models import RunModels
from fusioncam.weights import write_preset


class Writer:
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


def start_metrics(path: Path, keep_before: int) -> None:
    """Start metrics.jsonl afresh, or keep the records of the steps a resumed run does not repeat."""
    kept = []
    if keep_before and path.is_file():
        kept = [line for line in path.read_text().splitlines(True) if json.loads(line)["step"] < keep_before]
    path.write_text("".join(kept))


def append_line(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as stream:
        stream.write(json.dumps(record) + "\n")


def write_model(writer: Writer, config: TrainConfig, models: RunModels) -> tuple[Path, Path | None]:
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
    preset = _itm_preset(config, models.matcher)
    return weights, writer.write(f"{run_name(config.out)}.toml", lambda path: write_preset(path, preset))


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


def run_name(out: Path) -> str:
    """A run's name, which its preset carries (a preset's name is its file's stem): the output folder's name."""
    return out.resolve().name or "run"
