"""RefCOCO/RefCOCO+/RefCOCOg refs in every layout they ship in (refer pickle + instances.json, parquet, JSON,
JSONL), the pickle's refusal to build anything but plain data, and object masks against pixels counted by hand."""

from __future__ import annotations

import copy
import json
import os
import pickle
import re
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fusioncam.datasets import DatasetError, ReferringExpression, object_mask, read_refcoco

IMAGE = "train2014/COCO_train2014_000000581857.jpg"
OTHER_IMAGE = "train2014/COCO_train2014_000000000042.jpg"

INSTANCES = {
    "images": [
        {"id": 581857, "file_name": "COCO_train2014_000000581857.jpg", "height": 10, "width": 12},
        {"id": 42, "file_name": "COCO_train2014_000000000042.jpg", "height": 6, "width": 8},
    ],
    "annotations": [
        {"id": 1719310, "image_id": 581857, "bbox": [1.5, 2.0, 3.0, 4.25], "category_id": 1, "iscrowd": 0,
         "segmentation": [[1, 2, 4, 2, 4, 6, 1, 6]], "area": 12.0},
        {"id": 2, "image_id": 581857, "bbox": [0.0, 0.0, 1.0, 3.0], "category_id": 1, "iscrowd": 1,
         "segmentation": {"counts": [0, 3, 117], "size": [10, 12]}, "area": 3.0},
        {"id": 3, "image_id": 42, "bbox": [2, 1, 4, 3], "category_id": 62, "iscrowd": 0,
         "segmentation": [[2, 1, 6, 1, 2, 4]], "area": 6.0},
    ],
    "categories": [{"id": 1, "name": "person"}, {"id": 62, "name": "chair"}],
}  # fmt: skip


def sentence(sent_id: int, sent: str, raw: str) -> dict[str, Any]:
    return {"tokens": sent.split(), "raw": raw, "sent_id": sent_id, "sent": sent}


REFS = [
    {"sent_ids": [10, 11, 12], "file_name": "COCO_train2014_000000581857_16.jpg", "ann_id": 1719310, "ref_id": 0,
     "image_id": 581857, "split": "train", "category_id": 1,
     "sentences": [sentence(10, "woman left", "Woman, left!"), sentence(11, "lady in red", "lady in red"),
                   sentence(12, "leftmost person", "Leftmost person")]},
    {"sent_ids": [20], "file_name": "COCO_train2014_000000581857_17.jpg", "ann_id": 2, "ref_id": 1,
     "image_id": 581857, "split": "testA", "category_id": 1, "sentences": [sentence(20, "the crowd", "The Crowd")]},
    {"sent_ids": [30, 31], "file_name": "COCO_train2014_000000000042_3.jpg", "ann_id": 3, "ref_id": 2,
     "image_id": 42, "split": "val", "category_id": 62,
     "sentences": [sentence(30, "chair", "chair"), sentence(31, "empty seat", "Empty seat.")]},
]  # fmt: skip

RECTANGLE = [[1, 2, 4, 2, 4, 6, 1, 6]]
CROWD = {"counts": [0, 3, 117], "size": [10, 12]}
TRIANGLE = [[2, 1, 6, 1, 2, 4]]

# One record per sentence, texts as `sent` gives them, COCO [x, y, w, h] turned into (x0, y0, x1, y1), the image
# named without the ref's "_16" suffix and filed under the COCO split its name carries.
EXPECTED = [
    ReferringExpression(IMAGE, "woman left", (1.5, 2.0, 4.5, 6.25), "train", 581857, 0, 10, RECTANGLE),
    ReferringExpression(IMAGE, "lady in red", (1.5, 2.0, 4.5, 6.25), "train", 581857, 0, 11, RECTANGLE),
    ReferringExpression(IMAGE, "leftmost person", (1.5, 2.0, 4.5, 6.25), "train", 581857, 0, 12, RECTANGLE),
    ReferringExpression(IMAGE, "the crowd", (0.0, 0.0, 1.0, 3.0), "testA", 581857, 1, 20, CROWD),
    ReferringExpression(OTHER_IMAGE, "chair", (2.0, 1.0, 6.0, 4.0), "val", 42, 2, 30, TRIANGLE),
    ReferringExpression(OTHER_IMAGE, "empty seat", (2.0, 1.0, 6.0, 4.0), "val", 42, 2, 31, TRIANGLE),
]


def write_json(path: Path, value: Any) -> Path:
    path.write_text(json.dumps(value), encoding="utf-8")
    return path


def conversion_rows(stringify: bool = False) -> list[dict[str, Any]]:
    """The refs as the pickle-free conversions ship them: each with its box and its COCO annotation as JSON text;
    with `stringify`, the nested fields too are JSON text, as some conversions store them."""
    annotations = {annotation["id"]: annotation for annotation in INSTANCES["annotations"]}
    rows = []
    for ref in copy.deepcopy(REFS):
        annotation = annotations[ref["ann_id"]]
        row = {**ref, "bbox": [float(value) for value in annotation["bbox"]], "raw_anns": json.dumps(annotation)}
        if stringify:
            row.update({key: json.dumps(row[key]) for key in ("sentences", "sent_ids", "bbox")})
        rows.append(row)
    return rows


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    """`rows` in the format `path`'s suffix names."""
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    else:
        write_json(path, rows)
    return path


def refer_files(tmp_path: Path, refs: list[dict[str, Any]] = REFS) -> tuple[Path, Path]:
    refs_path = tmp_path / "refs(unc).p"
    refs_path.write_bytes(pickle.dumps(refs, protocol=2))
    return refs_path, write_json(tmp_path / "instances.json", INSTANCES)


def test_refer_pickle_reads_one_record_per_sentence_with_box_and_mask_from_the_annotation(tmp_path: Path) -> None:
    refs, instances = refer_files(tmp_path)
    records = read_refcoco(refs, instances=instances)
    assert records == EXPECTED
    assert records[0].image_path(Path("/coco")) == Path("/coco/train2014/COCO_train2014_000000581857.jpg")


@pytest.mark.parametrize("name", ["refcoco.json", "refcoco.jsonl", "refcoco.parquet"])
@pytest.mark.parametrize("stringify", [False, True], ids=["nested", "json-text"])
def test_conversions_read_the_same_records_without_instances(tmp_path: Path, name: str, stringify: bool) -> None:
    path = write_rows(tmp_path / name, conversion_rows(stringify))
    assert read_refcoco(path) == EXPECTED


def test_a_row_takes_what_it_lacks_from_instances(tmp_path: Path) -> None:
    rows = conversion_rows()
    for row in rows:
        del row["raw_anns"], row["bbox"], row["file_name"]
    instances = write_json(tmp_path / "instances.json", INSTANCES)
    assert read_refcoco(write_rows(tmp_path / "refs.jsonl", rows), instances=instances) == EXPECTED


def test_the_row_s_own_box_wins_over_the_annotation_s(tmp_path: Path) -> None:
    rows = conversion_rows()[2:]
    rows[0]["bbox"] = [0.5, 0.5, 1.0, 2.0]
    instances = write_json(tmp_path / "instances.json", INSTANCES)
    records = read_refcoco(write_rows(tmp_path / "refs.json", rows), instances=instances)
    assert [record.box for record in records] == [(0.5, 0.5, 1.5, 2.5)] * 2


def test_plain_string_sentences_and_absent_optional_fields(tmp_path: Path) -> None:
    rows = [
        {"image_id": 42, "file_name": "COCO_train2014_000000000042_9.jpg", "split": "test", "bbox": [0, 0, 2, 2],
         "sentences": ["the red chair", "  Chair, LEFT  "], "sent_ids": [5, 6], "ref_id": 7},
        {"image_id": 42, "file_name": "COCO_train2014_000000000042_9.jpg", "split": "test", "bbox": [1, 1, 2, 2],
         "sentences": ["Kept as given!"]},
    ]  # fmt: skip
    records = read_refcoco(write_rows(tmp_path / "refs.parquet", rows))  # parquet fills absent fields with nulls
    assert records == [
        ReferringExpression(OTHER_IMAGE, "the red chair", (0.0, 0.0, 2.0, 2.0), "test", 42, 7, 5, None),
        ReferringExpression(OTHER_IMAGE, "  Chair, LEFT  ", (0.0, 0.0, 2.0, 2.0), "test", 42, 7, 6, None),
        ReferringExpression(OTHER_IMAGE, "Kept as given!", (1.0, 1.0, 3.0, 3.0), "test", 42, None, None, None),
    ]


def test_a_sentence_without_sent_is_read_from_raw(tmp_path: Path) -> None:
    rows = conversion_rows()[1:2]
    rows[0]["sentences"] = [{"raw": "The Crowd, raw!", "sent_id": 21}]
    assert read_refcoco(write_rows(tmp_path / "refs.json", rows)) == [
        ReferringExpression(IMAGE, "The Crowd, raw!", (0.0, 0.0, 1.0, 3.0), "testA", 581857, 1, 21, CROWD)
    ]


def test_split_filter_keeps_file_order_and_an_absent_split_names_those_present(tmp_path: Path) -> None:
    refs, instances = refer_files(tmp_path)
    assert read_refcoco(refs, split="val", instances=instances) == EXPECTED[4:]
    assert read_refcoco(refs, split="testA", instances=instances) == EXPECTED[3:4]
    with pytest.raises(DatasetError, match=r"no refs of split 'validation'; it holds train, testA, val$"):
        read_refcoco(refs, split="validation", instances=instances)


def test_a_pickle_needs_instances(tmp_path: Path) -> None:
    refs, _ = refer_files(tmp_path)
    with pytest.raises(DatasetError, match=r"refs\(unc\)\.p: a refer pickle holds no boxes.*instances\.json"):
        read_refcoco(refs)


class RunsCommand:
    """What a malicious pickle holds: unpickling it calls os.system."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (self.command,)


@dataclass
class Ref:
    ref_id: int


def test_a_pickle_that_calls_a_function_is_refused_before_the_call(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    refs, instances = refer_files(tmp_path, [RunsCommand(f"touch {marker}")])  # type: ignore[list-item]
    expected = f"refs(unc).p asks to load {os.system.__module__}.system; only plain lists, dicts, strings and numbers"
    with pytest.raises(DatasetError, match=re.escape(expected)):
        read_refcoco(refs, instances=instances)
    assert not marker.exists()


def test_a_pickle_holding_an_instance_of_a_class_is_refused(tmp_path: Path) -> None:
    refs, instances = refer_files(tmp_path, [Ref(0)])  # type: ignore[list-item]
    with pytest.raises(DatasetError, match=re.escape(f"asks to load {Ref.__module__}.Ref;")):
        read_refcoco(refs, instances=instances)


def python2_pickle(value: Any) -> bytes:
    """`value` pickled (protocol 2) as Python 2 pickles its `str`: byte strings, UTF-8 for `str`, as is for bytes."""

    def encode(item: Any) -> bytes:
        if isinstance(item, dict):
            return b"}" + b"".join(encode(key) + encode(entry) + b"s" for key, entry in item.items())  # SETITEM
        if isinstance(item, list):
            return b"]" + b"".join(encode(entry) + b"a" for entry in item)  # APPEND
        if isinstance(item, int):
            return b"J" + struct.pack("<i", item)  # BININT
        if isinstance(item, float):
            return b"G" + struct.pack(">d", item)  # BINFLOAT
        data = item.encode("utf-8") if isinstance(item, str) else item
        return b"U" + bytes([len(data)]) + data  # SHORT_BINSTRING: Python 2's str

    return b"\x80\x02" + encode(value) + b"."


def test_python2_byte_strings_read_as_text(tmp_path: Path) -> None:
    refs = copy.deepcopy(REFS)
    refs[2]["sentences"][0]["sent"] = "café chair"  # UTF-8 bytes in the pickle
    refs[2]["sentences"][1]["sent"] = b"caf\xe9 seat"  # Latin-1 bytes: not UTF-8
    refs_path, instances = refer_files(tmp_path)
    refs_path.write_bytes(python2_pickle(refs))
    records = read_refcoco(refs_path, instances=instances)
    assert [record.text for record in records[4:]] == ["café chair", "café seat"]
    assert records[:4] == EXPECTED[:4]


def test_parquet_without_pyarrow_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_rows(tmp_path / "refs.parquet", conversion_rows())
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DatasetError, match=r"reading parquet needs pyarrow: pip install pyarrow"):
        read_refcoco(path)


def test_image_path_comes_from_the_name_and_must_match_the_image_id(tmp_path: Path) -> None:
    rows = conversion_rows()[2:]
    rows[0]["file_name"] = "COCO_val2014_000000000042_7.jpg"
    assert read_refcoco(write_rows(tmp_path / "val.json", rows))[0].image == "val2014/COCO_val2014_000000000042.jpg"
    rows[0]["file_name"] = "COCO_train2014_000000000043_3.jpg"
    with pytest.raises(DatasetError, match=r"row 0: 'file_name' 'COCO_train2014_000000000043_3.jpg' names image 43"):
        read_refcoco(write_rows(tmp_path / "wrong.json", rows))
    rows[0]["file_name"] = "000000000042.jpg"
    with pytest.raises(DatasetError, match=r"not a COCO 2014 image name"):
        read_refcoco(write_rows(tmp_path / "renamed.json", rows))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda row: row.pop("image_id"), r"refs\.jsonl, row 1: 'image_id' is missing"),
        (lambda row: row.update(split=3), r"refs\.jsonl, row 1: 'split' must be a string"),
        (lambda row: row.update(bbox=[1, 2, 3]), r"row 1: 'bbox' must be COCO's \[x, y, width, height\]"),
        (lambda row: row.update(bbox=[1, 2, 0, 3]), r"row 1: 'bbox' \[1, 2, 0, 3\] is not a box of positive"),
        (lambda row: row.update(sentences="not json"), r"row 1: 'sentences' is a string but not JSON"),
        (lambda row: row.update(sentences=[]), r"row 1: 'sentences' is missing or empty"),
        (lambda row: row.update(sentences=[{"tokens": []}]), r"row 1, sentence 0: neither 'sent' nor 'raw'"),
        (lambda row: row.update(sentences=[" "]), r"row 1, sentence 0: the sentence is empty"),
        (lambda row: row.update(sent_ids=[1, 2]), r"row 1: 'sent_ids' must be one integer per sentence \(1\)"),
        (lambda row: row.update(raw_anns='{"segmentation": [[1, 2, 3]]}'), r"polygon 0 has 3 coordinates"),
        (lambda row: row.pop("bbox"), r"row 1: no 'bbox', and no 'ann_id' and COCO instances file"),
    ],
)
def test_a_bad_row_is_named_with_its_file_row_and_field(tmp_path: Path, change: Any, message: str) -> None:
    rows = conversion_rows()
    change(rows[1])
    with pytest.raises(DatasetError, match=message):
        read_refcoco(write_rows(tmp_path / "refs.jsonl", rows))


def test_refs_and_instances_of_different_releases_are_told_apart(tmp_path: Path) -> None:
    refs = copy.deepcopy(REFS)
    refs[1]["ann_id"] = 99
    refs_path, instances = refer_files(tmp_path, refs)
    with pytest.raises(DatasetError, match=r"row 1: annotation 99 is not in .*instances\.json"):
        read_refcoco(refs_path, instances=instances)
    refs[1]["ann_id"] = 3  # an annotation of image 42 for a ref of image 581857
    refs_path.write_bytes(pickle.dumps(refs, protocol=2))
    with pytest.raises(DatasetError, match=r"row 1: ref of image 581857, but annotation 3 is of image 42"):
        read_refcoco(refs_path, instances=instances)


def test_files_that_are_not_refs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"not a RefCOCO file; expected one of \.parquet, \.json, \.jsonl, \.p"):
        read_refcoco(write_json(tmp_path / "refs.txt", []))
    with pytest.raises(DatasetError, match=r"a RefCOCO JSON file is a list of refs, found dict"):
        read_refcoco(write_json(tmp_path / "instances.json", INSTANCES))
    damaged = tmp_path / "refs(google).p"
    damaged.write_bytes(pickle.dumps(REFS, protocol=2)[:50])
    with pytest.raises(DatasetError, match=r"refs\(google\)\.p: not a readable pickle"):
        read_refcoco(damaged, instances=write_json(tmp_path / "coco.json", INSTANCES))


def grid(rows: list[str]) -> np.ndarray:
    """A mask drawn as text: '#' is True."""
    return np.array([[char == "#" for char in row] for row in rows])


def centres_inside(polygon: list[float], height: int, width: int) -> np.ndarray:
    """The pixels whose centre a ray cast to the right crosses the polygon's edges an odd number of times."""
    points = np.asarray(polygon, float).reshape(-1, 2)
    y, x = np.mgrid[0:height, 0:width] + 0.5
    inside = np.zeros((height, width), bool)
    for (xa, ya), (xb, yb) in zip(points, np.roll(points, -1, axis=0), strict=True):
        if ya == yb:
            continue
        spans = (np.minimum(ya, yb) <= y) & (y < np.maximum(ya, yb))
        inside ^= spans & (x < xa + (y - ya) * (xb - xa) / (yb - ya))
    return inside


def test_polygon_covers_the_pixels_whose_centre_it_contains() -> None:
    # A 3 × 4 rectangle on integer corners covers exactly its 12 pixels: columns 1-3, rows 2-5.
    expected = np.zeros((10, 12), bool)
    expected[2:6, 1:4] = True
    np.testing.assert_array_equal(object_mask(RECTANGLE, 10, 12), expected)
    # Corners on pixel centres: the centres on the top and left edges are in, those on the bottom and right out,
    # so the 2 × 2 square covers 4 pixels, rows and columns 0-1.
    np.testing.assert_array_equal(
        object_mask([[0.5, 0.5, 2.5, 0.5, 2.5, 2.5, 0.5, 2.5]], 4, 4),
        grid(["##..",
              "##..",
              "....",
              "...."]),
    )  # fmt: skip
    # Triangle (0,0), (4,0), (0,2): centre (c+½, r+½) inside when c + 2r + 1.5 < 4.
    np.testing.assert_array_equal(
        object_mask([[0, 0, 4, 0, 0, 2]], 3, 5),
        grid(["###..",
              "#....",
              "....."]),
    )  # fmt: skip
    # Triangle (2,1), (6,1), (2,4) of INSTANCES: rows 1-3; the hypotenuse x = 6 - 4(y - 1)/3 at the centres'
    # y = 1.5, 2.5, 3.5 is 5.33, 4, 2.67, so the rows keep the centres x = 2.5…4.5, 2.5…3.5 and 2.5.
    np.testing.assert_array_equal(
        object_mask(TRIANGLE, 5, 7),
        grid([".......",
              "..###..",
              "..##...",
              "..#....",
              "......."]),
    )  # fmt: skip


def test_polygons_sharing_an_edge_share_no_pixel_and_cover_the_whole() -> None:
    # The diagonal x + y = 4 runs through the centres of pixels with c + r = 3: each goes to exactly one triangle.
    lower, upper = object_mask([[0, 0, 4, 0, 0, 4]], 4, 4), object_mask([[4, 0, 4, 4, 0, 4]], 4, 4)
    assert not (lower & upper).any()
    assert (lower | upper).all()


def test_an_object_s_polygons_are_joined_and_clipped_to_the_image() -> None:
    overlapping = [[0, 0, 4, 0, 4, 4, 0, 4], [2, 2, 6, 2, 6, 6, 2, 6]]
    assert object_mask(overlapping, 8, 8).sum() == 16 + 16 - 4  # a union: the shared 2 × 2 is not cancelled
    assert object_mask([[-2, -2, 3, -2, 3, 3, -2, 3]], 5, 5).sum() == 9  # rows and columns 0-2 of 5 × 5
    assert not object_mask([[1, 1, 3, 3]], 5, 5).any()  # two points enclose nothing


def test_polygon_mask_agrees_with_a_ray_cast_at_every_pixel_centre() -> None:
    rng = np.random.default_rng(0)
    for _ in range(40):
        polygon = rng.uniform(-3, 33, size=2 * int(rng.integers(3, 9))).tolist()  # often self-intersecting
        np.testing.assert_array_equal(object_mask([polygon], 24, 30), centres_inside(polygon, 24, 30))


# A 3 × 4 mask, runs counted down the columns: 3 zeros (column 0), 2 ones (column 1, rows 0-1), 5 zeros, 1 one
# (column 3, row 1), 1 zero.
RLE_MASK = grid([".#..",
                 ".#.#",
                 "...."])  # fmt: skip


def test_uncompressed_rle_runs_down_the_columns() -> None:
    np.testing.assert_array_equal(object_mask({"counts": [3, 2, 5, 1, 1], "size": [3, 4]}, 3, 4), RLE_MASK)
    expected = np.zeros((10, 12), bool)
    expected[0:3, 0] = True  # CROWD: no zeros, then three ones down column 0
    np.testing.assert_array_equal(object_mask(CROWD, 10, 12), expected)


def test_compressed_rle_decodes_coco_s_string_encoding() -> None:
    # 3, 2, 5 fit one 5-bit group each: "3", "2", "5". The fourth count is written as 1 − 2 (two before) = −1:
    # group 0b11111 (sign bit set, nothing follows) = chr(48 + 31) = "O". The fifth, 1 − 5 = −4: 0b11100 = "L".
    np.testing.assert_array_equal(object_mask({"counts": "325OL", "size": [3, 4]}, 3, 4), RLE_MASK)
    # 100 = 4 + 3·32: groups 4 (with 0x20, more follows) and 3 → "T3"; 50 = 18 + 1·32: 18 has the sign bit 0x10,
    # so it needs a following group: 18 | 0x20 = 50 → "b", then 1 → "1". The third count is not a difference.
    expected = np.zeros((10, 20), bool)
    expected[:, 10:15] = True  # 100 zeros = columns 0-9, 50 ones = columns 10-14
    np.testing.assert_array_equal(object_mask({"counts": "T3b1b1", "size": [10, 20]}, 10, 20), expected)


@pytest.mark.parametrize(
    ("segmentation", "message"),
    [
        ({"counts": [3, 2, 5, 1, 1], "size": [4, 3]}, r"RLE is of a 4×3 image; the mask was asked at 3×4"),
        ({"counts": [3, 2, 5], "size": [3, 4]}, r"counts add up to 10 pixels, but its size 3×4 has 12"),
        ({"counts": "325O", "size": [3, 4]}, r"counts add up to 11 pixels"),
        ({"counts": "32~", "size": [3, 4]}, r"outside COCO's alphabet"),
        ({"counts": "3T", "size": [3, 4]}, r"end in the middle of a number"),
        ({"counts": [3, 2, 5, 1, 1]}, r"'size' must be \[height, width\]"),
        ([[0, 0, 1, "a", 2, 2]], r"polygon 0 must be a list of numbers"),
        ("0 0 1 1", r"a list of polygons or an RLE object"),
    ],
)
def test_a_malformed_segmentation_says_what_is_wrong(segmentation: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        object_mask(segmentation, 3, 4)
