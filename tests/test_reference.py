"""Parity with the original implementations: every case under `$FUSIONCAM_REFERENCE_DIR`.

Each case directory holds `config.json` (with `"case"`, the kind), weights, inputs and outputs produced by the
original code. The checks for each kind live in `tests/ref_*.py` modules (each exports `CHECKS`, kind → check);
a kind that none of them implements fails. Tolerances are the case's own `suggested_atol`.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import reference_root
from refcase import Case, run_case

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
    run_case(case_dir, CHECKS)


def test_unknown_case_kind_fails(tmp_path: Path) -> None:
    case_dir = tmp_path / "new_fixture"
    case_dir.mkdir()
    (case_dir / "config.json").write_text(json.dumps({"case": "no_such_kind"}))
    with pytest.raises(pytest.fail.Exception, match=r"new_fixture: no check for its kind 'no_such_kind'"):
        run_case(case_dir, CHECKS)
