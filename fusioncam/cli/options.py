"""Options shared by several commands, declared once so that their names, defaults and help agree everywhere."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from fusioncam import choices

Model = Annotated[
    str, typer.Option("--model", "-m", help="Preset name from `fusioncam weights list`, or a preset .toml file.")
]
Device = Annotated[
    str, typer.Option(help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:1, mps; checked before loading.")
]
Precision = Annotated[
    choices.PrecisionChoice,
    typer.Option(
        help="Arithmetic of the models. fp32: the reference numbers; bf16 or fp16: autocast (bf16 about twice as "
        "fast on GPUs and on CPUs with bf16 instructions, heatmaps within 1% of fp32); int8: quantised linear "
        "layers, CPU only; auto: bf16 where the device has it, else fp32.",
    ),
]
Jsonl = Annotated[
    bool, typer.Option("--jsonl/--no-jsonl", help="One JSON record per result on stdout and nothing else there.")
]
Quiet = Annotated[bool, typer.Option("--quiet/--no-quiet", "-q", help="No progress bar or progress lines.")]
Block = Annotated[int, typer.Option(min=0, help="Text-encoder block whose cross-attention is explained.")]
Encoder = Annotated[
    choices.Encoder,
    typer.Option(
        help="blip: plain BLIP Grad-CAM; esam: refined by an EfficientSAM mask; fused: BLIP+EfficientSAM fusion "
        "(needs --fusion).",
    ),
]
Fusion = Annotated[Path | None, typer.Option(help="Fusion weights from `fusioncam train --what fusion`.")]
SamModel = Annotated[
    str, typer.Option("--sam-model", help="EfficientSAM: vitt, vits, or a preset name or preset .toml file.")
]
Points = Annotated[int, typer.Option("--points", min=1, max=6, help="Point prompts taken from the heatmap.")]
SamLabels = Annotated[
    choices.LabelMode,
    typer.Option(
        "--sam-labels",
        help="fork: peak scores as SAM labels, as blip_esam_itm does (only the top point is foreground); "
        "foreground: every point labelled foreground.",
    ),
]
SamMask = Annotated[
    choices.MaskChoice,
    typer.Option(
        "--sam-mask",
        help="first: SAM's first mask, as the fork; best-iou: the mask with the best predicted IoU.",
    ),
]
SamBlend = Annotated[
    choices.MaskBlend,
    typer.Option(
        "--sam-blend",
        help="fork: SAM's logits blended into the heatmap, as the fork does; probability: the mask's probabilities "
        "(what a sharpened map wants: nothing outside the mask).",
    ),
]
Out = Annotated[
    Path, typer.Option("--out", "-o", help="Folder for the files written per input (created if its parent exists).")
]
BatchSize = Annotated[int, typer.Option(min=1, help="Pairs per forward pass.")]
Pairs = Annotated[
    Path | None,
    typer.Option(
        help="JSONL file of records with an image path (relative to the file) and the text; instead of IMAGE."
    ),
]
QuestionPairs = Annotated[
    Path | None,
    typer.Option(
        "--pairs",
        help='JSONL file of {"image", "question"} records (image paths relative to the file); instead of IMAGE.',
    ),
]
Recursive = Annotated[
    bool, typer.Option("--recursive/--no-recursive", "-r", help="Include the subfolders of a folder.")
]
ImageArgument = Annotated[
    str | None,
    typer.Argument(
        help="Image file, folder of images, http(s) URL, or '-': with a TEXT, one image's bytes on stdin "
        "(cat x.jpg | fusioncam score - 'a dog'); without, JSONL records on stdin.",
        show_default=False,
    ),
]
Alpha = Annotated[float, typer.Option(min=0.0, max=1.0, help="Heatmap opacity in the overlay.")]
Colormap = Annotated[choices.Colormap, typer.Option(help="Colour map of the heatmaps.")]
Limit = Annotated[int | None, typer.Option(min=1, help="Only the first N records.")]
Resume = Annotated[
    bool,
    typer.Option(
        "--resume/--no-resume",
        help="Skip pairs whose outputs an earlier run with the same options already wrote under --out; redo the rest.",
    ),
]
Shard = Annotated[
    str | None,
    typer.Option(
        metavar="K/N",
        help="Process only share K of N (0-based) of the inputs, all texts of an image in the same share: for job "
        "arrays. Under torchrun the rank's share is taken by default.",
    ),
]
Workers = Annotated[
    int,
    typer.Option(
        min=0,
        help="Threads reading and decoding images ahead of the model (up to two batches ahead; 0: in turn with it).",
    ),
]


def _max_image_pixels(value: int | None) -> int | None:
    """`--max-image-pixels` is the library's `$FUSIONCAM_MAX_IMAGE_PIXELS` for this run."""
    if value is not None:
        os.environ["FUSIONCAM_MAX_IMAGE_PIXELS"] = str(value)
    return value


MaxImagePixels = Annotated[
    int | None,
    typer.Option(
        min=1,
        callback=_max_image_pixels,
        help="Refuse images whose header announces more pixels than this (default 268435456 = 16384²): a small "
        "file can claim a huge image, a decompression bomb.",
        show_default=False,
    ),
]
