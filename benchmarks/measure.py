"""Measuring and reporting for `benchmarks/suite.py`: timed runs, peak memory, fidelity, the table and the JSONL.

Kept apart from the suite's sections so that what a number means is written once: how a run is timed (warm-up,
median of repeats, synchronised on CUDA), how memory is measured on each device, and how rows of one group are
compared (speed ratios against the baseline and against fp32, fidelity against fusioncam's fp32 output).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO, TypeVar

import torch
import torch.nn.functional as F
import transformers

REPO = Path(__file__).resolve().parents[1]
BASELINES = ("lavis", "explicit")  # implementations the others are compared with (×base)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory a piece of work adds to what is resident when it starts, in MiB.

    CUDA: `torch.cuda.max_memory_allocated` over the allocation before. CPU (Linux): the process's peak resident
    set (VmHWM) over its resident set before, the peak being reset first (`/proc/self/clear_refs`) and freed heap
    returned to the system (`malloc_trim`) so that neither earlier work nor glibc's caching counts. Elsewhere the
    growth of `ru_maxrss`, which only sees new highs.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start_bytes = 0
        if device.type == "cuda":
            self.method = "cuda-max-allocated"
        elif Path("/proc/self/clear_refs").exists():
            self.method = "rss-peak"
        else:
            self.method = "maxrss-growth"

    def start(self) -> None:
        gc.collect()
        if self.method == "cuda-max-allocated":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = torch.cuda.memory_allocated(self.device)
        elif self.method == "rss-peak":
            if libc := ctypes.util.find_library("c"):
                ctypes.CDLL(libc).malloc_trim(0)
            Path("/proc/self/clear_refs").write_text("5")
            self.start_bytes = _proc_status("VmRSS") or 0
        else:
            self.start_bytes = _maxrss_bytes(resource.getrusage(resource.RUSAGE_SELF))

    def peak_mib(self) -> float:
        if self.method == "cuda-max-allocated":
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method == "rss-peak":
            peak = _proc_status("VmHWM") or 0
        else:
            peak = _maxrss_bytes(resource.getrusage(resource.RUSAGE_SELF))
        return max(0, peak - self.start_bytes) / 2**20


def available_mib(device: torch.device) -> float | None:
    """Memory free for new work on `device` (CUDA: free device memory; Linux: MemAvailable), None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] / 2**20
    meminfo = Path("/proc/meminfo")
    if not meminfo.exists():
        return None
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return None


def _proc_status(key: str, pid: int | str = "self") -> int | None:
    """A `kB` line of /proc/PID/status in bytes; None where there is no such line (a process that has exited)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) * 1024
    return None


def _maxrss_bytes(usage: resource.struct_rusage) -> int:
    """`ru_maxrss` in bytes (Linux counts kilobytes, macOS bytes)."""
    return usage.ru_maxrss if sys.platform == "darwin" else usage.ru_maxrss * 1024


@dataclass
class Outputs:
    """What one run produced, for the fidelity columns: maps [B, h, w], match probabilities [B], embeddings
    [B, ...]; PNP-VQA's seconds per stage; anything else worth a field of the JSONL record (`extra`)."""

    maps: torch.Tensor | None = None
    itm: torch.Tensor | None = None
    embeddings: torch.Tensor | None = None
    stages: dict[str, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Row:
    """One measurement: `items` pairs (images, questions) per run of `impl` at `precision`; filled in by `compare`
    with the speed ratios and fidelity of its group."""

    section: str
    name: str
    impl: str
    precision: str
    batch: int
    items: int
    seconds: list[float] = field(default_factory=list)
    peak_mib: float | None = None
    memory: str = ""
    outputs: list[Outputs] = field(default_factory=list, repr=False)
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None
    vs_baseline: float | None = None
    vs_fp32: float | None = None
    fidelity: dict[str, float] = field(default_factory=dict)

    @property
    def s_per_item(self) -> float | None:
        return statistics.median(self.seconds) / self.items if self.seconds else None


T = TypeVar("T")


def measure(
    run: Callable[[], T], device: torch.device, repeats: int, budget: float, warmup: Callable[[], object] | None = None
) -> tuple[list[float], float, str, list[T]]:
    """One warm-up run (`warmup`, or `run` itself), then up to `repeats` timed runs, stopping once they have taken
    `budget` seconds; returns their seconds, the peak memory they added (MiB), how it was measured, their outputs."""
    (warmup or run)()
    memory = PeakMemory(device)
    memory.start()
    seconds, outputs = [], []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        outputs.append(run())
        synchronize(device)
        seconds.append(time.perf_counter() - start)
        if sum(seconds) >= budget:
            break
    return seconds, memory.peak_mib(), memory.method, outputs


def fidelity(outputs: Outputs, reference: Outputs) -> dict[str, float]:
    """How far a run's outputs are from the reference's: the lowest and mean Pearson correlation of a map with its
    reference map, the largest |Δ match probability|, the lowest cosine of an embedding with its reference."""
    found: dict[str, float] = {}
    if outputs.maps is not None and reference.maps is not None:
        a, b = outputs.maps.flatten(1).double(), reference.maps.flatten(1).double()
        correlation = F.cosine_similarity(a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True), dim=1)
        found |= {"pearson_min": float(correlation.min()), "pearson_mean": float(correlation.mean())}
    if outputs.itm is not None and reference.itm is not None:
        found["itm_max_abs_diff"] = float((outputs.itm.double() - reference.itm.double()).abs().max())
    if outputs.embeddings is not None and reference.embeddings is not None:
        cosine = F.cosine_similarity(outputs.embeddings.flatten(1).double(), reference.embeddings.flatten(1).double())
        found["cosine_min"] = float(cosine.min())
    return found


def compare(rows: Sequence[Row]) -> None:
    """Fill in the ratios and fidelity of a group of rows measured on the same inputs.

    ×base: the baseline's s/item (LAVIS way or explicit attention; at the same precision when measured, else
    fp32) over the row's. ×fp32: the same implementation's fp32 s/item over the row's. Fidelity: against the fp32
    output of the group's own implementation (fusioncam, or the CLI), which is the reference the port is tested
    to reproduce.
    """
    measured = [row for row in rows if row.skipped is None]

    def find(impls: Sequence[str], precision: str) -> Row | None:
        return next((row for row in measured if row.impl in impls and row.precision == precision), None)

    ours = [row.impl for row in measured if row.impl not in BASELINES]
    reference = find(ours[:1], "fp32")
    for row in measured:
        base = find(BASELINES, row.precision) or find(BASELINES, "fp32")
        own = find([row.impl], "fp32")
        if base is not None:
            row.vs_baseline = _ratio(base, row)
        if own is not None:
            row.vs_fp32 = _ratio(own, row)
        if reference is not None and row is not reference and row.outputs and reference.outputs:
            row.fidelity = fidelity(row.outputs[0], reference.outputs[0])


def _ratio(slow: Row, fast: Row) -> float | None:
    return slow.s_per_item / fast.s_per_item if slow.s_per_item and fast.s_per_item else None


# --- reporting ----------------------------------------------------------------------------------------------------

COLUMNS = (
    ("section", 11),
    ("name", 34),
    ("impl", 9),
    ("prec", 4),
    ("batch", 5),
    ("items/s", 8),
    ("s/item", 8),
    ("peak MiB", 8),
    ("×base", 6),
    ("×fp32", 6),
    ("pearson", 8),
    ("Δitm", 7),
    ("cos", 8),
    ("n", 2),
)
LEGEND = """\
items/s, s/item: median of n timed runs (after one warm-up) over the items of a run. peak MiB: memory the timed
runs added to what was resident (cli: the subprocess's own peak; JSONL `memory` says how). ×base: the baseline's
s/item over this row's (LAVIS way for BLIP; explicit attention at the same precision for the SAM encoder).
×fp32: the same implementation's fp32 over this row's. pearson (lowest over the batch), Δitm (largest |Δ ITM
match probability|), cos (lowest embedding cosine): against fusioncam's fp32 output of the same group."""


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table_line(row: Row) -> str:
    per_item = row.s_per_item
    cells = [
        row.section,
        row.name,
        row.impl,
        row.precision,
        str(row.batch),
        _cell(1 / per_item if per_item else None, ".3f"),
        _cell(per_item, ".3f"),
        _cell(row.peak_mib, ".0f"),
        _cell(row.vs_baseline, ".2f"),
        _cell(row.vs_fp32, ".2f"),
        _cell(row.fidelity.get("pearson_min"), ".5f"),
        _cell(row.fidelity.get("itm_max_abs_diff"), ".1e"),
        _cell(row.fidelity.get("cosine_min"), ".6f"),
        str(len(row.seconds)),
    ]
    note = f"skipped: {row.skipped}" if row.skipped else row.note
    return f"{_join(cells)}  {note}".rstrip()


def table_header() -> str:
    return _join([name for name, _ in COLUMNS]) + "  note"


def _join(cells: Sequence[str]) -> str:
    """The cells in their columns: text left-aligned, numbers right-aligned."""
    return "  ".join(
        cell.ljust(width) if index < 3 else cell.rjust(width)
        for index, (cell, (_, width)) in enumerate(zip(cells, COLUMNS, strict=True))
    )


def json_record(row: Row, environment: dict[str, Any]) -> dict[str, Any]:
    per_item = row.s_per_item
    return environment | {
        "section": row.section,
        "name": row.name,
        "impl": row.impl,
        "precision": row.precision,
        "batch": row.batch,
        "items": row.items,
        "repeats": len(row.seconds),
        "seconds": row.seconds,
        "s_per_item": per_item,
        "items_per_s": 1 / per_item if per_item else None,
        "peak_mib": row.peak_mib,
        "memory": row.memory,
        "vs_baseline": row.vs_baseline,
        "vs_fp32": row.vs_fp32,
        **row.fidelity,
        "note": row.note,
        "skipped": row.skipped,
        **row.extra,
    }


class Report:
    """Rows as table lines on `stream` and JSON records in `path`, written group by group as they finish."""

    def __init__(self, path: Path, environment: dict[str, Any], stream: TextIO = sys.stdout) -> None:
        self.path, self.environment, self.stream = path, environment, stream
        path.parent.mkdir(parents=True, exist_ok=True)
        print(table_header(), file=stream, flush=True)

    def add(self, rows: Sequence[Row]) -> None:
        compare(rows)
        with self.path.open("a", encoding="utf-8") as file:
            for row in rows:
                print(table_line(row), file=self.stream, flush=True)
                file.write(json.dumps(json_record(row, self.environment)) + "\n")


def environment(device: torch.device, mode: str) -> dict[str, Any]:
    """What a result depends on besides the code: machine, library versions, threads, commit."""
    return {
        "run": datetime.now().isoformat(timespec="seconds"),
        "mode": mode,
        "device": str(device),
        "device_name": device_name(device),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    return platform.processor() or device.type


def _git(*arguments: str) -> str | None:
    try:
        done = subprocess.run(["git", *arguments], cwd=REPO, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip()


def run_command(command: Sequence[str], log_file: Path) -> tuple[float, float | None]:
    """Run `command` with its stderr in `log_file`: its wall time, and its peak resident set in MiB where /proc has it.

    The peak is the child's VmHWM, sampled every 50 ms until it exits. `ru_maxrss` from `wait4` would be simpler,
    but Linux counts in it the parent's resident set at fork time, which here is the benchmark's own gigabytes.
    """
    with log_file.open("wb") as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        peak = None
        while True:
            if (sample := _proc_status("VmHWM", process.pid)) is not None:
                peak = max(peak or 0, sample)
            try:
                process.wait(timeout=0.05)
                break
            except subprocess.TimeoutExpired:
                continue
        seconds = time.perf_counter() - start
    if process.returncode:
        tail = log_file.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{' '.join(command)} exited with {process.returncode}:\n{tail}")
    return seconds, None if peak is None else peak / 2**20


def log(message: str) -> None:
    """Progress, on stderr: stdout is the table."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
