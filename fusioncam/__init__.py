"""fusioncam: where a vision-language model looks.

The library the `fusioncam` command is thin over:

    import fusioncam
    matcher = fusioncam.load("blip-itm-base")            # weights downloaded on first use
    result = matcher.heatmap(fusioncam.load_image("dog.jpg"), "a dog")
    result.itm_score, result.heatmap                     # match probability, [24, 24] Grad-CAM map

The names below are imported on first use: `import fusioncam` (and so `fusioncam --help`) does not pay for
torch and transformers until a model is actually needed.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fusioncam.api import BlipMatcher, Heatmap, Score, load
    from fusioncam.images import load_image

try:
    __version__ = version("fusioncam")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

_LAZY = {
    "BlipMatcher": "fusioncam.api",
    "Heatmap": "fusioncam.api",
    "Score": "fusioncam.api",
    "load": "fusioncam.api",
    "load_image": "fusioncam.images",
}

__all__ = ["BlipMatcher", "Heatmap", "Score", "__version__", "load", "load_image"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fusioncam' has no attribute {name!r}")
