"""The per-pair commands: `heatmap`, `segment`, `vqa` and `score`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from fusioncam.cli import options
from fusioncam.cli.common import check_device, check_out_dir, fail, loading, stderr, usage_error
from fusioncam.cli.loaders import check_block, load_matcher, refiner_for, run_info, sam_preset_name
from fusioncam.cli.run import (
    RunSettings,
    pair_inputs,
    parse_shard,
    report_end,
    run_task,
    warn_truncated,
)

if TYPE_CHECKING:
    from fusioncam.inputs import Failure, Pair


def heatmap(
    image: options.ImageArgument = None,
    text: Annotated[
        list[str] | None, typer.Argument(help="Text(s) to explain over the image(s).", show_default=False)
    ] = None,
    pairs: options.Pairs = None,
    recursive: options.Recursive = False,
    model: options.Model = "blip-itm-base",
    block: options.Block = 6,
    encoder: options.Encoder = "blip",
    fusion: options.Fusion = None,
    sam_model: options.SamModel = "vitt",
    points: options.Points = 5,
    sam_labels: options.SamLabels = "fork",
    sam_mask: options.SamMask = "first",
    sam_blend: options.SamBlend = "fork",
    save_mask: Annotated[
        bool, typer.Option("--save-mask/--no-save-mask", help="With --encoder esam: the SAM mask as PNG.")
    ] = False,
    out: options.Out = Path("fusioncam-out"),
    per_word: Annotated[
        bool, typer.Option("--per-word/--no-per-word", help="Also a map per word, and a contact sheet of them all.")
    ] = False,
    alpha: options.Alpha = 0.5,
    colormap: options.Colormap = "jet",
    device: options.Device = "auto",
    precision: options.Precision = "fp32",
    batch_size: options.BatchSize = 8,
    jsonl: options.Jsonl = False,
    quiet: options.Quiet = False,
    resume: options.Resume = False,
    shard: options.Shard = None,
    workers: options.Workers = 2,
    max_image_pixels: options.MaxImagePixels = None,
) -> None:
    """Grad-CAM heatmap of TEXT over IMAGE: overlay PNG, raw .npy map and a JSON record per pair.

    Examples:

      fusioncam heatmap dog.jpg "a dog running"

      fusioncam heatmap photos/ "a red car" --recursive --out maps/

      fusioncam heatmap dog.jpg "the dog" --encoder esam --save-mask

      jq -c '{image, text: .caption}' captions.jsonl | fusioncam heatmap - --jsonl
    """
    from fusioncam.runner import HeatmapTask

    if save_mask and encoder != "esam":
        raise usage_error("--save-mask needs --encoder esam (the mask comes from EfficientSAM)")
    device = check_device(device)
    inputs, total = pair_inputs(image, text or [], pairs, recursive)
    check_out_dir(out)
    matcher = load_matcher(model, device, encoder, fusion, sam_model, precision)
    check_block(matcher, block)
    refiner = refiner_for(encoder, sam_model, device, points, sam_labels, sam_mask, sam_blend, matcher.precision)
    run = run_info(matcher, fusion, itm=model, **({"sam": sam_preset_name(sam_model)} if encoder != "blip" else {}))
    settings = RunSettings.for_out(out, resume, shard, workers)
    sam_options = {"points": points, "sam_labels": sam_labels, "sam_mask": sam_mask, "sam_blend": sam_blend}
    results = {"block": block, "encoder": encoder, "per_word": per_word, "alpha": alpha, "colormap": colormap}
    results |= {"save_mask": save_mask, "weights": run["weights"], "precision": run["precision"]}
    task = HeatmapTask(
        matcher, out, block, per_word, refiner, alpha, colormap, save_mask, run, on_truncated=warn_truncated,
        options=results | (sam_options if encoder == "esam" else {}),
    )  # fmt: skip
    result = run_task(inputs, total, task, batch_size, jsonl, quiet, settings)
    columns = {
        "image": lambda r: r["image"], "text": lambda r: r["text"], "ITM": lambda r: f"{r['itm_score']:.3f}",
        "ITC": lambda r: f"{r['itc_score']:.3f}", "peak (x, y)": lambda r: f"{r['peak']['x']}, {r['peak']['y']}",
        "overlay": lambda r: r["outputs"]["overlay"],
    }  # fmt: skip
    report_end(result, "heatmap(s)", out, None if jsonl else columns)


def segment(
    image: options.ImageArgument = None,
    text: Annotated[
        list[str] | None, typer.Argument(help="Text(s) naming the object to cut out.", show_default=False)
    ] = None,
    pairs: options.Pairs = None,
    recursive: options.Recursive = False,
    model: options.Model = "blip-itm-base",
    block: options.Block = 6,
    sam_model: options.SamModel = "vitt",
    points: options.Points = 5,
    sam_labels: options.SamLabels = "fork",
    sam_mask: options.SamMask = "first",
    out: options.Out = Path("fusioncam-out"),
    device: options.Device = "auto",
    precision: options.Precision = "fp32",
    batch_size: options.BatchSize = 8,
    jsonl: options.Jsonl = False,
    quiet: options.Quiet = False,
    resume: options.Resume = False,
    shard: options.Shard = None,
    workers: options.Workers = 2,
    max_image_pixels: options.MaxImagePixels = None,
) -> None:
    """Text-prompted object mask: BLIP heatmap of TEXT → peaks → EfficientSAM mask of the object.

    Writes per pair the mask (PNG, 0/255, image resolution), the object cut out (RGBA PNG), the mask over the
    image with the prompt points, and a JSON record (prompt points, mask IoU estimate, area, box).

    Example: fusioncam segment dogs.jpg "the stick" --out masks/
    """
    from fusioncam.runner import SegmentTask

    device = check_device(device)
    inputs, total = pair_inputs(image, text or [], pairs, recursive)
    check_out_dir(out)
    matcher = load_matcher(model, device, precision=precision)
    check_block(matcher, block)
    refiner = refiner_for("esam", sam_model, device, points, sam_labels, sam_mask, precision=matcher.precision)
    assert refiner is not None
    run = run_info(matcher, None, itm=model, sam=sam_preset_name(sam_model))
    settings = RunSettings.for_out(out, resume, shard, workers)
    results = {"block": block, "points": points, "sam_labels": sam_labels, "sam_mask": sam_mask}
    results |= {"weights": run["weights"], "precision": run["precision"]}
    task = SegmentTask(matcher, refiner, out, block, run, on_truncated=warn_truncated, options=results)
    result = run_task(inputs, total, task, batch_size, jsonl, quiet, settings)
    columns = {
        "image": lambda r: r["image"], "text": lambda r: r["text"], "ITM": lambda r: f"{r['itm_score']:.3f}",
        "mask area": lambda r: f"{r['sam']['mask_area']:.1%}", "SAM IoU": lambda r: f"{r['sam']['mask_iou']:.3f}",
        "mask": lambda r: r["outputs"]["mask"],
    }  # fmt: skip
    report_end(result, "mask(s)", out, None if jsonl else columns)


def vqa(
    image: options.ImageArgument = None,
    question: Annotated[
        list[str] | None,
        typer.Argument(help="Question(s) asked of the image (or of every image of a folder).", show_default=False),
    ] = None,
    pairs: options.QuestionPairs = None,
    recursive: options.Recursive = False,
    questions: Annotated[
        Path | None,
        typer.Option(
            help="A VQAv2 or OK-VQA questions file (v2_OpenEnded_mscoco_val2014_questions.json, "
            "OpenEnded_mscoco_val2014_questions.json) or a GQA question file (testdev_balanced_questions.json): "
            "answer every question, images from --images.",
        ),
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option(help="With --questions: the folder of the split's images (COCO: e.g. val2014/; GQA: images/)."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="With --questions: only N questions, drawn with --seed, in file order.")
    ] = None,
    results_file: Annotated[
        Path | None,
        typer.Option(
            "--results",
            help='With --questions: the answers as the benchmark\'s results file, [{"question_id", "answer"}, …] '
            '(VQA) or [{"questionId", "prediction"}, …] (GQA); default: vqa-results.json under --out, ready for '
            "`fusioncam eval vqa|gqa --predictions`.",
        ),
    ] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="BLIP ITM preset whose heatmap picks patches.")] = (
        "blip-itm-large"
    ),
    caption_model: Annotated[str, typer.Option(help="BLIP caption preset.")] = "blip-caption-large",
    qa_model: Annotated[str, typer.Option(help="UnifiedQA preset (base, large, 3b).")] = "unifiedqa-v2-t5-base",
    encoder: options.Encoder = "blip",
    fusion: options.Fusion = None,
    sam_model: options.SamModel = "vitt",
    points: options.Points = 5,
    sam_labels: options.SamLabels = "fork",
    sam_mask: options.SamMask = "first",
    sam_blend: options.SamBlend = "fork",
    block: Annotated[int, typer.Option(min=0, help="ITM block of the question heatmap (PNP-VQA: 7).")] = 7,
    num_captions: Annotated[int, typer.Option(min=1, help="Distinct captions per question.")] = 100,
    num_patches: Annotated[int, typer.Option(min=1, help="Patches sampled for each caption.")] = 20,
    captions_per_passage: Annotated[int, typer.Option(min=1, help="Captions per FiD passage.")] = 1,
    caption_min_length: Annotated[int, typer.Option(min=1, help="Shortest caption, prompt included.")] = 10,
    caption_max_length: Annotated[int, typer.Option(min=2, help="Longest caption, prompt included.")] = 20,
    top_k: Annotated[int, typer.Option(min=0, help="Caption sampling: top-k (0 = off).")] = 50,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0, help="Caption sampling: nucleus mass.")] = 1.0,
    repetition_penalty: Annotated[float, typer.Option(min=1.0, help="Caption sampling: repetition penalty.")] = 1.0,
    answer_beams: Annotated[int, typer.Option(min=1, help="Beams for the answer (1 = greedy).")] = 1,
    explain: Annotated[
        bool, typer.Option("--explain/--no-explain", help="Measure each caption's contribution; draw the answer map.")
    ] = True,
    seed: Annotated[int, typer.Option(help="Seed of patch and caption sampling (same seed, same answer).")] = 0,
    out: options.Out = Path("fusioncam-out"),
    alpha: options.Alpha = 0.5,
    colormap: options.Colormap = "jet",
    device: options.Device = "auto",
    precision: options.Precision = "fp32",
    batch_size: Annotated[int, typer.Option(min=1, help="Questions answered together.")] = 4,
    jsonl: options.Jsonl = False,
    quiet: options.Quiet = False,
    resume: options.Resume = False,
    shard: options.Shard = None,
    workers: options.Workers = 2,
    max_image_pixels: options.MaxImagePixels = None,
) -> None:
    """Answer QUESTION about IMAGE the PNP-VQA way, and show where the answer came from.

    The question's heatmap picks the patches each caption is decoded from; UnifiedQA reads the captions
    (Fusion-in-Decoder) and answers. Per question it writes the heatmap and the answer map (each caption's
    contribution to the answer, spread over the patches it came from) as overlays and raw maps, and a JSON
    record with the captions, their contributions and the time per stage.

    Examples:

      fusioncam vqa dogs.jpg "what are the dogs carrying?" "how many dogs are there?"

      fusioncam vqa - --jsonl < questions.jsonl     # {"image": ..., "question": ...} per line

      fusioncam vqa --questions v2_OpenEnded_mscoco_val2014_questions.json --images coco/val2014 --limit 1000
    """
    import torch

    from fusioncam.api import load_captioner, load_qa
    from fusioncam.runner import VQATask
    from fusioncam.vqa import PNPVQA, VQAConfig

    if caption_min_length > caption_max_length:
        raise usage_error("--caption-min-length exceeds --caption-max-length")
    device = check_device(device)
    if questions is not None:
        if image is not None or pairs is not None:
            raise usage_error("give IMAGE QUESTION, --pairs or --questions, one of them")
        inputs, total = dataset_questions(questions, images, limit, seed)
    elif images is not None or limit is not None or results_file is not None:
        raise usage_error("--images, --limit and --results go with --questions (a VQAv2 or OK-VQA questions file)")
    else:
        inputs, total = pair_inputs(image, question or [], pairs, recursive, text_key="question")
    check_out_dir(out)
    matcher = load_matcher(model, device, encoder, fusion, sam_model, precision)
    check_block(matcher, block)
    refiner = refiner_for(encoder, sam_model, device, points, sam_labels, sam_mask, sam_blend, matcher.precision)
    captioner = loading(caption_model, load_captioner, caption_model, device=device, precision=matcher.precision)
    answerer = loading(qa_model, load_qa, qa_model, device=device, precision=matcher.precision)
    grid = matcher.model.grid_size
    config = VQAConfig(
        block=block,
        num_captions=num_captions,
        num_patches=min(num_patches, grid[0] * grid[1]),
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
    sam = {"sam": sam_preset_name(sam_model)} if encoder != "blip" else {}
    run = run_info(matcher, fusion, itm=model, caption=caption_model, qa=qa_model, **sam)
    settings = RunSettings.for_out(out, resume, shard, workers)
    results = asdict(config) | {"encoder": encoder, "seed": seed, "alpha": alpha, "colormap": colormap}
    results |= {"weights": run["weights"], "precision": run["precision"], "batch_size": batch_size}
    task = VQATask(pipeline, out, models, torch.Generator().manual_seed(seed), alpha, colormap, run, options=results)
    result = run_task(inputs, total, task, batch_size, jsonl, quiet, settings)
    if questions is not None:
        write_results(results_file or out / "vqa-results.json", result.records)
    columns = {
        "image": lambda r: r["image"], "question": lambda r: r["question"], "answer": lambda r: r["answer"],
        "answer map": lambda r: r["outputs"].get("answer_overlay", ""),
    }  # fmt: skip
    report_end(result, "answer(s)", out, None if jsonl else columns)


def dataset_questions(
    questions: Path, images: Path | None, limit: int | None, seed: int
) -> tuple[Iterator[Pair | Failure], int | None]:
    """The questions of a VQAv2/OK-VQA questions file or of a GQA question file as pairs, each record carrying
    its question id under the key its benchmark's results file uses (`question_id`, GQA's `questionId`), `limit`
    of them drawn with `seed`; every image checked before a model loads."""
    from fusioncam.datasets import DatasetError, read_gqa_questions, read_vqa_questions
    from fusioncam.inputs import Pair, seeded_sample

    if images is None:
        raise usage_error("--questions needs --images, the folder of the split's images (e.g. coco/val2014)")
    try:
        asked: list = read_vqa_questions(questions)
        key = "question_id"
    except DatasetError as vqa_error:
        try:  # not VQA's layout: GQA's, or a damaged file, which VQA's complaint then names
            asked, key = read_gqa_questions(questions), "questionId"
        except DatasetError:
            raise usage_error(f"{vqa_error} (nor is it a GQA question file)") from None
    asked = seeded_sample(asked, limit, seed)
    paths = {question.image_id: question.image_path(images) for question in asked}
    if missing := [path for path in paths.values() if not path.is_file()]:
        raise usage_error(f"{len(missing)} of the {len(paths)} images of {questions} are not there, e.g. {missing[0]}")
    listed = [
        Pair(paths[q.image_id], q.question, f"{questions.name}:{q.question_id}", Path(str(q.question_id)),
             {key: q.question_id})
        for q in asked
    ]  # fmt: skip
    return iter(listed), len(listed)


def write_results(path: Path, records: list[dict]) -> None:
    """The run's answers (resumed ones included), in input order, as the benchmark's results file: VQA's
    `[{"question_id", "answer"}]` or GQA's `[{"questionId", "prediction"}]`."""
    from fusioncam.files import write_json

    answers = [
        {"question_id": record["input"]["question_id"], "answer": record["answer"]}
        if "question_id" in record["input"]
        else {"questionId": record["input"]["questionId"], "prediction": record["answer"]}
        for record in records
    ]
    try:
        write_json(path, answers)
    except OSError as error:
        raise fail(f"--results {path} cannot be written: {error.strerror or error}") from None
    stderr.print(f"{len(answers)} answers in the official results format: {escape(str(path))}")


def score(
    image: options.ImageArgument = None,
    texts: Annotated[
        list[str] | None, typer.Argument(help="One or more texts to score against the image(s).", show_default=False)
    ] = None,
    pairs: options.Pairs = None,
    recursive: options.Recursive = False,
    model: options.Model = "blip-itm-base",
    device: options.Device = "auto",
    precision: options.Precision = "fp32",
    batch_size: options.BatchSize = 32,
    jsonl: options.Jsonl = False,
    quiet: options.Quiet = False,
    shard: options.Shard = None,
    workers: options.Workers = 2,
    max_image_pixels: options.MaxImagePixels = None,
) -> None:
    """ITM match probability and ITC similarity of each TEXT with IMAGE (a file, a folder, or JSONL on stdin).

    Examples:

      fusioncam score dog.jpg "a dog" "a cat" "a dog on a beach"

      fusioncam score photos/ "a red car" --recursive --jsonl
    """
    from fusioncam.runner import ScoreTask

    device = check_device(device)
    inputs, total = pair_inputs(image, texts or [], pairs, recursive)
    matcher = load_matcher(model, device, precision=precision)
    run = run_info(matcher, None, itm=model)
    task = ScoreTask(matcher, run, on_truncated=warn_truncated, options={"weights": run["weights"]})
    settings = RunSettings(shard=parse_shard(shard), workers=workers)
    result = run_task(inputs, total, task, batch_size, jsonl, quiet, settings)
    result.records.sort(key=lambda r: (r["image"], -r["itm_score"]))  # each image's best match first
    columns = {
        "image": lambda r: r["image"], "text": lambda r: r["text"], "ITM match": lambda r: f"{r['itm_score']:.4f}",
        "ITC similarity": lambda r: f"{r['itc_score']:.4f}",
    }  # fmt: skip
    report_end(result, "pair(s) scored", None, None if jsonl else columns)
