"""How long the model waits for its input: the batch runner with images decoded in turn vs. ahead in threads.

A folder of photo-sized JPEGs, the built-in `synth-itm` model (tiny, so that the run is input-bound if anything
is), `HeatmapTask` writing every output as `fusioncam heatmap` does. Prints, per `--workers` setting, the wall
time and the share of it the model spent waiting for decoded images.

    .venv/bin/python benchmarks/bench_pipeline.py --images 500 --workers 0 2 4
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

import fusioncam
from fusioncam.inputs import pairs_from_path
from fusioncam.runner import HeatmapTask, RunTiming, run


def make_folder(folder: Path, count: int, size: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    for index in range(count):
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        picture = cv2.resize(small, size, interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(folder / f"{index:05d}.jpg"), picture, [cv2.IMWRITE_JPEG_QUALITY, 90])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--size", type=int, nargs=2, default=(640, 480), metavar=("W", "H"))
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4])
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    matcher = fusioncam.load("synth-itm", device="cpu")
    with tempfile.TemporaryDirectory() as scratch:
        photos = Path(scratch) / "photos"
        photos.mkdir()
        make_folder(photos, args.images, tuple(args.size))
        print("workers\twall s\twaiting s\twaiting share")
        for workers in args.workers:
            out = Path(scratch) / f"out-{workers}"
            task = HeatmapTask(matcher, out, block=0)
            timing = RunTiming()
            started = time.perf_counter()
            for _ in run(
                pairs_from_path(photos, ["the red circle"]), task, args.batch_size, workers=workers, timing=timing
            ):
                pass
            wall = time.perf_counter() - started
            print(f"{workers}\t{wall:.2f}\t{timing.waiting:.2f}\t{timing.waiting / timing.total:.1%}")


if __name__ == "__main__":
    main()
