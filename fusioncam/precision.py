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
