"""Every named architecture of every model family, as data.

An architecture is a set of numbers, not code: each family's config dataclass holds its smallest official
architecture as defaults, and the entries below are what the others change, nested like the config. A preset names
one (`architecture = "large"`) and may change more in its own `[config]` table, applied on top the same way
(`merge_config`). open_clip keeps its `model_configs/*.json` for the same reason: one place, one style, and a new
size is a new entry rather than a new branch in a classmethod.
"""

from __future__ import annotations

from typing import Any

ARCHITECTURES: dict[str, dict[str, dict[str, Any]]] = {
    # BLIP: ViT-B/16 or ViT-L/16, BERT-base text side (its cross-attention reads the ViT's width).
    "blip-itm": {
        "base": {},
        "large": {"vision": {"width": 1024, "depth": 24, "num_heads": 16}, "text": {"encoder_width": 1024}},
    },
    "blip-caption": {
        "base": {},
        "large": {"vision": {"width": 1024, "depth": 24, "num_heads": 16}, "text": {"encoder_width": 1024}},
    },
    # EfficientSAM ViT-Tiny and ViT-Small: they differ only in the image encoder.
    "efficient-sam": {
        "vitt": {},
        "vits": {"encoder": {"width": 384, "num_heads": 6}},
    },
    # UnifiedQA v2 = T5 v1.0 of these sizes (the base size is the config's defaults).
    "t5-qa": {
        "base": {},
        "large": {"d_model": 1024, "d_ff": 4096, "num_layers": 24, "num_heads": 16},
        "3b": {"d_model": 1024, "d_ff": 16384, "d_kv": 128, "num_layers": 24, "num_heads": 32},
    },
}


def architecture(kind: str, name: str | None) -> dict[str, Any]:
    """The values that make architecture `name` of family `kind` (None: the family's defaults, i.e. `{}`)."""
    if kind not in ARCHITECTURES:
        raise ValueError(f"no model family {kind!r}; known: {', '.join(ARCHITECTURES)}")
    if name is None:
        return {}
    known = ARCHITECTURES[kind]
    if name not in known:
        raise ValueError(f"unknown {kind} architecture {name!r}; known: {', '.join(known)}")
    return known[name]
