"""The names that command-line options accept, importable without torch or OpenCV.

`fusioncam --help` lists them; the modules that act on them (`explain.refine`, `explain.render`) import them
from here, so each list is written once and help stays instant.
"""

from __future__ import annotations

from typing import Literal, get_args

Encoder = Literal["blip", "esam", "fused"]
LabelMode = Literal["fork", "foreground"]
MaskChoice = Literal["first", "best-iou"]
MaskBlend = Literal["fork", "probability"]
Precision = Literal["fp32", "bf16", "fp16", "int8"]
PrecisionChoice = Literal["fp32", "bf16", "fp16", "int8", "auto"]
Colormap = Literal[
    "jet", "turbo", "viridis", "inferno", "magma", "plasma", "cividis", "parula", "hot", "bone", "pink",
    "ocean", "winter", "summer", "spring", "autumn", "cool", "rainbow", "hsv", "twilight", "deepgreen",
]  # fmt: skip

ENCODERS: tuple[str, ...] = get_args(Encoder)
LABEL_MODES: tuple[str, ...] = get_args(LabelMode)
MASK_CHOICES: tuple[str, ...] = get_args(MaskChoice)
MASK_BLENDS: tuple[str, ...] = get_args(MaskBlend)
PRECISIONS: tuple[str, ...] = get_args(Precision)
COLORMAP_NAMES: tuple[str, ...] = get_args(Colormap)
