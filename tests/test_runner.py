"""The runner under every per-pair command decodes each distinct image once and encodes it once per model, whatever
the command: counted on the real decoder and encoders (wrapped, not replaced), on the tiny random-weight presets."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from tiny_presets import write_tiny_presets

from fusioncam import images as images_module
from fusioncam import runner
from fusioncam.api import BlipMatcher, Captioner, SamRefiner, load, load_captioner, load_qa, load_sam
from fusioncam.inputs import Failure, Pair, pairs_from_path
from fusioncam.models.efficient_sam import EfficientSam
from fusioncam.vqa import PNPVQA, VQAConfig

TEXTS = ["a dog", "two dogs", "the beach"]


@pytest.fixture(scope="module")
def presets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_tiny_presets(tmp_path_factory.mktemp("presets"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, dogs_jpg: Path) -> Path:
    folder = tmp_path_factory.mktemp("two-images")
    shutil.copy(dogs_jpg, folder / "a.jpg")
    shutil.copy(dogs_jpg, folder / "b.jpg")
    return folder


@pytest.fixture
def counts(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Images decoded (by source) and encoded (rows) by each model, through the real functions."""
    seen: Counter = Counter()

    def wrap(owner: object, name: str, count) -> None:
        original = getattr(owner, name)

        def counting(*args, **kwargs):
            count(*args)
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counting)

    wrap(runner, "load_image_source", lambda source: seen.update([f"decode {Path(source).name}"]))
    wrap(BlipMatcher, "embed_images", lambda self, pictures: seen.update({"blip": len(pictures)}))
    wrap(Captioner, "embed_images", lambda self, pictures: seen.update({"captioner": len(pictures)}))
    wrap(EfficientSam, "embed", lambda self, pixels: seen.update({"sam": len(pixels)}))
    return seen


def _run(task: runner.Task, folder: Path, batch_size: int = 6) -> list:
    settled = list(runner.run(pairs_from_path(folder, TEXTS), task, batch_size))
    assert len(settled) == 2 * len(TEXTS)
    assert all(runner.as_failure(item) is None for item in settled)
    assert [item.item.text for item in settled] == TEXTS * 2  # input order
    return [item.outcome for item in settled]


def test_heatmap_blip_and_esam(presets, folder: Path, tmp_path: Path, counts: Counter) -> None:
    matcher = load(str(presets["itm"]), device="cpu")
    _run(runner.HeatmapTask(matcher, tmp_path / "blip", block=1, per_word=True), folder)
    assert counts == {"decode a.jpg": 1, "decode b.jpg": 1, "blip": 2}
    counts.clear()
    refiner = SamRefiner(load_sam(str(presets["sam"]), device="cpu"))
    _run(runner.HeatmapTask(matcher, tmp_path / "esam", block=1, refiner=refiner), folder)
    assert counts == {"decode a.jpg": 1, "decode b.jpg": 1, "blip": 2, "sam": 2}


def test_segment_and_score(presets, folder: Path, tmp_path: Path, counts: Counter) -> None:
    matcher = load(str(presets["itm"]), device="cpu")
    refiner = SamRefiner(load_sam(str(presets["sam"]), device="cpu"))
    _run(runner.SegmentTask(matcher, refiner, tmp_path, block=1), folder)
    assert counts == {"decode a.jpg": 1, "decode b.jpg": 1, "blip": 2, "sam": 2}
    counts.clear()
    outcomes = _run(runner.ScoreTask(matcher), folder)
    assert counts == {"decode a.jpg": 1, "decode b.jpg": 1, "blip": 2}
    expected = matcher.score(images_module.load_image(folder / "a.jpg"), TEXTS)  # one image, one text at a time
    assert [outcome["itm_score"] for outcome in outcomes[:3]] == pytest.approx([s.itm_score for s in expected])


def test_vqa(presets, folder: Path, tmp_path: Path, counts: Counter) -> None:
    matcher = load(str(presets["itm"]), device="cpu")
    captioner = load_captioner(str(presets["caption"]), device="cpu")
    qa = load_qa(str(presets["qa"]), device="cpu")
    config = VQAConfig(block=1, num_captions=2, caption_min_length=6, caption_max_length=8, explain=False)
    task = runner.VQATask(PNPVQA(matcher, captioner, qa, config), tmp_path, {}, torch.Generator().manual_seed(0))
    _run(task, folder)
    assert counts == {"decode a.jpg": 1, "decode b.jpg": 1, "blip": 2, "captioner": 2}


def test_a_bad_image_fails_its_pairs_only(presets, folder: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    pairs: list[Pair | Failure] = [*pairs_from_path(folder / "a.jpg", ["a dog"]), *pairs_from_path(broken, TEXTS)]
    pairs.append(Failure("stdin:9", "not JSON"))
    task = runner.ScoreTask(load(str(presets["itm"]), device="cpu"))
    failures = [runner.as_failure(item) for item in runner.run(pairs, task, batch_size=3)]
    assert failures[0] is None
    assert [failure.reason.startswith("cannot read image") for failure in failures[1:4] if failure] == [True] * 3
    assert failures[4] == pairs[4]
