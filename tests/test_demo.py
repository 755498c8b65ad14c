"""`fusioncam demo` on a machine without network: the built-in toy models on a generated scene, every output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2

from fusioncam.synth_models import demo_scene


def test_the_offline_demo_writes_every_kind_of_output(tmp_path: Path) -> None:
    env = os.environ | {"FUSIONCAM_OFFLINE": "1", "FUSIONCAM_HOME": str(tmp_path / "cache")}
    out = tmp_path / "demo-out"
    command = [sys.executable, "-m", "fusioncam.cli", "demo", "--out", str(out), "--device", "cpu"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr

    offline = [line for line in result.stderr.splitlines() if line.startswith("offline")]
    assert len(offline) == 1 and "built-in" in offline[0]
    listed = [line.split("\t") for line in result.stdout.splitlines()[1:-1]]  # between the title and the answer
    files = {(step, kind): Path(path) for step, kind, path in (row for row in listed if len(row) == 3)}
    assert all(path.is_file() and path.resolve().is_relative_to(out.resolve()) for path in files.values())
    assert {("heatmap", "overlay"), ("heatmap", "words"), ("sam", "overlay"), ("sam", "mask")} <= set(files)
    assert {("vqa", "answer_overlay"), ("vqa", "json")} <= set(files)

    scene = demo_scene(0)
    mask = cv2.imread(str(files["sam", "mask"]), cv2.IMREAD_GRAYSCALE) > 0
    assert mask.shape == scene.mask.shape
    overlap = (mask & scene.mask).sum() / (mask | scene.mask).sum()
    assert overlap > 0.5  # SAM cut out the object the text names
    record = json.loads(files["vqa", "json"].read_text())
    assert record["answer"] == scene.answer == record["input"]["expected_answer"]
    assert result.stdout.splitlines()[-1] == f"vqa\t{scene.question}\t{scene.answer} (truth: {scene.answer})"
