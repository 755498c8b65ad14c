"""`fusioncam` command line: parse, call the library, print. Data goes to stdout, everything human to stderr.

Exit codes: 0 everything done; 1 some inputs failed (each named with its reason, the rest done); 2 usage error.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from fusioncam import synth as synth_lib
from fusioncam import train as train_lib
from fusioncam import weights as weights_lib
from fusioncam.api import BlipMatcher, SamRefiner, load, load_captioner, load_qa, load_sam
from fusioncam.batch import (
    Failure,
    Pair,
    batched,
    pairs_from_jsonl,
    pairs_from_path,
    read_jsonl,
    write_heatmap,
    write_segment,
    write_vqa,
)
from fusioncam.evaluate import evaluate_pointing, itm_accuracy, read_referring
from fusioncam.explain.refine import LABEL_MODES, MASK_BLENDS, MASK_CHOICES
from fusioncam.explain.render import COLORMAPS
from fusioncam.images import ImageDecodeError, load_image
from fusioncam.text import clean_caption
from fusioncam.vqa import PNPVQA, VQAConfig

ENCODERS = ("blip", "esam", "fused")

app = typer.Typer(
    help="Where does a vision-language model look? BLIP image-text matching scores and Grad-CAM heatmaps.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
weights_app = typer.Typer(help="List, download, verify and locate model weights.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")

stderr = Console(stderr=True)
stdout = Console()

ModelOption = Annotated[
    str, typer.Option("--model", "-m", help="Preset name from `fusioncam weights list`, or a preset .toml file.")
]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, mps …")]
JsonlOption = Annotated[bool, typer.Option("--jsonl", help="One JSON record per result on stdout, nothing else.")]


def usage_error(message: str) -> typer.Exit:
    stderr.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


def fail(error: Exception) -> typer.Exit:
    stderr.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


def loading(what: str, load, *args, **kwargs):
    """Load a model; problems a user can fix (unknown preset, missing weights) end the run with a clear message."""
    try:
        with stderr.status(f"loading {what} …"):
            return load(*args, **kwargs)
    except weights_lib.PresetError as error:
        raise usage_error(str(error)) from None
    except (weights_lib.WeightsError, ValueError, OSError) as error:
        raise fail(error) from None


def load_matcher(model: str, device: str, encoder: str = "blip", fusion: Path | None = None, sam: str = "vitt"):
    """The BLIP matcher of an encoder mode (fused: with its trained fusion) and, for `esam`, EfficientSAM."""
    if encoder == "fused" and fusion is None:
        raise usage_error(
            "--encoder fused needs --fusion PATH (weights from `fusioncam train --what fusion`): an untrained fusion "
            "is exactly plain BLIP, use --encoder blip for that"
        )
    if encoder != "fused" and fusion is not None:
        raise usage_error("--fusion is only used with --encoder fused")
    sam_preset = sam_preset_name(sam)
    return loading(model, load, model, device=device, fusion=fusion, sam=sam_preset)


def sam_preset_name(sam: str) -> str:
    """`vitt`/`vits` name the official presets; anything else is a preset name or file."""
    return f"efficient-sam-{sam}" if sam in ("vitt", "vits") else sam


def progress_bar(quiet: bool) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr,
        disable=quiet,
    )


def pair_inputs(
    image: str | None, texts: list[str], pairs: Path | None, recursive: bool, text_key: str = "text"
) -> tuple[Iterator[Pair | Failure], int | None]:
    """All pairs the arguments describe, and their number when known (stdin is streamed, not counted).

    Files and folders are listed up front, so that usage errors surface before a model loads; stdin is streamed,
    since a pipeline's upstream may still be writing.
    """
    if image is None and pairs is None:
        raise usage_error(f'give an IMAGE (file, folder or \'-\') or --pairs FILE of {{"image", "{text_key}"}}')
    if image == "-" and texts:
        raise usage_error(f"with IMAGE '-' the {text_key}s come from the JSONL records on stdin; drop the argument")
    if image not in (None, "-") and not Path(image).exists():
        raise usage_error(f"no such image or folder: {image}")
    if image not in (None, "-") and not texts:
        raise usage_error(f"give the {text_key.upper()} as well, e.g. fusioncam … photo.jpg 'a dog'")
    if pairs is not None and not pairs.is_file():
        raise usage_error(f"--pairs file not found: {pairs}")

    def generate() -> Iterator[Pair | Failure]:
        if pairs is not None:
            with pairs.open() as stream:
                yield from read_jsonl(stream, str(pairs), pairs.parent, text_key)
        if image == "-":
            yield from read_jsonl(sys.stdin, "stdin", Path.cwd(), text_key)
        elif image is not None:
            yield from pairs_from_path(Path(image), texts, recursive)

    if image == "-":
        return generate(), None
    listed = list(generate())
    if not listed:
        raise usage_error(f"nothing to do: no images found in {image}" if image else "no records in --pairs")
    return iter(listed), len(listed)


def decode_images(batch: list[Pair]) -> tuple[dict[Path, np.ndarray], dict[Path, str]]:
    """Each distinct image of a batch decoded once; failures as reasons."""
    images, reasons = {}, {}
    for path in dict.fromkeys(pair.image for pair in batch):
        try:
            images[path] = load_image(path)
        except ImageDecodeError as error:
            reasons[path] = str(error)
    return images, reasons


Outcome = dict | str  # the record written for a pair, or why it failed


def run_batches(
    inputs: Iterator[Pair | Failure],
    total: int | None,
    batch_size: int,
    label: str,
    jsonl: bool,
    quiet: bool,
    process: Callable[[list[Pair]], Iterator[tuple[Pair, Outcome]]],
) -> tuple[list[dict], list[Failure]]:
    """Feed batches of pairs to `process`, report each result (a JSONL line) or failure, keep going on errors."""
    records: list[dict] = []
    failures: list[Failure] = []

    def report_failure(failure: Failure) -> None:
        failures.append(failure)
        stderr.print(f"[red]failed[/red] {escape(failure.origin)}: {escape(failure.reason)}", highlight=False)
        if jsonl:
            record = {"image": failure.image, "text": failure.text, "error": failure.reason, "origin": failure.origin}
            print(json.dumps(record), flush=True)

    with progress_bar(quiet) as progress:
        task = progress.add_task(label, total=total)
        for chunk in batched(inputs, batch_size):
            outcomes = {id(pair): outcome for pair, outcome in process([i for i in chunk if isinstance(i, Pair)])}
            for item in chunk:  # reported in input order, so that JSONL output lines up with its input
                outcome = item if isinstance(item, Failure) else outcomes[id(item)]
                if isinstance(outcome, Failure):
                    report_failure(outcome)
                elif isinstance(outcome, str):
                    report_failure(Failure(item.origin, outcome, str(item.image), item.text))
                else:
                    records.append(outcome)
                    if jsonl:
                        print(json.dumps(outcome), flush=True)
            progress.advance(task, len(chunk))
    return records, failures


def safely(pair: Pair, write: Callable[..., dict], *args, **kwargs) -> tuple[Pair, Outcome]:
    """Write a pair's outputs; a file-system error fails that pair only."""
    try:
        return pair, write(*args, **kwargs)
    except OSError as error:
        return pair, f"cannot write outputs: {error}"


def print_results(records: list[dict], columns: dict[str, Callable[[dict], str]], output: str) -> None:
    """A table on stdout: image, text, the given columns, and the path of one output file per record."""
    if not records:
        return
    table = Table("image", "text", *columns)
    table.add_column(output, overflow="fold")
    for record in records:
        cells = [render(record) for render in columns.values()]
        table.add_row(Path(record["image"]).name, record["text"], *cells, record["outputs"][output])
    stdout.print(table)


def finish(records: list[dict], failures: list[Failure], what: str, out: Path) -> None:
    stderr.print(
        f"{len(records)} {what} written to {out}" + (f", [red]{len(failures)} failed[/red]" if failures else "")
    )
    if failures:
        raise typer.Exit(1)


EncoderOption = Annotated[
    str,
    typer.Option(
        help="blip: plain BLIP Grad-CAM; esam: refined by an EfficientSAM mask; fused: BLIP+EfficientSAM fusion "
        "(needs --fusion)."
    ),
]
FusionOption = Annotated[Path | None, typer.Option(help="Fusion weights from `fusioncam train --what fusion`.")]
SamOption = Annotated[str, typer.Option("--sam-model", help="EfficientSAM: vitt, vits, or a preset name/file.")]
PointsOption = Annotated[int, typer.Option("--points", min=1, max=6, help="Point prompts taken from the heatmap.")]
SamLabelsOption = Annotated[
    str,
    typer.Option(
        "--sam-labels",
        help="fork: peak scores as SAM labels, as blip_esam_itm does (only the top point is foreground); "
        "foreground: every point labelled foreground.",
    ),
]
SamMaskOption = Annotated[
    str, typer.Option("--sam-mask", help="first: SAM's first mask, as the fork; best-iou: the best predicted IoU.")
]
SamBlendOption = Annotated[
    str,
    typer.Option(
        "--sam-blend",
        help="fork: SAM's logits blended into the heatmap, as the fork does; probability: the mask's probabilities "
        "(what a sharpened map wants: nothing outside the mask).",
    ),
]
OutOption = Annotated[Path, typer.Option("--out", "-o", help="Folder for the files written per input.")]
BatchOption = Annotated[int, typer.Option(min=1, help="Pairs per forward pass.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
PairsOption = Annotated[
    Path | None, typer.Option(help="JSONL file of records with an image path (relative to the file) and the text.")
]
RecursiveOption = Annotated[bool, typer.Option("--recursive", "-r", help="Include subfolders of a folder.")]
ImageArgument = Annotated[
    str | None, typer.Argument(help="Image file, folder of images, or '-' for JSONL records on stdin.")
]


def check_choice(value: str, choices: tuple[str, ...], option: str) -> None:
    if value not in choices:
        raise usage_error(f"{option} must be one of {', '.join(choices)}, got {value!r}")


def heatmap_results(matcher: BlipMatcher, batch: list[Pair], block: int, per_word: bool):
    """(pair, image, Heatmap) or (pair, None, reason) per pair; each distinct image is encoded once."""
    images, reasons = decode_images(batch)
    runnable = []
    for pair in batch:
        if pair.image in reasons:
            yield pair, None, reasons[pair.image]
        elif not clean_caption(pair.text):
            yield pair, None, "the text is empty after cleaning: give at least one word"
        else:
            runnable.append(pair)
    if not runnable:
        return
    order = list(dict.fromkeys(pair.image for pair in runnable))
    embeds = matcher.embed_images([images[path] for path in order])
    index = [order.index(pair.image) for pair in runnable]
    results = matcher.heatmaps(embeds[index], [pair.text for pair in runnable], block=block, per_word=per_word)
    for pair, result in zip(runnable, results, strict=True):
        yield pair, images[pair.image], result


def refiner_for(
    encoder: str, sam: str, device: str, points: int, sam_labels: str, sam_mask: str, sam_blend: str = "fork"
) -> SamRefiner | None:
    check_choice(sam_labels, LABEL_MODES, "--sam-labels")
    check_choice(sam_mask, MASK_CHOICES, "--sam-mask")
    check_choice(sam_blend, MASK_BLENDS, "--sam-blend")
    if encoder != "esam":
        return None
    model = loading(sam, load_sam, sam_preset_name(sam), device=device)
    return SamRefiner(model, num_points=points, labels=sam_labels, mask_choice=sam_mask, blend=sam_blend)


def refined_results(matcher, refiner: SamRefiner, batch: list[Pair], block: int, per_word: bool):
    """Heatmap results with the SAM refinement of each (image, map)."""
    explained = list(heatmap_results(matcher, batch, block, per_word))
    ok = [(pair, image, result) for pair, image, result in explained if image is not None]
    refined = (
        refiner.refine([p.image for p, _, _ in ok], [i for _, i, _ in ok], np.stack([r.heatmap for _, _, r in ok]))
        if ok
        else []
    )
    by_pair = {id(pair): item for (pair, _, _), item in zip(ok, refined, strict=True)}
    for pair, image, result in explained:
        yield pair, image, result, by_pair.get(id(pair))


@app.command()
def heatmap(
    image: ImageArgument = None,
    text: Annotated[list[str] | None, typer.Argument(help="Text(s) to explain over the image(s).")] = None,
    pairs: PairsOption = None,
    recursive: RecursiveOption = False,
    model: ModelOption = "blip-itm-base",
    block: Annotated[int, typer.Option(help="Text-encoder block whose cross-attention is explained.")] = 6,
    encoder: EncoderOption = "blip",
    fusion: FusionOption = None,
    sam_model: SamOption = "vitt",
    points: PointsOption = 5,
    sam_labels: SamLabelsOption = "fork",
    sam_mask: SamMaskOption = "first",
    sam_blend: SamBlendOption = "fork",
    save_mask: Annotated[bool, typer.Option("--save-mask", help="With --encoder esam: the SAM mask as PNG.")] = False,
    out: OutOption = Path("fusioncam-out"),
    per_word: Annotated[
        bool, typer.Option("--per-word", help="Also a map per word, and a contact sheet of them all.")
    ] = False,
    alpha: Annotated[float, typer.Option(min=0.0, max=1.0, help="Heatmap opacity in the overlay.")] = 0.5,
    colormap: Annotated[str, typer.Option(help=f"One of: {', '.join(COLORMAPS)}.")] = "jet",
    device: DeviceOption = "auto",
    batch_size: BatchOption = 8,
    jsonl: JsonlOption = False,
    quiet: QuietOption = False,
) -> None:
    """Grad-CAM heatmap of TEXT over IMAGE: overlay PNG, raw .npy map and a JSON record per pair.

    Examples:

      fusioncam heatmap dog.jpg "a dog running"

      fusioncam heatmap photos/ "a red car" --recursive --out maps/

      fusioncam heatmap dog.jpg "the dog" --encoder esam --save-mask

      jq -c '{image, text: .caption}' captions.jsonl | fusioncam heatmap - --jsonl
    """
    check_choice(encoder, ENCODERS, "--encoder")
    if colormap not in COLORMAPS:
        raise usage_error(f"unknown colormap {colormap!r}; choose one of {', '.join(COLORMAPS)}")
    if save_mask and encoder != "esam":
        raise usage_error("--save-mask needs --encoder esam (the mask comes from EfficientSAM)")
    inputs, total = pair_inputs(image, text or [], pairs, recursive)
    matcher = load_matcher(model, device, encoder, fusion, sam_model)
    if not 0 <= block < matcher.num_blocks:
        raise usage_error(f"--block must be in 0..{matcher.num_blocks - 1} for {matcher.name}")
    refiner = refiner_for(encoder, sam_model, device, points, sam_labels, sam_mask, sam_blend)

    def process(batch: list[Pair]) -> Iterator[tuple[Pair, Outcome]]:
        if refiner is None:
            results = (
                (pair, image, result, None) for pair, image, result in heatmap_results(matcher, batch, block, per_word)
            )
        else:
            results = refined_results(matcher, refiner, batch, block, per_word)
        for pair, picture, result, refined in results:
            if picture is None:
                yield pair, result
                continue
            yield safely(
                pair,
                write_heatmap,
                out,
                pair,
                picture,
                result,
                matcher.name,
                alpha,
                colormap,
                refined=refined,
                save_mask=save_mask,
            )

    records, failures = run_batches(inputs, total, batch_size, "heatmaps", jsonl, quiet, process)
    if not jsonl:
        print_results(
            records,
            {
                "ITM": lambda r: f"{r['itm_score']:.3f}",
                "ITC": lambda r: f"{r['itc_score']:.3f}",
                "peak (x, y)": lambda r: f"{r['peak']['x']}, {r['peak']['y']}",
            },
            "overlay",
        )
    finish(records, failures, "heatmap(s)", out)


@app.command()
def segment(
    image: ImageArgument = None,
    text: Annotated[list[str] | None, typer.Argument(help="Text(s) naming the object to cut out.")] = None,
    pairs: PairsOption = None,
    recursive: RecursiveOption = False,
    model: ModelOption = "blip-itm-base",
    block: Annotated[int, typer.Option(help="Text-encoder block whose cross-attention is explained.")] = 6,
    sam_model: SamOption = "vitt",
    points: PointsOption = 5,
    sam_labels: SamLabelsOption = "fork",
    sam_mask: SamMaskOption = "first",
    out: OutOption = Path("fusioncam-out"),
    device: DeviceOption = "auto",
    batch_size: BatchOption = 8,
    jsonl: JsonlOption = False,
    quiet: QuietOption = False,
) -> None:
    """Text-prompted object mask: BLIP heatmap of TEXT → peaks → EfficientSAM mask of the object.

    Writes per pair the mask (PNG, 0/255, image resolution), the object cut out (RGBA PNG), the mask over the
    image, and a JSON record (prompt points, mask IoU estimate, area, box).

    Example: fusioncam segment dogs.jpg "the stick" --out masks/
    """
    inputs, total = pair_inputs(image, text or [], pairs, recursive)
    matcher = load_matcher(model, device)
    if not 0 <= block < matcher.num_blocks:
        raise usage_error(f"--block must be in 0..{matcher.num_blocks - 1} for {matcher.name}")
    refiner = refiner_for("esam", sam_model, device, points, sam_labels, sam_mask)

    def process(batch: list[Pair]) -> Iterator[tuple[Pair, Outcome]]:
        for pair, picture, result, refined in refined_results(matcher, refiner, batch, block, per_word=False):
            if picture is None:
                yield pair, result
            else:
                yield safely(pair, write_segment, out, pair, picture, result, refined, matcher.name)

    records, failures = run_batches(inputs, total, batch_size, "masks", jsonl, quiet, process)
    if not jsonl:
        print_results(
            records,
            {
                "ITM": lambda r: f"{r['itm_score']:.3f}",
                "mask area": lambda r: f"{r['sam']['mask_area']:.1%}",
                "SAM IoU": lambda r: f"{r['sam']['mask_iou']:.3f}",
            },
            "mask",
        )
    finish(records, failures, "mask(s)", out)


@app.command()
def vqa(
    image: ImageArgument = None,
    question: Annotated[
        str | None, typer.Argument(help="The question (for a file or every image of a folder).")
    ] = None,
    pairs: PairsOption = None,
    recursive: RecursiveOption = False,
    model: Annotated[str, typer.Option("--model", "-m", help="BLIP ITM preset whose heatmap picks patches.")] = (
        "blip-itm-large"
    ),
    caption_model: Annotated[str, typer.Option(help="BLIP caption preset.")] = "blip-caption-large",
    qa_model: Annotated[str, typer.Option(help="UnifiedQA preset (base, large, 3b).")] = "unifiedqa-v2-t5-base",
    encoder: EncoderOption = "blip",
    fusion: FusionOption = None,
    sam_model: SamOption = "vitt",
    points: PointsOption = 5,
    sam_labels: SamLabelsOption = "fork",
    sam_mask: SamMaskOption = "first",
    sam_blend: SamBlendOption = "fork",
    block: Annotated[int, typer.Option(help="ITM block of the question heatmap (PNP-VQA: 7).")] = 7,
    num_captions: Annotated[int, typer.Option(min=1, help="Distinct captions per question.")] = 100,
    num_patches: Annotated[int, typer.Option(min=1, help="Patches sampled for each caption.")] = 20,
    captions_per_passage: Annotated[int, typer.Option(min=1, help="Captions per FiD passage.")] = 1,
    caption_min_length: Annotated[int, typer.Option(min=1, help="Caption length, prompt included.")] = 10,
    caption_max_length: Annotated[int, typer.Option(min=2, help="Caption length, prompt included.")] = 20,
    top_k: Annotated[int, typer.Option(min=0, help="Caption sampling: top-k (0 = off).")] = 50,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0, help="Caption sampling: nucleus mass.")] = 1.0,
    repetition_penalty: Annotated[float, typer.Option(min=1.0, help="Caption sampling penalty.")] = 1.0,
    answer_beams: Annotated[int, typer.Option(min=1, help="Beams for the answer (1 = greedy).")] = 1,
    explain: Annotated[bool, typer.Option(help="Measure each caption's contribution and draw the answer map.")] = True,
    seed: Annotated[int, typer.Option(help="Seed of patch and caption sampling (same seed, same answer).")] = 0,
    out: OutOption = Path("fusioncam-out"),
    alpha: Annotated[float, typer.Option(min=0.0, max=1.0, help="Heatmap opacity in the overlays.")] = 0.5,
    colormap: Annotated[str, typer.Option(help=f"One of: {', '.join(COLORMAPS)}.")] = "jet",
    device: DeviceOption = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Questions answered together.")] = 4,
    jsonl: JsonlOption = False,
    quiet: QuietOption = False,
) -> None:
    """Answer QUESTION about IMAGE the PNP-VQA way, and show where the answer came from.

    The question's heatmap picks the patches each caption is decoded from; UnifiedQA reads the captions
    (Fusion-in-Decoder) and answers. Per question it writes the heatmap and the answer map (each caption's
    contribution to the answer, spread over the patches it came from) as overlays and raw maps, and a JSON
    record with the captions, their contributions and the time per stage.

    Examples:

      fusioncam vqa dogs.jpg "what are the dogs carrying?"

      fusioncam vqa - --jsonl < questions.jsonl     # {"image": ..., "question": ...} per line
    """
    check_choice(encoder, ENCODERS, "--encoder")
    if colormap not in COLORMAPS:
        raise usage_error(f"unknown colormap {colormap!r}; choose one of {', '.join(COLORMAPS)}")
    if caption_min_length > caption_max_length:
        raise usage_error("--caption-min-length exceeds --caption-max-length")
    inputs, total = pair_inputs(image, [question] if question else [], pairs, recursive, text_key="question")
    matcher = load_matcher(model, device, encoder, fusion, sam_model)
    if not 0 <= block < matcher.num_blocks:
        raise usage_error(f"--block must be in 0..{matcher.num_blocks - 1} for {matcher.name}")
    refiner = refiner_for(encoder, sam_model, device, points, sam_labels, sam_mask, sam_blend)
    captioner = loading(caption_model, load_captioner, caption_model, device=device)
    answerer = loading(qa_model, load_qa, qa_model, device=device)
    config = VQAConfig(
        block=block,
        num_captions=num_captions,
        num_patches=min(
            num_patches, matcher.model.vision_encoder.grid_size[0] * matcher.model.vision_encoder.grid_size[1]
        ),
        caption_min_length=caption_min_length,
        caption_max_length=caption_max_length,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        captions_per_passage=captions_per_passage,
        answer_beams=answer_beams,
        explain=explain,
    )
    pipeline = PNPVQA(matcher, captioner, answerer, config, refiner)
    models = {"itm": matcher.name, "caption": captioner.name, "qa": answerer.name, "encoder": encoder}
    generator = torch.Generator().manual_seed(seed)

    def process(batch: list[Pair]) -> Iterator[tuple[Pair, Outcome]]:
        images, reasons = decode_images(batch)
        runnable = [pair for pair in batch if pair.image not in reasons]
        for pair in batch:
            if pair.image in reasons:
                yield pair, reasons[pair.image]
        if not runnable:
            return
        results = pipeline.answer(
            [images[pair.image] for pair in runnable],
            [pair.text for pair in runnable],
            generator,
            keys=[pair.image for pair in runnable],
        )
        for pair, result in zip(runnable, results, strict=True):
            yield safely(pair, write_vqa, out, pair, images[pair.image], result, models, alpha, colormap)

    records, failures = run_batches(inputs, total, batch_size, "questions", jsonl, quiet, process)
    if not jsonl:
        for record in records:
            print(f"{Path(record['image']).name}\t{record['question']}\t{record['answer']}")
    finish(records, failures, "answer(s)", out)


@app.command()
def score(
    image: Annotated[Path, typer.Argument(help="Image file.")],
    texts: Annotated[list[str], typer.Argument(help="One or more texts to score against the image.")],
    model: ModelOption = "blip-itm-base",
    device: DeviceOption = "auto",
    jsonl: JsonlOption = False,
) -> None:
    """ITM match probability and ITC similarity of each TEXT with IMAGE.

    Example: fusioncam score dog.jpg "a dog" "a cat" "a dog on a beach"
    """
    if not image.is_file():
        raise usage_error(f"no such image: {image}")
    try:
        picture = load_image(image)
    except ImageDecodeError as error:
        raise fail(error) from None
    empty = [text for text in texts if not clean_caption(text)]
    if empty:
        raise usage_error(f"empty text after cleaning: {empty[0]!r}")
    matcher = load_matcher(model, device)
    scores = matcher.score(picture, texts)
    if jsonl:
        for original, result in zip(texts, scores, strict=True):
            record = {"image": str(image), "text": original, "model": matcher.name}
            print(json.dumps(record | {"itm_score": result.itm_score, "itc_score": result.itc_score}))
        return
    table = Table("text", "ITM match", "ITC similarity", title=f"{image.name} · {matcher.name}")
    for original, result in sorted(zip(texts, scores, strict=True), key=lambda item: -item[1].itm_score):
        table.add_row(original, f"{result.itm_score:.4f}", f"{result.itc_score:.4f}")
    stdout.print(table)


PresetArgument = Annotated[str, typer.Argument(help="Preset name (see `fusioncam weights list`) or preset .toml.")]


def _preset(name: str) -> weights_lib.Preset:
    try:
        return weights_lib.get_preset(name)
    except weights_lib.PresetError as error:
        raise usage_error(str(error)) from None


@weights_app.command("list")
def weights_list(jsonl: JsonlOption = False) -> None:
    """Every preset: what it is, its licence, and whether its files are already here."""
    registry = weights_lib.load_registry()
    rows = []
    for name, preset in registry.items():
        paths = weights_lib.preset_paths(preset)
        cached = all(path is not None and path.exists() for path in paths.values())
        rows.append(
            {
                "name": name,
                "kind": preset.kind,
                "license": preset.license,
                "cached": cached,
                "description": preset.description,
            }
        )
    if jsonl:
        for row in rows:
            print(json.dumps(row))
        return
    table = Table("name", "kind", "license", "here", "description")
    for row in rows:
        table.add_row(row["name"], row["kind"], row["license"], "yes" if row["cached"] else "", row["description"])
    stdout.print(table)


@weights_app.command("pull")
def weights_pull(names: Annotated[list[str], typer.Argument(help="Preset name(s) or preset .toml file(s).")]) -> None:
    """Download every file of the named presets into the cache (resumable, checked against sha256)."""
    presets = [_preset(name) for name in names]
    try:
        for preset in presets:
            for role, path in weights_lib.pull(preset).items():
                print(f"{preset.name}\t{role}\t{path}", flush=True)
    except weights_lib.WeightsError as error:
        raise fail(error) from None


@weights_app.command("verify")
def weights_verify(
    names: Annotated[list[str] | None, typer.Argument(help="Presets to check (default: every preset).")] = None,
) -> None:
    """Check files already downloaded against their sha256; exit 1 on a mismatch."""
    presets = [_preset(name) for name in names] if names else list(weights_lib.load_registry().values())
    table = Table("preset", "file", "status", "path")
    bad = False
    for preset in presets:
        for result in weights_lib.verify(preset):
            if names or result.status is not weights_lib.VerifyStatus.MISSING:
                bad |= result.status is weights_lib.VerifyStatus.MISMATCH
                table.add_row(preset.name, result.role, str(result.status.value), str(result.path or ""))
    stdout.print(table)
    if bad:
        raise typer.Exit(1)


@weights_app.command("path")
def weights_path(
    name: PresetArgument, role: Annotated[str | None, typer.Option(help="Only this file.")] = None
) -> None:
    """Where a preset's files live (or will live once pulled)."""
    preset = _preset(name)
    paths = weights_lib.preset_paths(preset)
    if role is not None and role not in paths:
        raise usage_error(f"{preset.name} has no file {role!r}; it has {', '.join(paths)}")
    for key, path in paths.items():
        if role in (None, key):
            print(f"{key}\t{path}" if role is None else path)


@app.command("example-image")
def example_image() -> None:
    """Print the path of the example photo `make demo` uses, downloading it on first use."""
    try:
        print(weights_lib.resolve_file("example-image", "image"))
    except weights_lib.WeightsError as error:
        raise fail(error) from None


eval_app = typer.Typer(help="Measure how well heatmaps localise.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")


@eval_app.command("pointing")
def eval_pointing(
    data: Annotated[Path, typer.Option(help='JSONL of {"image", "text", "box": [x0, y0, x1, y1]} (synth: referring).')],
    model: ModelOption = "blip-itm-base",
    block: Annotated[int, typer.Option(help="Text-encoder block whose cross-attention is explained.")] = 6,
    encoder: EncoderOption = "blip",
    fusion: FusionOption = None,
    sam_model: SamOption = "vitt",
    points: PointsOption = 5,
    sam_labels: SamLabelsOption = "fork",
    sam_mask: SamMaskOption = "first",
    sam_blend: SamBlendOption = "fork",
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N records.")] = None,
    device: DeviceOption = "auto",
    batch_size: BatchOption = 16,
    json_out: Annotated[bool, typer.Option("--json", help="The report as one JSON object on stdout.")] = False,
    quiet: QuietOption = False,
) -> None:
    """Pointing game (heatmap peak inside the object's box) and energy-based pointing game (heatmap mass in the
    box), next to what a uniformly random point achieves.

    Example: fusioncam synth --out scenes --n 500 && fusioncam eval pointing --data scenes/referring.jsonl
    """
    check_choice(encoder, ENCODERS, "--encoder")
    if not data.is_file():
        raise usage_error(f"--data file not found: {data}")
    try:
        records = read_referring(data)[:limit]
    except ValueError as error:
        raise usage_error(str(error)) from None
    matcher = load_matcher(model, device, encoder, fusion, sam_model)
    if not 0 <= block < matcher.num_blocks:
        raise usage_error(f"--block must be in 0..{matcher.num_blocks - 1} for {matcher.name}")
    refiner = refiner_for(encoder, sam_model, device, points, sam_labels, sam_mask, sam_blend)
    with progress_bar(quiet) as progress:
        task = progress.add_task("pointing", total=len(records))
        try:
            report = evaluate_pointing(
                matcher, records, block, batch_size, refiner, encoder, lambda n: progress.advance(task, n)
            )
        except ImageDecodeError as error:
            raise fail(error) from None
    summary = report.to_dict() | {"model": matcher.name, "block": block, "data": str(data)}
    if json_out:
        print(json.dumps(summary))
        return
    table = Table("encoder", "records", "pointing", "random point", "energy", "uniform map", title=str(data))
    table.add_row(
        encoder,
        str(report.count),
        f"{report.pointing:.3f}",
        f"{report.random_pointing:.3f}",
        f"{report.energy:.3f}",
        f"{report.random_energy:.3f}",
    )
    stdout.print(table)


@eval_app.command("itm")
def eval_itm(
    data: Annotated[Path, typer.Option(help='JSONL of {"image", "text"} true pairs (synth: referring.jsonl).')],
    model: ModelOption = "blip-itm-base",
    encoder: Annotated[str, typer.Option(help="blip or fused (esam refines heatmaps, not scores).")] = "blip",
    fusion: FusionOption = None,
    sam_model: SamOption = "vitt",
    seed: Annotated[int, typer.Option(help="Seed of the mismatched texts drawn for each pair.")] = 0,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N records.")] = None,
    device: DeviceOption = "auto",
    batch_size: BatchOption = 16,
    json_out: Annotated[bool, typer.Option("--json", help="The report as one JSON object on stdout.")] = False,
    quiet: QuietOption = False,
) -> None:
    """ITM accuracy: each true pair should score above 0.5, and a text of another image that was never said of
    this one below 0.5. Referring expressions make the cleanest negatives (every object of a scene has one).

    Example: fusioncam eval itm --data scenes/referring.jsonl --model out/preset.toml
    """
    check_choice(encoder, ("blip", "fused"), "--encoder")
    if not data.is_file():
        raise usage_error(f"--data file not found: {data}")
    with data.open() as lines:
        items = list(pairs_from_jsonl(lines, str(data), data.parent))
    failures = [item for item in items if isinstance(item, Failure)]
    if failures:
        raise usage_error(f"{failures[0].origin}: {failures[0].reason}")
    records = items[:limit]
    if not records:
        raise usage_error(f"{data} holds no pairs")
    matcher = load_matcher(model, device, encoder, fusion, sam_model)
    with progress_bar(quiet) as progress:
        task = progress.add_task("matching", total=len(records))
        try:
            report = itm_accuracy(matcher, records, seed, batch_size, lambda n: progress.advance(task, n))
        except ImageDecodeError as error:
            raise fail(error) from None
        except ValueError as error:
            raise usage_error(str(error)) from None
    summary = report.to_dict() | {"model": matcher.name, "encoder": encoder, "data": str(data)}
    if json_out:
        print(json.dumps(summary))
        return
    table = Table("encoder", "pairs", "accuracy", "true pairs > 0.5", "mismatched < 0.5", title=str(data))
    table.add_row(
        encoder, str(report.count), f"{report.accuracy:.3f}", f"{report.positive:.3f}", f"{report.negative:.3f}"
    )
    stdout.print(table)


@app.command()
def synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the dataset into.")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of scenes.")] = 1000,
    seed: Annotated[int, typer.Option(help="Same seed, same bytes.")] = 0,
    image_size: Annotated[int, typer.Option(min=48, help="Side of the square images in pixels.")] = 128,
    max_objects: Annotated[int, typer.Option(min=1, max=6, help="Objects per scene, at most.")] = 4,
    split: Annotated[str | None, typer.Option(help="Write into OUT/SPLIT; each split draws other scenes.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a dataset already in OUT.")] = False,
) -> None:
    """Synthetic scenes with captions, referring expressions (boxes, masks), VQA questions and a vocab.txt.

    Writes images/, masks/, scenes.jsonl, pairs.jsonl (for `heatmap --pairs`), referring.jsonl (for
    `eval pointing`), vqa.jsonl (for `vqa --pairs`) and vocab.txt. Prints a JSON summary.
    """
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


@app.command()
def train(
    what: Annotated[
        str, typer.Option(help="itm: BLIP ITM itself (fine-tune, or --from-scratch); fusion: the SAM fusion.")
    ],
    data: Annotated[Path, typer.Option(help='Pairs JSONL {"image", "text"} (synth writes pairs.jsonl).')],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for weights, preset, metrics, checkpoints.")],
    model: ModelOption = "blip-itm-base",
    sam_model: Annotated[
        str | None, typer.Option("--sam-model", help="EfficientSAM of a fusion: vitt, vits, preset.")
    ] = None,
    from_scratch: Annotated[
        bool, typer.Option("--from-scratch", help="itm: random init of a preset that has no weights yet.")
    ] = False,
    steps: Annotated[int, typer.Option(min=1)] = 1000,
    batch_size: Annotated[int, typer.Option(min=1, help="Pairs per step and process.")] = 16,
    lr: Annotated[float, typer.Option(min=0.0, help="Peak learning rate (AdamW).")] = 1e-4,
    weight_decay: Annotated[float, typer.Option(min=0.0)] = 0.05,
    warmup_steps: Annotated[int, typer.Option(min=0, help="Linear warm-up, then cosine to 0.")] = 100,
    grad_clip: Annotated[float, typer.Option(min=0.0, help="Max gradient norm (0 = off).")] = 1.0,
    seed: Annotated[int, typer.Option(help="Same seed, same run.")] = 0,
    checkpoint_every: Annotated[int, typer.Option(min=0, help="Steps between checkpoints (0 = at the end).")] = 0,
    amp: Annotated[str, typer.Option(help="Mixed precision on GPU: auto, bf16, fp16, off.")] = "auto",
    resume: Annotated[Path | None, typer.Option(help="A checkpoint, or a folder whose latest checkpoint.")] = None,
    device: DeviceOption = "auto",
    cache_sam: Annotated[bool, typer.Option("--cache-sam", help="Keep SAM embeddings in memory (fusion).")] = False,
    quiet: QuietOption = False,
) -> None:
    """Train BLIP ITM (ITC + ITM with hard negatives, as BLIP does) or the BLIP+EfficientSAM fusion.

    Runs unchanged under torchrun (DDP; gloo on CPU, NCCL on GPU); rank 0 writes.

    Examples:

      fusioncam synth --out scenes --n 3000 --image-size 64

      fusioncam train --what itm --data scenes/pairs.jsonl --model tiny.toml --from-scratch --out runs/itm

      fusioncam train --what fusion --data scenes/pairs.jsonl --model runs/itm/preset.toml --sam-model vitt \\
        --out runs/fusion

      torchrun --nproc-per-node 2 $(which fusioncam) train --what itm ...
    """
    try:
        config = train_lib.TrainConfig(
            what=what,
            data=data,
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
    if not data.is_file():
        raise usage_error(f"--data file not found: {data}")
    try:
        result = train_lib.train(config, progress=not quiet)
    except weights_lib.PresetError as error:
        raise usage_error(str(error)) from None
    except (weights_lib.WeightsError, ValueError, OSError) as error:
        raise fail(error) from None
    if result.last is not None:
        print(json.dumps({"out": str(result.out), "weights": str(result.weights)} | result.last))


def main() -> None:
    app()
