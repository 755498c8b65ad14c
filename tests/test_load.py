"""One `load` for every model family: a preset file in, a ready model with its preprocessing out; nothing a preset
declares is silently ignored."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_presets import write_tiny_presets

import fusioncam
from fusioncam.api import FAMILIES, BlipMatcher, Captioner, QuestionAnswerer, load, load_captioner, load_sam
from fusioncam.models.architectures import ARCHITECTURES
from fusioncam.models.efficient_sam import EfficientSam
from fusioncam.weights import load_registry


@pytest.fixture(scope="module")
def presets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_tiny_presets(tmp_path_factory.mktemp("presets"))


def test_load_builds_every_family_from_a_preset_file(presets: dict[str, Path]) -> None:
    expected = {"itm": BlipMatcher, "caption": Captioner, "qa": QuestionAnswerer, "sam": EfficientSam}
    for role, kind in expected.items():
        model = fusioncam.load(str(presets[role]), device="cpu")
        assert isinstance(model, kind), role
    assert set(FAMILIES) == set(ARCHITECTURES)  # every family has its architectures as data, and no more


def test_every_shipped_preset_declares_only_what_its_family_reads() -> None:
    from fusioncam.api import family

    for preset in load_registry().values():
        if preset.kind != "image":
            family(preset)  # raises, naming the key, on anything unused


@pytest.mark.parametrize(
    ("addition", "named"),
    [
        ('[files.tokenizer_config]\npath = "x.json"\n', "tokenizer_config"),
        ("[preprocess]\ncrop = 0.9\n", "crop"),
    ],
)
def test_a_key_the_family_does_not_read_is_refused_by_name(
    presets: dict[str, Path], tmp_path: Path, addition: str, named: str
) -> None:
    preset = tmp_path / "extra.toml"
    preset.write_text(presets["itm"].read_text() + "\n" + addition)
    with pytest.raises(ValueError, match=named):
        load(str(preset), device="cpu")


def test_a_layout_the_family_does_not_read_is_refused(presets: dict[str, Path], tmp_path: Path) -> None:
    preset = tmp_path / "wrong-layout.toml"
    preset.write_text(presets["sam"].read_text().replace('layout = "efficient-sam"', 'layout = "lavis"'))
    with pytest.raises(ValueError, match="layout 'lavis'"):
        load_sam(str(preset), device="cpu")


def test_sam_preprocessing_of_the_preset_reaches_the_model(presets: dict[str, Path], tmp_path: Path) -> None:
    preset = tmp_path / "stats.toml"
    preset.write_text(presets["sam"].read_text() + "\n[preprocess]\nmean = [0.5, 0.5, 0.5]\nstd = [0.25, 0.25, 0.25]\n")
    sam = load_sam(str(preset), device="cpu")
    assert sam.config.pixel_mean == (0.5, 0.5, 0.5) and sam.config.pixel_std == (0.25, 0.25, 0.25)
    bicubic = tmp_path / "bicubic.toml"
    bicubic.write_text(presets["sam"].read_text() + '\n[preprocess]\ninterpolation = "bicubic"\n')
    with pytest.raises(ValueError, match="bilinearly"):
        load_sam(str(bicubic), device="cpu")


def test_typed_loaders_refuse_another_kind(presets: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="not a blip-caption model"):
        load_captioner(str(presets["itm"]), device="cpu")
