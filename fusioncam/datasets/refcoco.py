"""RefCOCO, RefCOCO+ and RefCOCOg (referring expressions on COCO train2014 images) in the layouts they are shipped in.

Two layouts hold the same refs, one per referred object, each with one or more sentences:
- the original `refer` release: `refs(unc).p`, `refs(google).p` or `refs(umd).p`, a Python 2 pickle of a list of
  `{"ref_id", "ann_id", "image_id", "file_name", "split", "category_id", "sent_ids", "sentences": [{"sent",
  "raw", "tokens", "sent_id"}]}`, beside the COCO `instances.json` whose annotation `ann_id` holds the object's
  box and segmentation. The pickle is read by an unpickler that builds nothing but lists, dicts, tuples, strings
  and numbers: a pickle can name any function to call while loading, and a refs file never needs one.
- pickle-free conversions (e.g. Hugging Face `jxu124/refcoco`, `refcocoplus`, `refcocog`) as parquet, JSON (a list
  of rows) or JSONL (a row per line), each row a ref with its `bbox` (COCO's [x, y, width, height]) and optionally
  `raw_anns`, the COCO annotation as JSON text (its `segmentation` is kept). `sentences` may be dicts or plain
  strings. Conversions store some nested fields as JSON text: `sentences`, `sent_ids`, `bbox` and `raw_anns` are
  read either way.
A row's own box and segmentation come first; an `instances.json`, when given, supplies those a row lacks (both, for
the pickle) from its annotation `ann_id`, and names the image (below).

Image paths. A ref's `file_name` ("COCO_train2014_000000581857_16.jpg") carries a suffix after the image id that
is not part of any file: the image is "train2014/COCO_train2014_000000581857.jpg" under the COCO images root. With
an `instances.json`, the image's own `file_name` there is used; without, the ref's with the suffix removed. Either
way the folder is the COCO split the name carries, and the id in the name must be the row's `image_id`.

Texts are kept as given (`sent`, else `raw`); they are cleaned where they are tokenised.

Masks (`object_mask`). A polygon's coordinates are continuous, pixel (r, c) covering [c, c+1) × [r, r+1): a pixel
belongs to the object when its centre (c + ½, r + ½) lies inside one of the object's polygons (even-odd rule within
a polygon; the polygons are joined). A centre exactly on an edge belongs to the polygon to its right and below, so
polygons sharing an edge never share a pixel, and a w × h rectangle on integer corners covers exactly w·h pixels;
a polygon of fewer than three points covers none. COCO's run-length encodings (crowd objects) are read both
uncompressed (`counts` a list) and compressed (`counts` a string).
"""

from __future__ import annotations

import json
import math
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from fusioncam.datasets.json_fields import DatasetError, load_json, require

if TYPE_CHECKING:
    import numpy as np

T = TypeVar("T")

Segmentation: TypeAlias = "list[list[float]] | dict[str, Any]"
"""COCO's segmentation of one object: polygons `[[x1, y1, x2, y2, …], …]` or a run-length encoding
`{"counts": [int, …] | str, "size": [height, width]}`."""

_PICKLE_SUFFIXES = (".p", ".pkl", ".pickle")
_SUFFIXES = (".parquet", ".json", ".jsonl", *_PICKLE_SUFFIXES)
# COCO 2014 image names, with the `_<number>` refer appends to a ref's `file_name`.
_COCO_NAME = re.compile(r"(?P<stem>COCO_(?P<folder>[a-z]+\d{4})_(?P<id>\d{12}))(?:_\d+)?\.jpg")


@dataclass(frozen=True)
class ReferringExpression:
    """One sentence naming one object: a ref with three sentences gives three of these.

    `image` is relative to the COCO images root ("train2014/COCO_train2014_000000581857.jpg"); `box` is
    (x0, y0, x1, y1) in pixels, converted from COCO's [x, y, width, height]; `segmentation` is the object's COCO
    segmentation as stored (None when the source has none), made a mask by `object_mask`."""

    image: str
    text: str
    box: tuple[float, float, float, float]
    split: str
    image_id: int
    ref_id: int | None = None
    sentence_id: int | None = None
    segmentation: Segmentation | None = None

    def image_path(self, root: Path) -> Path:
        return root / self.image


def read_refcoco(
    path: str | Path, split: str | None = None, instances: str | Path | None = None
) -> list[ReferringExpression]:
    """Every sentence of a refs file (`.p`, `.parquet`, `.json`, `.jsonl`) as a record, in file order; only the
    refs of `split` ("train", "val", "testA", "testB", "test") when given. `instances` is the COCO
    `instances.json` of the release, required with a pickle (which holds no boxes)."""
    path = Path(path)
    if path.suffix not in _SUFFIXES:
        raise DatasetError(f"{path}: not a RefCOCO file; expected one of {', '.join(_SUFFIXES)}")
    if not path.is_file():
        raise DatasetError(f"RefCOCO file not found: {path}")
    if instances is None and path.suffix in _PICKLE_SUFFIXES:
        raise DatasetError(
            f"{path}: a refer pickle holds no boxes or image names; pass the COCO instances.json beside it "
            "(instances=...)"
        )
    coco = _Instances.load(Path(instances)) if instances is not None else None
    rows = _rows(path)
    splits = [require(row, "split", str, f"{path}, row {index}") for index, row in enumerate(rows)]
    if split is not None and split not in splits:
        raise DatasetError(f"{path}: no refs of split {split!r}; it holds {', '.join(dict.fromkeys(splits))}")
    return [
        expression
        for index, (row, row_split) in enumerate(zip(rows, splits, strict=True))
        if split is None or row_split == split
        for expression in _expressions(row, row_split, coco, f"{path}, row {index}")
    ]


def object_mask(segmentation: Segmentation, height: int, width: int) -> np.ndarray:
    """The object's pixels in a `height` × `width` image as a bool array (see the module notes for which pixels
    a polygon covers)."""
    import numpy as np  # here: the readers, and the scoring commands that import this package, need no numpy

    _check_segmentation(segmentation)
    if isinstance(segmentation, Mapping):
        return _rle_mask(segmentation, height, width)
    mask = np.zeros((height, width), bool)
    for polygon in segmentation:
        mask |= _polygon_mask(np.asarray(polygon, np.float64).reshape(-1, 2), height, width)
    return mask


@dataclass(frozen=True)
class _Annotation:
    """A COCO annotation, and where it is ("instances.json, annotation 1719310") for errors about its fields."""

    fields: Mapping[str, Any]
    where: str


@dataclass(frozen=True)
class _Instances:
    """A COCO instances file, its images and annotations by id."""

    path: Path
    images: dict[int, Mapping[str, Any]]
    annotations: dict[int, Mapping[str, Any]]

    @classmethod
    def load(cls, path: Path) -> _Instances:
        data = load_json(path, "COCO instances")
        return cls(path, _by_id(data, "images", path), _by_id(data, "annotations", path))

    def image(self, image_id: int, where: str) -> Mapping[str, Any]:
        if image_id not in self.images:
            raise DatasetError(f"{where}: image {image_id} is not in {self.path}; are they of different releases?")
        return self.images[image_id]

    def annotation(self, ann_id: int, image_id: int, where: str) -> _Annotation:
        """Annotation `ann_id`, which must be of image `image_id` (the ref's)."""
        if ann_id not in self.annotations:
            raise DatasetError(f"{where}: annotation {ann_id} is not in {self.path}; are they of different releases?")
        annotation = _Annotation(self.annotations[ann_id], f"{self.path}, annotation {ann_id}")
        own_image = require(annotation.fields, "image_id", int, annotation.where)
        if own_image != image_id:
            raise DatasetError(f"{where}: ref of image {image_id}, but annotation {ann_id} is of image {own_image}")
        return annotation


def _by_id(data: Any, key: str, path: Path) -> dict[int, Mapping[str, Any]]:
    entries = require(data, key, list, str(path))
    return {require(entry, "id", int, f"{path}, {key} {index}"): entry for index, entry in enumerate(entries)}


def _rows(path: Path) -> list[Any]:
    if path.suffix == ".parquet":
        rows = _parquet_rows(path)
    elif path.suffix == ".jsonl":
        rows = _jsonl_rows(path)
    elif path.suffix == ".json":
        rows = load_json(path, "RefCOCO")
        if not isinstance(rows, list):
            raise DatasetError(f"{path}: a RefCOCO JSON file is a list of refs, found {type(rows).__name__}")
    else:
        rows = _pickle_rows(path)
    if not rows:
        raise DatasetError(f"{path}: holds no refs")
    return rows


def _parquet_rows(path: Path) -> list[Any]:
    try:
        import pyarrow.parquet as parquet  # here: only parquet needs it, and it is an optional dependency
    except ImportError:
        raise DatasetError(f"{path}: reading parquet needs pyarrow: pip install pyarrow") from None
    try:
        return parquet.read_table(path).to_pylist()
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise DatasetError(f"{path}: not a readable parquet file ({error})") from None


def _jsonl_rows(path: Path) -> list[Any]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DatasetError(f"{path}, line {number}: not JSON ({error})") from None
    return rows


class _PlainUnpickler(pickle.Unpickler):
    """Builds lists, dicts, tuples, strings and numbers, and refuses everything a pickle may name to build anything
    else (a class, or a function to call: `os.system` as well as `collections.OrderedDict`)."""

    def __init__(self, file: Any, path: Path) -> None:
        # Python 2 `str` (bytes) arrives as bytes, decoded by `_as_text`; Python 2 `unicode` arrives as str.
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        raise DatasetError(
            f"{self.path} asks to load {module}.{name}; only plain lists, dicts, strings and numbers are read from "
            "a pickle"
        )


def _pickle_rows(path: Path) -> list[Any]:
    try:
        with path.open("rb") as file:
            data = _PlainUnpickler(file, path).load()
    except DatasetError:
        raise
    except OSError as error:
        raise DatasetError(f"{path}: cannot be read ({error.strerror or error})") from None
    except Exception as error:  # a damaged pickle fails as whichever opcode it trips on fails: too many kinds to list
        raise DatasetError(f"{path}: not a readable pickle ({type(error).__name__}: {error})") from None
    if not isinstance(data, list):
        raise DatasetError(f"{path}: a refs pickle is a list of refs, found {type(data).__name__}")
    return _as_text(data)


def _as_text(value: Any) -> Any:
    """`value` with every Python 2 byte string made text: UTF-8 when it decodes so, else Latin-1 (which always does)."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin-1")
    if isinstance(value, list | tuple):
        return type(value)(_as_text(item) for item in value)
    if isinstance(value, dict):
        return {_as_text(key): _as_text(item) for key, item in value.items()}
    return value


def _expressions(row: Mapping[str, Any], split: str, coco: _Instances | None, where: str) -> list[ReferringExpression]:
    image_id = require(row, "image_id", int, where)
    ann_id = _optional_int(row, "ann_id", where)
    annotation = coco.annotation(ann_id, image_id, where) if coco is not None and ann_id is not None else None
    image = _image(row, image_id, coco, where)
    box = _box(row, annotation, where)
    segmentation = _segmentation(row, annotation, where)
    ref_id = _optional_int(row, "ref_id", where)
    return [
        ReferringExpression(image, text, box, split, image_id, ref_id, sentence_id, segmentation)
        for text, sentence_id in _sentences(row, where)
    ]


def _image(row: Mapping[str, Any], image_id: int, coco: _Instances | None, where: str) -> str:
    if coco is None:
        return _image_path(require(row, "file_name", str, where), image_id, f"{where}: 'file_name'")
    name = require(coco.image(image_id, where), "file_name", str, f"{coco.path}, image {image_id}")
    return _image_path(name, image_id, f"{coco.path}, image {image_id}: 'file_name'")


def _image_path(name: str, image_id: int, where: str) -> str:
    """ "train2014/COCO_train2014_000000581857.jpg" for "COCO_train2014_000000581857[_16].jpg"."""
    match = _COCO_NAME.fullmatch(name)
    if match is None:
        raise DatasetError(f"{where} {name!r} is not a COCO 2014 image name (COCO_<split>_<12-digit id>.jpg)")
    if int(match["id"]) != image_id:
        raise DatasetError(f"{where} {name!r} names image {int(match['id'])}, but the ref is of image {image_id}")
    return f"{match['folder']}/{match['stem']}.jpg"


def _box(row: Mapping[str, Any], annotation: _Annotation | None, where: str) -> tuple[float, float, float, float]:
    value = _nested(row, "bbox", list, where)
    if value is None:
        if annotation is None:
            raise DatasetError(
                f"{where}: no 'bbox', and no 'ann_id' and COCO instances file to take it from (instances=...)"
            )
        value, where = require(annotation.fields, "bbox", list, annotation.where), annotation.where
    if len(value) != 4 or not all(_is_number(number) for number in value):
        raise DatasetError(f"{where}: 'bbox' must be COCO's [x, y, width, height], found {value!r}")
    x, y, width, height = (float(number) for number in value)
    if not all(math.isfinite(number) for number in (x, y, width, height)) or width <= 0 or height <= 0:
        raise DatasetError(f"{where}: 'bbox' {value!r} is not a box of positive width and height")
    return x, y, x + width, y + height


def _segmentation(row: Mapping[str, Any], annotation: _Annotation | None, where: str) -> Segmentation | None:
    raw_anns = _nested(row, "raw_anns", dict, where)
    if raw_anns is not None and "segmentation" in raw_anns:
        segmentation, where = raw_anns["segmentation"], f"{where}, 'raw_anns'"
    elif annotation is not None and "segmentation" in annotation.fields:
        segmentation, where = annotation.fields["segmentation"], annotation.where
    else:
        return None
    try:
        _check_segmentation(segmentation)
    except ValueError as error:
        raise DatasetError(f"{where}: 'segmentation': {error}") from None
    return segmentation


def _sentences(row: Mapping[str, Any], where: str) -> list[tuple[str, int | None]]:
    """(text, sentence id) of each sentence; the id is the sentence's `sent_id`, else its entry in `sent_ids`."""
    sentences = _nested(row, "sentences", list, where)
    if not sentences:
        raise DatasetError(f"{where}: 'sentences' is missing or empty; every ref has at least one")
    ids = _nested(row, "sent_ids", list, where)
    if ids is None:
        ids = [None] * len(sentences)
    elif len(ids) != len(sentences) or not all(isinstance(id_, int) and not isinstance(id_, bool) for id_ in ids):
        raise DatasetError(f"{where}: 'sent_ids' must be one integer per sentence ({len(sentences)}), found {ids!r}")
    return [
        _sentence(sentence, id_, f"{where}, sentence {index}")
        for index, (sentence, id_) in enumerate(zip(sentences, ids, strict=True))
    ]


def _sentence(sentence: Any, listed_id: int | None, where: str) -> tuple[str, int | None]:
    if isinstance(sentence, str):
        text, sentence_id = sentence, listed_id
    elif isinstance(sentence, Mapping):
        key = "sent" if "sent" in sentence else "raw"
        if key not in sentence:
            raise DatasetError(f"{where}: neither 'sent' nor 'raw' is there")
        text = require(sentence, key, str, where)
        sentence_id = _optional_int(sentence, "sent_id", where)
        sentence_id = listed_id if sentence_id is None else sentence_id
    else:
        raise DatasetError(f"{where}: a sentence is a string or an object with 'sent', found {sentence!r}")
    if not text.strip():
        raise DatasetError(f"{where}: the sentence is empty")
    return text, sentence_id


def _nested(row: Mapping[str, Any], key: str, kind: type[T], where: str) -> T | None:
    """`row[key]`, a list or an object that conversions may also store as its JSON text; None when absent."""
    value = row.get(key)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise DatasetError(f"{where}: '{key}' is a string but not JSON ({error})") from None
    if value is not None and not isinstance(value, kind):
        raise DatasetError(f"{where}: '{key}' must be {'a list' if kind is list else 'an object'}, found {value!r}")
    return value


def _optional_int(record: Mapping[str, Any], key: str, where: str) -> int | None:
    """`record[key]` as an integer; None when absent or null (parquet columns have nulls where JSON omits keys)."""
    return None if record.get(key) is None else require(record, key, int, where)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_segmentation(segmentation: object) -> None:
    """Raises ValueError saying what is wrong unless `segmentation` is COCO polygons or a COCO run-length
    encoding; checked when a file is read, so that a bad one is reported with its file and row."""
    if isinstance(segmentation, Mapping):
        _check_rle(segmentation)
        return
    if not isinstance(segmentation, list):
        raise ValueError(f"a segmentation is a list of polygons or an RLE object, found {segmentation!r}")
    for index, polygon in enumerate(segmentation):
        if not (isinstance(polygon, list) and all(_is_number(value) for value in polygon)):
            raise ValueError(f"polygon {index} must be a list of numbers [x1, y1, x2, y2, …], found {polygon!r}")
        if len(polygon) % 2:
            raise ValueError(f"polygon {index} has {len(polygon)} coordinates; x and y come in pairs")


def _polygon_mask(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixels whose centre lies inside the polygon `points` [n, 2] (x, y), by the even-odd rule: along each row of
    centres, every edge crossing toggles inside/outside from the first centre at or right of the crossing on."""
    import numpy as np

    x0, y0 = points[:, 0], points[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    centres = np.arange(height) + 0.5
    # An edge crosses the rows whose centre y lies in [top, bottom): a vertex shared by two edges counts once, a
    # horizontal edge never.
    crossing = (np.minimum(y0, y1) <= centres[:, None]) & (centres[:, None] < np.maximum(y0, y1))
    rows, edges = np.nonzero(crossing)
    t = (centres[rows] - y0[edges]) / (y1[edges] - y0[edges])
    x = x0[edges] + t * (x1[edges] - x0[edges])
    first = np.clip(np.ceil(x - 0.5), 0, width).astype(np.int64)
    toggles = np.zeros((height, width + 1), np.int64)
    np.add.at(toggles, (rows, first), 1)
    return (np.cumsum(toggles[:, :width], axis=1) % 2).astype(bool)


def _check_rle(rle: Mapping[str, Any]) -> None:
    size, counts = rle.get("size"), rle.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(n, int) and n >= 0 for n in size)):
        raise ValueError(f"an RLE's 'size' must be [height, width], found {size!r}")
    if isinstance(counts, str):
        return  # checked when decoded
    if not (isinstance(counts, list) and all(isinstance(n, int) and not isinstance(n, bool) for n in counts)):
        raise ValueError(f"an RLE's 'counts' must be a list of integers or COCO's compressed string, found {counts!r}")
    _check_counts(counts, size)


def _check_counts(counts: Sequence[int], size: Sequence[int]) -> None:
    if any(count < 0 for count in counts):
        raise ValueError("an RLE's counts must not be negative")
    if sum(counts) != size[0] * size[1]:
        raise ValueError(
            f"an RLE's counts add up to {sum(counts)} pixels, but its size {size[0]}×{size[1]} has {size[0] * size[1]}"
        )


def _rle_mask(rle: Mapping[str, Any], height: int, width: int) -> np.ndarray:
    """COCO's run-length encoding: alternating runs of 0s and 1s (0s first), down the columns one after another."""
    import numpy as np

    size = rle["size"]
    if tuple(size) != (height, width):
        raise ValueError(f"the RLE is of a {size[0]}×{size[1]} image; the mask was asked at {height}×{width}")
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = _decode_counts(counts)
        _check_counts(counts, size)
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape(width, height).T


def _decode_counts(text: str) -> list[int]:
    """The counts of COCO's compressed RLE string (maskApi's `rleToString`). Each count is written in 5-bit groups,
    least significant first, one character '0' + group each; bit 0x20 of a group says another follows, bit 0x10 of
    the last is the sign. From the fourth count on, what is written is the difference from the count two before
    (runs of the same value tend to have similar lengths)."""
    counts: list[int] = []
    value = shift = 0
    for char in text:
        group = ord(char) - ord("0")
        if not 0 <= group < 64:
            raise ValueError(f"compressed RLE counts hold {char!r}, outside COCO's alphabet '0'…'o'")
        value |= (group & 0x1F) << shift
        shift += 5
        if group & 0x20:
            continue
        if group & 0x10:
            value -= 1 << shift  # sign-extend the last group
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
        value = shift = 0
    if shift:
        raise ValueError("compressed RLE counts end in the middle of a number")
    return counts
