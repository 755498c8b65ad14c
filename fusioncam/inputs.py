"""Inputs of batch runs: which (image, text) pairs to process, and a short name for the files each one gets.

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

from fusioncam.images import STDIN, is_url

ImageRef = Path | str  # an image file, an http(s) URL, or STDIN (the bytes of one image on standard input)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jp2", ".pgm", ".ppm"})


@dataclass(frozen=True)
class Pair:
    """One unit of work: an image, a text, and a short name for its output files.

    `extra` holds the other fields of the JSONL record it came from (a scene id, a ground-truth answer …), copied
    into its result record so that results can be joined back to their inputs.
    """

    image: ImageRef
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
