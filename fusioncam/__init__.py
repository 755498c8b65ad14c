"""fusioncam: where a vision-language model looks.

The library the `fusioncam` command is thin over:

    import fusioncam
    matcher = fusioncam.load("blip-itm-base")            # weights downloaded on first use
    result = matcher.heatmap(fusioncam.load_image("dog.jpg"), "a dog")
    result.itm_score, result.heatmap                     # match probability, [24, 24] Grad-CAM map
"""

from fusioncam.api import BlipMatcher, Heatmap, Score, load
from fusioncam.images import load_image

__all__ = ["BlipMatcher", "Heatmap", "Score", "load", "load_image"]
