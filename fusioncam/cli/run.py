"""The command-line side of batch runs: pairs from the arguments, and reporting what `fusioncam.runner` yields.

Every pair is reported in input order (a JSONL line, or a failure on stderr), failures never stop the run, and the
exit code says whether everything was done.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from fusioncam.cli.common import progress, stderr, usage_error, warn

if TYPE_CHECKING:
    from fusioncam.inputs import Failure, Pair
    from fusioncam.runner import Task

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
        elif image == STDIN or is_url(image):
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


def run_task(
    inputs: Iterator[Pair | Failure], total: int | None, task: Task, batch_size: int, jsonl: bool, quiet: bool
) -> tuple[list[dict], list[Failure]]:
    """Run `task` over the inputs with the library's runner and report each outcome as it comes: a JSONL line on
    stdout (with `jsonl`), a one-line failure on stderr. Failures never stop the run."""
    from fusioncam.runner import as_failure, run

    records: list[dict] = []
    failures: list[Failure] = []
    with progress(task.label, total, quiet) as bar:
        for item, outcome in run(inputs, task, batch_size, bar.advance):
            failure = as_failure(item, outcome)
            if failure is not None:
                failures.append(failure)
                about = f" ({failure.text!r})" if failure.text is not None else ""
                stderr.print(f"[red]failed[/red] {escape(failure.origin)}{escape(about)}: {escape(failure.reason)}")
            else:
                assert isinstance(outcome, dict)
                records.append(outcome)
            if jsonl:
                print(json.dumps(failure_record(failure) if failure else outcome, ensure_ascii=False), flush=True)
    return records, failures


def warn_truncated(pair: Pair) -> None:
    warn(f"{pair.origin}: text longer than the model reads, truncated: {pair.text!r}")


def finish(records: list[dict], failures: list[Failure], what: str, out: Path | None) -> None:
    where = f" written to {out}" if out is not None else ""
    stderr.print(f"{len(records)} {what}{where}" + (f", [red]{len(failures)} failed[/red]" if failures else ""))
    if failures:
        raise typer.Exit(1)
