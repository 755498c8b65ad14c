"""Per-record scores of a long evaluation, kept on disk as they are computed, so that a killed run resumes.

An evaluation over a real split (RefCOCO+ testA: 1,975 expressions; faithfulness: 102 model calls per pair) runs
for hours on a CPU. Each scored record is appended to a JSONL journal with an id made of the record and every
option that changes its score; `--resume` reads the journal back and scores only what is missing, and the figures
are then computed over journal and new scores alike, exactly as an uninterrupted run would have.

A run killed while writing leaves at most one partial last line: it is dropped when the journal is read back (the
record is scored again). Lines of other options (another encoder, another tolerance) are kept and ignored, so one
`--out` folder serves several runs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fusioncam.files import atomically, stop_when_full


def score_id(record: Mapping[str, Any], options: Mapping[str, Any]) -> str:
    """A stable id of one scored unit: what identifies the record and every option that changes its score."""
    key = {"record": record, "options": options}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]


class ScoreJournal:
    """An append-only JSONL file of `{"id": …, "score": {…}}` lines.

    `resume=False` starts it afresh; `resume=True` keeps what an earlier run wrote (`done`: id → score) and
    appends after it. Every line is flushed to the operating system as it is written, so a killed process loses
    at most the line it was writing.
    """

    def __init__(self, path: Path, resume: bool) -> None:
        self.path = path
        self.done: dict[str, dict[str, Any]] = _read(path) if resume else {}
        path.parent.mkdir(parents=True, exist_ok=True)
        # Rewritten whole: a partial last line of a killed run must not run into the next line appended.
        with atomically(path) as temporary:
            temporary.write_text("".join(_line(ident, score) for ident, score in self.done.items()), encoding="utf-8")
        self._file = path.open("a", encoding="utf-8")

    def add(self, ident: str, score: Mapping[str, Any]) -> None:
        with stop_when_full(self.path):
            self._file.write(_line(ident, score))
            self._file.flush()
        self.done[ident] = dict(score)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ScoreJournal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _line(ident: str, score: Mapping[str, Any]) -> str:
    return json.dumps({"id": ident, "score": score}, ensure_ascii=False) + "\n"


def _read(path: Path) -> dict[str, dict[str, Any]]:
    """The complete lines of a journal (an unreadable line, such as the partial last one of a killed run, is
    skipped: its record is scored again)."""
    done: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return done
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
            done[str(entry["id"])] = dict(entry["score"])
        except (ValueError, KeyError, TypeError):
            continue
    return done
