"""Reference checks for DIFNet's dual-stream encoder (mrwu-mac/DIFNet `DifnetEncoder`)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from refcase import Case

from fusioncam.checkpoints import load_difnet_encoder_weights, read_state_dict
from fusioncam.models.difnet import DifnetConfig, DifnetEncoder, DifnetOutput, feature_padding_mask


def difnet_config(architecture: Mapping[str, object]) -> DifnetConfig:
    """Our config from the original constructor's arguments (the fixture's `architecture`)."""
    if architecture.get("identity_map_reordering"):
        raise ValueError("the pre-norm variant (identity_map_reordering) is not ported")
    return DifnetConfig(
        Lf=architecture["Lf"],
        T=architecture["T"],
        N=architecture["N"],
        d_model=architecture["d_model"],
        heads=architecture["h"],
        d_k=architecture["d_k"],
        d_v=architecture["d_v"],
        d_ff=architecture["d_ff"],
        dropout=architecture["dropout"],
        padding_idx=architecture["padding_idx"],
        d_in=architecture["d_in"],
    )


def _run(
    model: DifnetEncoder, grid: torch.Tensor, pixel: torch.Tensor
) -> tuple[DifnetOutput, list[tuple[int, int, torch.Tensor]]]:
    """Forward pass plus every layer call's (layer index, stream, output), in call order."""
    calls: list[tuple[int, int, torch.Tensor]] = []
    hooks = [
        layer.register_forward_hook(
            lambda _module, args, output, index=index: calls.append((index, int(args[2]), output))
        )
        for index, layer in enumerate(model.layers)
    ]
    try:
        with torch.no_grad():
            output = model(grid, pixel)
    finally:
        for hook in hooks:
            hook.remove()
    return output, calls


def check_difnet_encoder(case: Case) -> None:
    config = difnet_config(case.config["architecture"])
    model = DifnetEncoder(config).eval()
    ignored = load_difnet_encoder_weights(model, read_state_dict(case.path / "weights.safetensors"), "reference")
    merged = range(config.Lf, config.N)
    assert sorted(ignored) == sorted(
        [f"layers.{i}.mhatt.layer_norm1.{p}" for i in range(config.N) for p in ("weight", "bias")]
        + [
            f"layers.{i}.{norm}.{p}"
            for i in merged
            for norm in ("lnorm1", "pwff.layer_norm1")
            for p in ("weight", "bias")
        ]
    )

    grid, pixel = case.inputs["input"], case.inputs["pixel"]
    assert torch.equal(feature_padding_mask(pixel, config.padding_idx), case.outputs["pixel_attention_mask_recomputed"])

    tolerance = case.config["tolerance_float32_vs_float64"]
    # float32 as the fixture was made; float64, against the same float32 reference, must land within the
    # original's own float32-vs-float64 error (+50%), which only an exact port of the math does.
    for dtype, atol in (
        (torch.float32, case.atol),
        (torch.float64, lambda name: 1.5 * tolerance[name]["max_abs_err"]),
    ):
        output, calls = _run(model.to(dtype), grid.to(dtype), pixel.to(dtype))
        assert [(index, stream) for index, stream, _ in calls] == [
            (call["layer"], call["m"]) for call in case.meta["layer_call_order"]
        ]
        assert torch.equal(output.attention_mask, case.outputs["attention_mask"])
        case.check("output", output.last_hidden_state, atol("output"))
        case.check("layer_calls", torch.stack([out for _, _, out in calls]), atol("layer_calls"))


CHECKS = {"difnet_encoder": check_difnet_encoder}
