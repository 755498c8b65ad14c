"""Shared test fixtures: where the read-only ground truth (`../shared`) lives."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import settings

REPO = Path(__file__).resolve().parents[1]
# benchmarks/ (the baselines `make bench` times fusioncam against, which tests check too) sits beside tests/, outside
# the installed package: `python -m pytest` finds it from the checkout's root, a bare `pytest` would not.
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

# Property tests draw the same examples on every machine and run (derandomize): a CI failure is reproducible, and
# a green run does not depend on what an earlier run on this machine happened to find.
settings.register_profile("fusioncam", derandomize=True, deadline=None)
settings.load_profile("fusioncam")


def shared_root() -> Path:
    """`$FUSIONCAM_SHARED_DIR`, else the `shared/` folder beside the checkout (as CI has it)."""
    return Path(os.environ.get("FUSIONCAM_SHARED_DIR", REPO.parent / "shared"))


def reference_root() -> Path:
    """`$FUSIONCAM_REFERENCE_DIR`, else `shared/fixtures/reference`."""
    default = shared_root() / "fixtures" / "reference"
    return Path(os.environ.get("FUSIONCAM_REFERENCE_DIR", default))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    root = shared_root()
    if not root.is_dir():
        pytest.fail(f"ground truth not found at {root}: put shared/ beside the checkout or set FUSIONCAM_SHARED_DIR")
    return root


@pytest.fixture(scope="session")
def dogs_jpg(shared_dir: Path) -> Path:
    return shared_dir / "fixtures" / "images" / "dogs.jpg"
