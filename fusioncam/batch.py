"""Inputs and outputs of batch runs: which (image, text) pairs to process and where their results go.

Pairs come from one image file, a folder of images (optionally recursive), or JSONL records
`{"image": ..., "text": ...}` from a file or stdin. Bad records do not stop a run: they become `Failure`s,
reported with their reason while every other pair is processed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TextIO

import numpy as np

from fusioncam.api import Heatmap
from fusioncam.explain.render import contact_sheet, overlay, peak_location, save_png

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jp2", ".pgm", ".ppm"})


@dataclass(frozen=True)
class Pair:
    """One unit of work: an image, a text, and a short name for its output files."""

    image: Path
    text: str
    origin: str  # where it came from, for messages: a path, or "stdin:3"
    stem: Path  # output path stem relative to --out, without suffixes


@dataclass(frozen=True)
class Failure:
    """An input that could not be processed, and why."""

    origin: str
    reason: str
    image: str | None = None
    text: str | None = None


def slug(text: str, limit: int = 48) -> str:
    """A file-name-safe version of `text`; long texts keep a short hash so that names stay unique."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "text"
    if len(cleaned) <= limit:
        return cleaned
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    return f"{cleaned[:limit].rstrip('-')}-{digest}"


def _stem(image: Path, text: str, relative_to: Path | None) -> Path:
    relative = image.relative_to(relative_to) if relative_to else Path(image.name)
    return relative.parent / f"{relative.stem}__{slug(text)}"


def folder_images(folder: Path, recursive: bool) -> list[Path]:
    """Image files of a folder in a stable order (hidden files skipped)."""
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        path
        for path in candidates
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
    )


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
        path = Path(image) if Path(image).is_absolute() else base / image
        yield Pair(path, text, origin, Path(f"{number:06d}-{path.stem}__{slug(text)}"))


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


def write_heatmap(
    out_dir: Path,
    pair: Pair,
    image: np.ndarray,
    result: Heatmap,
    model: str,
    alpha: float = 0.5,
    colormap: str = "jet",
) -> dict:
    """Overlay PNG at the image's resolution, raw sentence map `.npy`, per-word sheet, JSON; returns the record."""
    base = out_dir / pair.stem
    base.parent.mkdir(parents=True, exist_ok=True)
    paths = {
        "overlay": base.with_name(base.name + ".overlay.png"),
        "heatmap": base.with_name(base.name + ".heatmap.npy"),
        "json": base.with_name(base.name + ".json"),
    }
    height, width = image.shape[:2]
    save_png(paths["overlay"], overlay(image, result.heatmap, alpha=alpha, colormap=colormap))
    np.save(paths["heatmap"], result.heatmap.astype(np.float32))
    record: dict = {
        "image": str(pair.image),
        "text": pair.text,
        "cleaned_text": result.text,
        "model": model,
        "block": result.block,
        "itm_score": result.itm_score,
        "itc_score": result.itc_score,
        "image_size": {"width": width, "height": height},
        "peak": _pixel(peak_location(result.heatmap, (height, width))),
    }
    if result.word_maps:
        paths["words"] = base.with_name(base.name + ".words.png")
        sheet = contact_sheet(image, [("sentence", result.heatmap), *result.word_maps], alpha=alpha, colormap=colormap)
        save_png(paths["words"], sheet)
        record["words"] = [
            {
                "word": word,
                "peak": _pixel(peak_location(word_map, (height, width))),
                "max": float(word_map.max()),
                "mean": float(word_map.mean()),
            }
            for word, word_map in result.word_maps
        ]
    record["outputs"] = {key: str(path) for key, path in paths.items()}
    paths["json"].write_text(json.dumps(record, indent=2) + "\n")
    return record
