"""`fusioncam` command line: parse, call the library, print. Data goes to stdout, everything human to stderr.

Exit codes: 0 everything done; 1 some inputs failed (each named with its reason, the rest done); 2 usage error.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from fusioncam import weights as weights_lib
from fusioncam.api import BlipMatcher, load
from fusioncam.batch import Failure, Pair, batched, pairs_from_path, read_jsonl, write_heatmap
from fusioncam.explain.render import COLORMAPS
from fusioncam.images import ImageDecodeError, load_image
from fusioncam.text import clean_caption

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
    stderr.print(f"[red]error:[/red] {message}")
    return typer.Exit(2)


def load_matcher(model: str, device: str) -> BlipMatcher:
    """Load a preset; problems a user can fix (unknown name, missing weights) end the run with a clear message."""
    try:
        with stderr.status(f"loading {model} …"):
            return load(model, device=device)
    except weights_lib.PresetError as error:
        raise usage_error(str(error)) from None
    except (weights_lib.WeightsError, ValueError, OSError) as error:
        stderr.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from None


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


def heatmap_inputs(
    image: str | None, texts: list[str], pairs: Path | None, recursive: bool
) -> Iterator[Pair | Failure]:
    """All pairs the arguments describe, validated as usage errors where they cannot mean anything."""
    if pairs is not None:
        if not pairs.is_file():
            raise usage_error(f"--pairs file not found: {pairs}")
        with pairs.open() as stream:
            yield from read_jsonl(stream, str(pairs), pairs.parent)
    if image == "-":
        if texts:
            raise usage_error("with IMAGE '-' the texts come from the JSONL records on stdin; drop TEXT")
        yield from read_jsonl(sys.stdin, "stdin", Path.cwd())
    elif image is not None:
        path = Path(image)
        if not path.exists():
            raise usage_error(f"no such image or folder: {image}")
        if not texts:
            raise usage_error("give the TEXT to explain, e.g. fusioncam heatmap photo.jpg 'a dog'")
        yield from pairs_from_path(path, texts, recursive)


def run_heatmaps(
    matcher: BlipMatcher,
    batch: list[Pair],
    block: int,
    per_word: bool,
) -> Iterator[tuple[Pair, object]]:
    """(pair, Heatmap or failure reason) for every pair; an image shared by several texts is encoded once."""
    images, reasons = {}, {}
    for pair in batch:
        if pair.image not in images and pair.image not in reasons:
            try:
                images[pair.image] = load_image(pair.image)
            except ImageDecodeError as error:
                reasons[pair.image] = str(error)
    runnable = []
    for pair in batch:
        if pair.image in reasons:
            yield pair, reasons[pair.image]
        elif not clean_caption(pair.text):
            yield pair, "the text is empty after cleaning: give at least one word"
        else:
            runnable.append(pair)
    if not runnable:
        return
    order = list(dict.fromkeys(pair.image for pair in runnable))
    embeds = matcher.embed_images([images[path] for path in order])
    index = [order.index(pair.image) for pair in runnable]
    results = matcher.heatmaps(embeds[index], [pair.text for pair in runnable], block=block, per_word=per_word)
    for pair, result in zip(runnable, results, strict=True):
        yield pair, (images[pair.image], result)


@app.command()
def heatmap(
    image: Annotated[
        str | None, typer.Argument(help="Image file, folder of images, or '-' for JSONL records on stdin.")
    ] = None,
    text: Annotated[list[str] | None, typer.Argument(help="Text(s) to explain over the image(s).")] = None,
    pairs: Annotated[
        Path | None, typer.Option(help='JSONL file of {"image": path, "text": ...} records (paths relative to it).')
    ] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Include subfolders of a folder.")] = False,
    model: ModelOption = "blip-itm-base",
    block: Annotated[int, typer.Option(help="Text-encoder block whose cross-attention is explained.")] = 6,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for overlays, raw maps and JSON.")] = Path(
        "fusioncam-out"
    ),
    per_word: Annotated[
        bool, typer.Option("--per-word", help="Also a map per word, and a contact sheet of them all.")
    ] = False,
    alpha: Annotated[float, typer.Option(min=0.0, max=1.0, help="Heatmap opacity in the overlay.")] = 0.5,
    colormap: Annotated[str, typer.Option(help=f"One of: {', '.join(COLORMAPS)}.")] = "jet",
    device: DeviceOption = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Pairs per forward pass.")] = 8,
    jsonl: JsonlOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Grad-CAM heatmap of TEXT over IMAGE: overlay PNG, raw .npy map and a JSON record per pair.

    Examples:

      fusioncam heatmap dog.jpg "a dog running"

      fusioncam heatmap photos/ "a red car" --recursive --out maps/

      jq -c '{image, text: .caption}' captions.jsonl | fusioncam heatmap - --jsonl
    """
    if image is None and pairs is None:
        raise usage_error("give an IMAGE (file, folder or '-') or --pairs FILE")
    if colormap not in COLORMAPS:
        raise usage_error(f"unknown colormap {colormap!r}; choose one of {', '.join(COLORMAPS)}")
    inputs = heatmap_inputs(image, text or [], pairs, recursive)
    # Files and folders are listed up front (usage errors surface before a model loads, and the progress bar
    # gets a total); stdin is streamed, since a pipeline's upstream may still be writing.
    total = None
    if image != "-":
        inputs = list(inputs)
        total = len(inputs)
        inputs = iter(inputs)
    first = next(inputs, None)
    if first is None:
        raise usage_error(f"nothing to do: no images found in {image}" if image else "no records in --pairs")
    matcher = load_matcher(model, device)
    if not 0 <= block < matcher.num_blocks:
        raise usage_error(f"--block must be in 0..{matcher.num_blocks - 1} for {matcher.name}")

    records, failures = [], []

    def report_failure(failure: Failure) -> None:
        failures.append(failure)
        stderr.print(f"[red]failed[/red] {failure.origin}: {failure.reason}")
        if jsonl:
            record = {"image": failure.image, "text": failure.text, "error": failure.reason, "origin": failure.origin}
            print(json.dumps(record), flush=True)

    def all_inputs() -> Iterator[Pair | Failure]:
        yield first
        yield from inputs

    with progress_bar(quiet) as progress:
        task = progress.add_task("heatmaps", total=total)
        for chunk in batched(all_inputs(), batch_size):
            for failure in (item for item in chunk if isinstance(item, Failure)):
                report_failure(failure)
            batch = [item for item in chunk if isinstance(item, Pair)]
            for pair, outcome in run_heatmaps(matcher, batch, block, per_word):
                if isinstance(outcome, str):
                    report_failure(Failure(pair.origin, outcome, str(pair.image), pair.text))
                    continue
                try:
                    record = write_heatmap(out, pair, *outcome, model=matcher.name, alpha=alpha, colormap=colormap)
                except OSError as error:
                    report_failure(Failure(pair.origin, f"cannot write outputs: {error}", str(pair.image), pair.text))
                    continue
                records.append(record)
                if jsonl:
                    print(json.dumps(record), flush=True)
            progress.advance(task, len(chunk))

    if not jsonl and records:
        table = Table("image", "text", "ITM", "ITC", "peak (x, y)")
        table.add_column("overlay", overflow="fold")
        for record in records:
            peak = record["peak"]
            table.add_row(
                Path(record["image"]).name,
                record["text"],
                f"{record['itm_score']:.3f}",
                f"{record['itc_score']:.3f}",
                f"{peak['x']}, {peak['y']}",
                record["outputs"]["overlay"],
            )
        stdout.print(table)
    summary = f"{len(records)} heatmap(s) written to {out}"
    stderr.print(summary + (f", [red]{len(failures)} failed[/red]" if failures else ""))
    if failures:
        raise typer.Exit(1)


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
        stderr.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from None
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
        stderr.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from None


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
        stderr.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from None


def main() -> None:
    app()
