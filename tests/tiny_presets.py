"""Tiny random-weight presets written by tests: the reference fixtures' models behind real preset files.

Every preset goes through the same loaders as the official ones (`fusioncam.load`, `load_captioner`, `load_qa`).
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import reference_root

from fusioncam.synth_models import write_t5_tokenizer

BLIP_ITM = """\
kind = "blip-itm"
layout = "lavis"
description = "tiny random-weight BLIP ITM for tests"
license = "BSD-3-Clause"

[config]
embed_dim = 16
max_txt_len = 10

[config.vision]
image_size = 384
width = 32
depth = 2
num_heads = 4

[config.text]
vocab_size = 144
hidden_size = 48
num_layers = 3
num_heads = 12
intermediate_size = 96
max_position_embeddings = 64
encoder_width = 32

[files.checkpoint]
path = "{case}/weights.safetensors"

[files.vocab]
path = "{case}/vocab.txt"
"""

BLIP_CAPTION = """\
kind = "blip-caption"
layout = "lavis"
description = "tiny random-weight BLIP captioner for tests"
license = "BSD-3-Clause"

[config]
max_txt_len = 40

[config.vision]
image_size = 384
width = 32
depth = 2
num_heads = 4

[config.text]
vocab_size = 144
hidden_size = 64
num_layers = 2
num_heads = 4
intermediate_size = 128
max_position_embeddings = 64
encoder_width = 32

[files.checkpoint]
path = "{case}/weights.safetensors"

[files.vocab]
path = "{case}/vocab.txt"
"""

T5_QA = """\
kind = "t5-qa"
architecture = "base"
layout = "t5"
description = "tiny random-weight UnifiedQA for tests"
license = "Apache-2.0"

[config]
{config}

[files.checkpoint]
path = "{case}/weights.safetensors"

[files.spiece]
path = "t5-tokenizer/spiece.model"

[files.tokenizer_config]
path = "t5-tokenizer/tokenizer_config.json"
"""

EFFICIENT_SAM = """\
kind = "efficient-sam"
layout = "efficient-sam"
description = "tiny random-weight EfficientSAM for tests"
license = "Apache-2.0"

[config.encoder]
image_size = 256
width = 64
depth = 2
num_heads = 4
neck_dim = 64

[config.decoder]
transformer_mlp_dim = 128
iou_head_hidden_dim = 64
upscaling_dims = [32, 16]

[files.checkpoint]
path = "{case}/weights.safetensors"
"""

T5_CORPUS = [
    "what color is the dog? \\n a dog running on the grass.",
    "how many cats are there? \\n two cats sitting near the window.",
    "is it raining? \\n a street with an umbrella. yes no red blue green one two three",
]


def write_tiny_presets(folder: Path) -> dict[str, Path]:
    """Preset files for a tiny ITM model, captioner, EfficientSAM and UnifiedQA (with a SentencePiece model trained
    here)."""
    root = reference_root()
    folder.mkdir(parents=True, exist_ok=True)
    presets = {
        "itm": folder / "tiny-itm.toml",
        "caption": folder / "tiny-caption.toml",
        "qa": folder / "tiny-qa.toml",
        "sam": folder / "tiny-sam.toml",
    }
    presets["sam"].write_text(EFFICIENT_SAM.format(case=root / "esam_full"))
    presets["itm"].write_text(BLIP_ITM.format(case=root / "blip_itm_gradcam"))
    presets["caption"].write_text(BLIP_CAPTION.format(case=root / "blip_caption_decode"))

    write_t5_tokenizer(folder / "t5-tokenizer", T5_CORPUS * 20, vocab_size=60)
    t5 = json.loads((root / "pnp_fid_qa" / "config.json").read_text())["t5"]
    sizes = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads")
    config = "\n".join(f"{key} = {t5[key]}" for key in sizes)
    presets["qa"].write_text(T5_QA.format(case=root / "pnp_fid_qa", config=config))
    return presets
