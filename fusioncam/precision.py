"""The arithmetic a loaded model runs in: `fp32`, `bf16` / `fp16` autocast, or `int8` dynamic quantisation.

One switch for every model. A model keeps float32 weights in every mode (so fp32 stays bit for bit what the
references check); `bf16`/`fp16` run the matrix products under `torch.autocast`, while the residual stream,
LayerNorms and explicit softmaxes see float32 inputs and stay float32 (autocast casts only the listed
matmul-like ops); `int8` replaces the linear layers of the parts that never need a gradient by dynamically
quantised ones (int8 weights, activations quantised per batch), on CPU only, which is the only place PyTorch
has kernels for them.
"""

from __future__ import annotations

import warnings
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from fusioncam.choices import PRECISIONS, Precision, PrecisionChoice

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(choice: PrecisionChoice, device: torch.device | str) -> Precision:
    """`auto` → bf16 on CUDA cards that have it (fp16 on older ones) and on CPUs with native bf16 instructions,
    fp32 elsewhere; any other name is checked against what `device` can run."""
    device = torch.device(device)
    if choice == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return "bf16"
        return "fp32"
    if choice not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)} or auto, got {choice!r}")
    if choice == "int8" and device.type != "cpu":
        raise ValueError(f"int8 runs on CPU only (dynamic quantisation has no {device.type} kernels); use bf16")
    return choice


def autocast(precision: Precision, device: torch.device) -> AbstractContextManager[object]:
    """The context a model of `precision` runs its forward passes in (nothing to do for fp32 and int8)."""
    dtype = AUTOCAST_DTYPES.get(precision)
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def full_precision(device: torch.device) -> AbstractContextManager[object]:
    """Autocast switched off, for the few steps whose result is compared, thresholded or ranked (heads, scores)."""
    return torch.autocast(device.type, enabled=False)


def widened(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` in at least float32: a bf16/fp16 result of autocast goes up, float32 and float64 stay as they are
    (the references run some models in float64)."""
    return tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()


def current_autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast computes in on `device` at this point, None where it is off."""
    return torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None


def autocast_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """The weights of `module`'s linear layers in the dtype autocast now computes in, for `torch.func.functional_call`
    ({} when autocast is off).

    A decoding loop runs the same weights once per token. Autocast casts a float32 weight at every use and keeps the
    cast only for weights that require grad, which a frozen model's do not, so each step would cast the whole model
    again (a fifth of a bf16 caption step on CPU). These are the values autocast computes, cast once. A weight an
    embedding also reads (T5's tied LM head) is left out: replacing it would change the embedding's output.
    """
    dtype = current_autocast_dtype(next(module.parameters()).device)
    if dtype is None:
        return {}
    embedded = {id(layer.weight) for layer in module.modules() if isinstance(layer, nn.Embedding)}
    return {
        f"{name}.{key}" if name else key: tensor.to(dtype)
        for name, layer in module.named_modules()
        if type(layer) is nn.Linear  # not the float32 heads that subclass it
        for key, tensor in layer.named_parameters(recurse=False)
        if id(tensor) not in embedded
    }


def quantize_linears(module: nn.Module) -> None:
    """Replace, in place, every `nn.Linear` of `module` by a dynamically quantised int8 one.

    Only for modules no gradient flows through: quantised linears have no backward. Subclasses of `nn.Linear`
    (the float32 heads, `FullPrecisionLinear`) are matched by exact type and left alone. PyTorch marks its eager
    quantisation API deprecated in favour of an external package; it is still the one with fast CPU kernels in
    this torch, so its warning is silenced here rather than shown to every user of `--precision int8`.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.ao.quantization.quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8, inplace=True)
