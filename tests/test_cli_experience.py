"""What a user meets on the command line: names that never collide, early errors, plain output for logs and pipes,
records that can be joined, URL and stdin images, a fast start.

Every run goes through the real CLI on the tiny random-weight presets of `tests/tiny_presets.py`.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from tiny_presets import write_tiny_presets
from typer.testing import CliRunner

import fusioncam
from fusioncam.cli import app


@pytest.fixture(scope="module")
def presets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_tiny_presets(tmp_path_factory.mktemp("presets"))


@pytest.fixture(scope="module")
def itm(presets: dict[str, Path]) -> list[str]:
    return ["--model", str(presets["itm"]), "--block", "1", "--device", "cpu"]


def run(*args: object, stdin: str | bytes | None = None, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, [str(arg) for arg in args], input=stdin, env=env)


def jsonl(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_distinct_texts_and_images_never_share_an_output_file(itm: list[str], dogs_jpg: Path, tmp_path: Path) -> None:
    texts = ["A Dog!", "a dog", "a  dog?", "犬", "猫", "../../escape", "x" * 300]
    result = run("heatmap", dogs_jpg, *texts, "--out", tmp_path / "out", "--jsonl", *itm)
    assert result.exit_code == 0, result.stderr
    records = jsonl(result)
    assert [record["text"] for record in records] == texts
    files = [Path(path) for record in records for path in record["outputs"].values()]
    assert len(set(files)) == len(files) == 3 * len(texts)  # overlay, map, JSON each
    out = (tmp_path / "out").resolve()
    assert all(path.resolve().is_relative_to(out) and path.is_file() for path in files)
    assert all(len(path.name.encode()) <= 255 for path in files)
    names = {record["text"]: Path(record["outputs"]["json"]).name for record in records}
    assert "犬" in names["犬"] and "猫" in names["猫"]  # non-ASCII letters are kept in the name

    folder = tmp_path / "same-stem"
    folder.mkdir()
    shutil.copy(dogs_jpg, folder / "a.jpg")
    cv2.imwrite(str(folder / "a.png"), cv2.imread(str(dogs_jpg))[::4, ::4])
    both = run("heatmap", folder, "a dog", "--out", tmp_path / "folder", "--jsonl", *itm)
    assert both.exit_code == 0, both.stderr
    sizes = {Path(r["image"]).name: r["image_size"]["width"] for r in jsonl(both)}
    assert sizes["a.jpg"] != sizes["a.png"]
    written = [json.loads(p.read_text()) for p in (tmp_path / "folder").glob("*.json") if p.name != "summary.json"]
    assert sorted(Path(record["image"]).name for record in written) == ["a.jpg", "a.png"]


def test_a_text_longer_than_the_model_reads_is_flagged(itm: list[str], dogs_jpg: Path, tmp_path: Path) -> None:
    long_text = " ".join(["dog"] * 40)  # the tiny preset reads 10 tokens
    result = run("heatmap", dogs_jpg, long_text, "a dog", "--out", tmp_path, "--jsonl", "--per-word", *itm)
    assert result.exit_code == 0, result.stderr
    long_record, short_record = jsonl(result)
    assert long_record["truncated"] is True and short_record["truncated"] is False
    assert "truncated" in result.stderr and long_text in result.stderr
    assert len(long_record["words"]) < 40  # the per-word list stops where the model stopped reading


@pytest.mark.parametrize("case", ["file", "missing-parent", "not-writable"])
def test_a_bad_out_folder_fails_before_any_model_loads(case: str, dogs_jpg: Path, tmp_path: Path) -> None:
    out = {
        "file": dogs_jpg,
        "missing-parent": tmp_path / "no" / "such" / "folder",
        "not-writable": Path("/proc/self"),  # refuses new files even to root, as a read-only mount does
    }[case]
    # The model does not exist: had it been loaded first, the error would be about the preset.
    result = run("heatmap", dogs_jpg, "a dog", "--out", out, "--model", "no-such-preset")
    assert result.exit_code == 2
    assert "--out" in result.stderr and "no-such-preset" not in result.stderr


def test_help_and_weights_list_import_neither_torch_nor_transformers() -> None:
    probe = (
        "import sys\n"
        "from fusioncam.cli import app\n"
        "for args in (['--help'], ['heatmap', '--help'], ['weights', 'list']):\n"
        "    try:\n"
        "        app(args)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'cv2', 'numpy'})\n"
        "print('HEAVY', heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert "HEAVY []" in result.stdout


def test_version() -> None:
    result = run("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"fusioncam {fusioncam.__version__}"


@pytest.mark.parametrize("device", ["bogus", "cuda:99"])
def test_an_unavailable_device_is_a_usage_error_listing_the_devices(
    device: str, presets: dict[str, Path], dogs_jpg: Path, tmp_path: Path
) -> None:
    result = run("heatmap", dogs_jpg, "a dog", "--model", presets["itm"], "--out", tmp_path, "--device", device)
    assert result.exit_code == 2
    assert device in result.stderr and "cpu" in result.stderr.split("has:")[1]


def test_messages_are_one_line_each_and_progress_is_plain_lines_without_a_terminal(
    itm: list[str], dogs_jpg: Path, tmp_path: Path
) -> None:
    folder = tmp_path / ("a-folder-with-a-rather-long-name-" * 4)
    folder.mkdir()
    shutil.copy(dogs_jpg, folder / "dogs.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a whole jpeg")
    result = run("heatmap", folder, "a dog", "--out", tmp_path / "out", *itm, env={"FUSIONCAM_PROGRESS_INTERVAL": "0"})
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    failed = [line for line in lines if line.startswith("failed")]
    assert len(failed) == 1
    assert str(folder / "broken.jpg") in failed[0] and "'a dog'" in failed[0] and "truncated JPEG" in failed[0]
    assert any(line.startswith("heatmaps: 2/2") for line in lines)

    header, *rows = result.stdout.splitlines()  # not a terminal: tab-separated, nothing cut
    assert header.split("\t") == ["image", "text", "ITM", "ITC", "peak (x, y)", "overlay"]
    (row,) = rows
    image, _, _, _, _, overlay = row.split("\t")
    assert image == str((folder / "dogs.jpg").resolve()) and Path(overlay).is_file()


def test_records_carry_their_origin_and_the_input_fields(itm: list[str], dogs_jpg: Path, tmp_path: Path) -> None:
    lines = [
        {"image": str(dogs_jpg), "text": "a dog", "scene": 7, "answer": "two"},
        {"image": os.path.relpath(dogs_jpg), "text": "a cat"},
    ]
    stdin = "\n".join(json.dumps(line) for line in lines) + "\n"
    first, second = jsonl(run("heatmap", "-", "--out", tmp_path, "--jsonl", *itm, stdin=stdin))
    assert first["origin"] == "stdin:1" and first["input"] == {"scene": 7, "answer": "two"}
    assert second["origin"] == "stdin:2" and "input" not in second
    assert first["image"] == second["image"] == str(dogs_jpg.resolve())  # one way to name an image
    on_disk = json.loads(Path(first["outputs"]["json"]).read_text())
    assert on_disk["input"] == {"scene": 7, "answer": "two"}


def test_empty_inputs_and_ambiguous_arguments(itm: list[str], dogs_jpg: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    from_folder = run("heatmap", empty, "a dog", "--out", tmp_path / "out", *itm)
    from_stdin = run("heatmap", "-", "--out", tmp_path / "out", *itm, stdin="")
    assert from_folder.exit_code == from_stdin.exit_code == 0
    assert "nothing to do" in from_folder.stderr

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"image": str(dogs_jpg), "text": "a dog"}) + "\n")
    for args in (["", "a dog"], [dogs_jpg, "a dog", "--pairs", pairs], [dogs_jpg, "true"]):
        result = run("heatmap", *args, "--out", tmp_path / "out", *itm)
        assert result.exit_code == 2, args
        assert "error" in result.stderr


@pytest.fixture
def image_server(dogs_jpg: Path, tmp_path: Path) -> Iterator[str]:
    """A local HTTP server (127.0.0.1) serving the test photo as /dogs.jpg; anything else is a 404."""
    root = tmp_path / "served"
    root.mkdir()
    shutil.copy(dogs_jpg, root / "dogs.jpg")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


def test_images_from_urls_and_from_stdin_bytes(itm: list[str], dogs_jpg: Path, image_server: str) -> None:
    from_file = jsonl(run("score", dogs_jpg, "a dog", "--jsonl", *itm[:2]))
    from_url = jsonl(run("score", f"{image_server}/dogs.jpg", "a dog", "--jsonl", *itm[:2]))
    from_stdin = jsonl(run("score", "-", "a dog", "a cat", "--jsonl", *itm[:2], stdin=dogs_jpg.read_bytes()))
    assert from_url[0]["itm_score"] == pytest.approx(from_file[0]["itm_score"], rel=1e-6)
    assert from_stdin[0]["itm_score"] == pytest.approx(from_file[0]["itm_score"], rel=1e-6)
    assert from_url[0]["image"] == f"{image_server}/dogs.jpg" and from_stdin[1]["image"] == "stdin"

    missing = run("score", f"{image_server}/nothing.jpg", "a dog", *itm[:2])
    assert missing.exit_code == 1 and "nothing.jpg" in missing.stderr and "404" in missing.stderr


def test_score_takes_a_folder(itm: list[str], dogs_jpg: Path, tmp_path: Path) -> None:
    shutil.copy(dogs_jpg, tmp_path / "one.jpg")
    shutil.copy(dogs_jpg, tmp_path / "two.jpg")
    records = jsonl(run("score", tmp_path, "a dog", "a cat", "--jsonl", *itm[:2]))
    assert [(Path(r["image"]).name, r["text"]) for r in records] == [
        ("one.jpg", "a dog"), ("one.jpg", "a cat"), ("two.jpg", "a dog"), ("two.jpg", "a cat"),
    ]  # fmt: skip
    assert records[0]["itm_score"] == pytest.approx(records[2]["itm_score"], rel=1e-6)


def test_vqa_asks_several_questions_and_labels_the_answer_map(
    presets: dict[str, Path], dogs_jpg: Path, tmp_path: Path
) -> None:
    args = ["--model", presets["itm"], "--caption-model", presets["caption"], "--qa-model", presets["qa"]]
    args += ["--block", "1", "--num-captions", "2", "--caption-min-length", "6", "--caption-max-length", "8"]
    result = run("vqa", dogs_jpg, "what is it?", "where is it?", "--jsonl", "--out", tmp_path, *args)
    assert result.exit_code == 0, result.stderr
    records = jsonl(result)
    assert [record["question"] for record in records] == ["what is it?", "where is it?"]
    image = cv2.imread(str(dogs_jpg))
    answer = cv2.imread(records[0]["outputs"]["answer_overlay"])
    assert answer.shape[1] == image.shape[1] and answer.shape[0] > image.shape[0]  # a band with Q and A


def test_per_word_maps_are_saved_as_arrays(itm: list[str], dogs_jpg: Path, tmp_path: Path) -> None:
    (record,) = jsonl(run("heatmap", dogs_jpg, "two black dogs", "--per-word", "--jsonl", "--out", tmp_path, *itm))
    maps = np.load(record["outputs"]["word_maps"])
    assert maps.shape == (3, 24, 24)
    assert [float(m.max()) for m in maps] == pytest.approx([word["max"] for word in record["words"]])


def test_records_name_the_version_device_precision_and_weights(
    presets: dict[str, Path], itm: list[str], dogs_jpg: Path, tmp_path: Path
) -> None:
    import hashlib

    from fusioncam.weights import get_preset, preset_paths

    (record,) = jsonl(run("heatmap", dogs_jpg, "a dog", "--jsonl", "--out", tmp_path, *itm))
    checkpoint = preset_paths(get_preset(presets["itm"]))["checkpoint"]
    assert checkpoint is not None
    assert record["run"] == {
        "fusioncam": fusioncam.__version__,
        "device": "cpu",
        "precision": "fp32",
        "weights": {
            "itm": {"preset": str(presets["itm"]), "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest()}
        },
    }
    assert json.loads(Path(record["outputs"]["json"]).read_text())["run"] == record["run"]


def test_help_texts_keep_brackets_and_name_the_options() -> None:
    pointing = run("eval", "pointing", "--help")
    assert "[x0, y0, x1, y1]" in " ".join(pointing.stdout.split())  # not eaten as markup
    vqa = run("vqa", "--help")
    assert '{"image", "question"}' in " ".join(vqa.stdout.split())
    train = run("train", "--what", "fusion", "--sam-model", "vitt", "--data", "x", "--out", "o", "--from-scratch")
    assert train.exit_code == 2 and "--from-scratch" in train.stderr and "from_scratch" not in train.stderr


def test_max_image_pixels_refuses_larger_images_by_their_header(
    itm: list[str], dogs_jpg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FUSIONCAM_MAX_IMAGE_PIXELS", raising=False)  # the option sets it: undone after the test
    result = run("score", dogs_jpg, "a dog", "--max-image-pixels", "1000", *itm[:2])
    assert result.exit_code == 1 and "more than the limit of 1,000" in result.stderr
    assert run("score", dogs_jpg, "a dog", "--max-image-pixels", "100000000", *itm[:2]).exit_code == 0
