"""Parity with the original implementations: every case under `$FUSIONCAM_REFERENCE_DIR`.

Each case directory holds `config.json` (with `"case"`, the kind), weights, inputs and outputs produced by the
original code. The checks for each kind live in `tests/ref_*.py` modules (each exports `CHECKS`, kind → check);
a kind that none of them implements is skipped with the reason "not implemented". Tolerances are the case's own
`suggested_atol`.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import reference_root
from refcase import Case

CHECKS: dict[str, Callable[[Case], None]] = {}
for _module in sorted(Path(__file__).parent.glob("ref_*.py")):
    CHECKS |= importlib.import_module(_module.stem).CHECKS


def _case_dirs() -> list[Path]:
    root = reference_root()
    if not root.is_dir():
        return []
    return sorted(path for path in root.iterdir() if (path / "config.json").is_file())


def test_reference_cases_found() -> None:
    assert _case_dirs(), f"no reference cases under {reference_root()}"


@pytest.mark.parametrize("case_dir", _case_dirs(), ids=lambda path: path.name)
def test_reference_case(case_dir: Path) -> None:
    kind = json.loads((case_dir / "config.json").read_text())["case"]
    if kind not in CHECKS:
        pytest.skip("not implemented")
    torch.manual_seed(0)
    CHECKS[kind](Case(case_dir))
