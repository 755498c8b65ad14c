"""Bad inputs through the real command line: each one named on stderr in one line with its reason, every good
input done, nothing written outside --out, exit code 1, and no codec noise on stderr.

The corpus is generated here: images in every colour mode and format fusioncam reads, next to broken, hostile and
unreadable files (a decompression bomb, a link loop, a named pipe, a name that is not UTF-8 …), and a JSONL file
with every kind of bad record.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from test_images import STORED_AS, encode, noise, noisy_files, png_claiming, upright_test_card
from tiny_presets import write_tiny_presets
from typer.testing import CliRunner, Result

from fusioncam.cli import app
from fusioncam.files import DiskFullError, stop_when_full
from fusioncam.images import MAX_IMAGE_PIXELS_ENV, printable

TEXT = "a dog"


@dataclass
class Corpus:
    root: Path  # holds the folder of images, the JSONL file and an empty working directory
    photos: Path
    good: dict[str, tuple[int, int]]  # name under photos → (height, width) once decoded
    bad: dict[str, str]  # name under photos → the reason its line must give (a regex)


def rotated_jpeg() -> bytes:
    """The test card stored sideways with EXIF orientation 6: decoded upright, 40 high and 60 wide."""
    stored = Image.fromarray(np.ascontiguousarray(STORED_AS[6](upright_test_card())))
    exif = stored.getexif()
    exif[0x0112] = 6
    return encode(stored, "JPEG", exif=exif.tobytes())


def good_files() -> dict[str, tuple[bytes, tuple[int, int]]]:
    picture = Image.fromarray(noise(48, 64, seed=1))
    rgba = np.dstack([noise(48, 64, seed=2), np.linspace(0, 255, 48 * 64).reshape(48, 64).astype(np.uint8)])
    ok, deep = cv2.imencode(".png", np.random.default_rng(3).integers(0, 65536, (48, 64, 3), dtype=np.uint16))
    assert ok
    red, blue = (Image.new("RGB", (30, 20), colour) for colour in ("red", "blue"))
    first, second = Image.fromarray(noise(23, 37)), Image.fromarray(noise(50, 60))
    return {
        "photo.jpg": (encode(picture, "JPEG"), (48, 64)),
        "gray.png": (encode(picture.convert("L")), (48, 64)),
        "rgba.png": (encode(Image.fromarray(rgba, "RGBA")), (48, 64)),
        "palette.png": (encode(picture.quantize(16), transparency=3), (48, 64)),
        "deep.png": (deep.tobytes(), (48, 64)),
        "cmyk.jpg": (encode(picture.convert("CMYK"), "JPEG"), (48, 64)),
        "rotated.jpg": (rotated_jpeg(), (40, 60)),
        "dot.png": (encode(Image.fromarray(noise(1, 1))), (1, 1)),
        "animated.gif": (encode(red, "GIF", save_all=True, append_images=[blue], duration=100), (20, 30)),
        "photo.webp": (encode(picture, "WEBP"), (48, 64)),
        "pages.tiff": (encode(first, "TIFF", save_all=True, append_images=[second]), (23, 37)),
        "spliced.jpg": (noisy_files()["spliced.jpg"], (64, 80)),  # decodes, and libjpeg complains while it does
        "sub/nested.png": (encode(picture), (48, 64)),
        "folder.jpg/inside.png": (encode(picture), (48, 64)),  # a folder named like an image is a folder
        os.fsdecode(b"caf\xe9.png"): (encode(picture), (48, 64)),  # a Latin-1 name: not UTF-8
    }


BAD_CONTENT = {
    "empty.jpg": (b"", r"empty file \(0 bytes\)"),
    "notes.jpg": (b"shopping list: eggs, milk\n", r"not an image \(unrecognised file signature\)"),
    os.fsdecode(b"bad\xff.jpg"): (b"\x00" * 64, r"not an image"),
    "bomb.png": (
        png_claiming(100_000, 100_000),
        rf"100000x100000 = 10,000,000,000 pixels, more than the limit of 268,435,456 .*decompression bomb.*"
        rf"raise the limit: {MAX_IMAGE_PIXELS_ENV}=10000000000$",
    ),
    **{name: (data, "corrupt or truncated") for name, data in noisy_files().items() if name != "spliced.jpg"},
}


@pytest.fixture(scope="module")
def presets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_tiny_presets(tmp_path_factory.mktemp("presets"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    root = tmp_path_factory.mktemp("bad-inputs")
    photos = root / "photos"
    (root / "cwd").mkdir()
    good = {}
    for name, (data, shape) in good_files().items():
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        (photos / name).write_bytes(data)
        good[name] = shape
    (photos / "link.png").symlink_to("gray.png")  # a link to a file is read through
    good["link.png"] = good["gray.png"]
    (photos / "sub" / "up").symlink_to("..")  # a loop for --recursive, if links to folders were followed
    (photos / ".hidden.jpg").write_bytes(b"hidden files are skipped, never read")
    bad = {}
    for name, (data, reason) in BAD_CONTENT.items():
        (photos / name).write_bytes(data)
        bad[name] = reason
    jpeg = good_files()["photo.jpg"][0]
    (photos / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    bad["truncated.jpg"] = r"truncated JPEG \(the data ends before the end-of-image marker\)"
    png = good_files()["gray.png"][0]
    (photos / "truncated.png").write_bytes(png[: len(png) // 2])
    bad["truncated.png"] = "corrupt or truncated PNG data"
    (photos / "gone.jpg").symlink_to("nowhere.jpg")
    bad["gone.jpg"] = r"broken symbolic link \(its target nowhere.jpg does not exist\)"
    (photos / "loop.jpg").symlink_to("loop.jpg")
    bad["loop.jpg"] = "symbolic link loop"
    os.mkfifo(photos / "pipe.jpg")
    bad["pipe.jpg"] = r"a named pipe \(FIFO\) that nothing was written to"
    if os.geteuid() != 0:  # root reads whatever the permissions say
        (photos / "locked.png").write_bytes(jpeg)
        (photos / "locked.png").chmod(0)
        bad["locked.png"] = "permission denied"
    return Corpus(root, photos, good, bad)


def snapshot(root: Path, skip: set[str]) -> dict[str, tuple[int, int]]:
    """Every entry under `root` (but the folders named in `skip`) with its size and modification time."""
    entries = {}
    for folder, folders, files in os.walk(root):
        folders[:] = [name for name in folders if name not in skip]
        for name in folders + files:
            status = os.lstat(os.path.join(folder, name))
            entries[os.path.relpath(os.path.join(folder, name), root)] = (status.st_size, status.st_mtime_ns)
    return entries


def run_cli(*args: object) -> Result:
    return CliRunner().invoke(app, [str(arg) for arg in args])


@dataclass
class Runs:
    folder: Result  # the CliRunner result of `heatmap photos TEXT --recursive`
    jsonl: Result  # and of `heatmap --pairs pairs.jsonl --jsonl`
    out: Path
    jsonl_out: Path
    untouched: bool  # nothing outside the two --out folders changed


JSONL = [
    json.dumps({"image": "photos/photo.jpg", "text": "a 🐕 on the grass", "id": 7}, ensure_ascii=False).encode(),
    json.dumps({"image": "photos/gray.png", "text": "草の上の犬", "answer": "dog"}, ensure_ascii=False).encode(),
    json.dumps({"image": "photos/photo.jpg", "text": "   "}).encode(),
    b'{"image": "photos/photo.jpg", "text": ',
    json.dumps({"text": TEXT}).encode(),
    b'{"image": "photos/photo.jpg", "text": "caf\xe9"}',
    b'{"image": "photos/photo.jpg", "text": "\\ud800"}',
    json.dumps({"image": "photos/photo.jpg", "text": "!!!"}).encode(),
    json.dumps({"image": "photos/missing.jpg", "text": TEXT}).encode(),
]
JSONL_FAILURES = {
    3: r'missing "text" \(a non-empty string\)',
    4: f"not JSON: Expecting value at column {len(JSONL[3]) + 1}$",
    5: r'missing "image" \(a path\)',
    6: f"not UTF-8: byte 0xe9 at byte {JSONL[5].index(0xE9) + 1}",
    7: r"not valid Unicode: a \\u escape stands for half a character",
    8: "the text is empty after cleaning",
    9: "no such file",
}


@pytest.fixture(scope="module")
def runs(corpus: Corpus, presets: dict[str, Path]) -> Runs:
    pairs = corpus.root / "pairs.jsonl"
    pairs.write_bytes(b"\n".join(JSONL) + b"\n")
    out, jsonl_out = corpus.root / "out", corpus.root / "jsonl-out"
    model = ["--model", presets["itm"], "--block", "1", "--device", "cpu"]
    before = snapshot(corpus.root, {"out", "jsonl-out"})
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(corpus.root / "cwd")
        patch.delenv(MAX_IMAGE_PIXELS_ENV, raising=False)
        folder = run_cli("heatmap", corpus.photos, TEXT, "--recursive", *model, "--out", out)
        jsonl = run_cli("heatmap", "--pairs", pairs, "--jsonl", *model, "--out", jsonl_out)
    return Runs(folder, jsonl, out, jsonl_out, snapshot(corpus.root, {"out", "jsonl-out"}) == before)


def failed_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("failed ")]


def test_each_bad_file_gets_one_line_naming_it_and_why(corpus: Corpus, runs: Runs) -> None:
    assert runs.folder.exit_code == 1, runs.folder.stderr
    lines = failed_lines(runs.folder.stderr)
    assert len(lines) == len(corpus.bad), runs.folder.stderr
    for name, reason in corpus.bad.items():
        shown = printable(str(corpus.photos / name))
        [line] = [line for line in lines if shown + " " in line]
        assert line.startswith(f"failed {shown} ({TEXT!r}): cannot read image {shown}: ")
        assert re.search(reason, line), line
    assert "hidden" not in runs.folder.stderr
    assert re.search(
        rf"^{len(corpus.good)} heatmap\(s\) written to .*, {len(corpus.bad)} failed$", runs.folder.stderr, re.M
    )


def test_every_good_file_gets_its_outputs(corpus: Corpus, runs: Runs) -> None:
    records = {}
    for path in runs.out.rglob("*.json"):
        if path.name != "summary.json":
            record = json.loads(path.read_text(encoding="utf-8"))
            records[record["image"]] = record
    expected = {printable(str(corpus.photos / name)): shape for name, shape in corpus.good.items()}
    assert set(records) == set(expected)
    for image, (height, width) in expected.items():
        record = records[image]
        assert record["image_size"] == {"width": width, "height": height}, image
        for output in record["outputs"].values():
            assert Path(output).is_file() and Path(output).is_relative_to(runs.out)
    assert any(image.endswith("caf\\xe9.png") for image in records)  # a name that is not UTF-8, spelled printably
    assert not list(runs.out.rglob(".partial-*"))


def test_nothing_is_written_outside_out(runs: Runs, corpus: Corpus) -> None:
    assert runs.untouched
    assert not any((corpus.root / "cwd").iterdir())


def test_each_bad_record_gets_one_line_and_the_rest_is_done(corpus: Corpus, runs: Runs) -> None:
    result = runs.jsonl
    assert result.exit_code == 1, result.stderr
    lines = failed_lines(result.stderr)
    assert len(lines) == len(JSONL_FAILURES), result.stderr
    for number, reason in JSONL_FAILURES.items():
        [line] = [line for line in lines if f"pairs.jsonl:{number}" in line]
        assert re.search(reason, line), line
    records = [json.loads(line) for line in result.stdout.splitlines()]  # one JSON line per record, in order
    assert [("error" in record) for record in records] == [False, False] + [True] * len(JSONL_FAILURES)
    assert records[0]["cleaned_text"] == "a 🐕 on the grass" and records[0]["input"] == {"id": 7}
    assert records[1]["text"] == "草の上の犬" and records[1]["input"] == {"answer": "dog"}
    [warning] = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warning.endswith(
        'fields other than "image" and "text" are not used, only copied to each result\'s "input": answer, id'
    )


def test_the_codecs_stay_quiet_on_stderr(corpus: Corpus, presets: dict[str, Path], runs: Runs) -> None:
    """libjpeg, libpng, libtiff and OpenCV write to file descriptor 2 directly, which only a process of its own
    shows: every line it writes there must be one of ours."""
    environment = {key: value for key, value in os.environ.items() if key != MAX_IMAGE_PIXELS_ENV}
    command = [sys.executable, "-m", "fusioncam.cli", "heatmap", corpus.photos, TEXT, "--recursive"]
    command += ["--model", presets["itm"], "--block", "1", "--device", "cpu", "--out", corpus.root / "quiet-out"]
    result = subprocess.run(
        [str(arg) for arg in command], cwd=corpus.root / "cwd", env=environment, capture_output=True, timeout=300
    )
    stderr = result.stderr.decode("utf-8")
    assert result.returncode == 1, stderr
    ours = re.compile(r"failed |heatmaps: \d+/\d+ |\d+ heatmap\(s\) written to ")
    assert [line for line in stderr.splitlines() if not ours.match(line)] == []
    assert sorted(failed_lines(stderr)) == sorted(failed_lines(runs.folder.stderr))


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A real file system with no space left: a small tmpfs, filled up."""
    mount_point = tmp_path / "full"
    mount_point.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot make a full file system here")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        with open(mount_point / "filler", "wb", buffering=0) as filler:
            try:
                while True:
                    filler.write(bytes(4096))
            except OSError as error:
                assert error.errno == errno.ENOSPC
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_a_full_disk_stops_the_run_with_one_message(
    corpus: Corpus, presets: dict[str, Path], full_disk: Path, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("photo.jpg", "gray.png", "dot.png"):
        shutil.copy(corpus.photos / name, photos / name)
    model = ["--model", presets["itm"], "--block", "1", "--device", "cpu"]
    result = run_cli("heatmap", photos, TEXT, *model, "--out", full_disk, "--batch-size", "1")
    assert result.exit_code == 1
    assert not isinstance(result.exception, OSError), result.exception  # reported, not a traceback
    [line] = [line for line in result.stderr.splitlines() if "disk full" in line]
    assert "free space and run again" in line
    assert "gray.png" not in result.stderr and "photo.jpg" not in result.stderr  # the run stopped at dot.png


def test_no_space_left_becomes_a_disk_full_error(tmp_path: Path) -> None:
    """The mapping itself, on a real ENOSPC wherever this runs: Linux's /dev/full answers every write with one."""
    disk_full = pytest.raises(DiskFullError, match=r"^disk full: cannot write /dev/full; free space and run again")
    with disk_full as caught, stop_when_full(Path("/dev/full")):
        Path("/dev/full").write_bytes(b"pixels")
    assert caught.value.errno == errno.ENOSPC and isinstance(caught.value, OSError)
    with pytest.raises(FileNotFoundError), stop_when_full(tmp_path / "x"):  # other errors pass unchanged
        (tmp_path / "no-folder" / "x").write_bytes(b"")
