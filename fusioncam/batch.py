"""Inputs and outputs of batch runs: which (image, text) pairs to process and where their results go.

Pairs come from one image file, a folder of images (optionally recursive), an image URL, the bytes of one image on
stdin, or JSONL records `{"image": ..., "text": ...}` from a file or stdin (an image there may be a URL too). Bad
records do not stop a run: they become `Failure`s, reported with their reason while every other pair is processed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import TextIO

import numpy as np

from fusioncam.api import Heatmap, Score
from fusioncam.explain.refine import Refined
from fusioncam.explain.render import captioned, contact_sheet, cutout, mask_overlay, overlay, peak_location, save_png
from fusioncam.images import STDIN, is_url
from fusioncam.vqa import VQAResult

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jp2", ".pgm", ".ppm"})


@dataclass(frozen=True)
class Pair:
    """One unit of work: an image, a text, and a short name for its output files.

    `extra` holds the other fields of the JSONL record it came from (a scene id, a ground-truth answer …), copied
    into its result record so that results can be joined back to their inputs.
    """

    image: Path | str  # a file, or a URL, or STDIN (one image's bytes on standard input)
    text: str
    origin: str  # where it came from, for messages: a path, or "stdin:3"
    stem: Path  # output path stem relative to --out, without suffixes
    extra: dict = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class Failure:
    """An input that could not be processed, and why."""

    origin: str
    reason: str
    image: str | None = None
    text: str | None = None


def image_label(image: Path | str) -> str:
    """How a record names its image, the same whatever the input source: a file's absolute path, a URL as given,
    or "stdin"."""
    if image == STDIN:
        return "stdin"
    return image if is_url(image) else os.path.abspath(image)


_NOT_A_LETTER = re.compile(r"[\W_]+")  # keeps letters and digits of every script
_MAX_PART_BYTES = 96  # image part and text part of a file name: with suffixes, far below the usual 255 bytes


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:10]


def _shorten(name: str, original: str, limit: int = _MAX_PART_BYTES) -> str:
    """`name` cut to `limit` UTF-8 bytes on a character boundary, marked with `~` and a hash of `original`."""
    room = limit - 11
    cut = name.encode("utf-8", "surrogateescape")[:room].decode("utf-8", "ignore").rstrip("-")
    return f"{cut}~{_digest(original)}"


def slug(text: str) -> str:
    """A file-name part for `text` that no other text shares.

    Lowercase letters and digits (of any script: "犬" stays "犬") joined by `-`. When that is not the text itself
    (capitals, punctuation, spaces, a long text) a `~` and a hash of the exact text follow, so "A Dog!", "a dog" and
    "a  dog?" get three names. Never contains `/`, `.`, `_` or a leading `-`, so it cannot leave the output folder
    and the `__` before it in a file name is unambiguous.
    """
    readable = _NOT_A_LETTER.sub("-", unicodedata.normalize("NFC", text).lower()).strip("-")
    if readable == text and len(text.encode("utf-8", "surrogateescape")) <= _MAX_PART_BYTES:
        return readable
    return _shorten(readable or "text", text)


def _image_part(name: str) -> str:
    """An image file's name as the first part of its outputs' names (the suffix kept: a.jpg and a.png differ)."""
    return name if len(name.encode("utf-8", "surrogateescape")) <= _MAX_PART_BYTES else _shorten(name, name)


def _stem(image: Path, text: str, relative_to: Path | None) -> Path:
    relative = image.relative_to(relative_to) if relative_to else Path(image.name)
    return relative.parent / f"{_image_part(relative.name)}__{slug(text)}"


def folder_images(folder: Path, recursive: bool) -> list[Path]:
    """Image files of a folder in a stable order (hidden files skipped)."""
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        path
        for path in candidates
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
    )


def _url_name(url: str) -> str:
    return Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name or "image"


def pairs_from_source(source: str, texts: list[str]) -> Iterator[Pair]:
    """Every text against an image that is not a file: a URL, or STDIN."""
    name = "stdin" if source == STDIN else _url_name(source)
    for text in texts:
        yield Pair(source, text, source if source != STDIN else "stdin", Path(f"{_image_part(name)}__{slug(text)}"))


def pairs_from_path(image: Path, texts: list[str], recursive: bool = False) -> Iterator[Pair]:
    """Every text against one image, or against every image of a folder."""
    if image.is_dir():
        for path in folder_images(image, recursive):
            for text in texts:
                yield Pair(path, text, str(path), _stem(path, text, image))
    else:
        for text in texts:
            yield Pair(image, text, str(image), _stem(image, text, None))


def pairs_from_jsonl(lines: Iterable[str], name: str, base: Path, text_key: str = "text") -> Iterator[Pair | Failure]:
    """Records `{"image": path, text_key: ...}`; relative image paths are relative to `base`."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        origin = f"{name}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            yield Failure(origin, f"not JSON: {error.msg} at column {error.colno}")
            continue
        if not isinstance(record, dict):
            yield Failure(origin, f"expected a JSON object, got {type(record).__name__}")
            continue
        image, text = record.get("image"), record.get(text_key)
        if not isinstance(image, str) or not image:
            yield Failure(origin, 'missing "image" (a path)', text=text if isinstance(text, str) else None)
            continue
        if not isinstance(text, str) or not text.strip():
            yield Failure(origin, f'missing "{text_key}" (a non-empty string)', image=image)
            continue
        source: Path | str = image if is_url(image) else Path(image) if Path(image).is_absolute() else base / image
        file_name = _url_name(image) if is_url(image) else Path(image).name
        extra = {key: value for key, value in record.items() if key not in ("image", text_key)}
        yield Pair(source, text, origin, Path(f"{number:06d}-{_image_part(file_name)}__{slug(text)}"), extra)


def read_jsonl(stream: TextIO, name: str, base: Path, text_key: str = "text") -> Iterator[Pair | Failure]:
    """Stream records as they arrive (a pipeline's upstream may still be writing)."""
    return pairs_from_jsonl(iter(stream.readline, ""), name, base, text_key)


def batched(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive chunks of at most `size` items."""
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


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


def _paths(out_dir: Path, pair: Pair, command: str, *kinds: str) -> dict[str, Path]:
    base = out_dir / pair.stem
    base.parent.mkdir(parents=True, exist_ok=True)
    return {kind: base.with_name(base.name + _SUFFIXES[command][kind]) for kind in kinds}


def _source(pair: Pair) -> dict:
    """Where a record's input came from, and the input record's own other fields (under `input`)."""
    return {"origin": pair.origin} | ({"input": pair.extra} if pair.extra else {})


def _record(pair: Pair, image: np.ndarray, result: Heatmap, model: str) -> dict:
    height, width = image.shape[:2]
    return {
        "image": image_label(pair.image),
        "text": pair.text,
        "cleaned_text": result.text,
        "truncated": result.truncated,
        "model": model,
        "block": result.block,
        "itm_score": result.itm_score,
        "itc_score": result.itc_score,
        "image_size": {"width": width, "height": height},
    } | _source(pair)


def score_record(pair: Pair, result: Score, model: str) -> dict:
    """The record of `fusioncam score` (no files: scores only)."""
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


def _finish(record: dict, paths: dict[str, Path], run: dict | None) -> dict:
    """The record with its output paths and the run's provenance (`run`: version, device, weights …), as JSON."""
    record["outputs"] = {key: str(path) for key, path in paths.items()}
    if run:
        record["run"] = run
    paths["json"].write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
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
) -> dict:
    """Overlay PNG at the image's resolution, raw map `.npy`, per-word sheet and maps, JSON; returns the record.

    With `refined` (encoder `esam`) the map is the SAM-refined one and the record gains the prompt points (image
    pixels), their weights, the chosen mask's predicted IoU and area; `save_mask` writes that mask as a PNG.
    The per-word sheet shows BLIP's own maps on one colour scale (a refined map is on another scale, [0, 1]),
    and says so when the overlay is the refined one.
    """
    kinds = ["overlay", "heatmap", "json"] + (["words", "word_maps"] if result.word_maps else [])
    paths = _paths(out_dir, pair, "heatmap", *kinds, *(["mask"] if refined is not None and save_mask else []))
    heatmap = result.heatmap if refined is None else refined.heatmap.numpy()
    height, width = image.shape[:2]
    save_png(paths["overlay"], overlay(image, heatmap, alpha=alpha, colormap=colormap))
    np.save(paths["heatmap"], heatmap.astype(np.float32))
    record = _record(pair, image, result, model)
    record["encoder"] = "blip" if refined is None else "esam"
    record["peak"] = _pixel(peak_location(heatmap, (height, width)))
    if refined is not None:
        record["sam"] = _sam_record(refined)
        if save_mask:
            save_png(paths["mask"], refined.mask.numpy().astype(np.uint8) * 255)
    if result.word_maps:
        title = None if refined is None else "BLIP Grad-CAM maps; the SAM-refined sentence map is the .overlay.png"
        maps = [("sentence", result.heatmap), *result.word_maps]
        save_png(paths["words"], contact_sheet(image, maps, alpha=alpha, colormap=colormap, title=title))
        np.save(paths["word_maps"], np.stack([word_map for _, word_map in result.word_maps]).astype(np.float32))
        record["words"] = [
            {
                "word": word,
                "peak": _pixel(peak_location(word_map, (height, width))),
                "max": float(word_map.max()),
                "mean": float(word_map.mean()),
            }
            for word, word_map in result.word_maps
        ]
    return _finish(record, paths, run)


def write_segment(
    out_dir: Path, pair: Pair, image: np.ndarray, result: Heatmap, refined: Refined, model: str, run: dict | None = None
) -> dict:
    """Mask PNG (0/255) at the image's resolution, the object cut out (RGBA), the mask over the image with the
    prompt points SAM was given (foreground clicks and the rest drawn apart), JSON."""
    paths = _paths(out_dir, pair, "segment", "mask", "cutout", "segment", "json")
    mask = refined.mask.numpy()
    save_png(paths["mask"], mask.astype(np.uint8) * 255)
    save_png(paths["cutout"], cutout(image, mask))
    marked = mask_overlay(image, mask, points=refined.points.numpy(), point_labels=refined.labels.numpy())
    save_png(paths["segment"], marked)
    record = _record(pair, image, result, model) | {"sam": _sam_record(refined)}
    rows, cols = np.nonzero(mask)
    record["box"] = (
        {"x0": int(cols.min()), "y0": int(rows.min()), "x1": int(cols.max()) + 1, "y1": int(rows.max()) + 1}
        if len(rows)
        else None
    )
    return _finish(record, paths, run)


def write_vqa(
    out_dir: Path,
    pair: Pair,
    image: np.ndarray,
    result: VQAResult,
    models: dict[str, str],
    alpha: float = 0.5,
    colormap: str = "jet",
    run: dict | None = None,
) -> dict:
    """Question heatmap and answer map (overlays and raw maps), captions with their contributions, JSON.

    The answer map's picture carries the question and the answer, so that it can be shared on its own.
    """
    kinds = ["overlay", "heatmap", "json"] + (["answer_overlay", "answer_map"] if result.answer_map is not None else [])
    paths = _paths(out_dir, pair, "vqa", *kinds)
    save_png(paths["overlay"], overlay(image, result.heatmap, alpha=alpha, colormap=colormap))
    np.save(paths["heatmap"], result.heatmap.astype(np.float32))
    height, width = image.shape[:2]
    record = {
        "image": image_label(pair.image),
        "question": pair.text,
        "answer": result.answer,
        "models": models,
        "image_size": {"width": width, "height": height},
        "peak": _pixel(peak_location(result.heatmap, (height, width))),
        "captions": [
            {"caption": item.caption, "contribution": item.contribution, "patches": item.patches}
            for item in result.evidence
        ],
        "seconds": {stage: round(value, 4) for stage, value in result.seconds.items()},
    } | _source(pair)
    if result.answer_map is not None:
        answer = overlay(image, result.answer_map, alpha=alpha, colormap=colormap)
        save_png(paths["answer_overlay"], captioned(answer, [f"Q: {pair.text}", f"A: {result.answer}"]))
        np.save(paths["answer_map"], result.answer_map.astype(np.float32))
        record["answer_peak"] = _pixel(peak_location(result.answer_map, (height, width)))
    return _finish(record, paths, run)
