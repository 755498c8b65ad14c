"""One reference case directory of `shared/fixtures/reference`, the tolerance check every kind uses, and the
dispatch of a case to the check of its kind."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file


class Case:
    """One reference case directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.config = json.loads((path / "config.json").read_text())
        self.meta = json.loads((path / "cases.json").read_text())
        self.inputs = load_file(path / "inputs.safetensors") if (path / "inputs.safetensors").exists() else {}
        self.outputs = load_file(path / "outputs.safetensors") if (path / "outputs.safetensors").exists() else {}

    def check(self, name: str, actual: torch.Tensor, atol: float | None = None) -> None:
        """Max abs error of output `name` within `atol` (default: the case's `suggested_atol[name]`)."""
        expected = self.outputs[name]
        atol = self.config["suggested_atol"][name] if atol is None else atol
        assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
        error = (actual.float() - expected.float()).abs().max().item()
        assert error <= atol, f"{name}: max abs error {error:.3g} > atol {atol:.3g}"

    def atol(self, name: str) -> float:
        """The case's `suggested_atol[name]`, else the rule it is made by: max(1e-5·max|ref|, 10× f32-vs-f64 error)."""
        suggested = self.config.get("suggested_atol", {})
        if name in suggested:
            return suggested[name]
        reference = self.outputs[name].abs().max().item()
        return max(1e-5 * reference, 10 * self.config["tolerance_float32_vs_float64"][name]["max_abs_err"])


def run_case(case_dir: Path, checks: Mapping[str, Callable[[Case], None]]) -> None:
    """Run the check of the case's kind (`config.json`'s `"case"`); a kind without one fails the test, naming the
    kind and the folder, so that a new fixture nobody handles cannot pass silently."""
    kind = json.loads((case_dir / "config.json").read_text()).get("case")
    if kind not in checks:
        pytest.fail(
            f"reference case {case_dir}: no check for its kind {kind!r} (known: {', '.join(sorted(checks))}); "
            "add one to the CHECKS of a tests/ref_*.py module"
        )
    torch.manual_seed(0)
    checks[kind](Case(case_dir))
