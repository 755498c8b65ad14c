"""Runs that survive: a killed `fusioncam heatmap` resumed with `--resume` ends with exactly the outputs of an
uninterrupted run; Ctrl-C finishes the batch and says how to resume; shards split a run and add up to it.

Real processes (`python -m fusioncam.cli`) on the tiny random-weight preset of `tests/tiny_presets.py`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from tiny_presets import write_tiny_presets

from fusioncam.files import TEMPORARY_PREFIX

TEXTS = ["a dog", "two dogs", "a red ball", "the beach"]
IMAGES = 10  # 40 pairs
# Measured (these 40 pairs, batch sizes 2, 3 and 8 against 1): the same pair in batches of another composition
# differs by float32 rounding only, at most 8e-11 absolute = 1.2e-6 of the map's maximum; 3-4 of 245 760 overlay
# pixels then land in the next colour-map bin, 2 levels off.
MAP_RTOL, MAP_ATOL = 1e-5, 1e-9
MAX_PIXELS_OFF = 1e-3  # share of an overlay's pixels allowed to differ, by at most 2 levels


@pytest.fixture(scope="module")
def preset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_presets(tmp_path_factory.mktemp("presets"))["itm"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for index in range(IMAGES):
        pixels = cv2.resize(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), (96, 64), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(folder / f"photo-{index:02d}.png"), pixels)
    return folder


def command(preset: Path, photos: Path, out: Path, *extra: str) -> list[str]:
    args = ["heatmap", str(photos), *TEXTS, "--model", str(preset), "--block", "1", "--device", "cpu"]
    return [sys.executable, "-m", "fusioncam.cli", *args, "--out", str(out), "--batch-size", "2", *extra]


def records(out: Path) -> dict[str, dict]:
    found = {}
    for path in out.rglob("*.json"):
        if path.name.startswith(("summary", TEMPORARY_PREFIX)):
            continue  # a file still being written when the run was killed is not a record: the resumed run removes it
        record = json.loads(path.read_text())
        found[path.name] = record
    return found


def visible_files(out: Path) -> set[str]:
    return {path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file()} - {"summary.json"}


def assert_same_outputs(resumed: Path, reference: Path) -> None:
    assert visible_files(resumed) == visible_files(reference)  # none missing, none extra, no partial files
    ours, theirs = records(resumed), records(reference)
    for name, record in theirs.items():
        other = ours[name]
        for key in ("image", "text", "id", "block", "peak", "run"):
            assert other[key] == record[key], (name, key)
        assert other["itm_score"] == pytest.approx(record["itm_score"], rel=MAP_RTOL)
        for kind, path in record["outputs"].items():
            mine = Path(other["outputs"][kind])
            assert mine.name == Path(path).name and mine.is_file()
            if mine.suffix == ".npy":
                np.testing.assert_allclose(np.load(mine), np.load(path), rtol=MAP_RTOL, atol=MAP_ATOL)
            elif mine.suffix == ".png":
                a, b = cv2.imread(str(mine)).astype(int), cv2.imread(str(path)).astype(int)
                off = np.abs(a - b)
                assert off.max() <= 2 and (off > 0).mean() <= MAX_PIXELS_OFF, (mine, off.max(), (off > 0).mean())


def wait_for_records(out: Path, count: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(records(out)) < count:
        assert process.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < deadline, "no outputs appeared"
        time.sleep(0.05)


def test_a_killed_run_resumes_to_exactly_the_uninterrupted_outputs(preset: Path, photos: Path, tmp_path: Path) -> None:
    reference = tmp_path / "whole"
    subprocess.run(command(preset, photos, reference), check=True, capture_output=True)
    assert len(records(reference)) == IMAGES * len(TEXTS)

    out = tmp_path / "killed"
    process = subprocess.Popen(command(preset, photos, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_records(out, 6, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = len(records(out))
    assert 6 <= done_before < IMAGES * len(TEXTS)

    resumed = subprocess.run(command(preset, photos, out, "--resume"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"] == done_before and summary["done"] == IMAGES * len(TEXTS) - done_before
    assert summary["failed"] == 0 and not summary["interrupted"]
    assert_same_outputs(out, reference)


def test_options_that_change_results_are_not_taken_as_done(preset: Path, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    subprocess.run(command(preset, photos, out), check=True, capture_output=True)
    again = subprocess.run(command(preset, photos, out, "--resume", "--colormap", "viridis"), capture_output=True)
    assert again.returncode == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"] == 0 and summary["done"] == IMAGES * len(TEXTS)


def test_ctrl_c_finishes_the_batch_and_says_how_to_resume(preset: Path, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    process = subprocess.Popen(
        command(preset, photos, out, "--jsonl"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_for_records(out, 4, process)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    assert "resume with: fusioncam heatmap" in stderr and stderr.rstrip().endswith("--resume")
    summary = json.loads((out / "summary.json").read_text())
    printed = [json.loads(line) for line in stdout.splitlines()]
    assert summary["interrupted"] and summary["done"] == len(printed) == len(records(out))
    assert len(printed) % 2 == 0  # whole batches of two: the batch in hand was finished


def test_shards_add_up_to_the_whole_run(preset: Path, photos: Path, tmp_path: Path) -> None:
    reference = tmp_path / "whole"
    subprocess.run(command(preset, photos, reference), check=True, capture_output=True)
    out = tmp_path / "sharded"
    subprocess.run(command(preset, photos, out, "--shard", "0/2"), check=True, capture_output=True)
    texts_of: dict[str, set[str]] = {}
    for record in records(out).values():
        texts_of.setdefault(record["image"], set()).add(record["text"])
    assert 0 < len(texts_of) < IMAGES and all(texts == set(TEXTS) for texts in texts_of.values())  # whole images
    subprocess.run(command(preset, photos, out, "--shard", "1/2"), check=True, capture_output=True)
    parts = [json.loads((out / f"summary.shard-{k}-of-2.json").read_text()) for k in (0, 1)]
    assert [part["shard"] for part in parts] == [[0, 2], [1, 2]]
    assert sum(part["done"] for part in parts) == IMAGES * len(TEXTS)
    for part in out.glob("summary.shard-*.json"):
        part.unlink()
    assert_same_outputs(out, reference)


def test_shard_arguments_are_checked(preset: Path, photos: Path, tmp_path: Path) -> None:
    bad = subprocess.run(command(preset, photos, tmp_path / "o", "--shard", "2/2"), capture_output=True, text=True)
    assert bad.returncode == 2 and "0 <= K < N" in bad.stderr


def test_torchrun_ranks_share_the_run_and_rank_0_merges_it(preset: Path, photos: Path, tmp_path: Path) -> None:
    reference = tmp_path / "whole"
    single = subprocess.run(command(preset, photos, reference, "--jsonl"), check=True, capture_output=True, text=True)
    out = tmp_path / "ranks"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "0"]
    args = command(preset, photos, out, "--jsonl")[1:]  # after the interpreter: -m fusioncam.cli …
    ranks = subprocess.run([*launcher, *args], capture_output=True, text=True, timeout=600)
    assert ranks.returncode == 0, ranks.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ranks"] == 2 and summary["done"] == IMAGES * len(TEXTS) and summary["failed"] == 0
    parts = [json.loads((out / f"summary.shard-{k}-of-2.json").read_text()) for k in (0, 1)]
    assert all(part["done"] > 0 for part in parts)  # both ranks worked
    merged = [json.loads(line) for line in ranks.stdout.splitlines() if line.startswith("{")]
    alone = [json.loads(line) for line in single.stdout.splitlines()]
    assert [(r["image"], r["text"], r["id"]) for r in merged] == [(r["image"], r["text"], r["id"]) for r in alone]
    for part in out.glob("summary.shard-*.json"):
        part.unlink()
    assert_same_outputs(out, reference)


def _children(pid: int) -> list[int]:
    """Every process below `pid` (from /proc: Linux only, as torchrun's elastic agent is here)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [child for child, of in parents.items() if of == parent]
        found += kids
        frontier += kids
    return found


def _rank_of(pid: int) -> str | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    ranks = [entry[5:].decode() for entry in environ if entry.startswith(b"RANK=")]
    return ranks[0] if ranks and b"fusioncam.cli" in cmdline else None


def test_a_rank_killed_under_torchrun_is_restarted_and_resumes(preset: Path, photos: Path, tmp_path: Path) -> None:
    reference = tmp_path / "whole"
    subprocess.run(command(preset, photos, reference), check=True, capture_output=True)
    out = tmp_path / "restarted"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "0"]
    launcher += ["--max-restarts", "1", "--monitor-interval", "0.2"]
    process = subprocess.Popen(
        [*launcher, *command(preset, photos, out)[1:]], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_for_records(out, 6, process)
    victim = next(pid for pid in _children(process.pid) if _rank_of(pid) == "1")
    os.kill(victim, signal.SIGKILL)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"] >= 6  # the restarted ranks did not redo what was done before the kill
    assert summary["done"] + summary["skipped"] == IMAGES * len(TEXTS) and summary["failed"] == 0
    for part in out.glob("summary.shard-*.json"):
        part.unlink()
    assert_same_outputs(out, reference)
