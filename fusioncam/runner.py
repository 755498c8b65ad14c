"""One path through every per-pair command: inputs → batches with each distinct image decoded once → a task →
results in input order.

A task turns a decoded batch into one outcome per pair: the record it wrote, or why that pair failed. The tasks
here are the commands' (`heatmap` in every encoder mode, `segment`, `score`, `vqa`); Python users get the same
runner the CLI has, and a new command is a new task:

    from fusioncam.runner import HeatmapTask, run
    task = HeatmapTask(matcher, out=Path("maps"), block=6)
    for item, outcome in run(pairs_from_path(Path("photos"), ["a dog"]), task, batch_size=8):
        ...
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from fusioncam.api import BlipMatcher, Explained, SamRefiner, distinct_images, explain_pairs
from fusioncam.files import DiskFullError
from fusioncam.images import ImageDecodeError, load_image_source
from fusioncam.inputs import Failure, ImageRef, Pair, batched, image_label
from fusioncam.outputs import record_path, score_record, write_heatmap, write_segment, write_vqa
from fusioncam.text import clean_caption
from fusioncam.vqa import PNPVQA

Outcome = dict | str  # the record written for a pair, or why it failed
Pending = Outcome | Future[Outcome]  # an outcome, or one still being written behind the model

EMPTY_TEXT = "the text is empty after cleaning: give at least one word"


def pair_id(pair: Pair, options: Mapping[str, Any]) -> str:
    """A stable id of one unit of work: its image, its text and every option that changes its result. Equal ids,
    equal outputs; `--resume` skips a pair whose record on disk carries its id."""
    key = {"image": image_label(pair.image), "text": pair.text, "options": options}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]


def shard_of(item: Pair | Failure, shards: int) -> int:
    """Which of `shards` processes owns an input: by image, so that every text of an image lands on the same one
    (each image decoded and encoded once), and deterministically, so that every process agrees without talking."""
    key = image_label(item.image) if isinstance(item, Pair) else item.origin
    return int(hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:12], 16) % shards


@dataclass
class Batch:
    """Pairs with their images decoded: each distinct image once; `reasons` says why an image could not be;
    `ids` each pair's id (see `pair_id`), which its record carries."""

    pairs: list[Pair]
    images: dict[ImageRef, np.ndarray] = field(default_factory=dict)
    reasons: dict[ImageRef, str] = field(default_factory=dict)
    ids: dict[Pair, str] = field(default_factory=dict)
    writer: ThreadPoolExecutor | None = None  # where outputs are written behind the model (None: at once)

    @classmethod
    def decode(
        cls, pairs: list[Pair], ids: dict[Pair, str] | None = None, pool: ThreadPoolExecutor | None = None
    ) -> Batch:
        """Decode each distinct image of `pairs` once (in `pool`'s threads when given: OpenCV decodes without the
        GIL, so threads overlap decoding with each other and with the model)."""
        batch = cls(pairs, ids=ids or {})
        sources = list(dict.fromkeys(pair.image for pair in pairs))
        for source, decoded in zip(sources, (pool.map if pool else map)(_decode, sources), strict=True):
            if isinstance(decoded, str):
                batch.reasons[source] = decoded
            else:
                batch.images[source] = decoded
        return batch

    def split(
        self, check: Callable[[Pair], str | None] = lambda pair: None
    ) -> tuple[list[Pair], list[tuple[Pair, str]]]:
        """The pairs to run, and those that cannot run (an image that did not decode, or what `check` says)."""
        runnable, failed = [], []
        for pair in self.pairs:
            reason = self.reasons.get(pair.image) or check(pair)
            if reason:
                failed.append((pair, reason))
            else:
                runnable.append(pair)
        return runnable, failed


def _decode(source: ImageRef) -> np.ndarray | str:
    try:
        return load_image_source(source)
    except ImageDecodeError as error:
        return str(error)


class Task(Protocol):
    """What a command does with a batch: one outcome per runnable pair (failures included), in any order.

    `options` are the settings that change a result (they go into every pair's id); `command` names the files'
    suffixes under `out` (None: the task writes no files, and nothing is resumed).
    """

    label: str
    options: dict[str, Any]

    @property
    def command(self) -> str | None: ...

    @property
    def out(self) -> Path | None: ...

    def __call__(self, batch: Batch) -> Iterator[tuple[Pair, Pending]]: ...


@dataclass(frozen=True)
class Settled:
    """An input and what became of it; `resumed`: found done on disk by an earlier run, not redone."""

    item: Pair | Failure
    outcome: Outcome | Failure
    resumed: bool = False


def run(
    inputs: Iterable[Pair | Failure],
    task: Task,
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
    *,
    resume: bool = False,
    shard: tuple[int, int] = (0, 1),
    stop: Callable[[], bool] = lambda: False,
    workers: int = 0,
    timing: RunTiming | None = None,
) -> Iterator[Settled]:
    """Every input of this shard with its outcome, in input order (so that JSONL output lines up with its input).

    A failure never stops the run; `stop()` is asked between batches (Ctrl-C: the batch in hand is finished and
    written, then the run ends). With `resume`, a pair whose record is on disk with its id and all its files is
    not redone. `shard = (k, n)`: only the inputs `shard_of` gives to process k of n. `on_batch(n)` hears how many
    inputs each batch settled. `workers` > 0: images are read and decoded that many at a time in threads, up to
    two batches ahead of the model (memory stays flat on a folder of any size); `timing` adds up how long the
    model waited for them.
    """
    k, shards = shard
    mine = (item for item in inputs if shards == 1 or shard_of(item, shards) == k)
    prepared = (_prepare(chunk, task, resume) for chunk in batched(mine, batch_size))
    with ThreadPoolExecutor(workers) if workers else nullcontext() as pool:
        batches = _ahead(prepared, pool, depth=2) if pool else (_decoded(item, None) for item in prepared)
        with ThreadPoolExecutor(workers) if workers else nullcontext() as writer:
            yield from _settle(batches, task, on_batch, stop, timing, writer)


@dataclass
class RunTiming:
    """Where a run's wall time went: `waiting` for decoded images, of `total` seconds."""

    waiting: float = 0.0
    total: float = 0.0


@dataclass
class _Prepared:
    chunk: list[Pair | Failure]
    ids: dict[Pair, str]
    done: dict[Pair, dict]
    batch: Batch | None = None


def _prepare(chunk: list[Pair | Failure], task: Task, resume: bool) -> _Prepared:
    ids = {item: pair_id(item, task.options) for item in chunk if isinstance(item, Pair)}
    done = {pair: record for pair in ids if resume and (record := _done(task, pair, ids[pair])) is not None}
    return _Prepared(chunk, ids, done)


def _decoded(prepared: _Prepared, pool: ThreadPoolExecutor | None) -> _Prepared:
    todo = [pair for pair in prepared.ids if pair not in prepared.done]
    prepared.batch = Batch.decode(todo, prepared.ids, pool) if todo else None
    return prepared


def _ahead(prepared: Iterator[_Prepared], pool: ThreadPoolExecutor, depth: int) -> Iterator[_Prepared]:
    """Batches decoded by a feeder thread while the caller runs the model on earlier ones; at most `depth` wait."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    finished = object()
    halt = threading.Event()

    def feed() -> None:
        try:
            for item in prepared:
                if halt.is_set():
                    return
                ready.put(_decoded(item, pool))
        except BaseException as error:  # handed to the caller, who raises it where it would have come from
            ready.put(error)
        ready.put(finished)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        while (item := ready.get()) is not finished:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        halt.set()
        while feeder.is_alive():  # let a feeder blocked on a full queue see `halt`
            with suppress(queue.Empty):
                ready.get_nowait()
            feeder.join(timeout=0.05)


def _settle(
    batches: Iterator[_Prepared],
    task: Task,
    on_batch: Callable[[int], None] | None,
    stop: Callable[[], bool],
    timing: RunTiming | None,
    writer: ThreadPoolExecutor | None,
) -> Iterator[Settled]:
    """Run the model on each batch, and report the previous one meanwhile written behind it (with a `writer`)."""
    started = time.perf_counter()
    pending: tuple[_Prepared, dict[Pair, Pending]] | None = None
    while True:
        asked = time.perf_counter()
        prepared = next(batches, None)
        if timing is not None:
            timing.waiting += time.perf_counter() - asked
        if prepared is None:
            break
        if prepared.batch is not None:
            prepared.batch.writer = writer
        outcomes = dict(task(prepared.batch)) if prepared.batch is not None else {}
        if pending is not None:
            yield from _reported(*pending, on_batch)
        pending = prepared, outcomes
        if timing is not None:
            timing.total = time.perf_counter() - started
        if stop():  # the batch in hand is finished and written, then the run ends
            break
    if pending is not None:
        yield from _reported(*pending, on_batch)


def _reported(
    prepared: _Prepared, outcomes: dict[Pair, Pending], on_batch: Callable[[int], None] | None
) -> Iterator[Settled]:
    """A batch's inputs with their outcomes in input order, once their files are written."""
    for item in prepared.chunk:
        if isinstance(item, Failure):
            yield Settled(item, item)
        elif item in prepared.done:
            yield Settled(item, prepared.done[item], resumed=True)
        else:
            outcome = outcomes[item]
            yield Settled(item, outcome.result() if isinstance(outcome, Future) else outcome)
    if on_batch is not None:
        on_batch(len(prepared.chunk))


def _done(task: Task, pair: Pair, ident: str) -> dict | None:
    """The record an earlier run wrote for this very pair (same id) with all its files, or None: redo it."""
    if task.command is None or task.out is None:
        return None
    path = record_path(task.out, pair, task.command)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if record.get("id") != ident or not all(Path(file).is_file() for file in record.get("outputs", {}).values()):
        return None
    return record


def as_failure(settled: Settled) -> Failure | None:
    """The failure an outcome stands for (None for a written record)."""
    item, outcome = settled.item, settled.outcome
    if isinstance(outcome, Failure):
        return outcome
    if isinstance(outcome, str):
        assert isinstance(item, Pair)
        return Failure(item.origin, outcome, image_label(item.image), item.text)
    return None


def _written(
    batch: Batch, pair: Pair, write: Callable[..., dict], *args: object, **kwargs: object
) -> tuple[Pair, Pending]:
    """Write a pair's outputs, behind the model when the batch has a writer (PNG encoding releases the GIL)."""
    if batch.writer is None:
        return pair, _write(write, args, kwargs)
    return pair, batch.writer.submit(_write, write, args, kwargs)


def _write(write: Callable[..., dict], args: tuple, kwargs: dict) -> Outcome:
    """A file-system error fails that pair only, except a full disk, which stops the run (every later pair would
    fail the same way)."""
    try:
        return write(*args, **kwargs)
    except DiskFullError:
        raise
    except OSError as error:
        return f"cannot write outputs: {error}"


def _text_check(pair: Pair) -> str | None:
    return None if clean_caption(pair.text) else EMPTY_TEXT


def _explained(
    batch: Batch, matcher: BlipMatcher, block: int, per_word: bool, refiner: SamRefiner | None
) -> tuple[list[tuple[Pair, Explained]], list[tuple[Pair, str]]]:
    runnable, failed = batch.split(_text_check)
    if not runnable:
        return [], failed
    explained = explain_pairs(
        matcher,
        [batch.images[pair.image] for pair in runnable],
        [pair.text for pair in runnable],
        keys=[pair.image for pair in runnable],
        block=block,
        per_word=per_word,
        refiner=refiner,
    )
    return list(zip(runnable, explained, strict=True)), failed


@dataclass
class HeatmapTask:
    """`heatmap`: Grad-CAM (refined by SAM with a refiner) → overlay, raw map, per-word sheet, JSON per pair."""

    matcher: BlipMatcher
    out: Path
    block: int = 6
    per_word: bool = False
    refiner: SamRefiner | None = None
    alpha: float = 0.5
    colormap: str = "jet"
    save_mask: bool = False
    run_info: dict | None = None
    on_truncated: Callable[[Pair], None] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    label: str = "heatmaps"
    command: ClassVar[str] = "heatmap"

    def __call__(self, batch: Batch) -> Iterator[tuple[Pair, Pending]]:
        explained, failed = _explained(batch, self.matcher, self.block, self.per_word, self.refiner)
        yield from failed
        for pair, item in explained:
            _tell_truncated(self.on_truncated, pair, item.heatmap.truncated)
            yield _written(
                batch, pair, write_heatmap, self.out, pair, batch.images[pair.image], item.heatmap, self.matcher.name,
                self.alpha, self.colormap, refined=item.refined, save_mask=self.save_mask, run=self.run_info,
                ident=batch.ids.get(pair),
            )  # fmt: skip


@dataclass
class SegmentTask:
    """`segment`: heatmap → SAM mask of the named object → mask, cut-out, overlay with prompts, JSON per pair."""

    matcher: BlipMatcher
    refiner: SamRefiner
    out: Path
    block: int = 6
    run_info: dict | None = None
    on_truncated: Callable[[Pair], None] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    label: str = "masks"
    command: ClassVar[str] = "segment"

    def __call__(self, batch: Batch) -> Iterator[tuple[Pair, Pending]]:
        explained, failed = _explained(batch, self.matcher, self.block, False, self.refiner)
        yield from failed
        for pair, item in explained:
            assert item.refined is not None
            _tell_truncated(self.on_truncated, pair, item.heatmap.truncated)
            picture = batch.images[pair.image]
            yield _written(
                batch, pair, write_segment, self.out, pair, picture, item.heatmap, item.refined, self.matcher.name,
                self.run_info, batch.ids.get(pair),
            )  # fmt: skip


@dataclass
class ScoreTask:
    """`score`: ITM match probability and ITC similarity per pair; records only, no files."""

    matcher: BlipMatcher
    run_info: dict | None = None
    on_truncated: Callable[[Pair], None] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    label: str = "pairs"
    command: ClassVar[None] = None  # writes no files: nothing to resume, and scoring again is cheap
    out: ClassVar[None] = None

    def __call__(self, batch: Batch) -> Iterator[tuple[Pair, Pending]]:
        runnable, failed = batch.split(_text_check)
        yield from failed
        if not runnable:
            return
        images = [batch.images[pair.image] for pair in runnable]
        distinct, rows = distinct_images(images, [pair.image for pair in runnable])
        tokens = self.matcher.embed_images(distinct)
        scores = self.matcher.scores(tokens[rows.to(tokens.device)], [pair.text for pair in runnable])
        for pair, result in zip(runnable, scores, strict=True):
            _tell_truncated(self.on_truncated, pair, result.truncated)
            record = score_record(pair, result, self.matcher.name) | {"id": batch.ids.get(pair)}
            yield pair, record | ({"run": self.run_info} if self.run_info else {})


@dataclass
class VQATask:
    """`vqa`: PNP-VQA answer per (image, question) → question map, answer map, captions' contributions, JSON."""

    pipeline: PNPVQA
    out: Path
    models: dict[str, str]
    generator: torch.Generator
    alpha: float = 0.5
    colormap: str = "jet"
    run_info: dict | None = None
    options: dict[str, Any] = field(default_factory=dict)
    label: str = "questions"
    command: ClassVar[str] = "vqa"

    def __call__(self, batch: Batch) -> Iterator[tuple[Pair, Pending]]:
        runnable, failed = batch.split()
        yield from failed
        if not runnable:
            return
        images = [batch.images[pair.image] for pair in runnable]
        results = self.pipeline.answer(
            images, [pair.text for pair in runnable], self.generator, keys=[pair.image for pair in runnable]
        )
        for pair, image, result in zip(runnable, images, results, strict=True):
            yield _written(
                batch, pair, write_vqa, self.out, pair, image, result, self.models, self.alpha, self.colormap,
                self.run_info, batch.ids.get(pair),
            )  # fmt: skip


def _tell_truncated(on_truncated: Callable[[Pair], None] | None, pair: Pair, truncated: bool) -> None:
    if truncated and on_truncated is not None:
        on_truncated(pair)
