"""Inputs of batch runs: which (image, text) pairs to process, and a short name for the files each one gets.

Pairs come from one image file, a folder of images (optionally recursive), an image URL, the bytes of one image on
stdin, or JSONL records `{"image": ..., "text": ...}` from a file or stdin (an image there may be a URL too). Bad
records do not stop a run: they become `Failure`s, reported with their reason while every other pair is processed.

Names shown to people and written into records are valid Unicode (see `printable`), whatever bytes a file name
holds; the real path is kept for reading.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import unicodedata
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import TextIO, TypeVar

from fusioncam.images import STDIN, is_url, printable

T = TypeVar("T")

ImageRef = Path | str  # an image file, an http(s) URL, or STDIN (the bytes of one image on standard input)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".jp2", ".pgm", ".ppm"})

log = logging.getLogger(__name__)


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
    or "stdin"; always valid Unicode (see `printable`)."""
    if image == STDIN:
        return "stdin"
    return printable(str(image) if is_url(image) else os.path.abspath(image))


_NOT_A_LETTER = re.compile(r"[\W_]+")  # keeps letters and digits of every script
_MAX_PART_BYTES = 96  # image part and text part of a file name: with suffixes, far below the usual 255 bytes


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]


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


def _name_part(name: str, limit: int = _MAX_PART_BYTES) -> str:
    """A file or folder name as part of an output path: an image's name keeps its suffix (a.jpg and a.png differ).

    A name longer than `limit` bytes, or one holding bytes that are not UTF-8 or a NUL (a URL's `%00`, which no
    file name may hold), is shortened or spelled printably and marked with a hash of the real name, so that the
    records naming the outputs are valid JSON and two such names still get outputs of their own.
    """
    shown = printable(name).replace("\0", "\\x00")
    if shown == name and len(name.encode("utf-8")) <= limit:
        return name
    return _shorten(shown, name, limit)


def _stem(image: Path, text: str, relative_to: Path | None) -> Path:
    relative = image.relative_to(relative_to) if relative_to else Path(image.name)
    folders = [_name_part(part, limit=255) for part in relative.parent.parts]
    return Path(*folders, f"{_name_part(relative.name)}__{slug(text)}")


def folder_images(folder: Path, recursive: bool) -> list[Path]:
    """Images of a folder in a stable order (hidden files skipped).

    Every entry named like an image is one, even if it cannot be read (a broken link, a link loop, a pipe): it
    fails with its reason rather than going missing without a word. Links to folders are not followed, so that a
    link back up the tree cannot loop the walk forever.
    """
    if recursive:
        entries = [Path(root, name) for root, _, files in os.walk(folder) for name in files]
    else:
        entries = [path for path in folder.iterdir() if not path.is_dir()]
    return sorted(path for path in entries if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."))


def _text_failure(origin: str, image: ImageRef, text: str) -> Failure | None:
    """Text from a command line holding bytes that are not UTF-8 (the terminal's encoding is another one) cannot
    be tokenized as meant nor written into a record."""
    if printable(text) == text:
        return None
    return Failure(
        origin, "the text is not valid UTF-8 (is the terminal set to UTF-8?)", image_label(image), printable(text)
    )


def _url_name(url: str) -> str:
    return Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name or "image"


def pairs_from_source(source: str, texts: list[str]) -> Iterator[Pair | Failure]:
    """Every text against an image that is not a file: a URL, or STDIN."""
    name = "stdin" if source == STDIN else _url_name(source)
    origin = "stdin" if source == STDIN else printable(source)
    for text in texts:
        yield _text_failure(origin, source, text) or Pair(
            source, text, origin, Path(f"{_name_part(name)}__{slug(text)}")
        )


def pairs_from_path(image: Path, texts: list[str], recursive: bool = False) -> Iterator[Pair | Failure]:
    """Every text against one image, or against every image of a folder."""
    folder = image if image.is_dir() else None
    for path in folder_images(image, recursive) if folder else [image]:
        origin = printable(str(path))
        for text in texts:
            yield _text_failure(origin, path, text) or Pair(path, text, origin, _stem(path, text, folder))


def pairs_from_jsonl(
    lines: Iterable[str | bytes], name: str, base: Path, text_key: str = "text"
) -> Iterator[Pair | Failure]:
    """Records `{"image": path, text_key: ...}`; relative image paths are relative to `base`.

    Lines may be bytes (a stream read raw), so that a line that is not UTF-8 fails alone, with its number, instead
    of ending the run. A byte-order mark before the first record (some Windows tools write one) is skipped.
    """
    for number, line in enumerate(lines, start=1):
        origin = f"{printable(name)}:{number}"
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError as error:
                yield Failure(origin, f"not UTF-8: byte 0x{line[error.start]:02x} at byte {error.start + 1}")
                continue
        if number == 1:
            line = line.removeprefix("\ufeff")
        line = line.rstrip("\r\n")  # so that an error at the end of the line is reported on it, not the next
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            yield Failure(origin, f"not JSON: {error.msg} at column {error.colno}")
            continue
        try:
            json.dumps(record, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            yield Failure(origin, "not valid Unicode: a \\u escape stands for half a character (a lone surrogate)")
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
        yield Pair(source, text, origin, Path(f"{number:06d}-{_name_part(file_name)}__{slug(text)}"), extra)


def read_jsonl(stream: TextIO, name: str, base: Path, text_key: str = "text") -> Iterator[Pair | Failure]:
    """Stream records as they arrive (a pipeline's upstream may still be writing); as bytes where the stream has
    them (see `pairs_from_jsonl`).

    Fields besides the image and the text are copied to each result's `input`, to join results back to their
    inputs, and not used otherwise; once the stream ends, one warning lists them, in case one was meant to change
    the results.
    """
    raw = getattr(stream, "buffer", None)
    lines: Iterator[str | bytes] = iter(raw.readline, b"") if raw is not None else iter(stream.readline, "")
    copied: set[str] = set()
    for item in pairs_from_jsonl(lines, name, base, text_key):
        if isinstance(item, Pair):
            copied.update(item.extra)
        yield item
    if copied:
        log.warning(
            '%s: fields other than "image" and "%s" are not used, only copied to each result\'s "input": %s',
            printable(name),
            text_key,
            ", ".join(sorted(copied)),
        )


def batched(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive chunks of at most `size` items."""
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def seeded_sample(items: Sequence[T], limit: int | None, seed: int) -> list[T]:
    """`limit` items drawn without replacement with `seed`, kept in their order (all of them without a limit): a
    quick run on a subset that is the same subset every time."""
    if limit is None or limit >= len(items):
        return list(items)
    return [items[index] for index in sorted(random.Random(seed).sample(range(len(items)), limit))]
