"""COCO/Flickr30k Karpathy split files in the layout BLIP and LAVIS ship them: eval (one record per image) and train
(one record per caption), and clear errors for anything else."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fusioncam.datasets import DatasetError, read_karpathy_eval, read_karpathy_train

COCO_TEST = [
    {
        "image": "val2014/COCO_val2014_000000391895.jpg",
        "caption": ["A man with a red helmet on a small moped on a dirt road. ", "Man riding a motor bike."],
    },
    {"image": "val2014/COCO_val2014_000000522418.jpg", "caption": ["A woman cutting a (large) cake!"]},
    {
        "image": "val2014/COCO_val2014_000000184613.jpg",
        "caption": ["A child holding a flowered umbrella", "A little boy", "Two kids walking"],
    },
]

COCO_TRAIN = [
    {"caption": "A woman wearing a net on her head. ", "image": "val2014/COCO_val2014_000000522418.jpg",
     "image_id": "coco_522418"},
    {"caption": "A woman cutting a cake", "image": "val2014/COCO_val2014_000000522418.jpg",
     "image_id": "coco_522418"},
    {"caption": "A child holding an umbrella.", "image": "train2014/COCO_train2014_000000184613.jpg",
     "image_id": 184613},
]  # fmt: skip


def write(path: Path, content: Any) -> Path:
    path.write_text(json.dumps(content))
    return path


def test_eval_split_lists_every_caption_with_the_ground_truth_both_ways(tmp_path: Path) -> None:
    split = read_karpathy_eval(write(tmp_path / "coco_karpathy_test.json", COCO_TEST))
    assert split.images == tuple(record["image"] for record in COCO_TEST)
    assert split.texts[:3] == (
        "a man with a red helmet on a small moped on a dirt road",
        "man riding a motor bike",
        "a woman cutting a large cake",
    )
    assert split.text_image == (0, 0, 1, 2, 2, 2)
    assert split.image_texts == ((0, 1), (2,), (3, 4, 5))
    assert split.image_paths(Path("/coco")) == [Path("/coco") / image for image in split.images]


def test_captions_are_cut_at_max_words(tmp_path: Path) -> None:
    words = [f"w{index}" for index in range(40)]
    path = write(tmp_path / "flickr30k_test.json", [{"image": "flickr30k-images/1.jpg", "caption": [" ".join(words)]}])
    assert read_karpathy_eval(path).texts == (" ".join(words[:30]),)  # BLIP's retrieval datasets keep 30
    assert read_karpathy_eval(path, max_words=50).texts == (" ".join(words),)  # LAVIS's blip_caption keeps 50


def test_a_sample_keeps_whole_images_in_file_order(tmp_path: Path) -> None:
    split = read_karpathy_eval(write(tmp_path / "test.json", COCO_TEST))
    sample = split.sample(2, seed=3)
    assert sample == split.sample(2, seed=3)
    assert len(sample.images) == 2
    assert list(sample.images) == [image for image in split.images if image in sample.images]
    for image, texts in zip(sample.images, sample.image_texts, strict=True):
        own = split.image_texts[split.images.index(image)]
        assert [sample.texts[text] for text in texts] == [split.texts[text] for text in own]
        assert all(sample.text_image[text] == sample.images.index(image) for text in texts)
    assert split.sample(3, seed=0) is split
    assert split.subset([2, 0]).images == (split.images[2], split.images[0])


def test_train_split_knows_every_caption_of_each_image(tmp_path: Path) -> None:
    train = read_karpathy_train(write(tmp_path / "coco_karpathy_train.json", COCO_TRAIN))
    assert [(pair.image_id, pair.caption) for pair in train.pairs] == [
        ("coco_522418", "a woman wearing a net on her head"),
        ("coco_522418", "a woman cutting a cake"),
        ("184613", "a child holding an umbrella"),  # an integer id is read as its decimal string
    ]
    assert train.captions["coco_522418"] == {"a woman wearing a net on her head", "a woman cutting a cake"}
    assert train.is_caption_of("coco_522418", "a woman cutting a cake")
    assert not train.is_caption_of("184613", "a woman cutting a cake")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"images": []}, "is a list of records"),
        ([], "holds no records"),
        (["val2014/x.jpg"], "record 0: expected an object"),
        ([{"caption": ["a dog"]}], "record 0: 'image' is missing"),
        ([{"image": "a.jpg", "caption": "a dog", "image_id": "1"}], "as in a train split"),
        ([{"image": "a.jpg", "caption": []}], "'caption' is empty"),
        ([{"image": "a.jpg", "caption": ["a dog", 3]}], "record 0, caption 1: a caption must be a string"),
        ([{"image": "a.jpg", "caption": ["a dog"]}, {"image": "b.jpg", "caption": ["..."]}], "record 1, caption 0"),
        ([{"image": "a.jpg", "caption": ["a dog"]}, {"image": "a.jpg", "caption": ["a cat"]}], "also record 0"),
    ],
)
def test_malformed_eval_files_name_the_record(tmp_path: Path, content: Any, message: str) -> None:
    path = write(tmp_path / "coco_karpathy_test.json", content)
    with pytest.raises(DatasetError, match=r"coco_karpathy_test\.json") as error:
        read_karpathy_eval(path)
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"image": "a.jpg", "caption": ["a dog"]}, "as in a val/test split"),
        ({"image": "a.jpg", "caption": "a dog"}, "'image_id' is missing"),
        ({"image": "a.jpg", "caption": "a dog", "image_id": True}, "'image_id' must be a string or an integer"),
        ({"image": "b.jpg", "caption": "a dog", "image_id": "1"}, "names 'b.jpg' here and 'a.jpg' before"),
        ({"image": "a.jpg", "caption": "!!", "image_id": "1"}, "empty once cleaned"),
    ],
)
def test_malformed_train_files_name_the_record(tmp_path: Path, record: dict[str, Any], message: str) -> None:
    path = write(tmp_path / "flickr30k_train.json", [{"image": "a.jpg", "caption": "a cat", "image_id": "1"}, record])
    with pytest.raises(DatasetError, match=r"flickr30k_train\.json, record 1") as error:
        read_karpathy_train(path)
    assert message in str(error.value)


def test_missing_or_broken_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="Karpathy val/test file not found"):
        read_karpathy_eval(tmp_path / "nope.json")
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(DatasetError, match="not a JSON file"):
        read_karpathy_train(tmp_path / "broken.json")
