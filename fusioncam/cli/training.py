"""`fusioncam synth` and `fusioncam train`: synthetic scenes, and training on them (or on your own pairs, or COCO)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from fusioncam.cli import options
from fusioncam.cli.common import check_device, fail, progress, stderr, usage_error
from fusioncam.cli.loaders import sam_preset_name

if TYPE_CHECKING:
    from fusioncam.train import StepCallback


def synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the dataset into.")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of scenes.")] = 1000,
    seed: Annotated[int, typer.Option(help="Same seed, same bytes.")] = 0,
    image_size: Annotated[int, typer.Option(min=48, help="Side of the square images in pixels.")] = 128,
    max_objects: Annotated[int, typer.Option(min=1, max=6, help="Objects per scene, at most.")] = 4,
    split: Annotated[str | None, typer.Option(help="Write into OUT/SPLIT; each split draws other scenes.")] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite/--no-overwrite", help="Replace a dataset already in OUT.")
    ] = False,
) -> None:
    """Synthetic scenes with captions, referring expressions (boxes, masks), VQA questions and a vocab.txt.

    Writes images/, masks/, scenes.jsonl, pairs.jsonl (for `heatmap --pairs`), referring.jsonl (for
    `eval pointing`), vqa.jsonl (for `vqa --pairs`) and vocab.txt. Prints a JSON summary.
    """
    from fusioncam import synth as synth_lib

    try:
        with stderr.status(f"rendering {n} scenes …"):
            summary = synth_lib.generate(
                out, n, seed, image_size=image_size, max_objects=max_objects, split=split, overwrite=overwrite
            )
    except FileExistsError as error:
        raise usage_error(f"{error} (use --overwrite)") from None
    except ValueError as error:
        raise usage_error(str(error)) from None
    print(json.dumps(summary.to_dict(), default=str))


def train(
    what: Annotated[
        Literal["itm", "fusion"],
        typer.Option(
            help="itm: BLIP ITM itself (fine-tune, or --from-scratch); fusion: the BLIP+EfficientSAM fusion.",
        ),
    ],
    data: Annotated[
        Path,
        typer.Option(
            help='Pairs JSONL {"image", "text"} (synth writes pairs.jsonl), or a Karpathy train split .json '
            "(coco_karpathy_train.json, flickr30k_train.json; needs --images).",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for weights, preset, metrics, checkpoints.")],
    images: Annotated[
        Path | None,
        typer.Option(
            help="Karpathy --data only: the folder its image paths start from (COCO: the one holding train2014/)."
        ),
    ] = None,
    model: options.Model = "blip-itm-base",
    sam_model: Annotated[
        str | None, typer.Option("--sam-model", help="EfficientSAM of a fusion: vitt, vits, or a preset name/file.")
    ] = None,
    from_scratch: Annotated[
        bool,
        typer.Option("--from-scratch/--no-from-scratch", help="itm: random init of a preset that has no weights yet."),
    ] = False,
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps.")] = 1000,
    batch_size: Annotated[int, typer.Option(min=1, help="Pairs per step and process.")] = 16,
    lr: Annotated[float, typer.Option(min=0.0, help="Peak learning rate (AdamW).")] = 1e-4,
    weight_decay: Annotated[float, typer.Option(min=0.0, help="AdamW weight decay.")] = 0.05,
    warmup_steps: Annotated[int, typer.Option(min=0, help="Linear warm-up, then cosine to 0.")] = 100,
    grad_clip: Annotated[float, typer.Option(min=0.0, help="Max gradient norm (0 = off).")] = 1.0,
    seed: Annotated[int, typer.Option(help="Same seed, same run.")] = 0,
    checkpoint_every: Annotated[int, typer.Option(min=0, help="Steps between checkpoints (0 = at the end).")] = 0,
    amp: Annotated[
        Literal["auto", "bf16", "fp16", "off"],
        typer.Option(
            help="Mixed precision, CUDA only: auto is bf16 (fp16 where bf16 is unsupported) on CUDA, off elsewhere.",
        ),
    ] = "auto",
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue from a checkpoint file, or from the latest checkpoint in a folder (e.g. the earlier --out)."
        ),
    ] = None,
    device: options.Device = "auto",
    cache_sam: Annotated[
        bool, typer.Option("--cache-sam/--no-cache-sam", help="fusion: keep SAM embeddings in memory.")
    ] = False,
    quiet: options.Quiet = False,
) -> None:
    """Train BLIP ITM (ITC + ITM with hard negatives, as BLIP does) or the BLIP+EfficientSAM fusion.

    Runs unchanged under torchrun (DDP; gloo on CPU, NCCL on GPU); rank 0 writes.

    Examples:

      fusioncam synth --out scenes --n 3000 --image-size 64

      fusioncam train --what itm --data scenes/pairs.jsonl --model tiny.toml --from-scratch --out runs/itm

      fusioncam train --what fusion --data scenes/pairs.jsonl --model runs/itm/itm.toml \\
        --sam-model vitt --out runs/fusion

      fusioncam train --what itm --data coco_karpathy_train.json --images coco/images --out runs/coco

      torchrun --nproc-per-node 2 $(which fusioncam) train --what itm ...
    """
    from fusioncam import train as train_lib
    from fusioncam import weights as weights_lib
    from fusioncam.datasets import DatasetError
    from fusioncam.train.data import is_karpathy_split

    if what == "fusion" and not sam_model:
        raise usage_error("--what fusion needs --sam-model (vitt, vits, or a preset)")
    if what == "itm" and sam_model:
        raise usage_error("--sam-model belongs to --what fusion; --what itm trains BLIP alone")
    if what == "fusion" and from_scratch:
        raise usage_error("--from-scratch is for --what itm: a fusion is trained on a BLIP that has weights")
    if not data.is_file():
        raise usage_error(f"--data file not found: {data}")
    karpathy = is_karpathy_split(data)
    if karpathy and images is None:
        raise usage_error(
            f"--data {data} is a Karpathy train split: give --images, the folder its image paths start from"
        )
    if not karpathy and images is not None:
        raise usage_error(
            "--images is for a Karpathy train split (.json); a pairs JSONL's image paths start from its folder"
        )
    if images is not None and not images.is_dir():
        raise usage_error(f"--images folder not found: {images}")
    check_device(device)
    try:
        config = train_lib.TrainConfig(
            what=what,
            data=data,
            images=images,
            out=out,
            model=model,
            sam=sam_preset_name(sam_model) if sam_model else None,
            from_scratch=from_scratch,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            warmup_steps=warmup_steps,
            grad_clip=grad_clip,
            seed=seed,
            checkpoint_every=checkpoint_every,
            amp=amp,
            device=device,
            resume=resume,
            cache_sam=cache_sam,
        )
    except ValueError as error:
        raise usage_error(str(error)) from None
    try:
        with training_progress(what, steps, quiet) as on_step:
            result = train_lib.train(config, progress=on_step)
    except (weights_lib.PresetError, DatasetError) as error:
        raise usage_error(str(error)) from None
    except (weights_lib.WeightsError, ValueError, OSError) as error:
        raise fail(error) from None
    if result.last is not None:
        print(json.dumps({"out": str(result.out), "weights": str(result.weights)} | result.last))


@contextmanager
def training_progress(what: str, steps: int, quiet: bool = False) -> Iterator[StepCallback]:
    """A bar over a run's steps, and the callback for `train(progress=...)` that moves it.

    Under torchrun every rank runs this command, and only rank 0 draws (the others would show a bar that never
    moves). The bar counts steps done, so a resumed run's first report moves it past the checkpoint's steps at once.
    """
    with progress(f"train {what}", steps, quiet or int(os.environ.get("RANK", "0")) != 0) as bar:
        shown = 0

        def on_step(record: dict[str, float]) -> None:
            nonlocal shown
            done = int(record["step"]) + 1
            bar.advance(done - shown)
            shown = done

        yield on_step
