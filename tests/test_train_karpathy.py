"""`fusioncam train` on a COCO / Flickr30k Karpathy train split: the pairs it reads, the negatives it draws from them,
a run through the CLI, and the errors for the wrong file or missing images.

The split is written here in the published layout (one `{"caption", "image", "image_id"}` record per caption, images
under a root's `train2014/`) over `fusioncam synth` scenes, with several captions per image.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from test_train import TINY_BLIP
from typer.testing import CliRunner

from fusioncam.cli import app
from fusioncam.models.blip import BlipITM, BlipITMConfig
from fusioncam.synth import SynthSummary, generate
from fusioncam.text import BlipTokenizer
from fusioncam.train import TrainConfig, objectives
from fusioncam.train.data import PairSet, StepBatches, text_inputs
from fusioncam.weights import preset_toml

SCENES = 8
BATCH = 6
SEEDS = 12
STEPS_PER_SEED = 8
# ITC logits are cosines divided by this: near-flat sampling weights, so that every pair the objective does not
# rule out has a fair chance of being drawn.
FLAT_TEMPERATURE = 100.0


@dataclass(frozen=True)
class KarpathyTrain:
    """A train split file, the folder its image paths start from, its records, and each record's caption as
    cleaning must leave it."""

    file: Path
    root: Path
    records: list[dict[str, str]]
    cleaned: list[str]

    def captions_of(self, image_id: str) -> set[str]:
        return {text for record, text in zip(self.records, self.cleaned, strict=True) if record["image_id"] == image_id}


def _captions(scene: dict, unique_expressions: set[str]) -> list[tuple[str, str]]:
    """(caption as written, as cleaned) for one scene: its caption, the same again as a person would type it (COCO
    images sometimes carry one caption twice), and each of its objects' expressions that no other scene has."""
    caption = scene["caption"]
    captions = [(caption, caption), (caption.capitalize() + ".", caption)]
    expressions = [obj["expression"] for obj in scene["objects"] if obj["expression"] in unique_expressions]
    return captions + [(expression.capitalize() + "!", expression) for expression in expressions]


def _write_split(scenes: SynthSummary, folder: Path) -> KarpathyTrain:
    root = folder / "coco"
    (root / "train2014").mkdir(parents=True)
    scene_records = [json.loads(line) for line in scenes.scenes_jsonl.read_text().splitlines()]
    counts = Counter(obj["expression"] for scene in scene_records for obj in scene["objects"])
    unique = {expression for expression, count in counts.items() if count == 1}
    records, cleaned = [], []
    for index, scene in enumerate(scene_records):
        image = f"train2014/COCO_train2014_{index:012d}.png"
        shutil.copy(scenes.root / scene["image"], root / image)
        for raw, text in _captions(scene, unique):
            records.append({"caption": raw, "image": image, "image_id": f"coco_{index}"})
            cleaned.append(text)
    file = folder / "coco_karpathy_train.json"
    file.write_text(json.dumps(records))
    return KarpathyTrain(file, root, records, cleaned)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> SynthSummary:
    return generate(tmp_path_factory.mktemp("synth"), SCENES, seed=0, image_size=48)


@pytest.fixture(scope="module")
def karpathy(tmp_path_factory: pytest.TempPathFactory, scenes: SynthSummary) -> KarpathyTrain:
    split = _write_split(scenes, tmp_path_factory.mktemp("karpathy"))
    # What the negatives test relies on: no caption is true of two images (expressions were kept only when unique,
    # scene captions list every object), so "a caption of image A" means "a caption of A's records".
    images_of: dict[str, set[str]] = {}
    for text, record in zip(split.cleaned, split.records, strict=True):
        images_of.setdefault(text, set()).add(record["image_id"])
    assert all(len(image_ids) == 1 for image_ids in images_of.values())
    return split


def test_pairs_of_a_karpathy_split_key_images_by_id_and_texts_by_cleaned_caption(karpathy: KarpathyTrain) -> None:
    pairs = PairSet.read(karpathy.file, karpathy.root)

    assert pairs.images == [karpathy.root / record["image"] for record in karpathy.records]
    assert pairs.texts == karpathy.cleaned
    image_ids = [record["image_id"] for record in karpathy.records]
    for first in range(len(pairs)):
        for second in range(len(pairs)):
            same_image = image_ids[first] == image_ids[second]
            assert (pairs.image_keys[first] == pairs.image_keys[second]) == same_image
            same_text = karpathy.cleaned[first] == karpathy.cleaned[second]
            assert (pairs.text_keys[first] == pairs.text_keys[second]) == same_text
    assert len(set(pairs.text_keys)) < len(pairs)  # each image's caption twice: the duplicate shares its key


def test_hard_negatives_are_never_captions_of_their_image(
    karpathy: KarpathyTrain, scenes: SynthSummary, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The objective's own sampling, over many batches: the drawn text is no caption of the row's image, and the
    drawn image has none of the row's text among its captions."""
    pairs = PairSet.read(karpathy.file, karpathy.root)
    image_ids = [record["image_id"] for record in karpathy.records]
    model = BlipITM(BlipITMConfig.from_dict(TINY_BLIP)).eval()
    tokenizer = BlipTokenizer(scenes.vocab_txt)
    tokens = 1 + (TINY_BLIP["vision"]["image_size"] // TINY_BLIP["vision"]["patch_size"]) ** 2
    draws: list[tuple[torch.Tensor, torch.Tensor]] = []
    sample_negatives = objectives.sample_negatives

    def recording(scores: torch.Tensor, positives: torch.Tensor, generator: torch.Generator):
        draws.append(sample_negatives(scores, positives, generator))
        return draws[-1]

    monkeypatch.setattr(objectives, "sample_negatives", recording)
    known = objectives.KnownPairs(pairs.image_keys, pairs.text_keys)
    rows_with_a_sibling = 0
    for seed in range(SEEDS):
        torch.manual_seed(seed)
        for step, indices in enumerate(StepBatches(len(pairs), BATCH, 0, 1, seed, 0, STEPS_PER_SEED)):
            texts = [pairs.texts[index] for index in indices]
            input_ids, itm_ids, mask = text_inputs(tokenizer, texts, torch.device("cpu"))
            draws.clear()
            with torch.no_grad():
                objectives.matching_losses(
                    model,
                    torch.randn(len(indices), tokens, TINY_BLIP["vision"]["width"]),
                    input_ids,
                    itm_ids,
                    mask,
                    torch.tensor([pairs.image_keys[index] for index in indices]),
                    torch.tensor([pairs.text_keys[index] for index in indices]),
                    known,
                    torch.tensor(FLAT_TEMPERATURE),
                    torch.Generator().manual_seed(seed * STEPS_PER_SEED + step),
                )
            (negative_texts, texts_valid), (negative_images, images_valid) = draws
            batch_images = [image_ids[index] for index in indices]
            for row, index in enumerate(indices):
                own = karpathy.captions_of(image_ids[index])
                rows_with_a_sibling += batch_images.count(image_ids[index]) > 1
                # A row has a negative exactly when the batch holds another image.
                has_other = any(image_id != image_ids[index] for image_id in batch_images)
                assert bool(texts_valid[row]) == bool(images_valid[row]) == has_other
                if not has_other:
                    continue
                assert pairs.texts[indices[negative_texts[row]]] not in own
                assert pairs.texts[index] not in karpathy.captions_of(batch_images[negative_images[row]])
    # The check had teeth: rows whose image had other captions in the batch, which a wrong key would let through.
    assert rows_with_a_sibling > 100


def _scratch_preset(folder: Path, scenes: SynthSummary) -> Path:
    preset = folder / "tiny-blip.toml"
    files = {"vocab": {"path": str(scenes.vocab_txt)}, "checkpoint": {"path": "not-trained-yet.safetensors"}}
    preset.write_text(preset_toml({"kind": "blip-itm", "layout": "fusioncam", "config": TINY_BLIP, "files": files}))
    return preset


def _train(data: Path, out: Path, preset: Path, *extra: str):
    args = ["train", "--what", "itm", "--data", str(data), "--out", str(out), "--model", str(preset)]
    args += ["--from-scratch", "--steps", "3", "--batch-size", "4", "--warmup-steps", "1", "--device", "cpu"]
    return CliRunner().invoke(app, [*args, "--quiet", *extra])


def test_train_cli_runs_on_a_karpathy_split(karpathy: KarpathyTrain, scenes: SynthSummary, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = _train(karpathy.file, out, _scratch_preset(tmp_path, scenes), "--images", str(karpathy.root))

    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["step"] == 2
    assert sorted(path.name for path in out.iterdir()) == [
        "checkpoint-3.pt",
        "metrics.jsonl",
        "model.safetensors",
        "run.toml",
        "vocab.txt",
    ]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    config = torch.load(out / "checkpoint-3.pt", weights_only=True)["config"]
    assert (config["data"], config["images"]) == (str(karpathy.file), str(karpathy.root))


def test_a_val_or_test_split_is_refused_as_training_data(
    karpathy: KarpathyTrain, scenes: SynthSummary, tmp_path: Path
) -> None:
    val = tmp_path / "coco_karpathy_val.json"
    val.write_text(json.dumps([{"image": karpathy.records[0]["image"], "caption": ["a red cross", "a cross"]}]))
    result = _train(val, tmp_path / "run", _scratch_preset(tmp_path, scenes), "--images", str(karpathy.root))

    assert result.exit_code == 2
    assert "as in a val/test split" in result.stderr
    assert "Training needs a Karpathy train split" in result.stderr and "coco_karpathy_train.json" in result.stderr
    assert not (tmp_path / "run").exists()


def test_missing_images_are_counted_before_training(
    karpathy: KarpathyTrain, scenes: SynthSummary, tmp_path: Path
) -> None:
    # Two images that are not there, one of them with two captions: 2 missing images, not 3 missing records.
    gone = ["train2014/COCO_train2014_999999999998.png", "train2014/COCO_train2014_999999999999.png"]
    extra = [
        {"caption": "a red cross", "image": gone[0], "image_id": "coco_999999999998"},
        {"caption": "a blue cross", "image": gone[0], "image_id": "coco_999999999998"},
        {"caption": "a green star", "image": gone[1], "image_id": "coco_999999999999"},
    ]
    data = tmp_path / "coco_karpathy_train.json"
    data.write_text(json.dumps(karpathy.records + extra))
    result = _train(data, tmp_path / "run", _scratch_preset(tmp_path, scenes), "--images", str(karpathy.root))

    assert result.exit_code == 2
    assert f"2 of the {SCENES + 2} images of {data} are not there, e.g. {karpathy.root / gone[0]}" in result.stderr
    assert not (tmp_path / "run").exists()


def test_images_go_with_a_karpathy_split_and_only_with_it(
    karpathy: KarpathyTrain, scenes: SynthSummary, tmp_path: Path
) -> None:
    preset = _scratch_preset(tmp_path, scenes)
    without = _train(karpathy.file, tmp_path / "a", preset)
    assert without.exit_code == 2 and "give --images" in without.stderr
    with_jsonl = _train(scenes.pairs_jsonl, tmp_path / "b", preset, "--images", str(karpathy.root))
    assert with_jsonl.exit_code == 2 and "--images is for a Karpathy train split" in with_jsonl.stderr

    # The library asks the same of its config.
    with pytest.raises(ValueError, match="is a Karpathy train split: give images"):
        TrainConfig(what="itm", data=karpathy.file, out=tmp_path / "c")
    with pytest.raises(ValueError, match="images is for a Karpathy train split"):
        TrainConfig(what="itm", data=scenes.pairs_jsonl, out=tmp_path / "d", images=karpathy.root)


def test_a_caption_another_photo_shares_is_no_negative_of_either() -> None:
    """Photo A is "a dog" and "a man"; photo B is "a dog" too. In a batch of (A, "a man") and (B, "a dog"), B's
    caption is true of A: A has no negative text there, while B still has one ("a man" was never said of B)."""
    a, b = 0, 1
    man, dog = 0, 1
    known = objectives.KnownPairs(image_keys=[a, a, b], text_keys=[dog, man, dog])
    positives = known.matrix(torch.tensor([a, b]), torch.tensor([man, dog]))
    assert positives.tolist() == [[True, True], [False, True]]
    scores = torch.zeros(2, 2)
    _, valid = objectives.sample_negatives(scores, positives, torch.Generator().manual_seed(0))
    assert valid.tolist() == [False, True]
    drawn, valid = objectives.sample_negatives(scores, positives.T, torch.Generator().manual_seed(0))
    assert valid.tolist() == [True, False] and int(drawn[0]) == 1  # text "a man": its negative image is B
