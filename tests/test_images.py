"""Decoding (colour modes, EXIF, broken files) and preprocessing against the Pillow pipeline LAVIS runs."""

from __future__ import annotations

import io
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
    ImageDecodeError,
    ImageTransform,
    blip_transform,
    decode_image,
    load_image,
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
