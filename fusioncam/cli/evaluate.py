"""`fusioncam eval pointing|itm`: how well heatmaps localise, how well ITM tells true pairs from false ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer

from fusioncam.cli import options
from fusioncam.cli.common import fail, print_table, progress, usage_error
from fusioncam.cli.loaders import check_block, load_matcher, refiner_for

app = typer.Typer(help="Measure how well heatmaps localise and how well ITM matches.", no_args_is_help=True)


@app.command("pointing")
def eval_pointing(
    data: Annotated[
        Path,
        typer.Option(help='JSONL of {"image", "text", "box": [x0, y0, x1, y1]} records (synth: referring.jsonl).'),
    ],
    model: options.Model = "blip-itm-base",
    block: options.Block = 6,
    encoder: options.Encoder = "blip",
    fusion: options.Fusion = None,
    sam_model: options.SamModel = "vitt",
    points: options.Points = 5,
    sam_labels: options.SamLabels = "fork",
    sam_mask: options.SamMask = "first",
    sam_blend: options.SamBlend = "fork",
    limit: options.Limit = None,
    device: options.Device = "auto",
    precision: options.Precision = "fp32",
    batch_size: options.BatchSize = 16,
    jsonl: options.Jsonl = False,
    quiet: options.Quiet = False,
) -> None:
    """Pointing game (heatmap peak inside the object's box) and energy-based pointing game (heatmap mass in the
    box), next to what a uniformly random point achieves.

    Example: fusioncam synth --out scenes --n 500 && fusioncam eval pointing --data scenes/referring.jsonl
    """
    from fusioncam.evaluate import evaluate_pointing, read_referring
    from fusioncam.images import ImageDecodeError

    if not data.is_file():
        raise usage_error(f"--data file not found: {data}")
    try:
        records = read_referring(data)[:limit]
    except ValueError as error:
        raise usage_error(str(error)) from None
    matcher = load_matcher(model, device, encoder, fusion, sam_model, precision)
    check_block(matcher, block)
    refiner = refiner_for(encoder, sam_model, device, points, sam_labels, sam_mask, sam_blend, matcher.precision)
    with progress("pointing", len(records), quiet) as bar:
        try:
            report = evaluate_pointing(matcher, records, block, batch_size, refiner, encoder, bar.advance)
        except ImageDecodeError as error:
            raise fail(error) from None
    summary = report.to_dict() | {"model": matcher.name, "block": block, "data": str(data)}
    summary["precision"] = matcher.precision
    if jsonl:
        print(json.dumps(summary))
        return
    print_table(
        ["encoder", "records", "pointing", "random point", "energy", "uniform map"],
        [[encoder, str(report.count), f"{report.pointing:.3f}", f"{report.random_pointing:.3f}",
          f"{report.energy:.3f}", f"{report.random_energy:.3f}"]],
        title=str(data),
    )  # fmt: skip


@app.command("itm")
def eval_itm(
    data: Annotated[Path, typer.Option(help='JSONL of {"image", "text"} true pairs (synth: referring.jsonl).')],
    model: options.Model = "blip-itm-base",
    encoder: Annotated[
        Literal["blip", "fused"], typer.Option(help="blip or fused (esam refines maps, not scores).")
    ] = "blip",
    fusion: options.Fusion = None,
    sam_model: options.SamModel = "vitt",
    seed: Annotated[int, typer.Option(help="Seed of the mismatched texts drawn for each pair.")] = 0,
    limit: options.Limit = None,
    device: options.Device = "auto",
    precision: options.Precision = "fp32",
    batch_size: options.BatchSize = 16,
    jsonl: options.Jsonl = False,
    quiet: options.Quiet = False,
) -> None:
    """ITM accuracy: each true pair should score above 0.5, and a text of another image that was never said of
    this one below 0.5. Referring expressions make the cleanest negatives (every object of a scene has one).

    Example: fusioncam eval itm --data scenes/referring.jsonl --model runs/itm/itm.toml
    """
    from fusioncam.evaluate import itm_accuracy
    from fusioncam.images import ImageDecodeError
    from fusioncam.inputs import Failure, Pair, pairs_from_jsonl

    if not data.is_file():
        raise usage_error(f"--data file not found: {data}")
    with data.open(encoding="utf-8") as lines:
        items = list(pairs_from_jsonl(lines, str(data), data.parent))
    failures = [item for item in items if isinstance(item, Failure)]
    if failures:
        raise usage_error(f"{failures[0].origin}: {failures[0].reason}")
    records = [item for item in items if isinstance(item, Pair)][:limit]
    if not records:
        raise usage_error(f"{data} holds no pairs")
    matcher = load_matcher(model, device, encoder, fusion, sam_model, precision)
    with progress("matching", len(records), quiet) as bar:
        try:
            report = itm_accuracy(matcher, records, seed, batch_size, bar.advance)
        except ImageDecodeError as error:
            raise fail(error) from None
        except ValueError as error:
            raise usage_error(str(error)) from None
    summary = report.to_dict() | {"model": matcher.name, "encoder": encoder, "data": str(data)}
    summary["precision"] = matcher.precision
    if jsonl:
        print(json.dumps(summary))
        return
    print_table(
        ["encoder", "pairs", "accuracy", "true pairs > 0.5", "mismatched < 0.5"],
        [[encoder, str(report.count), f"{report.accuracy:.3f}", f"{report.positive:.3f}", f"{report.negative:.3f}"]],
        title=str(data),
    )
