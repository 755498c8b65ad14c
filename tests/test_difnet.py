"""Behaviour of the DIFNet encoder that the reference fixture does not pin down on its own."""

from __future__ import annotations

import pytest
import torch

from fusioncam.checkpoints import CheckpointError, load_difnet_encoder_weights
from fusioncam.models.difnet import DifnetConfig, DifnetEncoder, Stream, feature_padding_mask

TINY = {"d_model": 16, "heads": 2, "d_k": 8, "d_v": 4, "d_ff": 24, "d_in": 16}


def _encoder(**overrides: int) -> DifnetEncoder:
    torch.manual_seed(0)
    model = DifnetEncoder(DifnetConfig(**(TINY | {"Lf": 2, "T": 2, "N": 3} | overrides))).eval()
    # Random LayerNorm parameters, so that a norm applied to the wrong stream changes the numbers.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(torch.randn_like(param) * 0.3 + (1.0 if name.endswith("weight") else 0.0))
    return model


def _features(batch: int, tokens: int, padded: int = 0, seed: int = 1) -> torch.Tensor:
    real = torch.randn(batch, tokens, TINY["d_model"], generator=torch.Generator().manual_seed(seed))
    return torch.cat([real, real.new_zeros(batch, padded, TINY["d_model"])], dim=1)


def _pixel_stream_calls(model: DifnetEncoder, grid: torch.Tensor, pixel: torch.Tensor) -> list[torch.Tensor]:
    outputs: list[torch.Tensor] = []
    hooks = [
        layer.register_forward_hook(
            lambda _module, args, output: outputs.append(output) if args[2] == Stream.PIXEL else None
        )
        for layer in model.layers
    ]
    with torch.no_grad():
        model(grid, pixel)
    for hook in hooks:
        hook.remove()
    return outputs


def test_padding_rows_do_not_change_the_real_rows() -> None:
    model = _encoder()
    grid, pixel = _features(2, 5, seed=1), _features(2, 5, seed=2)
    with torch.no_grad():
        plain = model(grid, pixel)
        padded = model(_features(2, 5, padded=3, seed=1), _features(2, 5, padded=3, seed=2))
    torch.testing.assert_close(padded.last_hidden_state[:, :5], plain.last_hidden_state, rtol=0, atol=1e-5)
    assert padded.attention_mask[:, 0, 0].tolist() == [[False] * 5 + [True] * 3] * 2


def test_pixel_stream_masks_its_own_padding() -> None:
    # The grid stream gets real rows where the pixel stream has padding: had the pixel stream used the grid mask,
    # its real rows would attend to its zero rows and move.
    model = _encoder()
    plain = _pixel_stream_calls(model, _features(1, 5, seed=1), _features(1, 5, seed=2))
    padded = _pixel_stream_calls(model, _features(1, 8, seed=1), _features(1, 5, padded=3, seed=2))
    assert len(padded) == len(plain) == 4  # Lf * T pixel-stream calls
    for before, after in zip(plain, padded, strict=True):
        torch.testing.assert_close(after[:, :5], before, rtol=0, atol=1e-5)


def test_layer_calls_follow_lf_and_t() -> None:
    model = _encoder(Lf=2, T=3, N=4)
    calls: list[tuple[int, int]] = []
    for index, layer in enumerate(model.layers):
        layer.register_forward_hook(lambda _module, args, _output, index=index: calls.append((index, int(args[2]))))
    with torch.no_grad():
        model(_features(1, 4, seed=1), _features(1, 4, seed=2))
    shared = [(index, stream) for index in range(2) for _ in range(3) for stream in (0, 1)]
    assert calls == [*shared, (2, 0), (3, 0)]
    assert [len(layer.skip_norms) for layer in model.layers] == [2, 2, 1, 1]


def test_merge_at_layer_zero_is_one_layer_on_the_sum_plus_both_inputs() -> None:
    model = _encoder(Lf=0, N=1)
    grid, pixel = _features(2, 4, padded=1, seed=1), _features(2, 5, seed=2)
    with torch.no_grad():
        output = model(grid, pixel).last_hidden_state
        expected = model.layers[0](grid + pixel, feature_padding_mask(grid, 0), Stream.GRID) + grid + pixel
    torch.testing.assert_close(output, expected, rtol=0, atol=0)


@pytest.mark.parametrize("lf", [3, 4, -1])
def test_streams_must_be_summed_before_the_last_layer(lf: int) -> None:
    with pytest.raises(ValueError, match="Lf must be in"):
        DifnetConfig(Lf=lf, N=3)


def test_streams_of_different_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="must both be"):
        _encoder()(_features(1, 4), _features(1, 5))


def test_gradients_reach_both_streams_and_every_parameter() -> None:
    model = _encoder().train()
    grid = _features(2, 5, padded=2, seed=1).requires_grad_(True)
    pixel = _features(2, 6, padded=1, seed=2).requires_grad_(True)
    model(grid, pixel).last_hidden_state[:, :5].square().sum().backward()
    assert grid.grad[:, :5].abs().sum() > 0
    assert pixel.grad[:, :6].abs().sum() > 0
    unused = [name for name, param in model.named_parameters() if param.grad is None or not param.grad.any()]
    assert unused == []


def test_a_sample_that_is_all_padding_gives_nan_like_the_original() -> None:
    model = _encoder()
    with torch.no_grad():
        output = model(_features(1, 0, padded=4), _features(1, 4)).last_hidden_state
    assert output.isnan().all()


def test_original_state_dict_must_be_complete() -> None:
    source = _encoder()
    original = {_original_name(key): value for key, value in source.state_dict().items()}
    for index in range(source.config.N):
        original[f"layers.{index}.mhatt.layer_norm1.weight"] = torch.ones(TINY["d_model"])
        original[f"layers.{index}.mhatt.layer_norm1.bias"] = torch.zeros(TINY["d_model"])
    # The original also has pixel norms in the layers after the merge (here layer 2), never used.
    for name in ("lnorm1", "pwff.layer_norm1"):
        original[f"layers.2.{name}.weight"] = torch.ones(TINY["d_model"])
        original[f"layers.2.{name}.bias"] = torch.zeros(TINY["d_model"])
    target = DifnetEncoder(source.config)
    assert len(load_difnet_encoder_weights(target, original)) == 2 * source.config.N + 4
    for key, value in target.state_dict().items():
        assert torch.equal(value, source.state_dict()[key]), key

    del original["layers.1.lnorm1.weight"]
    with pytest.raises(CheckpointError, match=r"skip_norms\.1\.weight"):
        load_difnet_encoder_weights(DifnetEncoder(source.config), original)


def _original_name(key: str) -> str:
    """Our key → the original's (the inverse of the layout, for the keys we have)."""
    for ours, theirs in (
        (".attn.query.", ".mhatt.attention.fc_q."),
        (".attn.key.", ".mhatt.attention.fc_k."),
        (".attn.value.", ".mhatt.attention.fc_v."),
        (".attn.out.", ".mhatt.attention.fc_o."),
        (".attn_norm.", ".mhatt.layer_norm."),
        (".skip_norms.0.", ".lnorm."),
        (".skip_norms.1.", ".lnorm1."),
        (".ffn.", ".pwff."),
        (".ffn_norms.0.", ".pwff.layer_norm."),
        (".ffn_norms.1.", ".pwff.layer_norm1."),
    ):
        if ours in key:
            return key.replace(ours, theirs)
    raise AssertionError(key)
