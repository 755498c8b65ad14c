"""The command-line side of batch runs: pairs from the arguments, and reporting what `fusioncam.runner` yields.

Every pair is reported in input order (a JSONL line, or a failure on stderr), failures never stop the run, and the
exit code says whether everything was done.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from fusioncam.cli.common import print_table, progress, stderr, usage_error, warn

if TYPE_CHECKING:
    from fusioncam.inputs import Failure, Pair
    from fusioncam.runner import Settled, Task

# Words a boolean flag's value would be: `--recursive true` makes "true" the text, which is never what was meant.
_FLAG_VALUES = frozenset({"true", "false", "yes", "no", "on", "off"})


def pair_inputs(
    image: str | None, texts: list[str], pairs: Path | None, recursive: bool, text_key: str = "text"
) -> tuple[Iterator[Pair | Failure], int | None]:
    """All pairs the arguments describe, and their number when known (stdin is streamed, not counted).

    Files and folders are listed up front, so that usage errors surface before a model loads; stdin is streamed,
    since a pipeline's upstream may still be writing.
    """
    from fusioncam.images import STDIN, is_url
    from fusioncam.inputs import pairs_from_path, pairs_from_source, read_jsonl

    if image == "":
        raise usage_error("the IMAGE argument is empty: give an image file, a folder, or '-' for stdin")
    if image is None and pairs is None:
        raise usage_error(f'give an IMAGE (file, folder or \'-\') or --pairs FILE of {{"image", "{text_key}"}}')
    if image is not None and pairs is not None:
        raise usage_error(f"give IMAGE or --pairs, not both (--pairs records name their own images and {text_key}s)")
    stdin_image = image == STDIN and bool(texts)  # `cat x.jpg | fusioncam score - "a dog"`
    if image is not None and image != STDIN and not is_url(image) and not Path(image).exists():
        raise usage_error(f"no such image or folder: {image}")
    if image not in (None, STDIN) and not texts:
        raise usage_error(f"give the {text_key.upper()} as well, e.g. fusioncam … photo.jpg 'a dog'")
    flags = [text for text in texts if text.strip().lower() in _FLAG_VALUES]
    if flags:
        raise usage_error(
            f"{flags[0]!r} looks like a flag's value, not a {text_key}: boolean options take none "
            "(--recursive / --no-recursive)"
        )
    if pairs is not None and not pairs.is_file():
        raise usage_error(f"--pairs file not found: {pairs}")

    def generate() -> Iterator[Pair | Failure]:
        if pairs is not None:
            with pairs.open(encoding="utf-8") as stream:
                yield from read_jsonl(stream, str(pairs), pairs.parent, text_key)
        elif image == STDIN and not stdin_image:
            yield from read_jsonl(sys.stdin, "stdin", Path.cwd(), text_key)
        elif image is not None and (image == STDIN or is_url(image)):
            yield from pairs_from_source(image, texts)
        elif image is not None:
            yield from pairs_from_path(Path(image), texts, recursive)

    if image == STDIN and not stdin_image:
        return generate(), None
    listed = list(generate())
    if not listed:
        raise typer.Exit(_nothing_to_do(f"no images found in {image}" if image else f"no records in {pairs}"))
    return iter(listed), len(listed)


def _nothing_to_do(message: str) -> int:
    """Empty input is not an error of the command line, and it is the same whether it came as a folder or stdin."""
    stderr.print(f"nothing to do: {escape(message)}")
    return 0


def failure_record(failure: Failure) -> dict[str, Any]:
    return {"image": failure.image, "text": failure.text, "error": failure.reason, "origin": failure.origin}


@dataclass
class RunSettings:
    """How a batch command runs, beyond what it computes: resume, its share of the inputs, where its summary goes."""

    resume: bool = False
    shard: tuple[int, int] = (0, 1)
    summary: Path | None = None  # summary.json (or its shard's) under --out; None: no summary (score)
    workers: int = 2

    @classmethod
    def for_out(cls, out: Path, resume: bool, shard: str | None, workers: int) -> RunSettings:
        """The settings of a command that writes under `out`: its share, and the summary of that share there."""
        share = parse_shard(shard)
        return cls(resume, share, summary_path(out, share), workers)

    @property
    def torchrun(self) -> bool:
        """One of several processes started by torchrun (rank 0 merges what they all did)."""
        return "TORCHELASTIC_RUN_ID" in os.environ and self.shard[1] > 1


@dataclass
class RunResult:
    records: list[dict] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    skipped: int = 0
    interrupted: bool = False
    disk_full: str | None = None  # why the run stopped early: no space left under --out


def _until_disk_full(settled: Iterator[Settled], result: RunResult) -> Iterator[Settled]:
    """The runner's outcomes until a full disk stops the run (noted in `result`; the summary still tries)."""
    from fusioncam.files import DiskFullError

    try:
        yield from settled
    except DiskFullError as error:
        result.disk_full = str(error)


def run_task(
    inputs: Iterator[Pair | Failure],
    total: int | None,
    task: Task,
    batch_size: int,
    jsonl: bool,
    quiet: bool,
    settings: RunSettings | None = None,
) -> RunResult:
    """Run `task` over the inputs with the library's runner and report each outcome as it comes: a JSONL line on
    stdout (with `jsonl`), a one-line failure on stderr. Failures never stop the run; Ctrl-C finishes the batch in
    hand, writes the summary and says how to resume."""
    from fusioncam.runner import as_failure, run

    settings = settings or RunSettings()
    if settings.torchrun and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        settings.resume = True  # a rank restarted by torchrun picks up its share where it died
    if settings.resume and task.out is not None:
        remove_partial_files(task.out)
    listed: list[Pair | Failure] = []
    if settings.torchrun:  # rank 0 reports every rank's records in input order at the end
        listed = list(inputs)
        inputs = iter(listed)
        jsonl_now, jsonl = jsonl, False
    result = RunResult()
    started = time.monotonic()
    interrupted = _Interrupt()
    with progress(task.label, total, quiet) as bar, interrupted:
        settled = run(
            inputs,
            task,
            batch_size,
            bar.advance,
            resume=settings.resume,
            shard=settings.shard,
            stop=interrupted.asked,
            workers=settings.workers,
        )
        for item in _until_disk_full(settled, result):
            failure = as_failure(item)
            if failure is not None:
                result.failures.append(failure)
                about = f" ({failure.text!r})" if failure.text is not None else ""
                stderr.print(f"[red]failed[/red] {escape(failure.origin)}{escape(about)}: {escape(failure.reason)}")
            else:
                assert isinstance(item.outcome, dict)
                result.records.append(item.outcome)
                result.skipped += item.resumed
            if jsonl:
                line = failure_record(failure) if failure else item.outcome
                print(json.dumps(line, ensure_ascii=False), flush=True)
    result.interrupted = interrupted.asked()
    if result.disk_full is not None:
        stderr.print(f"[red]error:[/red] {escape(result.disk_full)}")
    if settings.summary is not None:
        try:
            _write_summary(settings.summary, task, result, time.monotonic() - started, settings)
        except OSError as error:
            if result.disk_full is None:  # a full disk does not take the summary either: said once, above
                warn(f"cannot write {settings.summary}: {error}")
    if settings.torchrun and settings.shard[0] == 0 and task.out is not None:
        _merge_ranks(task, listed, settings.shard[1], jsonl_now)
    return result


def _merge_ranks(task: Task, listed: list[Pair | Failure], ranks: int, jsonl: bool, timeout: float = 3600) -> None:
    """Rank 0, once every rank's summary is on disk: the merged summary.json and, with `jsonl`, every rank's
    records on stdout in input order (read back from the records they wrote)."""
    from fusioncam.files import write_json
    from fusioncam.inputs import Failure
    from fusioncam.outputs import record_path

    out = task.out
    assert out is not None and task.command is not None
    paths = [summary_path(out, (k, ranks)) for k in range(ranks)]
    deadline = time.monotonic() + timeout
    while not all(_summary_of_this_run(path) for path in paths):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the other ranks did not write their summaries within {timeout:.0f} s")
        time.sleep(0.2)
    parts = [json.loads(path.read_text(encoding="utf-8")) for path in paths]
    merged = {key: sum(part[key] for part in parts) for key in ("done", "skipped", "failed")}
    merged |= {"interrupted": any(part["interrupted"] for part in parts), "ranks": ranks, "command": task.command}
    merged |= {"failures": [failure for part in parts for failure in part["failures"]], "options": task.options}
    merged |= {"fusioncam": parts[0]["fusioncam"], "seconds": max(part["seconds"] for part in parts)}
    write_json(out / "summary.json", merged)
    if not jsonl:
        return
    failed = {(failure["origin"], failure["text"]): failure for failure in merged["failures"]}
    for item in listed:
        if isinstance(item, Failure):
            line = failure_record(item)
        elif (item.origin, item.text) in failed:
            line = failed[item.origin, item.text]
        else:
            line = json.loads(record_path(out, item, task.command).read_text(encoding="utf-8"))
        print(json.dumps(line, ensure_ascii=False), flush=True)


def _summary_of_this_run(path: Path) -> bool:
    """A rank's summary written by this torchrun run (not one left by an earlier run in the same folder)."""
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("run_id") == os.environ.get("TORCHELASTIC_RUN_ID")
    except (OSError, ValueError):
        return False


def remove_partial_files(out: Path) -> None:
    """Files a killed run was writing (`.partial-PID-…`): removed when that process is gone, so that a resumed
    run leaves a tree with whole files only (a live PID may be another process of the same run, still writing)."""
    from fusioncam.files import TEMPORARY_PREFIX

    for path in out.rglob(f"{TEMPORARY_PREFIX}*"):
        pid = path.name[len(TEMPORARY_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Interrupt:
    """The first Ctrl-C asks the run to stop after the batch in hand (so that its outputs are written); a second
    one stops at once."""

    def __init__(self) -> None:
        self._asked = False

    def asked(self) -> bool:
        return self._asked

    def _handle(self, signum: int, frame: object) -> None:
        if self._asked:
            raise KeyboardInterrupt
        self._asked = True
        stderr.print("stopping after this batch (Ctrl-C again to stop now) …")

    def __enter__(self) -> _Interrupt:
        self._previous = signal.signal(signal.SIGINT, self._handle) if _main_thread() else None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _write_summary(path: Path, task: Task, result: RunResult, seconds: float, settings: RunSettings) -> None:
    """What the run did, for people and for the next run: counts, each failure's input and reason, options."""
    from fusioncam import __version__
    from fusioncam.files import write_json

    summary = {
        "command": task.command,
        "done": len(result.records) - result.skipped,
        "skipped": result.skipped,
        "failed": len(result.failures),
        "interrupted": result.interrupted,
        "disk_full": result.disk_full,
        "failures": [failure_record(failure) for failure in result.failures],
        "options": task.options,
        "shard": list(settings.shard),
        "run_id": os.environ.get("TORCHELASTIC_RUN_ID"),
        "fusioncam": __version__,
        "seconds": round(seconds, 3),
    }
    write_json(path, summary)


def parse_shard(shard: str | None) -> tuple[int, int]:
    """`K/N` (0 ≤ K < N) from --shard; under torchrun (RANK, WORLD_SIZE set) the rank's share."""
    if shard is None:
        rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
        return (int(rank), int(world)) if rank is not None and world is not None else (0, 1)
    try:
        k, n = (int(part) for part in shard.split("/"))
    except ValueError:
        raise usage_error(f"--shard takes K/N, e.g. 0/4, got {shard!r}") from None
    if not 0 <= k < n:
        raise usage_error(f"--shard K/N needs 0 <= K < N, got {shard!r}")
    return k, n


def summary_path(out: Path, shard: tuple[int, int]) -> Path:
    k, n = shard
    return out / ("summary.json" if n == 1 else f"summary.shard-{k}-of-{n}.json")


def report_end(
    result: RunResult, what: str, out: Path | None, columns: dict[str, Callable[[dict], str]] | None = None
) -> None:
    """The results as a table on stdout (`columns`: header → cell of a record; None: no table, e.g. with --jsonl),
    the closing line on stderr and the exit code: 0 done, 1 some failed, 130 interrupted (with how to resume)."""
    if columns is not None and result.records:
        print_table(list(columns), [[cell(record) for cell in columns.values()] for record in result.records])
    where = f" written to {out}" if out is not None else ""
    skipped = f" ({result.skipped} already done)" if result.skipped else ""
    failed = f", [red]{len(result.failures)} failed[/red]" if result.failures else ""
    stderr.print(f"{len(result.records)} {what}{where}{skipped}{failed}")
    if result.disk_full is not None:
        raise typer.Exit(1)
    if result.interrupted:
        command = " ".join(shlex.quote(arg) for arg in ["fusioncam", *sys.argv[1:]] if arg != "--resume")
        stderr.print(f"interrupted; resume with: {escape(command)} --resume")
        raise typer.Exit(130)
    if result.failures:
        raise typer.Exit(1)


def warn_truncated(pair: Pair) -> None:
    warn(f"{pair.origin}: text longer than the model reads, truncated: {pair.text!r}")
