"""Loading the models a command needs from its options, with the checks that belong to those options."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fusioncam.cli.common import check_device, loading, usage_error

if TYPE_CHECKING:
    from fusioncam.api import BlipMatcher, SamRefiner
    from fusioncam.choices import LabelMode, MaskBlend, MaskChoice


def sam_preset_name(sam: str) -> str:
    """`vitt`/`vits` name the official presets; anything else is a preset name or file."""
    return f"efficient-sam-{sam}" if sam in ("vitt", "vits") else sam


def load_matcher(
    model: str, device: str, encoder: str = "blip", fusion: Path | None = None, sam: str = "vitt"
) -> BlipMatcher:
    """The BLIP matcher of an encoder mode (fused: with its trained fusion) and, for `esam`, EfficientSAM."""
    from fusioncam.api import load

    if encoder == "fused" and fusion is None:
        raise usage_error(
            "--encoder fused needs --fusion PATH (weights from `fusioncam train --what fusion`): an untrained fusion "
            "is exactly plain BLIP, use --encoder blip for that"
        )
    if encoder != "fused" and fusion is not None:
        raise usage_error("--fusion is only used with --encoder fused")
    check_device(device)
    return loading(model, load, model, device=device, fusion=fusion, sam=sam_preset_name(sam))


def check_block(matcher: BlipMatcher, block: int, option: str = "--block") -> None:
    if not 0 <= block < matcher.num_blocks:
        raise usage_error(f"{option} must be in 0..{matcher.num_blocks - 1} for {matcher.name}, got {block}")


def refiner_for(
    encoder: str,
    sam: str,
    device: str,
    points: int,
    sam_labels: LabelMode,
    sam_mask: MaskChoice,
    sam_blend: MaskBlend = "fork",
) -> SamRefiner | None:
    """The EfficientSAM refiner of `--encoder esam` (None for the other encoders)."""
    from fusioncam.api import SamRefiner, load_sam

    if encoder != "esam":
        return None
    model = loading(sam, load_sam, sam_preset_name(sam), device=device)
    return SamRefiner(model, num_points=points, labels=sam_labels, mask_choice=sam_mask, blend=sam_blend)


def run_info(matcher: BlipMatcher, fusion: Path | None, **presets: str) -> dict:
    """What produced a record: fusioncam's version, the device, the precision, and each model's preset and the
    sha256 of its checkpoint (`presets`: role → preset name or file; `fusion`: trained fusion weights), so that a
    result can be traced and redone."""
    import hashlib

    from fusioncam import __version__
    from fusioncam import weights as weights_lib

    dtype = next(matcher.model.parameters()).dtype
    precision = {"torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16"}.get(str(dtype), str(dtype))
    weights = {
        role: {"preset": name, "sha256": weights_lib.file_digest(name, "checkpoint")} for role, name in presets.items()
    }
    if fusion is not None:
        weights["fusion"] = {"path": str(fusion), "sha256": hashlib.sha256(fusion.read_bytes()).hexdigest()}
    return {"fusioncam": __version__, "device": str(matcher.device), "precision": precision, "weights": weights}
