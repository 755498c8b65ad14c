"""`fusioncam eval pointing|faithfulness|itm|retrieval|vqa|gqa`: how well heatmaps localise (synthetic scenes,
RefCOCO) and show what the match depends on, how well ITM tells true pairs from false ones, how well the matcher
retrieves on COCO and Flickr30k, and how well answers score on VQAv2, OK-VQA and GQA, by the published metrics.
Pointing and faithfulness compare several encoders in one run and resume from their per-record scores."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from fusioncam import choices
from fusioncam.cli import options
from fusioncam.cli.common import check_out_dir, fail, print_table, progress, usage_error, warn
from fusioncam.cli.loaders import check_block, load_matcher, refiner_for, run_info, sam_preset_name

if TYPE_CHECKING:
    from fusioncam.api import BlipMatcher, SamRefiner
    from fusioncam.evaluate import Referring
    from fusioncam.score_journal import ScoreJournal

app = typer.Typer(
    help="Measure how well heatmaps localise, how well ITM matches and retrieves, and score VQA and GQA answers.",
    no_args_is_help=True,
)

Report = Annotated[
    Path | None,
    typer.Option(help='Write {"overall", per-type figures, "per_question": {"<question id>": percent}} as JSON here.'),
]


Encoders = Annotated[
    list[str] | None,
    typer.Option(
        "--encoder",
        help="blip, esam (BLIP's map refined by EfficientSAM) or fused (needs --fusion); repeat it to compare "
        "several side by side in one run.  [default: blip]",
        show_default=False,
    ),
]
GroundingData = Annotated[
    Path,
    typer.Option(
        help='`fusioncam synth`\'s referring.jsonl ({"image", "text", "box": [x0, y0, x1, y1]}), or RefCOCO, '
        "RefCOCO+ or RefCOCOg: refs(unc|google|umd).p with --instances, or a parquet/JSON/JSONL conversion with a "
        "row per object (image_id, file_name, split, sentences, bbox as COCO [x, y, w, h]).",
    ),
]
Images = Annotated[Path | None, typer.Option(help="RefCOCO: the COCO images root, the folder holding train2014/.")]
Instances = Annotated[
    Path | None, typer.Option(help="RefCOCO with a refs .p pickle: the instances.json of the same release.")
]
Split = Annotated[str | None, typer.Option(help="RefCOCO: only this split (val, testA, testB, test, train).")]
SampleLimit = Annotated[
    int | None, typer.Option(min=1, help="Only N records, drawn with --seed (the same N every time), in file order.")
]
SampleSeed = Annotated[int, typer.Option(help="Seed of the records --limit draws.")]
EvalOut = Annotated[
    Path | None,
    typer.Option(
        "--out",
        "-o",
        help="Folder for the per-record scores (what --resume reads back), the JSON report and the PNG chart.",
    ),
]
EvalResume = Annotated[
    bool,
    typer.Option(
        "--resume/--no-resume", help="Keep the per-record scores already under --out and score only the rest."
    ),
]


@dataclass(frozen=True)
class _Encoding:
    """One encoder of a comparison, loaded: its matcher, refiner (esam) and what its scores depend on."""

    name: str
    matcher: BlipMatcher
    refiner: SamRefiner | None
    identity: dict[str, Any]


def _encoders(
    encoders: Sequence[str] | None,
    model: str,
    fusion: Path | None,
    sam_model: str,
    sam: dict[str, Any],
    device: str,
    precision: choices.PrecisionChoice,
) -> Iterator[_Encoding]:
    """Each asked encoder loaded in turn (a fused model once it is its turn, so that a large BLIP and its fused
    twin need not share memory); blip and esam share one plain BLIP, esam adding its EfficientSAM refiner."""
    names = list(dict.fromkeys(encoders or ["blip"]))
    if unknown := [name for name in names if name not in choices.ENCODERS]:
        raise usage_error(f"--encoder {unknown[0]!r}: choose from {', '.join(choices.ENCODERS)}")
    if "fused" in names and fusion is None:
        raise usage_error("--encoder fused needs --fusion PATH (weights from `fusioncam train --what fusion`)")
    if fusion is not None and "fused" not in names:
        raise usage_error("--fusion is only used with --encoder fused")
    plain: BlipMatcher | None = None
    for name in names:
        own_fusion = fusion if name == "fused" else None
        if name == "fused":
            matcher = load_matcher(model, device, name, own_fusion, sam_model, precision)
        else:
            plain = matcher = plain or load_matcher(model, device, "blip", None, sam_model, precision)
        refiner = refiner_for(name, sam_model, device, **sam, precision=matcher.precision) if name == "esam" else None
        sam_preset = {"sam": sam_preset_name(sam_model)} if name != "blip" else {}
        run = run_info(matcher, own_fusion, itm=model, **sam_preset)
        identity = {"encoder": name, "precision": matcher.precision, "weights": run["weights"]}
        yield _Encoding(name, matcher, refiner, identity | ({"sam_options": sam} if name == "esam" else {}))


def _compare(
    encoders: Iterator[_Encoding],
    command: str,
    score: Callable[[_Encoding, Callable[[int], None], ScoreJournal | None], Any],
    block: int,
    count: int,
    data: Path,
    out: Path | None,
    resume: bool,
    jsonl: bool,
    quiet: bool,
) -> dict[str, dict[str, Any]]:
    """Each encoder's figures (`score(encoder, advance, journal)` over `count` records, with a progress bar), a
    JSONL line each as they come, the per-record scores journaled under `out`."""
    from fusioncam.images import ImageDecodeError

    journal = _journal(out, command, resume)
    figures: dict[str, dict[str, Any]] = {}
    try:
        for loaded in encoders:
            check_block(loaded.matcher, block)
            with progress(f"{command} ({loaded.name})", count, quiet) as bar:
                try:
                    report = score(loaded, bar.advance, journal)
                except (ImageDecodeError, ValueError) as error:
                    raise fail(error) from None
            figures[loaded.name] = report.to_dict() | {
                "model": loaded.matcher.name,
                "precision": loaded.matcher.precision,
            }
            if jsonl:
                print(json.dumps({"encoder": loaded.name, **figures[loaded.name], "block": block, "data": str(data)}))
    finally:
        if journal is not None:
            journal.close()
    return figures


def _grounding_records(
    data: Path, images: Path | None, instances: Path | None, split: str | None, limit: int | None, seed: int
) -> list[Referring]:
    from fusioncam.evaluate import read_grounding_data
    from fusioncam.inputs import seeded_sample

    if not data.is_file():
        raise usage_error(f"--data file not found: {data}")
    try:
        records = seeded_sample(read_grounding_data(data, images, instances, split), limit, seed)
    except ValueError as error:
        raise usage_error(str(error)) from None
    if missing := [path for path in dict.fromkeys(record.image for record in records) if not path.is_file()]:
        raise usage_error(f"{len(missing)} image(s) of {data} are not there, e.g. {missing[0]}")
    return records


def _journal(out: Path | None, command: str, resume: bool) -> ScoreJournal | None:
    from fusioncam.score_journal import ScoreJournal

    if out is None:
        if resume:
            raise usage_error("--resume needs --out, the folder of the run to resume")
        return None
    check_out_dir(out)
    return ScoreJournal(out / f"{command}-scores.jsonl", resume)


def _comparison_outputs(
    out: Path | None, command: str, figures: dict[str, dict[str, Any]], settings: dict[str, Any], chart: _ChartSpec
) -> None:
    """`--out`: the JSON report (every encoder's figures and the settings) and the chart of the compared figures."""
    if out is None:
        return
    from fusioncam.explain.chart import save_comparison_chart

    _write_report(out / f"{command}-report.json", {"encoders": figures, **settings})
    values = {metric: {name: figures[name][metric] for name in figures} for metric in chart.metrics}
    baselines = {metric: figures[next(iter(figures))][base] for metric, base in chart.baselines.items()}
    save_comparison_chart(out / f"{command}-chart.png", chart.title, values, baselines=baselines, maximum=chart.maximum)


@dataclass(frozen=True)
class _ChartSpec:
    """What a command's chart shows: its title, the figures compared (bars) and their chance baselines (lines)."""

    title: str
    metrics: tuple[str, ...]
    baselines: dict[str, str]
    maximum: float | None = 1.0


@app.command("pointing")
def eval_pointing(
    data: GroundingData,
    images: Images = None,
    instances: Instances = None,
    split: Split = None,
    region: Annotated[
        Literal["box", "mask"],
        typer.Option(help="What counts as the object: its box, or its mask (RefCOCO's polygons)."),
    ] = "box",
    tolerance: Annotated[
        float, typer.Option(min=0, help="Pointing game: a peak this many pixels from the object still hits.")
    ] = 15.0,
    proposals: Annotated[
        Path | None,
        typer.Option(help='Box accuracy (ALBEF): {"<COCO image id>": [[x, y, w, h], …]} detection proposals.'),
    ] = None,
    model: options.Model = "blip-itm-base",
    block: options.Block = 6,
    encoder: Encoders = None,
    fusion: options.Fusion = None,
    sam_model: options.SamModel = "vitt",
    points: options.Points = 5,
    sam_labels: options.SamLabels = "fork",
    sam_mask: options.SamMask = "first",
    sam_blend: options.SamBlend = "fork",
    limit: SampleLimit = None,
    seed: SampleSeed = 0,
    out: EvalOut = None,
    resume: EvalResume = False,
    device: options.Device = "auto",
    precision: options.Precision = "fp32",
    batch_size: options.BatchSize = 16,
    jsonl: options.Jsonl = False,
    quiet: options.Quiet = False,
) -> None:
    """Pointing game (the heatmap's peak within --tolerance pixels of the object), energy-based pointing game (the
    share of the heatmap's mass on the object) and, with --proposals, ALBEF's box accuracy, each next to what chance
    scores.

    Examples:

      fusioncam synth --out scenes --n 500 && fusioncam eval pointing --data scenes/referring.jsonl

      fusioncam eval pointing --data refcoco+.parquet --images coco --split testA --encoder blip --encoder esam
    """
    from fusioncam.evaluate import GroundingSettings, evaluate_pointing, read_proposals

    records = _grounding_records(data, images, instances, split, limit, seed)
    if region == "mask" and (bare := sum(record.segmentation is None for record in records)):
        raise usage_error(f"--region mask: {bare} of the {len(records)} records of {data} have no segmentation")
    try:
        boxes = read_proposals(proposals) if proposals is not None else None
    except ValueError as error:
        raise usage_error(str(error)) from None
    settings = GroundingSettings(region, tolerance, boxes)
    sam = {"points": points, "sam_labels": sam_labels, "sam_mask": sam_mask, "sam_blend": sam_blend}
    scored = {"block": block, "region": region, "tolerance": tolerance, "proposals": str(proposals)}

    def score(loaded: _Encoding, advance: Callable[[int], None], journal: ScoreJournal | None) -> Any:
        return evaluate_pointing(
            loaded.matcher, records, block, batch_size, loaded.refiner, settings, advance, journal,
            loaded.identity | scored,
        )  # fmt: skip

    encoders = _encoders(encoder, model, fusion, sam_model, sam, device, precision)
    figures = _compare(encoders, "pointing", score, block, len(records), data, out, resume, jsonl, quiet)
    settings_out = {"data": str(data), "split": split, "block": block, "region": region, "tolerance": tolerance}
    settings_out |= {"proposals": str(proposals) if proposals else None, "limit": limit, "seed": seed}
    chart = _ChartSpec(
        f"Grounding on {data.name}" + (f" ({split})" if split else ""),
        ("pointing", "energy") + (("box_accuracy",) if boxes else ()),
        {"pointing": "random_pointing", "energy": "random_energy"}
        | ({"box_accuracy": "random_box_accuracy"} if boxes else {}),
    )
    _comparison_outputs(out, "pointing", figures, settings_out, chart)
    if jsonl:
        return
    headers = ["encoder", "records", "pointing", "random point", "energy", "uniform map"]
    headers += ["box accuracy", "random box"] if boxes else []
    rows = []
    for name, figure in figures.items():
        row = [name, str(figure["count"]), f"{figure['pointing']:.3f}", f"{figure['random_pointing']:.3f}",
               f"{figure['energy']:.3f}", f"{figure['random_energy']:.3f}"]  # fmt: skip
        row += [f"{figure['box_accuracy']:.3f}", f"{figure['random_box_accuracy']:.3f}"] if boxes else []
        rows.append(row)
    print_table(headers, rows, title=str(data))


@app.command("faithfulness")
def eval_faithfulness(
    data: GroundingData,
    images: Images = None,
    instances: Instances = None,
    split: Split = None,
    steps: Annotated[
        int,
        typer.Option(min=1, help="Pixels removed or restored in this many equal shares (model calls + 1 per curve)."),
    ] = 50,
    fill: Annotated[
        int, typer.Option(min=0, max=255, help="Deletion: the grey level removed pixels take (0: black).")
    ] = 0,
    model: options.Model = "blip-itm-base",
    block: options.Block = 6,
    encoder: Encoders = None,
    fusion: options.Fusion = None,
    sam_model: options.SamModel = "vitt",
    points: options.Points = 5,
    sam_labels: options.SamLabels = "fork",
    sam_mask: options.SamMask = "first",
    sam_blend: options.SamBlend = "fork",
    limit: SampleLimit = None,
    seed: SampleSeed = 0,
    out: EvalOut = None,
    resume: EvalResume = False,
    device: options.Device = "auto",
    precision: options.Precision = "fp32",
    batch_size: Annotated[int, typer.Option(min=1, help="Step images per forward pass.")] = 16,
    jsonl: options.Jsonl = False,
    quiet: options.Quiet = False,
) -> None:
    """Deletion and insertion (RISE): the ITM match probability as the image's pixels are removed, or restored
    into a blurred copy, in the order of the heatmap. A map that shows what the match depends on makes the deletion
    curve fall fast (low area) and the insertion curve rise fast (high area). Each record costs 2 × (--steps + 1)
    forward passes.

    Example: fusioncam eval faithfulness --data scenes/referring.jsonl --limit 200 --encoder blip --encoder esam
    """
    from fusioncam.evaluate import evaluate_faithfulness
    from fusioncam.faithfulness import CausalSettings

    records = _grounding_records(data, images, instances, split, limit, seed)
    causal = CausalSettings(steps=steps, fill=fill, batch_size=batch_size)
    sam = {"points": points, "sam_labels": sam_labels, "sam_mask": sam_mask, "sam_blend": sam_blend}
    scored = {"block": block, "steps": steps, "fill": fill}

    def score(loaded: _Encoding, advance: Callable[[int], None], journal: ScoreJournal | None) -> Any:
        return evaluate_faithfulness(
            loaded.matcher, records, block, loaded.refiner, causal, advance, journal, loaded.identity | scored
        )

    encoders = _encoders(encoder, model, fusion, sam_model, sam, device, precision)
    figures = _compare(encoders, "faithfulness", score, block, len(records), data, out, resume, jsonl, quiet)
    settings_out = {"data": str(data), "split": split, "block": block, "steps": steps, "fill": fill}
    settings_out |= {"limit": limit, "seed": seed}
    chart = _ChartSpec(f"Deletion / insertion on {data.name}", ("deletion_auc", "insertion_auc"), {})
    _comparison_outputs(out, "faithfulness", figures, settings_out, chart)
    if jsonl:
        return
    rows = [
        [name, str(figure["count"]), f"{figure['deletion_auc']:.3f}", f"{figure['insertion_auc']:.3f}"]
        for name, figure in figures.items()
    ]
    print_table(
        ["encoder", "records", "deletion AUC (lower is better)", "insertion AUC (higher is better)"],
        rows,
        title=str(data),
    )


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


@app.command("retrieval")
def eval_retrieval(
    data: Annotated[
        Path,
        typer.Option(
            help="Karpathy val/test split as BLIP/LAVIS ship it (coco_karpathy_test.json, flickr30k_test.json): "
            '[{"image", "caption": [...]}, …].'
        ),
    ],
    images: Annotated[
        Path, typer.Option(help="Folder the records' image paths are relative to (COCO: the one holding val2014/).")
    ],
    report: Annotated[
        Path | None,
        typer.Option(help="Write LAVIS's figures (txt_r1 … r_mean, agg_metrics; in percent) and the settings here."),
    ] = None,
    k_test: Annotated[
        int, typer.Option(min=1, help="Candidates per query re-ranked by ITM (BLIP/LAVIS: 256 on COCO, 128 on Flickr).")
    ] = 256,
    max_words: Annotated[
        int, typer.Option(min=1, help="Words kept of each caption (BLIP's retrieval: 30; LAVIS's blip_caption: 50).")
    ] = 30,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Only N images, drawn with --seed, each with all of its captions.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the images --limit draws.")] = 0,
    model: options.Model = "blip-itm-base",
    encoder: Annotated[
        list[str] | None,
        typer.Option(
            "--encoder",
            help="blip or fused (needs --fusion); repeat it to compare both in one run.  [default: blip]",
            show_default=False,
        ),
    ] = None,
    fusion: options.Fusion = None,
    sam_model: options.SamModel = "vitt",
    chart: Annotated[
        Path | None, typer.Option(help="Draw the recalls of every encoder side by side as a PNG here.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Folder for the re-ranking scores as they are computed (what --resume reads back)."
        ),
    ] = None,
    resume: EvalResume = False,
    device: options.Device = "auto",
    precision: options.Precision = "fp32",
    batch_size: Annotated[
        int, typer.Option(min=1, help="Images, texts or pairs per forward pass (LAVIS re-ranks k_test at a time).")
    ] = 128,
    jsonl: options.Jsonl = False,
    quiet: options.Quiet = False,
) -> None:
    """Image→text and text→image retrieval as BLIP and LAVIS evaluate it: ITC similarity shortlists each query's
    top --k-test candidates, which are re-ranked by the ITM match logit plus that similarity. Recall at 1, 5 and 10
    both ways, in percent, under LAVIS's names (txt_r1: an image's best caption ranks first; img_r1: a caption's
    image ranks first).

    Example: fusioncam eval retrieval --data coco_karpathy_test.json --images coco/images --report coco.json
    """
    from fusioncam.datasets import read_karpathy_eval
    from fusioncam.images import ImageDecodeError
    from fusioncam.retrieval import encode_split, rerank, retrieval_metrics, shortlist

    _check_report(report)
    if not images.is_dir():
        raise usage_error(f"--images folder not found: {images}")
    try:
        split = read_karpathy_eval(data, max_words)
    except ValueError as error:
        raise usage_error(str(error)) from None
    if limit is not None:
        split = split.sample(limit, seed)
    if missing := [path for path in split.image_paths(images) if not path.is_file()]:
        raise usage_error(
            f"{len(missing)} of the {len(split.images)} images of {data} are not there, e.g. {missing[0]}"
        )
    if k_test < 10:
        warn(f"--k-test {k_test}: candidates past the shortlist all score -100, and R@10 orders those ties by index")
    if "esam" in (encoder or []):
        raise usage_error("--encoder esam refines heatmaps, not scores: retrieval compares blip and fused")
    _check_report(chart)
    shared = {"data": str(data), "images": str(images), "num_images": len(split.images), "num_texts": len(split.texts)}
    shared |= {"k_test": k_test, "max_words": max_words, "limit": limit, "seed": seed if limit is not None else None}
    figures: dict[str, dict[str, Any]] = {}
    journal = _journal(out, "retrieval", resume)
    for loaded in _encoders(encoder, model, fusion, sam_model, {}, device, precision):
        matcher = loaded.matcher
        with progress(f"encoding ({loaded.name})", len(split.images) + len(split.texts), quiet) as bar:
            try:
                features = encode_split(matcher, split, images, batch_size, bar.advance)
            except ImageDecodeError as error:
                raise fail(error) from None
        candidates = shortlist(features, k_test)
        with progress(f"re-ranking ({loaded.name})", int(candidates.pairs().sum()), quiet) as bar:
            scored = loaded.identity | shared | {"batch_size": batch_size}
            scores = rerank(matcher, features, candidates, batch_size, bar.advance, journal, scored)
        own_fusion = fusion if loaded.name == "fused" else None
        sam = {"sam": sam_preset_name(sam_model)} if own_fusion else {}
        figures[loaded.name] = retrieval_metrics(scores, split).to_dict() | {
            "model": matcher.name,
            "encoder": loaded.name,
            "precision": matcher.precision,
            "run": run_info(matcher, own_fusion, itm=model, **sam),
        }
        if jsonl:
            print(json.dumps(figures[loaded.name] | shared))
    if journal is not None:
        journal.close()
    # One encoder: LAVIS's figures at the top level, as its logs have them; several: one such object per encoder.
    _write_report(report, (next(iter(figures.values())) if len(figures) == 1 else {"encoders": figures}) | shared)
    recalls = ["txt_r1", "txt_r5", "txt_r10", "txt_r_mean", "img_r1", "img_r5", "img_r10", "img_r_mean", "r_mean"]
    if chart is not None:
        from fusioncam.explain.chart import save_comparison_chart

        values = {name: {encoder: figures[encoder][name] for encoder in figures} for name in recalls}
        save_comparison_chart(chart, f"Retrieval on {data.name} (recall, %)", values, maximum=100.0)
    if jsonl:
        return
    rows = [[name, *(f"{figure[metric]:.2f}" for metric in recalls)] for name, figure in figures.items()]
    print_table(["encoder", *recalls], rows, title=f"{data} ({len(split.images)} images)")


@app.command("vqa")
def eval_vqa(
    annotations: Annotated[
        Path,
        typer.Option(help="Annotations file of the split, e.g. v2_mscoco_val2014_annotations.json (VQAv2, OK-VQA)."),
    ],
    predictions: Annotated[
        list[str],
        typer.Option(
            help='Results file: [{"question_id": int, "answer": str}, …]. Repeat it as NAME=FILE to compare several '
            "runs side by side (e.g. `fusioncam vqa --questions` once per --encoder).",
        ),
    ],
    questions: Annotated[
        Path | None,
        typer.Option(help="Questions file of the split; when given, the annotations are checked to belong to it."),
    ] = None,
    script: Annotated[
        Literal["2016", "2021"],
        typer.Option(
            help="Version of the official vqaEval.py: 2016, the one LAVIS ships and BLIP/PNP-VQA figures used; "
            "2021, the VQA repository's current one (cleans answers only when the ten humans disagree)."
        ),
    ] = "2016",
    report: Report = None,
    chart: Annotated[Path | None, typer.Option(help="Several runs: draw their accuracies side by side here.")] = None,
    jsonl: options.Jsonl = False,
) -> None:
    """VQA accuracy of a results file, as the official VQA evaluation script computes it (no model runs).

    Overall and per answer type, in percent rounded to two decimals. The official script refuses a results file
    that does not answer every annotated question; here the unanswered ones are counted, warned about and left
    out of every figure, which is then comparable with published ones only when that count is 0. An answer to a
    question that is not annotated is an error.

    Examples:

      fusioncam eval vqa --annotations v2_mscoco_val2014_annotations.json --predictions results.json

      fusioncam eval vqa --annotations A.json --predictions blip=blip.json --predictions fused=fused.json
    """
    from fusioncam.datasets import read_vqa_annotations, read_vqa_predictions, read_vqa_questions
    from fusioncam.vqa_accuracy import score_vqa

    _check_report(report)
    _check_report(chart)
    files = _named_files(predictions, "--predictions")
    try:
        asked = read_vqa_questions(questions) if questions is not None else None
        truth = read_vqa_annotations(annotations, asked)
        scores = {name: score_vqa(truth, read_vqa_predictions(path), script) for name, path in files.items()}
    except ValueError as error:
        raise usage_error(str(error)) from None
    sources = {"script": script, "annotations": str(annotations)}
    title = f"VQA accuracy on {annotations.name} (%)"
    if _named_runs(
        scores, lambda scored: scored.per_answer_type, files, annotations, report, chart, title, jsonl, sources
    ):
        return
    ((name, scored),) = scores.items()
    counts = scored.answer_type_counts
    rows = [[kind, str(counts[kind]), f"{scored.per_answer_type[kind]:.2f}"] for kind in sorted(counts)]
    overall = ["overall", str(len(scored.per_question)), f"{scored.overall:.2f}"]
    print_table(["answer type", "questions", "accuracy"], [*rows, overall], title=str(files[name]))


def _named_runs(
    scores: Mapping[str, Any],
    breakdown: Callable[[Any], Mapping[str, float]],
    files: Mapping[str, Path],
    truth: Path,
    report: Path | None,
    chart: Path | None,
    title: str,
    jsonl: bool,
    sources: Mapping[str, str],
) -> bool:
    """What `eval vqa` and `eval gqa` write of their scored runs (`files` by name, scored against `truth`): the
    unanswered questions warned about, the report (one run's figures at the top level, as before; several: one
    such object per named run), the chart, and the JSONL lines or, for several runs, a row per run. True when
    that is all the output; False when a single run's own table is still to be printed."""
    for name, scored in scores.items():
        _warn_unanswered(len(scored.unanswered), len(scored.per_question), truth, files[name])
    results = {name: scored.to_dict() for name, scored in scores.items()}
    _write_report(report, next(iter(results.values())) if len(results) == 1 else {"runs": results})
    kinds = sorted({kind for scored in scores.values() for kind in breakdown(scored)})
    if chart is not None:
        from fusioncam.explain.chart import save_comparison_chart

        figures = {"overall": {name: scored.overall for name, scored in scores.items()}}
        figures |= {kind: {name: breakdown(s).get(kind, 0.0) for name, s in scores.items()} for kind in kinds}
        save_comparison_chart(chart, title, figures, maximum=100.0)
    if jsonl:
        for name, result in results.items():
            _print_summary(
                result, **sources, predictions=str(files[name]), **({"name": name} if len(files) > 1 else {})
            )
        return True
    if len(scores) == 1:
        return False
    rows = [
        [name, str(len(scored.per_question)), f"{scored.overall:.2f}",
         *(f"{breakdown(scored)[kind]:.2f}" if kind in breakdown(scored) else "-" for kind in kinds)]
        for name, scored in scores.items()
    ]  # fmt: skip
    print_table(["run", "questions", "overall", *kinds], rows, title=str(truth))
    return True


def _named_files(values: list[str], option: str) -> dict[str, Path]:
    """`NAME=FILE` (or a bare FILE, named by its stem) per value, names unique."""
    named: dict[str, Path] = {}
    for value in values:
        name, equals, path = value.partition("=")
        if not equals:
            name, path = Path(value).stem, value
        if name in named:
            raise usage_error(f"{option}: two files named {name!r}; name each NAME=FILE")
        named[name] = Path(path)
    return named


@app.command("gqa")
def eval_gqa(
    questions: Annotated[
        Path, typer.Option(help="GQA question file with answers, e.g. testdev_balanced_questions.json.")
    ],
    predictions: Annotated[
        list[str],
        typer.Option(
            help='[{"questionId", "prediction"}, …] (GQA\'s format) or [{"question_id", "answer"}, …]. Repeat it as '
            "NAME=FILE to compare several runs side by side."
        ),
    ],
    report: Report = None,
    chart: Annotated[Path | None, typer.Option(help="Draw the runs' accuracies side by side here.")] = None,
    jsonl: options.Jsonl = False,
) -> None:
    """GQA accuracy of a predictions file (no model runs): exact match with the answer after cleaning the
    prediction as the VQA script does, as LAVIS scores generated answers (GQA's own script compares raw strings).

    Overall, and for binary and open questions and per structural type when the file types its questions.
    Questions without a prediction are counted, warned about and left out (GQA's script refuses such a file);
    a prediction for a question not in the file is an error.

    Example: fusioncam eval gqa --questions testdev_balanced_questions.json --predictions predictions.json
    """
    from fusioncam.datasets import read_gqa_predictions, read_gqa_questions
    from fusioncam.vqa_accuracy import score_gqa

    _check_report(report)
    _check_report(chart)
    files = _named_files(predictions, "--predictions")
    try:
        asked = read_gqa_questions(questions)
        scores = {name: score_gqa(asked, read_gqa_predictions(path)) for name, path in files.items()}
    except ValueError as error:
        raise usage_error(str(error)) from None
    sources = {"questions_file": str(questions)}
    title = f"GQA accuracy on {questions.name} (%)"
    if _named_runs(scores, attrgetter("per_kind"), files, questions, report, chart, title, jsonl, sources):
        return
    ((name, scored),) = scores.items()
    by_kind = [
        [kind, str(scored.kind_counts[kind]), f"{scored.per_kind[kind]:.2f}"] for kind in sorted(scored.per_kind)
    ]
    types = [
        [f"type {kind}", str(scored.structural_type_counts[kind]), f"{scored.per_structural_type[kind]:.2f}"]
        for kind in sorted(scored.per_structural_type)
    ]
    print_table(
        ["questions", "count", "accuracy"],
        [*by_kind, *types, ["overall", str(len(scored.per_question)), f"{scored.overall:.2f}"]],
        title=str(files[name]),
    )


def _check_report(report: Path | None) -> None:
    """A report that cannot be written fails before any file is read, not after the scoring."""
    if report is not None and not report.parent.is_dir():
        raise usage_error(f"--report {report}: its folder {report.parent} does not exist")


def _warn_unanswered(unanswered: int, scored: int, questions: Path, predictions: Path) -> None:
    if unanswered:
        warn(
            f"{unanswered} of {unanswered + scored} questions in {questions} have no prediction in {predictions}; "
            f"the figures are over the {scored} that have one"
        )


def _write_report(report: Path | None, data: dict[str, object]) -> None:
    from fusioncam.files import write_json

    if report is None:
        return
    try:
        write_json(report, data)
    except OSError as error:
        raise fail(f"--report {report} cannot be written: {error.strerror or error}") from None


def _print_summary(result: dict[str, object], **sources: str) -> None:
    """The --jsonl line: every figure but the per-question ones (those go to --report), and the files scored."""
    print(json.dumps({key: value for key, value in result.items() if key != "per_question"} | sources))
