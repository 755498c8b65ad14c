"""Synthetic scenes with exact ground truth, so the heatmap chain can be proven without downloadable weights.

Each scene holds 1–4 (by default) flat-coloured shapes on a textured, low-saturation background, and comes with what a
vision-language model is trained and judged on: a caption, one referring expression per object (with its box and
pixel mask), and VQA questions whose answers follow from the scene. The background stays near grey and every
object colour is saturated, so no background pixel can be mistaken for (or hide) an object, and an object's mask
is exactly the set of pixels painted in its colour.

Every text is true of its scene and unambiguous by construction: an expression names the colour and shape, plus
the size only when another object shares both; a question is asked only when exactly one answer fits. The words
come from a fixed `VOCABULARY`, written as a BERT-style `vocab.txt` that `fusioncam.text.BlipTokenizer` reads, so
a small model trained here tokenizes every synthetic text with no `[UNK]`.

Scene `i` of a dataset depends only on (seed, split, i), not on how many scenes are generated, so growing a
dataset keeps its first scenes, and training can draw scenes in memory (`synth_scene`) that match a dataset on
disk byte for byte.
"""

from __future__ import annotations

import json
import math
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from fusioncam.explain.render import save_png

# Saturated, well separated RGB colours: each is ≥ 95 levels from the grey axis the backgrounds live on and
# ≥ 80 from every other (tests check both).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 30),
    "green": (40, 170, 60),
    "cyan": (30, 200, 220),
    "blue": (40, 80, 230),
    "purple": (140, 50, 200),
    "pink": (245, 110, 190),
}
SHAPES: dict[str, str] = {  # shape → plural
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "star": "stars",
    "cross": "crosses",
    "ring": "rings",
}
SIZES = ("small", "large")
BACKGROUNDS = ("plain", "noise", "stripes", "gradient", "checker")
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six")
RELATIONS: dict[str, str] = {  # relation → its opposite
    "left of": "right of",
    "right of": "left of",
    "above": "below",
    "below": "above",
}

# Object side as a fraction of the image side, per size word; the gap between the classes keeps "small" and
# "large" visibly different at any position.
_SIDE_FRACTION = {"small": (0.15, 0.20), "large": (0.28, 0.36)}
_MIN_IMAGE_SIZE = 48  # below this a small object is a handful of pixels and its shape is no longer recognisable
_PLACEMENT_TRIES = 40
_TWIN_PROBABILITY = 0.2  # chance that a new object copies an earlier one's colour and shape with the other size
_SIZE_IN_CAPTION_PROBABILITY = 0.5
_SUBPIXEL_BITS = 4  # OpenCV fixed-point drawing: coordinates carry 4 fractional bits

_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_PUNCTUATION = ("?", ",", ".")
_FUNCTION_WORDS = (
    "a", "an", "the", "and", "is", "are", "there", "how", "many", "what",
    "color", "shape", "size", "object", "objects", "of", "left", "right", "above", "below", "yes", "no",
)  # fmt: skip
# Single characters and their continuation pieces come last: words outside the synthetic language (a user's
# own caption for a model trained here) then split into pieces instead of collapsing into one [UNK].
_CHARACTERS = tuple("abcdefghijklmnopqrstuvwxyz0123456789")
VOCABULARY: tuple[str, ...] = tuple(
    dict.fromkeys(
        (
            *_SPECIAL_TOKENS,
            *_PUNCTUATION,
            *_FUNCTION_WORDS,
            *SIZES,
            *COLORS,
            *SHAPES,
            *SHAPES.values(),
            *NUMBERS,
            *_CHARACTERS,
            *(f"##{c}" for c in _CHARACTERS),
        )
    )
)


@dataclass(frozen=True)
class SceneObject:
    """One painted shape. `box` is [x0, y0, x1, y1] in pixels with x1, y1 exclusive, the tight bounds of `mask`
    (so `mask[y0:y1, x0:x1]` holds all of it); `mask` is HxW bool, True exactly where the object's colour is."""

    shape: str
    color: str
    size: str
    box: tuple[int, int, int, int]
    mask: np.ndarray = field(repr=False, compare=False)

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2


@dataclass(frozen=True)
class Scene:
    """A rendered scene: HxWx3 uint8 RGB pixels, the background texture's name, and the objects on it."""

    image: np.ndarray = field(repr=False, compare=False)
    background: str
    objects: tuple[SceneObject, ...]


@dataclass(frozen=True)
class Question:
    question: str
    answer: str


@dataclass(frozen=True)
class Description:
    """What is said about a scene: a caption, one expression per object (same order), questions with answers."""

    caption: str
    expressions: tuple[str, ...]
    questions: tuple[Question, ...]


@dataclass(frozen=True)
class SynthSummary:
    """What `write_dataset` wrote: counts, and the files (each JSONL's paths are relative to `root`)."""

    root: Path
    scenes: int
    objects: int
    questions: int
    scenes_jsonl: Path
    pairs_jsonl: Path
    referring_jsonl: Path
    vqa_jsonl: Path
    vocab_txt: Path

    def to_dict(self) -> dict[str, str | int]:
        """A JSON-ready record (paths as strings), for `--json` output."""
        return {key: str(value) if isinstance(value, Path) else value for key, value in self.__dict__.items()}


def scene_rng(seed: int, index: int, split: str | None = None) -> np.random.Generator:
    """The generator for scene `index`: independent of every other scene's, and different per split, so a
    "train" and a "val" set made with the same seed share no scenes."""
    split_key = (zlib.crc32(split.encode()),) if split else ()
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(*split_key, index)))


def render_scene(rng: np.random.Generator, image_size: int = 128, max_objects: int = 4) -> Scene:
    """Draw 1..`max_objects` non-overlapping objects on a textured background of `image_size`² pixels.

    An object that finds no free place is tried again small, then left out, so crowded draws at small image
    sizes end up with fewer objects rather than overlapping ones. No two objects share colour, shape and size,
    so colour + shape + size always singles out one object.
    """
    _check_scene_arguments(image_size, max_objects)
    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    image = _background(rng, background, image_size)
    taken: list[tuple[float, float, float, float]] = []  # nominal boxes, kept apart by `gap`
    gap = max(2.0, 0.03 * image_size)
    objects: list[SceneObject] = []
    for _ in range(rng.integers(1, max_objects + 1)):
        color, shape, size = _attributes(rng, objects)
        for size_word in (size, "small") if size == "large" else (size,):
            if any((o.color, o.shape, o.size) == (color, shape, size_word) for o in objects):
                continue
            place = _place(rng, size_word, image_size, taken, gap)
            if place is not None:
                cx, cy, side = place
                taken.append((cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))
                mask = _shape_mask(shape, cx, cy, side, image_size)
                image[mask] = COLORS[color]
                x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
                objects.append(SceneObject(shape, color, size_word, (x, y, x + w, y + h), mask))
                break
    return Scene(image, background, tuple(objects))


def _check_scene_arguments(image_size: int, max_objects: int) -> None:
    if image_size < _MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {_MIN_IMAGE_SIZE} pixels, got {image_size}")
    if not 1 <= max_objects < len(NUMBERS):
        raise ValueError(f"max_objects must be between 1 and {len(NUMBERS) - 1}, got {max_objects}")


def _attributes(rng: np.random.Generator, objects: list[SceneObject]) -> tuple[str, str, str]:
    """Colour, shape and size for a new object; sometimes the twin of an earlier one, so that expressions and
    questions regularly need the size to tell two objects apart."""
    used = {(o.color, o.shape, o.size) for o in objects}
    twins = [o for o in objects if (o.color, o.shape, _other_size(o.size)) not in used]
    if twins and rng.random() < _TWIN_PROBABILITY:
        twin = twins[rng.integers(len(twins))]
        return twin.color, twin.shape, _other_size(twin.size)
    while True:
        color = list(COLORS)[rng.integers(len(COLORS))]
        shape = list(SHAPES)[rng.integers(len(SHAPES))]
        size = SIZES[rng.integers(len(SIZES))]
        if (color, shape, size) not in used:
            return color, shape, size


def _other_size(size: str) -> str:
    return SIZES[1 - SIZES.index(size)]


def _place(
    rng: np.random.Generator,
    size: str,
    image_size: int,
    taken: list[tuple[float, float, float, float]],
    gap: float,
) -> tuple[float, float, float] | None:
    """Centre and side of a square that fits in the image and keeps `gap` from every taken square, or None."""
    low, high = _SIDE_FRACTION[size]
    for _ in range(_PLACEMENT_TRIES):
        side = rng.uniform(low, high) * image_size
        half = side / 2
        cx, cy = rng.uniform(1 + half, image_size - 2 - half, size=2)
        if all(
            cx + half + gap <= x0 or x1 + gap <= cx - half or cy + half + gap <= y0 or y1 + gap <= cy - half
            for x0, y0, x1, y1 in taken
        ):
            return float(cx), float(cy), float(side)
    return None


def _shape_mask(shape: str, cx: float, cy: float, side: float, image_size: int) -> np.ndarray:
    """HxW bool mask of one shape filling (most of) a `side`² square centred at (cx, cy). Drawn without
    anti-aliasing so that the painted pixels and the mask are the same set."""
    canvas = np.zeros((image_size, image_size), np.uint8)
    scale = 1 << _SUBPIXEL_BITS
    r = side / 2
    center = (round(cx * scale), round(cy * scale))

    def polygon(points: list[tuple[float, float]]) -> None:
        fixed = np.round(np.array(points) * scale).astype(np.int32)
        cv2.fillPoly(canvas, [fixed], 255, cv2.LINE_8, _SUBPIXEL_BITS)

    if shape in ("circle", "ring"):
        cv2.circle(canvas, center, round(r * scale), 255, -1, cv2.LINE_8, _SUBPIXEL_BITS)
        if shape == "ring":
            cv2.circle(canvas, center, round(0.55 * r * scale), 0, -1, cv2.LINE_8, _SUBPIXEL_BITS)
    elif shape == "square":
        h = 0.8 * r
        polygon([(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)])
    elif shape == "triangle":
        h = 0.87 * r
        polygon([(cx, cy - h), (cx + r, cy + h), (cx - r, cy + h)])
    elif shape == "star":
        angles = -math.pi / 2 + np.arange(10) * math.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, 0.42 * r)
        polygon(list(zip(cx + radii * np.cos(angles), cy + radii * np.sin(angles) + 0.1 * r, strict=True)))
    elif shape == "cross":
        arm, t = 0.95 * r, 0.34 * r
        polygon([(cx - arm, cy - t), (cx + arm, cy - t), (cx + arm, cy + t), (cx - arm, cy + t)])
        polygon([(cx - t, cy - arm), (cx + t, cy - arm), (cx + t, cy + arm), (cx - t, cy + arm)])
    else:
        raise ValueError(f"unknown shape {shape!r}; choose one of: {', '.join(SHAPES)}")
    return canvas > 0


def _background(rng: np.random.Generator, kind: str, image_size: int) -> np.ndarray:
    """A near-grey texture: a base grey with a slight tint, modulated by a pattern in [-1, 1], plus fine noise.

    Every pixel's channels stay within 25 levels of their mean, far from every object colour: the pattern moves
    all three alike, and a channel is at most (2·10 + 10 + 10)/3 from it by the tint (|t| ≤ 10), (2·8 + 8 + 8)/3
    by the grain (|g| ≤ 8) and (2·½ + ½ + ½)/3 by rounding, 24⅔ in all.
    """
    n = image_size
    y, x = np.mgrid[0:n, 0:n].astype(np.float32)
    scale = n / 64  # pattern periods are chosen for 64 px and grow with the image
    pattern: np.ndarray
    if kind == "plain":
        pattern = np.zeros((n, n), np.float32)
    elif kind == "noise":
        coarse = rng.standard_normal((n // 8 + 2, n // 8 + 2)).astype(np.float32)
        pattern = cv2.resize(coarse, (n, n), interpolation=cv2.INTER_CUBIC)
        pattern = pattern / max(float(np.abs(pattern).max()), 1e-6)
    elif kind == "stripes":
        angle, period = rng.uniform(0, math.pi), rng.uniform(6, 16) * scale
        pattern = np.where(np.sin(2 * math.pi * (x * math.cos(angle) + y * math.sin(angle)) / period) >= 0, 1, -1)
    elif kind == "gradient":
        angle = rng.uniform(0, 2 * math.pi)
        ramp = x * math.cos(angle) + y * math.sin(angle)
        pattern = 2 * (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6) - 1
    elif kind == "checker":
        cell = rng.uniform(6, 16) * scale
        dx, dy = rng.uniform(0, cell, size=2)
        pattern = ((np.floor((x + dx) / cell) + np.floor((y + dy) / cell)) % 2) * 2 - 1
    else:
        raise ValueError(f"unknown background {kind!r}; choose one of: {', '.join(BACKGROUNDS)}")
    grey = rng.uniform(80, 175)
    tint = rng.uniform(-10, 10, size=3)
    amplitude = rng.uniform(15, 35)
    grain = np.clip(rng.normal(0, 3, size=(n, n, 3)), -8, 8)
    pixels = grey + tint + amplitude * pattern[..., None] + grain
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def describe(scene: Scene, rng: np.random.Generator | None = None) -> Description:
    """Caption, referring expressions and questions for a scene. `rng` only picks among equally true phrasings
    (whether the caption mentions sizes, which absent object a "no" question names); without one the choice is
    fixed, so a scene's description is still reproducible."""
    rng = rng if rng is not None else np.random.default_rng(0)
    expressions = tuple(referring_expression(scene.objects, i) for i in range(len(scene.objects)))
    return Description(_caption(rng, scene.objects), expressions, tuple(_questions(rng, scene.objects, expressions)))


def referring_expression(objects: tuple[SceneObject, ...], index: int) -> str:
    """The expression that singles out `objects[index]`: "the red circle", or "the large red circle" when the
    scene has another red circle."""
    obj = objects[index]
    twin = any(o.color == obj.color and o.shape == obj.shape for i, o in enumerate(objects) if i != index)
    return f"the {obj.size} {obj.color} {obj.shape}" if twin else f"the {obj.color} {obj.shape}"


def relation(a: SceneObject, b: SceneObject) -> str | None:
    """Where `a` is relative to `b` along the axis on which their boxes are further apart ("left of", "above"…),
    or None when their boxes overlap on both axes (then no relation is clearly true)."""
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a.box, b.box
    gap_x, gap_y = max(bx0 - ax1, ax0 - bx1), max(by0 - ay1, ay0 - by1)
    if max(gap_x, gap_y) < 0:
        return None
    if gap_x >= gap_y:
        return "left of" if ax1 <= bx0 else "right of"
    return "above" if ay1 <= by0 else "below"


def _with_article(phrase: str) -> str:
    return f"an {phrase}" if phrase[0] in "aeiou" else f"a {phrase}"


def _phrase(obj: SceneObject, with_size: bool) -> str:
    return _with_article(f"{obj.size} {obj.color} {obj.shape}" if with_size else f"{obj.color} {obj.shape}")


def _caption(rng: np.random.Generator, objects: tuple[SceneObject, ...]) -> str:
    """One object: "a small green triangle"; two: "a red circle left of a blue square"; more: a list from left
    to right. Each object's size is mentioned at random, which keeps the caption true either way."""
    phrases = [_phrase(o, with_size=rng.random() < _SIZE_IN_CAPTION_PROBABILITY) for o in objects]
    if len(objects) == 2:
        first = int(rng.integers(2))
        words = relation(objects[first], objects[1 - first])
        if words is not None:
            return f"{phrases[first]} {words} {phrases[1 - first]}"
    order = sorted(range(len(objects)), key=lambda i: objects[i].center[0])
    listed = [phrases[i] for i in order]
    return listed[0] if len(listed) == 1 else f"{', '.join(listed[:-1])} and {listed[-1]}"


def _questions(
    rng: np.random.Generator, objects: tuple[SceneObject, ...], expressions: tuple[str, ...]
) -> list[Question]:
    """Every question template whose answer is unambiguous in this scene, in a fixed order."""
    shapes = Counter(o.shape for o in objects)
    colors = Counter(o.color for o in objects)
    kinds = Counter((o.color, o.shape) for o in objects)
    questions = [Question("how many objects are there?", NUMBERS[len(objects)])]
    for o in objects:
        if shapes[o.shape] == 1:
            questions.append(Question(f"what color is the {o.shape}?", o.color))
    for o in objects:
        if colors[o.color] == 1:
            questions.append(Question(f"what shape is the {o.color} object?", o.shape))
    for o in objects:
        if kinds[o.color, o.shape] == 1:
            questions.append(Question(f"what size is the {o.color} {o.shape}?", o.size))
    absent_shapes = [s for s in SHAPES if s not in shapes]
    asked_shapes = [*shapes, absent_shapes[rng.integers(len(absent_shapes))]] if absent_shapes else [*shapes]
    for shape in asked_shapes:
        questions.append(Question(f"how many {SHAPES[shape]} are there?", NUMBERS[shapes[shape]]))
    for color in colors:
        questions.append(Question(f"how many {color} objects are there?", NUMBERS[colors[color]]))
    present = objects[rng.integers(len(objects))]
    questions.append(Question(f"is there {_with_article(f'{present.color} {present.shape}')}?", "yes"))
    absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in kinds]
    color, shape = absent[rng.integers(len(absent))]
    questions.append(Question(f"is there {_with_article(f'{color} {shape}')}?", "no"))
    related = [
        (i, j, words)
        for i in range(len(objects))
        for j in range(len(objects))
        if i != j and (words := relation(objects[i], objects[j])) is not None
    ]
    if related:
        i, j, words = related[rng.integers(len(related))]
        truth = bool(rng.integers(2))
        asked = words if truth else RELATIONS[words]
        questions.append(Question(f"is {expressions[i]} {asked} {expressions[j]}?", "yes" if truth else "no"))
    return questions


def synth_scene(
    index: int, seed: int = 0, *, image_size: int = 128, max_objects: int = 4, split: str | None = None
) -> tuple[Scene, Description]:
    """Scene `index` of the dataset `generate(…, seed, split=split)` writes, made in memory (for training
    loops that draw scenes on the fly)."""
    rng = scene_rng(seed, index, split)
    scene = render_scene(rng, image_size, max_objects)
    return scene, describe(scene, rng)


def write_vocab(path: str | Path) -> Path:
    """Write `VOCABULARY` as a BERT `vocab.txt` (one token per line, id = line number)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(VOCABULARY) + "\n")
    return path


def write_dataset(
    out_dir: str | Path, scenes: Iterable[tuple[Scene, Description]], *, overwrite: bool = False
) -> SynthSummary:
    """Write scenes as PNGs, masks and JSONL annotations into `out_dir`; see `generate` for the layout.

    Refuses a folder that already holds a dataset unless `overwrite`: files of a larger earlier run would stay
    behind, unreferenced, and mixing two runs is rarely what anyone meant.
    """
    root = Path(out_dir)
    files = {name: root / f"{name}.jsonl" for name in ("scenes", "pairs", "referring", "vqa")}
    if files["scenes"].exists() and not overwrite:
        raise FileExistsError(f"{files['scenes']} already exists: choose another output folder or overwrite it")
    (root / "masks").mkdir(parents=True, exist_ok=True)
    lines: dict[str, list[str]] = {name: [] for name in files}
    n_scenes = n_objects = n_questions = 0
    for index, (scene, description) in enumerate(scenes):
        record = _write_scene(root, f"{index:06d}", scene, description)
        image, scene_id = record["image"], record["id"]
        lines["scenes"].append(_json(record))
        lines["pairs"].append(_json({"image": image, "text": record["caption"], "scene": scene_id}))
        lines["referring"].extend(
            _json({"image": image, "text": o["expression"], "box": o["box"], "mask": o["mask"], "scene": scene_id})
            for o in record["objects"]
        )
        lines["vqa"].extend(_json({"image": image, **qa, "scene": scene_id}) for qa in record["questions"])
        n_scenes += 1
        n_objects += len(record["objects"])
        n_questions += len(record["questions"])
    for name, path in files.items():
        path.write_text("".join(lines[name]))
    return SynthSummary(
        root=root,
        scenes=n_scenes,
        objects=n_objects,
        questions=n_questions,
        scenes_jsonl=files["scenes"],
        pairs_jsonl=files["pairs"],
        referring_jsonl=files["referring"],
        vqa_jsonl=files["vqa"],
        vocab_txt=write_vocab(root / "vocab.txt"),
    )


def _write_scene(root: Path, scene_id: str, scene: Scene, description: Description) -> dict:
    """Write one scene's image and masks under `root`; return its `scenes.jsonl` record."""
    image = f"images/{scene_id}.png"
    save_png(root / image, scene.image)
    objects = []
    for k, (obj, expression) in enumerate(zip(scene.objects, description.expressions, strict=True)):
        mask = f"masks/{scene_id}-{k}.png"
        _write_mask(root / mask, obj.mask)
        box = [int(v) for v in obj.box]
        objects.append(
            {
                "shape": obj.shape,
                "color": obj.color,
                "size": obj.size,
                "box": box,
                "mask": mask,
                "expression": expression,
            }
        )
    height, width = scene.image.shape[:2]
    return {
        "id": scene_id,
        "image": image,
        "width": width,
        "height": height,
        "background": scene.background,
        "caption": description.caption,
        "objects": objects,
        "questions": [{"question": q.question, "answer": q.answer} for q in description.questions],
    }


def _json(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


def _write_mask(path: Path, mask: np.ndarray) -> None:
    """A bool mask as an 8-bit grayscale PNG, 0 or 255 (viewable as is, and `> 0` reads it back)."""
    ok, encoded = cv2.imencode(".png", mask.view(np.uint8) * np.uint8(255))
    if not ok:
        raise OSError(f"cannot encode {path} as PNG")
    path.write_bytes(encoded.tobytes())


def generate(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    *,
    image_size: int = 128,
    max_objects: int = 4,
    split: str | None = None,
    overwrite: bool = False,
) -> SynthSummary:
    """Generate `n` scenes into `out_dir` (or `out_dir/split` when a split is named) and return what was written.

    Layout of the dataset folder (every path in the JSONL files is relative to it):

        images/000000.png        RGB scene
        masks/000000-0.png       one 0/255 mask per object, same size as the image
        scenes.jsonl             one record per scene: caption, objects (box, mask, expression), questions
        pairs.jsonl              {"image", "text"} per caption, ready for `fusioncam heatmap --pairs`
        referring.jsonl          {"image", "text", "box", "mask"} per object
        vqa.jsonl                {"image", "question", "answer"} per question
        vocab.txt                the WordPiece vocabulary of every text above

    The same arguments give byte-identical files. Splits draw different scenes from the same seed, so
    `generate(d, 3000, 0, split="train")` and `generate(d, 300, 0, split="val")` do not overlap.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if split is not None and (not split or Path(split).name != split or split in (".", "..")):
        raise ValueError(f"split must be a plain folder name such as 'train', got {split!r}")
    _check_scene_arguments(image_size, max_objects)
    root = Path(out_dir) / split if split else Path(out_dir)
    scenes = (
        synth_scene(index, seed, image_size=image_size, max_objects=max_objects, split=split) for index in range(n)
    )
    return write_dataset(root, scenes, overwrite=overwrite)
