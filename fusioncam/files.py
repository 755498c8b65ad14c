"""Files written whole or not at all: a temporary name beside the target, renamed onto it once written.

A run killed at any moment (SIGKILL, a crash, a full disk) then leaves only whole files under their real names,
which is what `--resume` relies on. Kept free of torch and OpenCV so that any command can use it cheaply.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMPORARY_PREFIX = ".partial-"  # files being written; a run killed mid-write leaves these, never a half file


class DiskFullError(OSError):
    """No space left on the disk under --out, or the quota spent: every later pair would fail the same way, so the
    run stops at once (the runner lets this through) instead of failing each remaining pair after its model work."""

    def __init__(self, path: Path, error: OSError) -> None:
        what = "disk quota exceeded" if error.errno == errno.EDQUOT else "disk full"
        super().__init__(
            error.errno, f"{what}: cannot write {path}; free space and run again (--resume skips what is done)"
        )

    def __str__(self) -> str:
        return str(self.strerror)


@contextmanager
def stop_when_full(path: Path) -> Iterator[None]:
    """An ENOSPC or EDQUOT while writing `path` becomes a `DiskFullError`: the run stops instead of failing on."""
    try:
        yield
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(path, error) from error
        raise


@contextmanager
def atomically(path: Path) -> Iterator[Path]:
    """A temporary name beside `path` to write to, renamed onto `path` once written: a file under its real name is
    always whole, whenever the run is killed."""
    temporary = path.with_name(f"{TEMPORARY_PREFIX}{os.getpid()}-{path.name}")
    try:
        with stop_when_full(path):
            yield temporary
            os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_json(path: Path, value: object) -> None:
    """`value` as indented UTF-8 JSON, written atomically (records, summaries)."""
    with atomically(path) as temporary:
        temporary.write_text(json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
