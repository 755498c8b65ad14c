"""Outputs of batch runs: the files written for each pair (pictures, raw maps, JSON records) and the records.

Every command writes under `--out` with suffixes of its own (see `_SUFFIXES`), and converts tensors to pixels and
arrays here, at the edge where they become files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fusioncam.api import Heatmap, Score
from fusioncam.explain.refine import Refined
from fusioncam.explain.render import captioned, contact_sheet, cutout, mask_overlay, overlay, peak_location, save_png
from fusioncam.files import atomically, stop_when_full, write_json
from fusioncam.inputs import Pair, image_label
from fusioncam.vqa import VQAResult


def _pixel(point: tuple[int, int]) -> dict[str, int]:
    return {"x": int(point[0]), "y": int(point[1])}


# File suffixes by command and kind of output. Each command has suffixes of its own, so that `heatmap`, `segment`
# and `vqa` of the same image and text can share an --out folder without overwriting each other's files.
_SUFFIXES: dict[str, dict[str, str]] = {
    "heatmap": {
        "overlay": ".overlay.png", "heatmap": ".heatmap.npy", "json": ".json", "words": ".words.png",
        "word_maps": ".words.npy", "mask": ".mask.png",
    },
    "segment": {
        "mask": ".segment-mask.png", "cutout": ".cutout.png", "segment": ".segment.png", "json": ".segment.json",
    },
    "vqa": {
        "overlay": ".question.png", "heatmap": ".question.npy", "answer_overlay": ".answer.png",
        "answer_map": ".answer.npy", "json": ".vqa.json",
    },
}  # fmt: skip


def _png(path: Path, pixels: np.ndarray) -> None:
    with atomically(path) as temporary:
        save_png(temporary, pixels)


def _npy(path: Path, array: np.ndarray) -> None:
    with atomically(path) as temporary:
        np.save(temporary, array)


def record_path(out_dir: Path, pair: Pair, command: str) -> Path:
    """Where the JSON record of `pair` under `command` is (or will be) written."""
    return _paths(out_dir, pair, command, "json")["json"]


def _paths(out_dir: Path, pair: Pair, command: str, *kinds: str) -> dict[str, Path]:
    base = out_dir / pair.stem
    with stop_when_full(base.parent):
        base.parent.mkdir(parents=True, exist_ok=True)
    return {kind: base.with_name(base.name + _SUFFIXES[command][kind]) for kind in kinds}


def _source(pair: Pair) -> dict:
    """Where a record's input came from, and the input record's own other fields (under `input`)."""
    return {"origin": pair.origin} | ({"input": pair.extra} if pair.extra else {})


def _record(pair: Pair, image: np.ndarray, result: Heatmap, model: str) -> dict:
    height, width = image.shape[:2]
    return score_record(pair, result, model) | {"block": result.block, "image_size": {"width": width, "height": height}}


def score_record(pair: Pair, result: Score | Heatmap, model: str) -> dict:
    """The record of `fusioncam score` (no files: scores only), which every explained pair's record starts with."""
    return {
        "image": image_label(pair.image),
        "text": pair.text,
        "cleaned_text": result.text,
        "truncated": result.truncated,
        "model": model,
        "itm_score": result.itm_score,
        "itc_score": result.itc_score,
    } | _source(pair)


def _sam_record(refined: Refined) -> dict:
    return {
        "points": [_pixel(point) for point in refined.points.round().int().tolist()],
        "weights": [round(float(weight), 6) for weight in refined.weights],
        "labels": [round(float(label), 6) for label in refined.labels],
        "mask_iou": float(refined.iou),
        "mask_area": float(refined.area),
    }


def _finish(record: dict, paths: dict[str, Path], run: dict | None, ident: str | None) -> dict:
    """The record with its output paths, the run's provenance (`run`: version, device, weights …) and the pair's
    id (what `--resume` matches: same input, same options), written as JSON after every other file."""
    record["outputs"] = {key: str(path) for key, path in paths.items()}
    if ident is not None:
        record["id"] = ident
    if run:
        record["run"] = run
    write_json(paths["json"], record)  # last: a record on disk means its files are whole
    return record


def write_heatmap(
    out_dir: Path,
    pair: Pair,
    image: np.ndarray,
    result: Heatmap,
    model: str,
    alpha: float = 0.5,
    colormap: str = "jet",
    refined: Refined | None = None,
    save_mask: bool = False,
    run: dict | None = None,
    ident: str | None = None,
) -> dict:
    """Overlay PNG at the image's resolution, raw map `.npy`, per-word sheet and maps, JSON; returns the record.

    With `refined` (encoder `esam`) the map is the SAM-refined one and the record gains the prompt points (image
    pixels), their weights, the chosen mask's predicted IoU and area; `save_mask` writes that mask as a PNG.
    The per-word sheet shows BLIP's own maps on one colour scale (a refined map is on another scale, [0, 1]),
    and says so when the overlay is the refined one.
    """
    kinds = ["overlay", "heatmap", "json"] + (["words", "word_maps"] if result.word_maps else [])
    paths = _paths(out_dir, pair, "heatmap", *kinds, *(["mask"] if refined is not None and save_mask else []))
    heatmap = (result.heatmap if refined is None else refined.heatmap).numpy()
    word_maps = [(word, word_map.numpy()) for word, word_map in result.word_maps]
    height, width = image.shape[:2]
    _png(paths["overlay"], overlay(image, heatmap, alpha=alpha, colormap=colormap))
    _npy(paths["heatmap"], heatmap.astype(np.float32))
    record = _record(pair, image, result, model)
    record["encoder"] = "blip" if refined is None else "esam"
    record["peak"] = _pixel(peak_location(heatmap, (height, width)))
    if refined is not None:
        record["sam"] = _sam_record(refined)
        if save_mask:
            _png(paths["mask"], refined.mask.numpy().astype(np.uint8) * 255)
    if result.word_maps:
        title = None if refined is None else "BLIP Grad-CAM maps; the SAM-refined sentence map is the .overlay.png"
        maps = [("sentence", result.heatmap.numpy()), *word_maps]
        _png(paths["words"], contact_sheet(image, maps, alpha=alpha, colormap=colormap, title=title))
        _npy(paths["word_maps"], np.stack([word_map for _, word_map in word_maps]).astype(np.float32))
        record["words"] = [
            {
                "word": word,
                "peak": _pixel(peak_location(word_map, (height, width))),
                "max": float(word_map.max()),
                "mean": float(word_map.mean()),
            }
            for word, word_map in word_maps
        ]
    return _finish(record, paths, run, ident)


def write_segment(
    out_dir: Path,
    pair: Pair,
    image: np.ndarray,
    result: Heatmap,
    refined: Refined,
    model: str,
    run: dict | None = None,
    ident: str | None = None,
) -> dict:
    """Mask PNG (0/255) at the image's resolution, the object cut out (RGBA), the mask over the image with the
    prompt points SAM was given (foreground clicks and the rest drawn apart), JSON."""
    paths = _paths(out_dir, pair, "segment", "mask", "cutout", "segment", "json")
    mask = refined.mask.numpy()
    _png(paths["mask"], mask.astype(np.uint8) * 255)
    _png(paths["cutout"], cutout(image, mask))
    marked = mask_overlay(image, mask, points=refined.points.numpy(), point_labels=refined.labels.numpy())
    _png(paths["segment"], marked)
    record = _record(pair, image, result, model) | {"sam": _sam_record(refined)}
    rows, cols = np.nonzero(mask)
    record["box"] = (
        {"x0": int(cols.min()), "y0": int(rows.min()), "x1": int(cols.max()) + 1, "y1": int(rows.max()) + 1}
        if len(rows)
        else None
    )
    return _finish(record, paths, run, ident)


def write_vqa(
    out_dir: Path,
    pair: Pair,
    image: np.ndarray,
    result: VQAResult,
    models: dict[str, str],
    alpha: float = 0.5,
    colormap: str = "jet",
    run: dict | None = None,
    ident: str | None = None,
) -> dict:
    """Question heatmap and answer map (overlays and raw maps), captions with their contributions, JSON.

    The answer map's picture carries the question and the answer, so that it can be shared on its own.
    """
    kinds = ["overlay", "heatmap", "json"] + (["answer_overlay", "answer_map"] if result.answer_map is not None else [])
    paths = _paths(out_dir, pair, "vqa", *kinds)
    heatmap = result.heatmap.numpy()
    _png(paths["overlay"], overlay(image, heatmap, alpha=alpha, colormap=colormap))
    _npy(paths["heatmap"], heatmap.astype(np.float32))
    height, width = image.shape[:2]
    record = {
        "image": image_label(pair.image),
        "question": pair.text,
        "answer": result.answer,
        "models": models,
        "image_size": {"width": width, "height": height},
        "peak": _pixel(peak_location(heatmap, (height, width))),
        "captions": [
            {"caption": item.caption, "contribution": item.contribution, "patches": item.patches}
            for item in result.evidence
        ],
        "seconds": {stage: round(value, 4) for stage, value in result.seconds.items()},
    } | _source(pair)
    if result.answer_map is not None:
        answer_map = result.answer_map.numpy()
        answer = overlay(image, answer_map, alpha=alpha, colormap=colormap)
        _png(paths["answer_overlay"], captioned(answer, [f"Q: {pair.text}", f"A: {result.answer}"]))
        _npy(paths["answer_map"], answer_map.astype(np.float32))
        record["answer_peak"] = _pixel(peak_location(answer_map, (height, width)))
    return _finish(record, paths, run, ident)
