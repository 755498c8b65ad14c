"""The built-in model set ships, and still does its job on scenes it has never seen.

`synth-itm`, `synth-sam`, `synth-caption` and `synth-qa` are loaded by name from the bundled weights.toml through the
library's loaders, as `fusioncam demo` loads them on a machine with no network, and measured on synthetic scenes of
the "test" split, which neither the build (it trains on "train" and reports figures on "val") nor the demo ("demo")
uses. The thresholds are the learning tests': pointing ≥ 0.6 and ≥ 2 × a random point; PNP-VQA accuracy
≥ max(0.6, 3 × chance) with colours ≥ 0.9. The SAM threshold was set from what the shipped model measured here
(see MIN_MASK_IOU). Measured here: pointing 0.746 over 512 expressions (random 0.066); mask IoU 0.771; PNP-VQA
0.910 over 200 questions (chance 0.146), colours 100/100, shapes 82/100.

If a rebuild (`make synth-models`) changes the files, the digest test fails until weights.toml gets the section the
build prints.
"""

from __future__ import annotations

import fnmatch
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from built_in import BuiltIn, load_built_in

import fusioncam
from fusioncam.api import SamRefiner
from fusioncam.evaluate import PEAK_IN_BOX, Referring, evaluate_pointing, read_referring, score_map
from fusioncam.synth import generate, synth_scene
from fusioncam.synth_models import (
    DEMO_SPLIT,
    HELD_OUT_SPLIT,
    NAMES,
    TRAIN_SPLIT,
    ItmRecipe,
    demo_scene,
    measure_sam,
    measure_vqa,
    one_thread,
    sha256,
    vqa_scenes,
)
from fusioncam.weights import ENV_REGISTRY, Preset, load_registry

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

SEED = 0
SPLIT = "test"  # held out from everything the build and the demo use
ITM = ItmRecipe()  # synth-itm's recipe: image size and the block whose Grad-CAM localises
POINTING_SCENES, SAM_SCENES, VQA_SCENES = 200, 200, 100
MAX_BYTES = 8_000_000  # "a few MB in all": the set is committed to the repository and ships in the wheel
MIN_POINTING, BASELINE_FACTOR = 0.6, 2.0
# The shipped synth-sam measured IoU 0.771 here (512 clicks; 0.763 on the build's "val" scenes), against 0.327 for a
# square of the objects' mean area centred on the click: a mask that knows where the object is but not its shape or
# size. Asserted with a margin below the former and well above the latter.
MIN_MASK_IOU, MASK_MARGIN_OVER_BASELINE = 0.6, 0.2
MIN_COLOR_ACCURACY = 0.9


@pytest.fixture(autouse=True)
def bundled_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The weights.toml shipped with the package, whatever the environment points at."""
    monkeypatch.delenv(ENV_REGISTRY, raising=False)


@pytest.fixture(scope="module")
def built_in() -> BuiltIn:
    return load_built_in()


@pytest.fixture
def single_thread() -> Iterator[None]:
    with one_thread():
        yield


def _presets() -> list[Preset]:
    registry = load_registry()
    return [registry[name] for name in NAMES.values()]


def test_presets_are_small_files_in_the_package_with_matching_digests() -> None:
    package = Path(fusioncam.__file__).parent
    globs = tomllib.loads((package.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    files: set[Path] = set()
    for preset in _presets():
        assert preset.license == "BSD-3-Clause"
        assert "make synth-models" in preset.description
        for spec in preset.files.values():
            assert spec.source_kind == "path", f"{preset.name}: {spec.origin} is not shipped with the package"
            assert spec.path is not None and spec.path.is_file(), f"{preset.name}: {spec.path} is missing"
            assert sha256(spec.path) == spec.sha256, f"{preset.name}: {spec.path} does not match weights.toml"
            assert spec.path.stat().st_size == spec.size
            # Inside the package, and matched by a package-data glob, so that a wheel carries it.
            relative = spec.path.resolve().relative_to(package.resolve()).as_posix()
            assert any(fnmatch.fnmatch(relative, pattern) for pattern in globs["fusioncam"]), relative
            files.add(spec.path.resolve())
    assert sum(path.stat().st_size for path in files) < MAX_BYTES


def test_itm_points_at_the_named_object_in_held_out_scenes(
    tmp_path: Path, built_in: BuiltIn, single_thread: None
) -> None:
    data = generate(tmp_path, POINTING_SCENES, SEED, image_size=ITM.image_size, split=SPLIT)
    records = read_referring(data.referring_jsonl)
    report = evaluate_pointing(built_in.matcher, records, ITM.block, batch_size=64, settings=PEAK_IN_BOX)
    print(f"\nsynth-itm pointing {report.pointing:.3f} over {report.count} (random {report.random_pointing:.3f})")
    assert report.pointing >= MIN_POINTING
    assert report.pointing >= BASELINE_FACTOR * report.random_pointing


def test_sam_cuts_out_the_clicked_object_in_held_out_scenes(built_in: BuiltIn, single_thread: None) -> None:
    scenes = [synth_scene(index, SEED, image_size=ITM.image_size, split=SPLIT)[0] for index in range(SAM_SCENES)]
    figures = measure_sam(built_in.sam, scenes, SEED)
    print(f"\nsynth-sam mask IoU {figures.iou:.3f} over {figures.count} (square baseline {figures.baseline_iou:.3f})")
    assert figures.count == sum(len(scene.objects) for scene in scenes)
    assert figures.iou >= MIN_MASK_IOU
    assert figures.iou >= figures.baseline_iou + MASK_MARGIN_OVER_BASELINE


def test_pnp_vqa_answers_held_out_questions(built_in: BuiltIn, single_thread: None) -> None:
    figures = measure_vqa(built_in.pipeline, vqa_scenes(VQA_SCENES, SEED, ITM.image_size, SPLIT), SEED)
    kinds = ", ".join(f"{kind} {figures.right[kind]}/{figures.asked[kind]}" for kind in figures.asked)
    print(f"\nbuilt-in PNP-VQA accuracy {figures.accuracy:.3f} (chance {figures.chance:.3f}); {kinds}")
    assert min(figures.asked.values()) >= 50
    assert figures.accuracy >= max(0.6, 3 * figures.chance)
    assert figures.kind_accuracy("color") >= MIN_COLOR_ACCURACY


@pytest.mark.parametrize("seed", range(5))
def test_demo_scene_is_held_out_and_the_built_in_set_gets_it_right(
    seed: int, built_in: BuiltIn, single_thread: None
) -> None:
    demo = demo_scene(seed)
    again = demo_scene(seed)
    assert np.array_equal(demo.image, again.image) and (demo.text, demo.question) == (again.text, again.question)
    assert DEMO_SPLIT not in (TRAIN_SPLIT, HELD_OUT_SPLIT, SPLIT)
    scene, description = synth_scene(demo.index, seed, image_size=ITM.image_size, max_objects=1, split=DEMO_SPLIT)
    scale = demo.image.shape[0] // scene.image.shape[0]
    assert scale > 1 and np.array_equal(demo.image[::scale, ::scale], scene.image)
    assert np.array_equal(demo.mask[::scale, ::scale], scene.objects[0].mask)
    assert demo.text in description.expressions
    assert (demo.question, demo.answer) in [(q.question, q.answer) for q in description.questions]

    heatmap = built_in.matcher.heatmap(demo.image, demo.text, block=demo.block)
    record = Referring(Path("demo"), demo.text, demo.box)
    assert score_map(heatmap.heatmap, record, demo.image.shape[:2], PEAK_IN_BOX).hit  # the map's peak is on the object
    refined = SamRefiner(built_in.sam).refine(["demo"], [demo.image], heatmap.heatmap[None])[0]
    mask = refined.mask.numpy()
    assert np.logical_and(mask, demo.mask).sum() / np.logical_or(mask, demo.mask).sum() >= MIN_MASK_IOU
    (result,) = built_in.pipeline.answer([demo.image], [demo.question], torch.Generator().manual_seed(SEED))
    assert result.answer == demo.answer
