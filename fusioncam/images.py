"""Image decoding and model preprocessing.

Decoding uses OpenCV and returns what LAVIS gets from `Image.open(path).convert("RGB")`: HxWx3 uint8 RGB with
grayscale replicated and alpha dropped (not composited). Two deliberate differences: EXIF orientation is applied,
so a phone photo is seen upright (LAVIS shows it to the model sideways), and 16-bit samples keep their high byte
whatever the channel count (Pillow does that for RGB but clips 16-bit grayscale to 255).

Preprocessing reproduces each model's own pipeline; see `ImageTransform`.
"""

from __future__ import annotations

import functools
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

BLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
BLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# File signatures, only to explain why a decode failed: (offset, magic, format name).
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (0, b"BM", "BMP"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (8, b"WEBP", "WebP"),
    (0, b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (0, b"\xff\x4f\xff\x51", "JPEG 2000"),
    (4, b"ftypavif", "AVIF"),
    (4, b"ftypheic", "HEIC"),
    (4, b"ftypheix", "HEIC"),
    (4, b"ftypmif1", "HEIF"),
)
# Formats no OpenCV build decodes; other formats may be missing only from some builds (GIF, AVIF).
_NEVER_DECODED = frozenset({"HEIC", "HEIF"})
# JPEG markers that stand alone, without a length field: TEM and RST0..RST7.
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})


class ImageDecodeError(ValueError):
    """An image file that cannot be turned into pixels; the message names the file and says why."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"cannot read image {name}: {reason}")
        self.name = name
        self.reason = reason


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file into HxWx3 uint8 RGB (see the module docstring for the colour rules)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as e:
        raise ImageDecodeError(str(path), "no such file") from e
    except IsADirectoryError as e:
        raise ImageDecodeError(str(path), "is a directory") from e
    except OSError as e:
        raise ImageDecodeError(str(path), e.strerror or str(e)) from e
    return decode_image(data, name=str(path))


STDIN = "-"  # an image source: the bytes of one image on standard input
URL_SCHEMES = ("http://", "https://")
URL_TIMEOUT = 30.0  # seconds without an answer before an image download is given up
MAX_DOWNLOAD_BYTES = 256 * 2**20  # an image larger than this is not what the user meant to explain


def is_url(source: str | os.PathLike) -> bool:
    return isinstance(source, str) and source.startswith(URL_SCHEMES)


def load_image_source(source: str | os.PathLike, timeout: float = URL_TIMEOUT) -> np.ndarray:
    """Decode an image from a file path, an http(s) URL, or `-` (the bytes of one image on stdin).

    A URL that cannot be fetched (offline, 404, too slow) is an `ImageDecodeError` naming it and the reason, as a
    broken file is: one failed input, not a crashed run.
    """
    if source == STDIN:
        return _stdin_image()
    if is_url(source):
        return decode_image(_download(str(source), timeout), name=str(source))
    return load_image(source)


@functools.cache
def _stdin_image() -> np.ndarray:
    """Standard input can be read once; every text asked of the image on it gets the same pixels."""
    return decode_image(sys.stdin.buffer.read(), name="stdin")


def _download(url: str, timeout: float) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "fusioncam"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = response.read(MAX_DOWNLOAD_BYTES + 1)
    except urllib.error.HTTPError as error:
        raise ImageDecodeError(url, f"download failed: HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        raise ImageDecodeError(url, f"download failed (offline?): {error.reason}") from None
    except (TimeoutError, OSError) as error:
        raise ImageDecodeError(url, f"download failed: {error or 'timed out'} (timeout {timeout:g} s)") from None
    if len(data) > MAX_DOWNLOAD_BYTES:
        raise ImageDecodeError(url, f"larger than {MAX_DOWNLOAD_BYTES // 2**20} MB; download it and pass the file")
    return data


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes into HxWx3 uint8 RGB; `name` only labels errors."""
    if not data:
        raise ImageDecodeError(name, "empty file (0 bytes)")
    image_format = _sniff_format(data)
    if image_format == "JPEG" and not _jpeg_is_complete(data):
        # OpenCV 4.x decodes a truncated JPEG without complaint and fills the missing rows with grey.
        raise ImageDecodeError(name, "truncated JPEG (the data ends before the end-of-image marker)")
    # ANYDEPTH keeps 16-bit samples so that every codec converts them the same way (below);
    # COLOR applies EXIF orientation, replicates grayscale and drops alpha.
    try:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    except cv2.error as e:
        raise ImageDecodeError(name, f"OpenCV failed: {e.err}") from e
    if bgr is None:
        raise ImageDecodeError(name, _decode_failure_reason(image_format))
    if bgr.dtype == np.uint16:
        bgr = np.right_shift(bgr, 8).astype(np.uint8)
    elif bgr.dtype != np.uint8:
        raise ImageDecodeError(name, f"unsupported sample type {bgr.dtype} (only 8- and 16-bit images are read)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _sniff_format(data: bytes) -> str | None:
    for offset, magic, image_format in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return image_format
    return None


def _decode_failure_reason(image_format: str | None) -> str:
    if image_format is None:
        return "not an image (unrecognised file signature)"
    if image_format in _NEVER_DECODED:
        return f"unsupported format {image_format} (OpenCV cannot decode it; convert it to JPEG or PNG)"
    return f"corrupt or truncated {image_format} data, or a {image_format} variant this OpenCV build cannot decode"


def _jpeg_is_complete(data: bytes) -> bool:
    """Whether an end-of-image marker follows the first scan.

    Walks the marker segments so that an EXIF thumbnail (a whole JPEG inside APP1, with its own end marker)
    is skipped, then looks for the end marker after the start of the scan. Entropy-coded data never contains
    the bytes FF D9 (every FF in it is followed by 00 or a restart marker), and bytes after the end marker
    (camera trailers, motion-photo videos) are allowed.
    """
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return True  # not a marker: malformed, which the decoder reports better than we can
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker in _STANDALONE_MARKERS:
            i += 2
        elif marker == 0xDA:  # start of scan
            return data.find(b"\xff\xd9", i) != -1
        else:
            i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return False


def check_rgb(image: np.ndarray, what: str = "image") -> None:
    """Raise ValueError unless `image` is an HxWx3 uint8 array, the one pixel format this package passes around."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"{what} must be an HxWx3 uint8 RGB array, got shape {shape} dtype {dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{what} is empty: shape {image.shape}")


@dataclass(frozen=True)
class ImageTransform:
    """Resize to `image_size`² and normalize: RGB uint8 images → float32 [B, 3, S, S].

    `interpolation` names the pipeline whose numbers we must reproduce, not only a kernel:

    - "bicubic": LAVIS / torchvision on a PIL image, i.e. `Image.resize((S, S), BICUBIC)` then `/255`. Pillow
      filters with a=-0.5 and widens the kernel when downscaling (antialias), resizes one axis at a time and
      rounds each pass to uint8. We do the same passes with torch's antialiased bicubic, which is that very
      kernel (in both directions; without `antialias` torch upsamples with a=-0.75), and round after each.
      Result: at most 1 level of 255 from Pillow, nearly everywhere identical.
    - "bilinear": EfficientSAM's own `preprocess`, `F.interpolate(mode="bilinear")` on [0, 1] floats: no
      antialias when downscaling and no uint8 rounding, because EfficientSAM never did either (PIL's BILINEAR
      and torchvision's `antialias=True` would low-pass filter large images first).
    """

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        if self.interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"interpolation must be 'bicubic' or 'bilinear', got {self.interpolation!r}")
        if self.image_size < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 values each, std > 0; got mean={self.mean} std={self.std}")

    def __call__(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        if isinstance(images, np.ndarray):
            raise TypeError("pass a sequence of HxWx3 images (e.g. [image]), not a single array")
        if len(images) == 0:
            raise ValueError("no images to transform")
        resized = []
        for i, image in enumerate(images):
            check_rgb(image, f"images[{i}]")
            resized.append(self.resize(torch.tensor(image).permute(2, 0, 1)))
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return (torch.stack(resized) - mean) / std

    def resize(self, image: torch.Tensor) -> torch.Tensor:
        """One uint8 image [3, H, W] → float32 [3, S, S] in [0, 1], before normalization."""
        size = (self.image_size, self.image_size)
        if self.interpolation == "bilinear":
            pixels = image.float().div(255)[None]
            return F.interpolate(pixels, size, mode="bilinear", align_corners=False)[0]
        return _pil_bicubic(image.float()[None], size)[0].div(255)


def _pil_bicubic(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pillow's `resize(BICUBIC)` on 0..255 floats [B, C, H, W]: one rounded pass per axis, in Pillow's order.

    Pillow skips an axis whose size does not change and, since 13.0, runs the vertical pass first when the
    height loses more than twice as many pixels as the width (earlier versions always went horizontal first;
    the order changes a result only through the intermediate rounding).
    """
    (h, w), (out_h, out_w) = pixels.shape[-2:], size
    vertical_first = h - out_h > 0 and h - out_h > 2 * (w - out_w)
    passes = [(out_h, w), (out_h, out_w)] if vertical_first else [(h, out_w), (out_h, out_w)]
    for shape in passes:
        if tuple(pixels.shape[-2:]) != shape:
            pixels = F.interpolate(pixels, shape, mode="bicubic", align_corners=False, antialias=True)
            pixels = pixels.round().clamp(0, 255)
    return pixels


def blip_transform(image_size: int = 384) -> ImageTransform:
    """LAVIS `blip_image_eval`: bicubic resize to `image_size`², CLIP mean/std."""
    return ImageTransform(image_size=image_size, mean=BLIP_MEAN, std=BLIP_STD, interpolation="bicubic")
