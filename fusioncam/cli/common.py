"""What every command shares: the two consoles, errors with exit codes, progress, tables, device and --out checks.

Data goes to stdout, everything human to stderr. Nothing here imports torch at module level: `fusioncam --help`
must stay instant, and so this module is imported by every command.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

# soft_wrap: a message is one line however long, so that `grep` finds it and paths are never cut.
stderr = Console(stderr=True, soft_wrap=True, highlight=False)
stdout = Console(soft_wrap=True, highlight=False)

PROGRESS_INTERVAL_ENV = "FUSIONCAM_PROGRESS_INTERVAL"
DEFAULT_PROGRESS_INTERVAL = 10.0  # seconds between plain progress lines when stderr is not a terminal

T = TypeVar("T")


def usage_error(message: str) -> typer.Exit:
    """Exit 2: the command line asked for something that cannot be done; say what to change."""
    stderr.print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(2)


def fail(error: Exception | str) -> typer.Exit:
    """Exit 1: the request was fine, the work failed (a file, a download)."""
    stderr.print(f"[red]error:[/red] {escape(str(error))}")
    return typer.Exit(1)


def warn(message: str) -> None:
    stderr.print(f"[yellow]warning:[/yellow] {escape(message)}")


def loading(what: str, load: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Load a model; problems a user can fix (unknown preset, missing weights) end the run with a clear message."""
    from fusioncam import weights as weights_lib

    try:
        with stderr.status(f"loading {what} …"):
            return load(*args, **kwargs)
    except weights_lib.PresetError as error:
        raise usage_error(str(error)) from None
    except (weights_lib.WeightsError, ValueError, OSError) as error:
        raise fail(error) from None


def available_devices() -> list[str]:
    import torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += ["cuda"] + [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def check_device(device: str) -> str:
    """`device` if this machine has it (`auto` always does), else a usage error listing the devices it has.

    Under torchrun `auto` is the rank's own GPU (`cuda:LOCAL_RANK`) when there are GPUs."""
    import torch

    if device == "auto":
        local_rank = os.environ.get("LOCAL_RANK")
        return f"cuda:{local_rank}" if local_rank is not None and torch.cuda.is_available() else device
    available = available_devices()
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        message = f"--device {device!r} is not a device; this machine has: auto, {', '.join(available)}"
        raise usage_error(message) from None
    if parsed.type == "cpu" or str(parsed) in available:
        return device
    raise usage_error(f"--device {device} is not available here; this machine has: auto, {', '.join(available)}")


def check_out_dir(out: Path) -> Path:
    """Make sure results can be written under `out` before any model loads (exit 2 otherwise).

    The folder is created if its parent exists (a missing parent is more often a typo than a wish), and a probe
    file is written and removed, which is the only honest test of a read-only mount or a full quota.
    """
    if out.exists() and not out.is_dir():
        raise usage_error(f"--out {out} exists and is not a folder")
    if not out.exists():
        if not out.parent.is_dir():
            raise usage_error(f"--out {out}: its parent folder {out.parent} does not exist")
        try:
            out.mkdir()
        except OSError as error:
            raise usage_error(f"--out {out} cannot be created: {error.strerror or error}") from None
    try:
        with tempfile.NamedTemporaryFile(dir=out, prefix=".fusioncam-probe-"):
            pass
    except OSError as error:
        raise usage_error(f"--out {out} is not writable: {error.strerror or error}") from None
    return out


class _StderrHandler(logging.Handler):
    """The library's log records as one stderr line each (warnings marked), like every other message."""

    def emit(self, record: logging.LogRecord) -> None:
        message = escape(record.getMessage())
        stderr.print(f"[yellow]warning:[/yellow] {message}" if record.levelno >= logging.WARNING else message)


def report_library_messages() -> None:
    """Show what the library logs (INFO and up) on stderr, and its downloads as bars or plain progress lines."""
    from fusioncam import weights

    logger = logging.getLogger("fusioncam")
    if not any(isinstance(handler, _StderrHandler) for handler in logger.handlers):
        logger.addHandler(_StderrHandler())
        logger.setLevel(logging.INFO)
    weights.show_downloads(_download_bar)


@contextmanager
def _download_bar(label: str, total: int | None, completed: int) -> Iterator[Callable[[int], None]]:
    with progress(label, total, completed=completed) as bar:
        yield bar.advance


class PlainProgress:
    """Progress as plain lines at an interval, for logs (nohup, Slurm) where a live bar would be noise or silence."""

    def __init__(self, label: str, total: int | None, interval: float, completed: int = 0) -> None:
        self.label, self.total, self.interval = label, total, interval
        self.done = completed
        self.started = self.last = time.monotonic()

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._line(now)

    def close(self) -> None:
        if self.done:
            self._line(time.monotonic())

    def _line(self, now: float) -> None:
        elapsed = now - self.started
        of = f"/{self.total} ({self.done / self.total:.0%})" if self.total else ""
        rate = f", {self.done / elapsed:.2f}/s" if elapsed > 0 else ""
        print(f"{self.label}: {self.done}{of} in {elapsed:.0f} s{rate}", file=sys.stderr, flush=True)


class _RichProgress:
    def __init__(self, progress: Any, task: Any) -> None:
        self._progress, self._task = progress, task

    def advance(self, count: int = 1) -> None:
        self._progress.advance(self._task, count)


@contextmanager
def progress(
    label: str, total: int | None, quiet: bool = False, completed: int = 0
) -> Iterator[PlainProgress | _RichProgress]:
    """A live bar on a terminal; plain lines every `$FUSIONCAM_PROGRESS_INTERVAL` seconds (10) otherwise.
    `advance(n)` on what it yields; `completed` is where it starts (a resumed download)."""
    if quiet or not stderr.is_terminal:
        interval = float(os.environ.get(PROGRESS_INTERVAL_ENV, DEFAULT_PROGRESS_INTERVAL))
        plain = PlainProgress(label, total, interval if not quiet else float("inf"), completed)
        yield plain
        if not quiet:
            plain.close()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=stderr) as bar:
        yield _RichProgress(bar, bar.add_task(label, total=total, completed=completed))


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]], title: str | None = None) -> None:
    """A table on stdout: drawn for a terminal, tab-separated with a header line when piped (nothing cut)."""
    if not stdout.is_terminal:
        print("\t".join(header))
        for row in rows:
            print("\t".join(_tsv_cell(cell) for cell in row))
        return
    from rich.table import Table

    table = Table(title=title)
    for name in header:
        table.add_column(name, overflow="fold")  # wrap a long path rather than cut it
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    stdout.print(table)


def _tsv_cell(cell: str) -> str:
    return cell.replace("\t", " ").replace("\n", " ")
