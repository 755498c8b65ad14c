"""Synthetic scenes: reproducible bytes, masks and boxes that match the pixels, texts that are true and unambiguous.

The checks on texts re-derive every answer from the objects' recorded attributes and boxes with their own small
parser, so a wrong template or a wrong answer in `fusioncam.synth` cannot agree with itself here.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from fusioncam.images import load_image
from fusioncam.inputs import Pair, pairs_from_jsonl
from fusioncam.synth import (
    BACKGROUNDS,
    COLORS,
    NUMBERS,
    SHAPES,
    VOCABULARY,
    describe,
    generate,
    render_scene,
    scene_rng,
    synth_scene,
)
from fusioncam.text import BlipTokenizer

SIZE = 64
SEED = 3
N = 60
PLURALS = {plural: shape for shape, plural in SHAPES.items()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    summary = generate(root, N, SEED, image_size=SIZE)
    assert summary.scenes == N
    return root


@pytest.fixture(scope="module")
def scenes(dataset: Path) -> list[dict]:
    return read_jsonl(dataset / "scenes.jsonl")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def read_mask(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


# ---- the oracle: resolve phrases against recorded objects -----------------------------------------------------

PHRASE = re.compile(r"(?:(small|large) )?(\w+) (\w+)")


def matching(objects: list[dict], phrase: str) -> list[int]:
    """Indices of the objects a "[size] colour shape" phrase fits."""
    found = PHRASE.fullmatch(phrase)
    assert found, f"not a [size] colour shape phrase: {phrase!r}"
    size, color, shape = found.groups()
    assert color in COLORS and shape in SHAPES, phrase
    return [
        i for i, o in enumerate(objects) if (o["color"], o["shape"]) == (color, shape) and size in (None, o["size"])
    ]


def resolve(objects: list[dict], expression: str) -> int:
    """The one object a referring expression ("the …") names; fails when it names none or several."""
    assert expression.startswith("the "), expression
    hits = matching(objects, expression.removeprefix("the "))
    assert len(hits) == 1, f"{expression!r} fits {len(hits)} objects"
    return hits[0]


def holds(a: dict, words: str, b: dict) -> bool:
    """A spatial relation that is clearly true: the boxes do not even overlap along that axis."""
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a["box"], b["box"]
    return {"left of": ax1 <= bx0, "right of": bx1 <= ax0, "above": ay1 <= by0, "below": by1 <= ay0}[words]


def answer(objects: list[dict], question: str) -> str:
    """The answer the scene gives to a question, or an assertion error if the question is ambiguous."""
    if question == "how many objects are there?":
        return NUMBERS[len(objects)]
    if m := re.fullmatch(r"what color is the (\w+)\?", question):
        (only,) = [o for o in objects if o["shape"] == m[1]]
        return only["color"]
    if m := re.fullmatch(r"what shape is the (\w+) object\?", question):
        (only,) = [o for o in objects if o["color"] == m[1]]
        return only["shape"]
    if m := re.fullmatch(r"what size is the (\w+ \w+)\?", question):
        (index,) = matching(objects, m[1])
        return objects[index]["size"]
    if m := re.fullmatch(r"how many (\w+) objects are there\?", question):
        return NUMBERS[sum(o["color"] == m[1] for o in objects)]
    if m := re.fullmatch(r"how many (\w+) are there\?", question):
        return NUMBERS[sum(o["shape"] == PLURALS[m[1]] for o in objects)]
    if m := re.fullmatch(r"is there (an?) (\w+ \w+)\?", question):
        assert m[1] == ("an" if m[2][0] in "aeiou" else "a"), question
        return "yes" if matching(objects, m[2]) else "no"
    if m := re.fullmatch(r"is (the .+?) (left of|right of|above|below) (the .+)\?", question):
        a, b = objects[resolve(objects, m[1])], objects[resolve(objects, m[3])]
        opposite = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}[m[2]]
        assert holds(a, m[2], b) or holds(a, opposite, b), f"neither answer is clearly right: {question!r}"
        return "yes" if holds(a, m[2], b) else "no"
    raise AssertionError(f"no rule for question {question!r}")


# ---- tests -------------------------------------------------------------------------------------------------------


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    first = generate(tmp_path / "a", 8, 7, image_size=SIZE)
    second = generate(tmp_path / "b", 8, 7, image_size=SIZE)
    other = generate(tmp_path / "c", 8, 8, image_size=SIZE)
    assert tree(first.root) == tree(second.root)
    assert tree(first.root) != tree(other.root)
    assert (first.root / "images" / "000000.png").read_bytes() != (other.root / "images" / "000000.png").read_bytes()


def test_scene_depends_only_on_seed_split_and_index(tmp_path: Path, dataset: Path) -> None:
    small = generate(tmp_path / "small", 5, SEED, image_size=SIZE)
    big = tree(dataset)
    for name, data in tree(small.root).items():
        if name.startswith(("images/", "masks/")):
            assert data == big[name], name
    scene, description = synth_scene(4, SEED, image_size=SIZE)
    assert np.array_equal(scene.image, load_image(dataset / "images" / "000004.png"))
    assert description.caption == read_jsonl(dataset / "scenes.jsonl")[4]["caption"]
    train, val = (synth_scene(0, SEED, image_size=SIZE, split=split)[0].image for split in ("train", "val"))
    assert not np.array_equal(train, val)


def test_split_writes_its_own_folder(tmp_path: Path) -> None:
    summary = generate(tmp_path, 3, 0, image_size=SIZE, split="val")
    assert summary.root == tmp_path / "val"
    assert summary.scenes_jsonl.is_file() and summary.vocab_txt.is_file()
    scene, _ = synth_scene(0, 0, image_size=SIZE, split="val")
    assert np.array_equal(load_image(summary.root / "images" / "000000.png"), scene.image)


def test_every_kind_of_thing_appears(scenes: list[dict]) -> None:
    objects = [o for s in scenes for o in s["objects"]]
    assert {o["shape"] for o in objects} == set(SHAPES)
    assert {o["color"] for o in objects} == set(COLORS)
    assert {o["size"] for o in objects} == {"small", "large"}
    assert {s["background"] for s in scenes} == set(BACKGROUNDS)
    assert {len(s["objects"]) for s in scenes} == {1, 2, 3, 4}
    # twins (same colour and shape) appear, so expressions that need the size are exercised
    assert any(o["expression"].split()[1] in ("small", "large") for o in objects)


def test_boxes_masks_and_pixels_agree(dataset: Path, scenes: list[dict]) -> None:
    for scene in scenes:
        image = load_image(dataset / scene["image"])
        assert image.shape == (scene["height"], scene["width"], 3) == (SIZE, SIZE, 3)
        covered = np.zeros(image.shape[:2], bool)
        for obj in scene["objects"]:
            mask = read_mask(dataset / obj["mask"])
            assert mask.shape == image.shape[:2] and mask.dtype == np.uint8
            assert set(np.unique(mask)) <= {0, 255}
            inside = mask > 0
            assert inside.sum() > 0
            ys, xs = np.nonzero(inside)
            assert obj["box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]  # tight, x1/y1 exclusive
            assert (image[inside] == COLORS[obj["color"]]).all(), obj
            assert not (covered & inside).any(), "objects overlap"
            covered |= inside
        # the background never takes an object's colour, nor comes close to one
        background = image[~covered].astype(int)
        for rgb in COLORS.values():
            assert np.abs(background - rgb).max(axis=1).min() > 40, scene["id"]


def test_palette_is_well_separated() -> None:
    colors = np.array(list(COLORS.values()), float)
    assert len(colors) >= 6
    pairwise = [np.linalg.norm(a - b) for a, b in itertools.combinations(colors, 2)]
    assert min(pairwise) >= 80
    distance_to_grey = np.linalg.norm(colors - colors.mean(axis=1, keepdims=True), axis=1)
    assert distance_to_grey.min() >= 95


def test_answers_are_true_to_the_scene(scenes: list[dict]) -> None:
    answers = set()
    for scene in scenes:
        for qa in scene["questions"]:
            assert answer(scene["objects"], qa["question"]) == qa["answer"], (scene["id"], qa)
            answers.add(qa["answer"])
    assert {"yes", "no", "zero", "small", "large"} <= answers


def test_referring_expressions_single_out_their_object(scenes: list[dict]) -> None:
    for scene in scenes:
        objects = scene["objects"]
        for index, obj in enumerate(objects):
            assert resolve(objects, obj["expression"]) == index
            # the size is there only when colour and shape do not suffice
            needs_size = len(matching(objects, f"{obj['color']} {obj['shape']}")) > 1
            assert (obj["size"] in obj["expression"].split()) == needs_size, obj["expression"]


def test_captions_are_true(scenes: list[dict]) -> None:
    for scene in scenes:
        objects, caption = scene["objects"], scene["caption"]
        if m := re.fullmatch(r"an? (.+?) (left of|right of|above|below) an? (.+)", caption):
            assert len(objects) == 2
            pairs = itertools.product(matching(objects, m[1]), matching(objects, m[3]))
            assert any(holds(objects[i], m[2], objects[j]) for i, j in pairs if i != j), caption
            continue
        phrases = re.split(r", | and ", caption)
        assert len(phrases) == len(objects), caption
        for phrase in phrases:
            article, rest = phrase.split(" ", 1)
            assert article == ("an" if rest[0] in "aeiou" else "a"), caption
            assert matching(objects, rest), caption
        assert {i for phrase in phrases for i in matching(objects, phrase.split(" ", 1)[1])} == set(range(len(objects)))


def test_vocabulary_tokenizes_every_text_as_whole_words(dataset: Path, scenes: list[dict]) -> None:
    vocab = (dataset / "vocab.txt").read_text().splitlines()
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert vocab == list(VOCABULARY) and len(set(vocab)) == len(vocab)
    assert {"?", ",", "."} <= set(vocab)
    texts = sorted(
        {s["caption"] for s in scenes}
        | {o["expression"] for s in scenes for o in s["objects"]}
        | {text for s in scenes for qa in s["questions"] for text in (qa["question"], qa["answer"])}
    )
    tokenizer = BlipTokenizer(dataset / "vocab.txt", max_length=64)
    encoding = tokenizer(texts)
    for text, tokens, words in zip(texts, tokenizer.tokens(encoding.input_ids), encoding.words, strict=True):
        assert "[UNK]" not in tokens, text
        assert all(len(word.positions) == 1 for word in words), f"{text!r} splits into pieces: {tokens}"
    # a word outside the synthetic language still splits into pieces instead of [UNK]
    assert "[UNK]" not in tokenizer.tokens(tokenizer(["a dog"]).input_ids)[0]


def test_jsonl_files_point_at_existing_files(dataset: Path, scenes: list[dict]) -> None:
    pairs = read_jsonl(dataset / "pairs.jsonl")
    referring = read_jsonl(dataset / "referring.jsonl")
    vqa = read_jsonl(dataset / "vqa.jsonl")
    assert [p["text"] for p in pairs] == [s["caption"] for s in scenes]
    assert len(referring) == sum(len(s["objects"]) for s in scenes)
    assert len(vqa) == sum(len(s["questions"]) for s in scenes)
    for record in [*scenes, *pairs, *referring, *vqa]:
        assert (dataset / record["image"]).is_file()
    for record in referring:
        assert (dataset / record["mask"]).is_file() and len(record["box"]) == 4
    for record in vqa:
        assert record["question"].endswith("?") and record["answer"]
    # what `fusioncam heatmap --pairs` reads
    lines = (dataset / "pairs.jsonl").read_text().splitlines()
    read = list(pairs_from_jsonl(lines, "pairs.jsonl", dataset))
    assert all(isinstance(p, Pair) and p.image.is_file() for p in read) and len(read) == N


def test_describe_is_reproducible_without_rng() -> None:
    scene = render_scene(scene_rng(0, 0), image_size=96, max_objects=3)
    assert 1 <= len(scene.objects) <= 3 and scene.image.shape == (96, 96, 3)
    assert describe(scene) == describe(scene)


def test_refuses_bad_arguments_and_existing_dataset(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image_size"):
        generate(tmp_path, 1, image_size=32)
    with pytest.raises(ValueError, match="max_objects"):
        generate(tmp_path, 1, max_objects=0)
    with pytest.raises(ValueError, match="split"):
        generate(tmp_path, 1, split="../elsewhere")
    generate(tmp_path, 1, image_size=SIZE)
    with pytest.raises(FileExistsError, match=r"scenes\.jsonl"):
        generate(tmp_path, 1, image_size=SIZE)
    assert generate(tmp_path, 2, image_size=SIZE, overwrite=True).scenes == 2
