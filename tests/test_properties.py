"""Properties that must hold for every input, checked on generated ones (hypothesis): caption cleaning, and the
output names derived from image names and texts (inside --out, distinct, short enough for any file system).

File names are generated as bytes and turned into `str` the way Python reads them from a Linux folder
(`os.fsdecode`), so names that are not UTF-8 are among them.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fusioncam.inputs import Pair, pairs_from_jsonl, pairs_from_path, slug
from fusioncam.runner import pair_id
from fusioncam.text import clean_caption

PUNCTUATION = set('.!"()*#:;~')
# What the writers add to a stem: the longest suffix, and the temporary name a file is written under first
# (`fusioncam.files.TEMPORARY_PREFIX`, the largest Linux process id, a dash).
LONGEST_SUFFIX = ".segment-mask.png"
TEMPORARY_PREFIX = ".partial-4194304-"
NAME_MAX = 255  # bytes per file name on ext4, XFS, btrfs, APFS, NTFS (in UTF-16 units there)

texts = st.text(max_size=120)
# File names as a Linux folder holds them: any bytes but "/" and NUL, at most 255 of them, not "." or "..".
file_names = (
    st.binary(min_size=1, max_size=NAME_MAX)
    .filter(lambda raw: b"/" not in raw and b"\0" not in raw and raw not in (b".", b".."))
    .map(os.fsdecode)
)
# Names a folder can hold, as str (codec utf-8: no lone surrogates, which no file name decodes to; names that are
# not UTF-8 come from `file_names`).
short_names = st.text(st.characters(codec="utf-8", exclude_characters="/\0"), min_size=1, max_size=12).filter(
    lambda name: name not in (".", "..")
)


def assert_safe(stem: Path, out: Path) -> None:
    """Relative, no `..`, inside `out` when joined, each file name short enough with what the writers add, and
    printable (records name the outputs in JSON)."""
    assert not stem.is_absolute()
    assert ".." not in stem.parts and "\0" not in str(stem)
    joined = os.path.normpath(out / stem)
    assert joined.startswith(str(out) + os.sep)
    for part in stem.parts[:-1]:
        assert len(part.encode("utf-8")) <= NAME_MAX
    assert len((TEMPORARY_PREFIX + stem.name + LONGEST_SUFFIX).encode("utf-8")) <= NAME_MAX
    json.dumps(str(stem), ensure_ascii=False).encode("utf-8")  # raises for names JSON cannot hold


def only_pairs(items: list) -> list[Pair]:
    assert all(isinstance(item, Pair) for item in items), items
    return items


@settings(max_examples=300)
@given(texts, st.integers(min_value=1, max_value=60))
def test_clean_caption_is_idempotent_lowercase_and_bounded(text: str, max_words: int) -> None:
    cleaned = clean_caption(text, max_words)
    assert clean_caption(cleaned, max_words) == cleaned
    assert cleaned == cleaned.lower()
    assert not PUNCTUATION & set(cleaned)
    assert len(cleaned.split(" ")) <= max_words


@settings(max_examples=300)
@given(texts)
def test_slug_is_a_safe_file_name_part(text: str) -> None:
    part = slug(text)
    assert "/" not in part and "." not in part and "_" not in part and not part.startswith("-")
    assert len(part.encode("utf-8")) <= 96


@settings(max_examples=300)
@given(texts, texts)
def test_distinct_texts_get_distinct_slugs(first: str, second: str) -> None:
    assume(first != second)
    assert slug(first) != slug(second)


@settings(max_examples=200)
@given(file_names, texts, file_names, texts)
def test_stems_of_image_files_are_safe_and_distinct(name: str, text: str, other_name: str, other_text: str) -> None:
    """`pairs_from_path` of a single file: its stem is its name and the text's slug."""
    assume((name, text) != (other_name, other_text))
    out = Path("/out")
    [pair] = only_pairs(list(pairs_from_path(Path("/photos") / name, [text])))
    [other] = only_pairs(list(pairs_from_path(Path("/photos") / other_name, [other_text])))
    assert_safe(pair.stem, out)
    assert pair.stem != other.stem
    json.dumps(pair.origin, ensure_ascii=False).encode("utf-8")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.lists(short_names, max_size=2), short_names), min_size=1, max_size=6), texts)
def test_stems_of_a_folder_tree_are_safe_and_distinct(files: list[tuple[list[str], str]], text: str) -> None:
    """`pairs_from_path` of a folder, recursively: subfolders are kept in the stems, each file gets its own."""
    with tempfile.TemporaryDirectory() as root:
        folder = Path(root)
        made = set()
        for folders, name in files:
            path = folder.joinpath(*folders, f"{name}.png")
            if any(parent.is_file() for parent in path.parents) or path.is_dir() or name.startswith("."):
                continue  # a file where a folder should be, or the reverse; a hidden file (skipped by design)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
            made.add(path)
        pairs = only_pairs(list(pairs_from_path(folder, [text], recursive=True)))
    assert {pair.image for pair in pairs} == made
    for pair in pairs:
        assert_safe(pair.stem, Path(root) / "out")
    assert len({pair.stem for pair in pairs}) == len(pairs)


@settings(max_examples=200)
@given(st.lists(st.tuples(st.text(max_size=300), texts), min_size=1, max_size=5))
def test_stems_of_jsonl_records_are_safe_and_distinct(records: list[tuple[str, str]]) -> None:
    """Image paths in records may be anything (`../../x`, absolute, URLs); stems stay one safe name each."""
    lines = [json.dumps({"image": image, "text": text}) for image, text in records]
    pairs = [item for item in pairs_from_jsonl(lines, "pairs.jsonl", Path("/base")) if isinstance(item, Pair)]
    for pair in pairs:
        assert_safe(pair.stem, Path("/out"))
        assert len(pair.stem.parts) == 1
    assert len({pair.stem for pair in pairs}) == len(pairs)


options = st.dictionaries(st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=8), st.booleans()), max_size=4)


@settings(max_examples=200)
@given(name=short_names, text=texts, settings_a=options, settings_b=options, other_text=texts)
def test_pair_ids_are_stable_and_tell_inputs_and_options_apart(
    name: str, text: str, settings_a: dict, settings_b: dict, other_text: str
) -> None:
    pair = Pair(Path("/photos") / name, text, "test", Path("x"))
    same = Pair(Path("/photos") / name, text, "elsewhere", Path("y"))  # origin and output name are not the input
    assert pair_id(pair, settings_a) == pair_id(same, dict(reversed(list(settings_a.items()))))
    if settings_a != settings_b:
        assert pair_id(pair, settings_a) != pair_id(pair, settings_b)
    if other_text != text:
        assert pair_id(pair, settings_a) != pair_id(Pair(pair.image, other_text, "test", Path("x")), settings_a)
