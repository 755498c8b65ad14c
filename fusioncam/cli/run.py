"""Batch runs of the per-pair commands: inputs → batches → a command's `process` → records on stdout and files.

Every pair is reported in input order (a JSONL line, or a failure on stderr), failures never stop the run, and the
exit code says whether everything was done.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from fusioncam.cli.common import progress, stderr, usage_error

if TYPE_CHECKING:
    import numpy as np

    from fusioncam.api import BlipMatcher, Heatmap, SamRefiner
    from fusioncam.explain.refine import Refined
    from fusioncam.inputs import Failure, Pair

Outcome = dict | str  # the record written for a pair, or why it failed
Process = Callable[[list["Pair"]], Iterator[tuple["Pair", Outcome]]]

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


def decode_images(batch: list[Pair]) -> tuple[dict[Path | str, np.ndarray], dict[Path | str, str]]:
    """Each distinct image of a batch decoded once; failures as reasons."""
    from fusioncam.images import ImageDecodeError, load_image_source

    images, reasons = {}, {}
    for source in dict.fromkeys(pair.image for pair in batch):
        try:
            images[source] = load_image_source(source)
        except ImageDecodeError as error:
            reasons[source] = str(error)
    return images, reasons


def failure_record(failure: Failure) -> dict[str, Any]:
    return {"image": failure.image, "text": failure.text, "error": failure.reason, "origin": failure.origin}


def run_batches(
    inputs: Iterator[Pair | Failure], total: int | None, batch_size: int, label: str, jsonl: bool, quiet: bool,
    process: Process,
) -> tuple[list[dict], list[Failure]]:  # fmt: skip
    """Feed batches of pairs to `process`, report each result (a JSONL line) or failure, keep going on errors."""
    from fusioncam.inputs import Failure, Pair, batched, image_label

    records: list[dict] = []
    failures: list[Failure] = []

    def report_failure(failure: Failure) -> None:
        failures.append(failure)
        about = f" ({failure.text!r})" if failure.text is not None else ""
        stderr.print(f"[red]failed[/red] {escape(failure.origin)}{escape(about)}: {escape(failure.reason)}")
        if jsonl:
            print(json.dumps(failure_record(failure), ensure_ascii=False), flush=True)

    with progress(label, total, quiet) as bar:
        for chunk in batched(inputs, batch_size):
            outcomes = {id(pair): outcome for pair, outcome in process([i for i in chunk if isinstance(i, Pair)])}
            for item in chunk:  # reported in input order, so that JSONL output lines up with its input
                outcome = item if isinstance(item, Failure) else outcomes[id(item)]
                if isinstance(outcome, Failure):
                    report_failure(outcome)
                elif isinstance(outcome, str):
                    report_failure(Failure(item.origin, outcome, image_label(item.image), item.text))
                else:
                    records.append(outcome)
                    if jsonl:
                        print(json.dumps(outcome, ensure_ascii=False), flush=True)
            bar.advance(len(chunk))
    return records, failures


def safely(pair: Pair, write: Callable[..., dict], *args: Any, **kwargs: Any) -> tuple[Pair, Outcome]:
    """Write a pair's outputs; a file-system error fails that pair only."""
    try:
        return pair, write(*args, **kwargs)
    except OSError as error:
        return pair, f"cannot write outputs: {error}"


def finish(records: list[dict], failures: list[Failure], what: str, out: Path | None) -> None:
    where = f" written to {out}" if out is not None else ""
    stderr.print(f"{len(records)} {what}{where}" + (f", [red]{len(failures)} failed[/red]" if failures else ""))
    if failures:
        raise typer.Exit(1)


def heatmap_results(
    matcher: BlipMatcher, batch: list[Pair], block: int, per_word: bool
) -> Iterator[tuple[Pair, np.ndarray | None, Heatmap | str]]:
    """(pair, image, Heatmap) or (pair, None, reason) per pair; each distinct image is encoded once."""
    from fusioncam.text import clean_caption

    images, reasons = decode_images(batch)
    runnable = []
    for pair in batch:
        if pair.image in reasons:
            yield pair, None, reasons[pair.image]
        elif not clean_caption(pair.text):
            yield pair, None, "the text is empty after cleaning: give at least one word"
        else:
            runnable.append(pair)
    if not runnable:
        return
    order = list(dict.fromkeys(pair.image for pair in runnable))
    embeds = matcher.embed_images([images[path] for path in order])
    index = [order.index(pair.image) for pair in runnable]
    results = matcher.heatmaps(embeds[index], [pair.text for pair in runnable], block=block, per_word=per_word)
    for pair, result in zip(runnable, results, strict=True):
        yield pair, images[pair.image], result


def refined_results(
    matcher: BlipMatcher, refiner: SamRefiner, batch: list[Pair], block: int, per_word: bool
) -> Iterator[tuple[Pair, np.ndarray | None, Heatmap | str, Refined | None]]:
    """Heatmap results with the SAM refinement of each (image, map)."""
    import numpy as np

    explained = list(heatmap_results(matcher, batch, block, per_word))
    ok = [(pair, image, result) for pair, image, result in explained if image is not None]
    refined = (
        refiner.refine([p.image for p, _, _ in ok], [i for _, i, _ in ok], np.stack([r.heatmap for _, _, r in ok]))
        if ok
        else []
    )
    by_pair = {id(pair): item for (pair, _, _), item in zip(ok, refined, strict=True)}
    for pair, image, result in explained:
        yield pair, image, result, by_pair.get(id(pair))
