"""Loading the models a command needs from its options, with the checks that belong to those options."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fusioncam.cli.common import check_device, loading, usage_error

if TYPE_CHECKING:
    from fusioncam.api import BlipMatcher, SamRefiner
    from fusioncam.choices import LabelMode, MaskBlend, MaskChoice, Precision, PrecisionChoice


def sam_preset_name(sam: str) -> str:
    """`vitt`/`vits` name the official presets; anything else is a preset name or file."""
    return f"efficient-sam-{sam}" if sam in ("vitt", "vits") else sam


def check_precision(precision: PrecisionChoice, device: str) -> Precision:
    """`--precision` resolved for `--device` (`auto` → bf16 or fp32), refused where the device cannot run it."""
    from fusioncam.api import pick_device
    from fusioncam.precision import resolve_precision

    try:
        return resolve_precision(precision, pick_device(device))
    except ValueError as error:
        raise usage_error(f"--precision {precision}: {error}") from None


def load_matcher(
    model: str,
    device: str,
    encoder: str = "blip",
    fusion: Path | None = None,
    sam: str = "vitt",
    precision: PrecisionChoice = "fp32",
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
    resolved = check_precision(precision, device)
    return loading(model, load, model, device=device, fusion=fusion, sam=sam_preset_name(sam), precision=resolved)


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
    precision: PrecisionChoice = "fp32",
) -> SamRefiner | None:
    """The EfficientSAM refiner of `--encoder esam` (None for the other encoders)."""
    from fusioncam.api import SamRefiner, load_sam

    if encoder != "esam":
        return None
    resolved = check_precision(precision, device)
    model = loading(sam, load_sam, sam_preset_name(sam), device=device, precision=resolved)
    return SamRefiner(model, num_points=points, labels=sam_labels, mask_choice=sam_mask, blend=sam_blend)


def run_info(matcher: BlipMatcher, fusion: Path | None, **presets: str) -> dict:
    """What produced a record: fusioncam's version, the device, the precision, and each model's preset and the
    sha256 of its checkpoint (`presets`: role → preset name or file; `fusion`: trained fusion weights), so that a
    result can be traced and redone."""
    import hashlib

    from fusioncam import __version__
    from fusioncam import weights as weights_lib

    weights = {
        role: {"preset": name, "sha256": weights_lib.file_digest(name, "checkpoint")} for role, name in presets.items()
    }
    if fusion is not None:
        weights["fusion"] = {"path": str(fusion), "sha256": hashlib.sha256(fusion.read_bytes()).hexdigest()}
    return {"fusioncam": __version__, "device": str(matcher.device), "precision": matcher.precision, "weights": weights}
