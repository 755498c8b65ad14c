"""`fusioncam eval pointing|itm|retrieval|vqa|gqa`: how well heatmaps localise, how well ITM tells true pairs from
false ones, how well the matcher retrieves on COCO and Flickr30k, and how well answers score on VQAv2, OK-VQA and GQA,
by the published metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer

from fusioncam.cli import options
from fusioncam.cli.common import fail, print_table, progress, usage_error, warn
from fusioncam.cli.loaders import check_block, load_matcher, refiner_for, run_info, sam_preset_name

app = typer.Typer(
    help="Measure how well heatmaps localise, how well ITM matches and retrieves, and score VQA and GQA answers.",
    no_args_is_help=True,
)

Report = Annotated[
    Path | None,
    typer.Option(help='Write {"overall", per-type figures, "per_question": {"<question id>": percent}} as JSON here.'),
]


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
    compile_encoder: options.Compile = False,
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
    matcher = load_matcher(model, device, encoder, fusion, sam_model, precision, compile_encoder)
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
    compile_encoder: options.Compile = False,
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
    matcher = load_matcher(model, device, encoder, fusion, sam_model, precision, compile_encoder)
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
    encoder: Annotated[Literal["blip", "fused"], typer.Option(help="blip or fused (needs --fusion).")] = "blip",
    fusion: options.Fusion = None,
    sam_model: options.SamModel = "vitt",
    device: options.Device = "auto",
    precision: options.Precision = "fp32",
    compile_encoder: options.Compile = False,
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
    matcher = load_matcher(model, device, encoder, fusion, sam_model, precision, compile_encoder)
    with progress("encoding", len(split.images) + len(split.texts), quiet) as bar:
        try:
            features = encode_split(matcher, split, images, batch_size, bar.advance)
        except ImageDecodeError as error:
            raise fail(error) from None
    candidates = shortlist(features, k_test)
    with progress("re-ranking", int(candidates.pairs().sum()), quiet) as bar:
        scores = rerank(matcher, features, candidates, batch_size, bar.advance)
    figures = retrieval_metrics(scores, split).to_dict()
    settings = {
        "model": matcher.name,
        "encoder": encoder,
        "precision": matcher.precision,
        "data": str(data),
        "images": str(images),
        "num_images": len(split.images),
        "num_texts": len(split.texts),
        "k_test": k_test,
        "max_words": max_words,
        "limit": limit,
        "seed": seed if limit is not None else None,
        "run": run_info(matcher, fusion, itm=model, **({"sam": sam_preset_name(sam_model)} if fusion else {})),
    }
    _write_report(report, figures | settings)
    if jsonl:
        print(json.dumps(figures | settings))
        return
    names = [name for name in figures if name != "agg_metrics"]
    print_table(names, [[f"{figures[name]:.2f}" for name in names]], title=f"{data} ({len(split.images)} images)")


@app.command("vqa")
def eval_vqa(
    annotations: Annotated[
        Path,
        typer.Option(help="Annotations file of the split, e.g. v2_mscoco_val2014_annotations.json (VQAv2, OK-VQA)."),
    ],
    predictions: Annotated[Path, typer.Option(help='Results file: [{"question_id": int, "answer": str}, …].')],
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
    jsonl: options.Jsonl = False,
) -> None:
    """VQA accuracy of a results file, as the official VQA evaluation script computes it (no model runs).

    Overall and per answer type, in percent rounded to two decimals. The official script refuses a results file
    that does not answer every annotated question; here the unanswered ones are counted, warned about and left
    out of every figure, which is then comparable with published ones only when that count is 0. An answer to a
    question that is not annotated is an error.

    Example: fusioncam eval vqa --annotations v2_mscoco_val2014_annotations.json --predictions results.json
    """
    from fusioncam.datasets import read_vqa_annotations, read_vqa_predictions, read_vqa_questions
    from fusioncam.vqa_accuracy import score_vqa

    _check_report(report)
    try:
        asked = read_vqa_questions(questions) if questions is not None else None
        scores = score_vqa(read_vqa_annotations(annotations, asked), read_vqa_predictions(predictions), script)
    except ValueError as error:
        raise usage_error(str(error)) from None
    _warn_unanswered(len(scores.unanswered), len(scores.per_question), annotations, predictions)
    result = scores.to_dict()
    _write_report(report, result)
    if jsonl:
        _print_summary(result, script=script, annotations=str(annotations), predictions=str(predictions))
        return
    counts = scores.answer_type_counts
    rows = [[name, str(counts[name]), f"{scores.per_answer_type[name]:.2f}"] for name in sorted(counts)]
    print_table(
        ["answer type", "questions", "accuracy"],
        [*rows, ["overall", str(len(scores.per_question)), f"{scores.overall:.2f}"]],
        title=str(predictions),
    )


@app.command("gqa")
def eval_gqa(
    questions: Annotated[
        Path, typer.Option(help="GQA question file with answers, e.g. testdev_balanced_questions.json.")
    ],
    predictions: Annotated[
        Path, typer.Option(help='[{"questionId", "prediction"}, …] (GQA\'s format) or [{"question_id", "answer"}, …].')
    ],
    report: Report = None,
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
    try:
        scores = score_gqa(read_gqa_questions(questions), read_gqa_predictions(predictions))
    except ValueError as error:
        raise usage_error(str(error)) from None
    _warn_unanswered(len(scores.unanswered), len(scores.per_question), questions, predictions)
    result = scores.to_dict()
    _write_report(report, result)
    if jsonl:
        _print_summary(result, questions_file=str(questions), predictions=str(predictions))
        return
    kinds = [[name, str(scores.kind_counts[name]), f"{scores.per_kind[name]:.2f}"] for name in sorted(scores.per_kind)]
    types = [
        [f"type {name}", str(scores.structural_type_counts[name]), f"{scores.per_structural_type[name]:.2f}"]
        for name in sorted(scores.per_structural_type)
    ]
    print_table(
        ["questions", "count", "accuracy"],
        [*kinds, *types, ["overall", str(len(scores.per_question)), f"{scores.overall:.2f}"]],
        title=str(predictions),
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
