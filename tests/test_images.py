"""Decoding (colour modes, EXIF, formats, broken and unreadable files, the pixel limit, codecs kept quiet) and
preprocessing against the Pillow pipeline LAVIS runs."""

from __future__ import annotations

import io
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import PIL
import pytest
import torch
from PIL import Image

from fusioncam.images import (
    BLIP_MEAN,
    BLIP_STD,
    DEFAULT_MAX_IMAGE_PIXELS,
    MAX_IMAGE_PIXELS_ENV,
    ImageDecodeError,
    ImageTransform,
    blip_transform,
    decode_image,
    load_image,
    max_image_pixels,
)

PILLOW_13 = int(PIL.__version__.split(".")[0]) >= 13
# One uint8 level in normalized BLIP units, for the channel with the smallest std.
ONE_LEVEL = 1 / 255 / min(BLIP_STD)


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def resized_levels(image: np.ndarray, size: int) -> np.ndarray:
    """Our bicubic resize in uint8 levels, HxWx3 like Pillow's output."""
    pixels = torch.from_numpy(image.copy()).permute(2, 0, 1)
    levels = blip_transform(size).resize(pixels).mul(255).permute(1, 2, 0).numpy()
    return np.rint(levels).astype(np.int16)


def pillow_resize(image: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC)).astype(np.int16)


def assert_close_to_pillow(image: np.ndarray, size: int, max_differing: float) -> None:
    """At most one level off anywhere, and that on a tiny fraction of values (measured: ≤ 0.12 %)."""
    diff = np.abs(resized_levels(image, size) - pillow_resize(image, size))
    assert diff.max() <= 1
    assert (diff > 0).mean() <= max_differing


@pytest.mark.parametrize(
    ("height", "width", "size"),
    [
        (480, 640, 384),  # downscale, wide
        (1000, 500, 384),  # downscale, tall: Pillow 13 resizes vertically first
        (385, 383, 384),  # one axis down, one up, by a pixel
        (37, 53, 384),  # strong upscale
        (200, 800, 384),  # height up, width down
        (300, 200, 224),  # height down, width up
        (100, 150, 1024),
    ],
)
def test_bicubic_resize_matches_pillow_on_noise(height: int, width: int, size: int) -> None:
    if not PILLOW_13 and height - size > 0 and height - size > 2 * (width - size):
        pytest.skip("Pillow < 13 always resizes horizontally first; fusioncam follows Pillow 13")
    assert_close_to_pillow(noise(height, width), size, max_differing=2e-3)


@pytest.mark.parametrize(("crop", "size"), [(None, 384), (None, 224), ((150, 200), 384), ((120, 90), 1024)])
def test_bicubic_resize_matches_pillow_on_a_photo(dogs_jpg: Path, crop: tuple[int, int] | None, size: int) -> None:
    image = load_image(dogs_jpg)
    if crop is not None:
        image = np.ascontiguousarray(image[200 : 200 + crop[0], 400 : 400 + crop[1]])
    assert_close_to_pillow(image, size, max_differing=5e-4)


def test_blip_transform_matches_the_lavis_pipeline(dogs_jpg: Path) -> None:
    image = load_image(dogs_jpg)
    ours = blip_transform()([image])
    # LAVIS: Resize((384, 384), BICUBIC) on the PIL image, ToTensor, Normalize.
    resized = np.asarray(Image.open(dogs_jpg).convert("RGB").resize((384, 384), Image.Resampling.BICUBIC))
    lavis = (resized.astype(np.float32) / 255 - np.float32(BLIP_MEAN)) / np.float32(BLIP_STD)
    lavis = torch.from_numpy(lavis).permute(2, 0, 1)[None]
    assert ours.shape == (1, 3, 384, 384)
    assert ours.dtype == torch.float32
    diff = (ours - lavis).abs()
    assert diff.max() <= ONE_LEVEL + 1e-5
    assert diff.mean() < 1e-4


@pytest.mark.parametrize(("height", "width"), [(30, 50), (200, 100), (64, 64)])
def test_bilinear_is_efficient_sams_unfiltered_resize(height: int, width: int) -> None:
    """EfficientSAM resizes [0, 1] floats with F.interpolate(bilinear): no antialias, no rounding. OpenCV's
    INTER_LINEAR on floats is the same operation, implemented independently."""
    image = noise(height, width)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ours = ImageTransform(64, mean, std, interpolation="bilinear")([image])[0].permute(1, 2, 0).numpy()
    expected = cv2.resize(image.astype(np.float32) / 255, (64, 64), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(ours, (expected - np.float32(mean)) / np.float32(std), atol=2e-6)


def test_transform_batches_images_of_different_sizes() -> None:
    transform = blip_transform(64)
    first, second = noise(50, 80, seed=1), noise(90, 30, seed=2)
    batch = transform([first, second])
    assert batch.shape == (2, 3, 64, 64)
    torch.testing.assert_close(batch[1], transform([second])[0], rtol=0, atol=0)
    assert not torch.equal(batch[0], batch[1])


def test_transform_rejects_what_it_cannot_handle() -> None:
    transform = blip_transform(32)
    with pytest.raises(TypeError, match="sequence"):
        transform(noise(8, 8))
    with pytest.raises(ValueError, match="no images"):
        transform([])
    with pytest.raises(ValueError, match=r"images\[0\].*HxWx3 uint8"):
        transform([noise(8, 8).astype(np.float32)])
    with pytest.raises(ValueError, match=r"images\[1\].*HxWx3 uint8"):
        transform([noise(8, 8), noise(8, 8)[..., 0]])
    with pytest.raises(ValueError, match="interpolation"):
        ImageTransform(32, BLIP_MEAN, BLIP_STD, interpolation="lanczos")


def upright_test_card() -> np.ndarray:
    """40×60, red top, blue bottom, green left edge: every flip and rotation of it is distinguishable."""
    card = np.zeros((40, 60, 3), np.uint8)
    card[:20] = (255, 0, 0)
    card[20:] = (0, 0, 255)
    card[:, :16] = (0, 255, 0)
    return card


# How a camera stores an upright scene for each EXIF orientation: the inverse of what a viewer applies.
STORED_AS = {
    1: lambda a: a,
    2: np.fliplr,
    3: lambda a: np.rot90(a, 2),
    4: np.flipud,
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, 1),
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, -1),
}


@pytest.mark.parametrize("orientation", sorted(STORED_AS))
def test_exif_orientation_comes_out_upright(tmp_path: Path, orientation: int) -> None:
    upright = upright_test_card()
    stored = Image.fromarray(np.ascontiguousarray(STORED_AS[orientation](upright)))
    exif = stored.getexif()
    exif[0x0112] = orientation
    path = tmp_path / f"orientation{orientation}.jpg"
    path.write_bytes(encode(stored, "JPEG", exif=exif.tobytes(), quality=95, subsampling=0))
    decoded = load_image(path)
    assert decoded.shape == upright.shape
    assert np.abs(decoded.astype(int) - upright).mean() < 1.5  # JPEG ringing at the colour edges only


def test_grayscale_becomes_three_equal_channels(tmp_path: Path) -> None:
    gray = noise(20, 30)[..., 0]
    path = tmp_path / "gray.png"
    path.write_bytes(encode(Image.fromarray(gray)))
    decoded = load_image(path)
    assert decoded.shape == (20, 30, 3)
    for channel in range(3):
        np.testing.assert_array_equal(decoded[..., channel], gray)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_alpha_is_dropped_like_pillow_convert_rgb(mode: str) -> None:
    rgba = noise(20, 30)
    rgba = np.dstack([rgba, np.linspace(0, 255, 20 * 30).reshape(20, 30).astype(np.uint8)])
    source = Image.fromarray(rgba, "RGBA")
    source = source.convert(mode) if mode != "P" else source.convert("RGB").quantize(16)
    options = {"transparency": 3} if mode == "P" else {}
    data = encode(source, **options)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(decode_image(data), expected)
    if mode == "RGBA":  # dropped, not composited over black or white
        np.testing.assert_array_equal(decode_image(data), rgba[..., :3])


@pytest.mark.parametrize("ext", [".png", ".tiff"])
@pytest.mark.parametrize("channels", [1, 3])
def test_16_bit_keeps_the_high_byte_in_every_codec(ext: str, channels: int) -> None:
    rng = np.random.default_rng(3)
    deep = rng.integers(0, 65536, (12, 16, channels) if channels > 1 else (12, 16), dtype=np.uint16)
    deep.flat[:4] = [0, 255, 256, 65535]
    ok, data = cv2.imencode(ext, deep)  # OpenCV writes BGR
    assert ok
    rgb = deep[..., ::-1] if channels > 1 else np.repeat(deep[..., None], 3, axis=2)
    np.testing.assert_array_equal(decode_image(data.tobytes()), (rgb >> 8).astype(np.uint8))


def test_non_ascii_path(tmp_path: Path) -> None:
    image = noise(10, 12)
    path = tmp_path / "chiens-sur-la-plage-狗.png"
    path.write_bytes(encode(Image.fromarray(image)))
    np.testing.assert_array_equal(load_image(path), image)


def test_bytes_after_the_jpeg_end_marker_are_allowed(dogs_jpg: Path) -> None:
    """Phones append data after the JPEG (motion-photo videos, maker trailers); the image is complete."""
    data = dogs_jpg.read_bytes()
    np.testing.assert_array_equal(decode_image(data + b"\x00" * 64 + b"ftypmp42" * 100), load_image(dogs_jpg))


def broken_files(dogs: bytes) -> dict[str, tuple[bytes, str]]:
    png = encode(Image.fromarray(noise(64, 64)))
    return {
        "empty.jpg": (b"", "empty file"),
        "notes.jpg": (b"shopping list: eggs, milk\n", "not an image"),
        "half.jpg": (dogs[: len(dogs) // 2], "truncated JPEG.*end-of-image marker"),
        "headers-only.jpg": (dogs[:600], "truncated JPEG.*end-of-image marker"),
        "half.png": (png[: len(png) // 2], "truncated PNG"),
        "garbled.png": (png[:40] + bytes(len(png) - 40), "corrupt"),
        "photo.heic": (b"\x00\x00\x00\x18ftypheic" + bytes(100), "unsupported format HEIC"),
    }


@pytest.mark.parametrize(
    "name", ["empty.jpg", "notes.jpg", "half.jpg", "headers-only.jpg", "half.png", "garbled.png", "photo.heic"]
)
def test_broken_files_raise_naming_the_file_and_the_reason(tmp_path: Path, dogs_jpg: Path, name: str) -> None:
    data, reason = broken_files(dogs_jpg.read_bytes())[name]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ImageDecodeError, match=reason) as caught:
        load_image(path)
    assert str(path) in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_unreadable_paths_raise_image_decode_error(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="no such file") as caught:
        load_image(tmp_path / "missing.jpg")
    assert str(tmp_path / "missing.jpg") in str(caught.value)
    with pytest.raises(ImageDecodeError, match="is a directory"):
        load_image(tmp_path)


def test_decode_image_names_its_source_in_errors() -> None:
    with pytest.raises(ImageDecodeError, match=r"<bytes>.*not an image"):
        decode_image(b"GIF? no")
    with pytest.raises(ImageDecodeError, match="upload 7"):
        decode_image(b"", name="upload 7")


def test_unreadable_entries_say_why(tmp_path: Path) -> None:
    """Broken links, link loops, pipes nobody writes to and special files fail at once, each with its reason."""
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    os.mkfifo(tmp_path / "pipe.jpg")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "socket.jpg"))
    expected = {
        tmp_path / "gone.jpg": "broken symbolic link .*nowhere.jpg does not exist",
        tmp_path / "loop.jpg": "symbolic link loop",
        tmp_path / "pipe.jpg": r"a named pipe \(FIFO\) that nothing was written to",
        tmp_path / "socket.jpg": "not a file but a socket",
        Path("/dev/null"): "not a file but a character device",
        tmp_path / "nul\0.jpg": "not a valid file name",
    }
    with server:
        for path, reason in expected.items():
            with pytest.raises(ImageDecodeError, match=reason):
                load_image(path)


def test_a_pipe_is_read_to_its_end_while_its_writer_writes(tmp_path: Path) -> None:
    """`fusioncam heatmap <(curl …) "a dog"`: the image arrives through a pipe, maybe after the read began."""
    image = noise(10, 12)
    data = encode(Image.fromarray(image))
    pipe = tmp_path / "pipe.png"
    os.mkfifo(pipe)
    keep_open = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK)  # lets the writer open without waiting for a reader
    writer = os.open(pipe, os.O_WRONLY)

    def write_later() -> None:
        time.sleep(0.2)
        os.write(writer, data)
        os.close(writer)

    thread = threading.Thread(target=write_later)
    thread.start()
    try:
        np.testing.assert_array_equal(load_image(pipe), image)
    finally:
        thread.join()
        os.close(keep_open)


def test_a_name_that_is_not_utf8_is_shown_printably(tmp_path: Path) -> None:
    path = tmp_path / os.fsdecode(b"caf\xe9.jpg")
    path.write_bytes(b"not an image")
    with pytest.raises(ImageDecodeError, match="not an image") as caught:
        load_image(path)
    assert "caf\\xe9.jpg" in str(caught.value)
    str(caught.value).encode("utf-8")  # valid Unicode: a JSON record and a UTF-8 stderr can hold it


def noisy_files() -> dict[str, bytes]:
    """Files on which OpenCV's codecs write to stderr (measured): libjpeg prints "Corrupt JPEG data" itself,
    OpenCV logs libtiff's errors and its own "imdecode_" errors. `spliced.jpg` decodes (grey where data is
    missing: its end marker survived the cut), the others fail."""
    rng = np.random.default_rng(5)
    picture = Image.fromarray(noise(64, 80, seed=5))
    jpeg, png, gif, tiff = (encode(picture, fmt) for fmt in ("JPEG", "PNG", "GIF", "TIFF"))
    return {
        "garbled.jpg": jpeg[:30] + rng.integers(0, 256, len(jpeg) - 30, dtype=np.uint8).tobytes(),
        "spliced.jpg": jpeg[: len(jpeg) // 2] + b"\xff\xd9",
        "garbled.png": png[:30] + rng.integers(0, 256, len(png) - 30, dtype=np.uint8).tobytes(),
        "truncated.gif": gif[: len(gif) // 2],
        "truncated.tif": tiff[: len(tiff) // 2],
    }


DECODE_EACH = """
import sys, threading
from pathlib import Path
import cv2, numpy as np
from fusioncam.images import ImageDecodeError, decode_image
files = sorted(Path(sys.argv[2]).iterdir())
if sys.argv[1] == "opencv":
    for path in files:
        cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
    sys.exit()
for path in files:
    try:
        decode_image(path.read_bytes(), path.name)
        print(path.name, "decoded")
    except ImageDecodeError as error:
        print(error)

def decode_again():
    for _ in range(50):
        for path in files:
            try:
                decode_image(path.read_bytes(), path.name)
            except ImageDecodeError:
                pass

decoder = threading.Thread(target=decode_again)
decoder.start()
printed = 0
while decoder.is_alive():
    print("line", printed, file=sys.stderr, flush=True)
    printed += 1
decoder.join()
print(printed, "lines", file=sys.stderr)
"""


def test_codec_complaints_stay_off_stderr(tmp_path: Path) -> None:
    """In a process of its own: the codecs write to file descriptor 2, which pytest's capture cannot see. What
    another thread prints while images decode (the runner decodes in threads) must all arrive."""
    for name, data in noisy_files().items():
        (tmp_path / name).write_bytes(data)

    def decode_each(how: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-c", DECODE_EACH, how, str(tmp_path)]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)

    raw = decode_each("opencv").stderr  # the control: these files do make noise
    assert "Corrupt JPEG data" in raw and "TIFF" in raw and "imdecode_" in raw
    ours = decode_each("fusioncam")
    *lines, total = ours.stderr.splitlines()
    printed = int(total.removesuffix(" lines"))
    assert printed > 0 and lines == [f"line {number}" for number in range(printed)]
    decoded = ours.stdout.splitlines()
    assert len(decoded) == len(noisy_files()) and "spliced.jpg decoded" in decoded
    assert sum(line.startswith("cannot read image") for line in decoded) == len(decoded) - 1


def sized(fmt: str, width: int = 37, height: int = 23, mode: str = "RGB", **options: object) -> bytes:
    return encode(Image.fromarray(noise(height, width)).convert(mode), fmt, **options)


def exif_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "a camera maker, padding the APP1 segment before the frame header" * 8
    return sized("JPEG", exif=exif.tobytes())


def two_page_tiff() -> bytes:
    first, second = Image.fromarray(noise(23, 37)), Image.fromarray(noise(50, 60))
    return encode(first, "TIFF", save_all=True, append_images=[second])


# A 37x23 image in each format whose header the pixel limit reads.
SIZED = {
    "png": lambda: sized("PNG"),
    "jpeg": lambda: sized("JPEG"),
    "jpeg-with-exif": exif_jpeg,
    "gif": lambda: sized("GIF"),
    "bmp": lambda: sized("BMP"),
    "webp-lossy": lambda: sized("WEBP"),
    "webp-lossless": lambda: sized("WEBP", lossless=True),
    "webp-extended": lambda: sized("WEBP", mode="RGBA"),
    "tiff": lambda: sized("TIFF"),
    "tiff-two-pages": two_page_tiff,
    "ppm": lambda: sized("PPM"),
    "pgm": lambda: sized("PPM", mode="L"),
}


@pytest.mark.parametrize("kind", sorted(SIZED))
def test_the_pixel_limit_reads_each_formats_header(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = SIZED[kind]()
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, str(37 * 23))
    assert decode_image(data).shape == (23, 37, 3)
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, str(37 * 23 - 1))
    with pytest.raises(ImageDecodeError, match="header announces 37x23 = 851 pixels, more than the limit of 850"):
        decode_image(data)


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header announces width x height (its CRC fixed): what a decompression bomb looks like."""
    data = bytearray(sized("PNG", 4, 4))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_a_decompression_bomb_is_refused_from_its_header(monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = png_claiming(100_000, 100_000)
    monkeypatch.delenv(MAX_IMAGE_PIXELS_ENV, raising=False)
    pattern = r"100000x100000 = 10,000,000,000 pixels, more than the limit of 268,435,456 .*decompression bomb"
    with pytest.raises(ImageDecodeError, match=pattern) as caught:
        decode_image(bomb, "bomb.png")
    assert f"{MAX_IMAGE_PIXELS_ENV}=10000000000" in str(caught.value)
    assert max_image_pixels() == DEFAULT_MAX_IMAGE_PIXELS
    # Raised past OpenCV's own limit, OpenCV refuses, and the message says what else to raise.
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "10000000000")
    with pytest.raises(ImageDecodeError, match="OpenCV refuses images of more than 1,073,741,824 pixels"):
        decode_image(bomb, "bomb.png")


@pytest.mark.parametrize("value", ["lots", "0", "-5", "1e9"])
def test_a_pixel_limit_that_is_no_number_is_named(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, value)
    with pytest.raises(ValueError, match=f"{MAX_IMAGE_PIXELS_ENV} must be a positive whole number.*{value}"):
        max_image_pixels()


def test_cmyk_jpeg_is_converted_like_pillow() -> None:
    data = encode(Image.fromarray(noise(24, 32)).convert("CMYK"), "JPEG", quality=95)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    assert np.abs(decode_image(data).astype(int) - expected).max() <= 2


def test_an_animated_gif_gives_its_first_frame() -> None:
    red, blue = (Image.new("RGB", (30, 20), colour) for colour in ("red", "blue"))
    data = encode(red, "GIF", save_all=True, append_images=[blue], duration=100, loop=0)
    decoded = decode_image(data)
    assert decoded.shape == (20, 30, 3)
    assert (decoded == (255, 0, 0)).all()


def test_a_multi_page_tiff_gives_its_first_page() -> None:
    first = noise(23, 37)
    data = encode(Image.fromarray(first), "TIFF", save_all=True, append_images=[Image.fromarray(noise(50, 60))])
    np.testing.assert_array_equal(decode_image(data), first)


def test_lossless_webp_round_trips() -> None:
    image = noise(20, 30)
    np.testing.assert_array_equal(decode_image(encode(Image.fromarray(image), "WEBP", lossless=True)), image)


def test_a_one_pixel_image_goes_through_the_blip_transform() -> None:
    pixel = np.array([[[200, 100, 50]]], np.uint8)
    decoded = decode_image(encode(Image.fromarray(pixel)))
    np.testing.assert_array_equal(decoded, pixel)
    batch = blip_transform()([decoded])
    assert batch.shape == (1, 3, 384, 384)
    expected = (torch.tensor([200, 100, 50]) / 255 - torch.tensor(BLIP_MEAN)) / torch.tensor(BLIP_STD)
    torch.testing.assert_close(batch[0], expected.view(3, 1, 1).expand(3, 384, 384), rtol=0, atol=ONE_LEVEL)
