"""`fusioncam train` on tiny models and a synthetic dataset: outputs, exact resume, DDP semantics, the fusion.

The models are a few thousand parameters wide so that every run takes seconds on two CPU cores; the checks are
about the training machinery (what is written, what is repeatable, what the ranks see), not about learning.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import fusioncam
from fusioncam.fusion_checkpoint import load_fusion
from fusioncam.models.blip import BlipITM, BlipITMConfig
from fusioncam.models.efficient_sam import EfficientSam, EfficientSamConfig
from fusioncam.synth import VOCABULARY, SynthSummary, generate
from fusioncam.train import TrainConfig, train
from fusioncam.weights import preset_toml

# 32² images in 8² patches: a 4×4 grid of 32-wide tokens; the vocabulary is the synthetic one plus [DEC], [ENC].
TINY_BLIP = {
    "embed_dim": 16,
    "max_txt_len": 32,
    "vision": {"image_size": 32, "patch_size": 8, "width": 32, "depth": 1, "num_heads": 2},
    "text": {
        "vocab_size": len(VOCABULARY) + 2,
        "hidden_size": 32,
        "num_layers": 2,
        "num_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 32,
        "encoder_width": 32,
    },
}
TINY_SAM = {
    "encoder": {"image_size": 64, "width": 32, "depth": 1, "num_heads": 2, "neck_dim": 32, "pretrain_image_size": 64},
    "decoder": {
        "transformer_depth": 1,
        "transformer_mlp_dim": 32,
        "num_heads": 2,
        "iou_head_hidden_dim": 16,
        "upscaling_dims": [16, 8],
    },
}
TINY_FUSION = {"Lf": 1, "T": 1, "N": 2, "d_ff": 32, "heads": 2}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> SynthSummary:
    return generate(tmp_path_factory.mktemp("synth"), 16, seed=0, image_size=48)


def _preset(path: Path, dataset: SynthSummary, checkpoint: str | None = None) -> Path:
    files = {"vocab": {"path": str(dataset.vocab_txt)}}
    if checkpoint is not None:
        files["checkpoint"] = {"path": checkpoint}
    path.write_text(preset_toml({"kind": "blip-itm", "layout": "fusioncam", "config": TINY_BLIP, "files": files}))
    return path


@pytest.fixture(scope="module")
def scratch_preset(tmp_path_factory: pytest.TempPathFactory, dataset: SynthSummary) -> Path:
    """A preset without weights: its checkpoint is the file training will write."""
    return _preset(tmp_path_factory.mktemp("preset") / "tiny-blip.toml", dataset, "not-trained-yet.safetensors")


def _config(dataset: SynthSummary, preset: Path, out: Path, **changes) -> TrainConfig:
    values = {
        "what": "itm",
        "data": dataset.pairs_jsonl,
        "out": out,
        "model": str(preset),
        "from_scratch": True,
        "steps": 4,
        "batch_size": 4,
        "lr": 3e-3,
        "warmup_steps": 2,
        "device": "cpu",
    }
    return TrainConfig(**(values | changes))


def test_itm_from_scratch_writes_a_preset_that_loads(
    dataset: SynthSummary, scratch_preset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    result = train(_config(dataset, scratch_preset, out))

    assert sorted(path.name for path in out.iterdir()) == [
        "checkpoint-4.pt",
        "metrics.jsonl",
        "model.safetensors",
        "run.toml",  # the preset, named after the run (its folder)
        "vocab.txt",
    ]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records] == [0, 1, 2, 3]
    assert set(records[0]) == {"step", "loss", "itc", "itm", "lr", "temp", "seconds"}
    assert records[0]["temp"] == pytest.approx(0.07)
    assert records[-1] == result.last

    assert result.preset == out / "run.toml"
    matcher = fusioncam.load(str(out / "run.toml"), device="cpu")  # strict: every key used, none missing
    assert matcher.name == "run"
    saved = load_file(out / "model.safetensors")
    assert saved.keys() == matcher.model.state_dict().keys()
    assert all(torch.equal(value, saved[key]) for key, value in matcher.model.state_dict().items())
    assert all(torch.equal(value, saved[key]) for key, value in result.model.state_dict().items())
    assert matcher.transform.image_size == 32
    score = matcher.score(fusioncam.load_image(dataset.root / "images" / "000000.png"), ["a red circle"])[0]
    assert 0 <= score.itm_score <= 1


def test_from_scratch_only_when_asked_and_only_without_weights(
    dataset: SynthSummary, scratch_preset: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=r"has no weights .* pass from_scratch=True"):
        train(_config(dataset, scratch_preset, tmp_path / "a", from_scratch=False))
    weights = tmp_path / "weights.safetensors"
    save_file(BlipITM(BlipITMConfig.from_dict(TINY_BLIP)).state_dict(), str(weights))
    with_weights = _preset(tmp_path / "trained.toml", dataset, str(weights))
    with pytest.raises(ValueError, match=r"has weights .* Drop from_scratch to fine-tune"):
        train(_config(dataset, with_weights, tmp_path / "b"))


def test_resume_ends_with_the_weights_of_an_uninterrupted_run(
    dataset: SynthSummary, scratch_preset: Path, tmp_path: Path
) -> None:
    # 6 steps of 4 pairs out of 16: the run crosses an epoch (new order) and the warm-up, and the resumed part
    # starts mid-epoch.
    whole = _config(dataset, scratch_preset, tmp_path / "whole", steps=6, checkpoint_every=3, seed=5)
    train(whole)
    checkpoint = tmp_path / "whole" / "checkpoint-3.pt"
    assert torch.load(checkpoint, weights_only=True)["step"] == 3

    resumed = _config(dataset, scratch_preset, tmp_path / "resumed", steps=6, seed=5, resume=checkpoint)
    train(resumed)

    expected, got = (
        load_file(tmp_path / "whole" / "model.safetensors"),
        load_file(tmp_path / "resumed" / "model.safetensors"),
    )
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[key], got[key]) for key in expected)
    whole_metrics = (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()
    resumed_metrics = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    drop_time = [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in whole_metrics[3:]]
    assert drop_time == [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in resumed_metrics]

    with pytest.raises(ValueError, match=r"other settings.*seed: 5 → 6"):
        train(_config(dataset, scratch_preset, tmp_path / "other", steps=6, seed=6, resume=checkpoint))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_torchrun_splits_the_data_gathers_itc_negatives_and_writes_from_rank_0(
    dataset: SynthSummary, scratch_preset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ddp"
    config = _config(dataset, scratch_preset, out, steps=2, batch_size=3, checkpoint_every=1, record=True)
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config.to_dict()))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    command += ["--master-port", str(_free_port()), "-m", "fusioncam.train", str(config_file)]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]

    ranks = [json.loads((out / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    assert [rank["world_size"] for rank in ranks] == [2, 2]
    for step in ("0", "1"):
        first, second = ranks[0]["samples"][step], ranks[1]["samples"][step]
        assert len(first) == len(second) == 3
        assert not set(first) & set(second)

    # One process with the whole global batch (2 × 3) sees the same pairs at step 0, and its ITC is the same:
    # each rank's ITC had the other rank's features as negatives.
    single_out = tmp_path / "single"
    single = train(_config(dataset, scratch_preset, single_out, steps=1, batch_size=6, record=True))
    assert json.loads((single_out / "rank-0.json").read_text())["samples"]["0"] == (
        ranks[0]["samples"]["0"] + ranks[1]["samples"]["0"]
    )
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records] == [0, 1]  # an append from rank 1 would double them
    assert records[0]["itc"] == pytest.approx(single.last["itc"], abs=1e-5, rel=0)

    written = ["metrics.jsonl", "checkpoint-1.pt", "checkpoint-2.pt", "model.safetensors", "vocab.txt", "ddp.toml"]
    assert ranks[0]["wrote"] == written
    assert ranks[1]["wrote"] == []
    assert sorted(path.name for path in out.iterdir()) == sorted([*written, "rank-0.json", "rank-1.json"])


@pytest.fixture
def fusion_presets(tmp_path: Path, dataset: SynthSummary) -> tuple[Path, Path]:
    """A tiny BLIP with (random) weights and a tiny EfficientSAM, both behind preset files."""
    torch.manual_seed(0)
    save_file(BlipITM(BlipITMConfig.from_dict(TINY_BLIP)).state_dict(), str(tmp_path / "blip.safetensors"))
    sam = EfficientSam(EfficientSamConfig.from_dict(TINY_SAM))
    save_file({key: value.contiguous() for key, value in sam.state_dict().items()}, str(tmp_path / "sam.safetensors"))
    sam_preset = tmp_path / "tiny-sam.toml"
    sam_files = {"checkpoint": {"path": "sam.safetensors"}}
    sam_preset.write_text(
        preset_toml({"kind": "efficient-sam", "layout": "efficient-sam", "config": TINY_SAM, "files": sam_files})
    )
    return _preset(tmp_path / "tiny-blip.toml", dataset, "blip.safetensors"), sam_preset


def test_fusion_trains_the_gate_and_leaves_blip_alone(
    dataset: SynthSummary, fusion_presets: tuple[Path, Path], tmp_path: Path
) -> None:
    blip_preset, sam_preset = fusion_presets
    config = _config(
        dataset,
        blip_preset,
        tmp_path / "fusion",
        what="fusion",
        from_scratch=False,
        sam=str(sam_preset),
        fusion=TINY_FUSION,
        steps=3,
        lr=1e-2,
        warmup_steps=0,
        cache_sam=True,
    )
    result = train(config)

    blip = fusioncam.load(str(blip_preset), device="cpu").model
    trained = result.model
    assert trained.fusion.gate.item() != 0
    assert all(torch.equal(value, trained.blip.state_dict()[key]) for key, value in blip.state_dict().items())
    assert not any(param.requires_grad for param in trained.blip.parameters())
    first = json.loads(result.metrics.read_text().splitlines()[0])
    assert first["gate"] == 0  # the step-0 loss ran with the gate closed: exactly BLIP

    assert result.weights == tmp_path / "fusion" / "fusion.safetensors"
    loaded = load_fusion(result.weights, blip, "tiny-blip", "tiny-sam")
    assert torch.equal(loaded.fusion.gate, trained.fusion.gate.detach())
    checkpoint = torch.load(tmp_path / "fusion" / "checkpoint-3.pt", weights_only=True)
    assert all(key.startswith("model.fusion.") for key in checkpoint["trainable"] if key != "temperature")
