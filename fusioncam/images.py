"""Image decoding and model preprocessing.

Decoding uses OpenCV and returns what LAVIS gets from `Image.open(path).convert("RGB")`: HxWx3 uint8 RGB with
grayscale replicated and alpha dropped (not composited). Two deliberate differences: EXIF orientation is applied,
so a phone photo is seen upright (LAVIS shows it to the model sideways), and 16-bit samples keep their high byte
whatever the channel count (Pillow does that for RGB but clips 16-bit grayscale to 255).

Bad files fail with one `ImageDecodeError` naming the file and the reason, and nothing else: codecs' own
complaints (libjpeg, libtiff, OpenJPEG, OpenCV's log) are kept off stderr, and an image whose header
announces more than `max_image_pixels()` pixels is refused before any memory is spent on it.

Preprocessing reproduces each model's own pipeline; see `ImageTransform`.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import re
import stat
import struct
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

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
# How `cv2.getBuildInformation()` names the codecs that a build may lack.
_BUILD_NAMES = {"GIF": "GIF", "AVIF": "AVIF", "JPEG 2000": "JPEG 2000", "WebP": "WEBP", "TIFF": "TIFF"}
# Netpbm (.pgm, .ppm …): "P5", then width and height in ASCII, with optional comments.
_PNM_HEADER = re.compile(rb"P[1-6]\s+(?:#[^\n]*\n\s*)*(\d+)\s+(?:#[^\n]*\n\s*)*(\d+)\s")
# JPEG markers that stand alone, without a length field: TEM and RST0..RST7.
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})
# JPEG start-of-frame markers, which carry the image size: C0..CF but for DHT (C4), JPG (C8) and DAC (CC).
_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_START_OF_SCAN = 0xDA
_FILE_KINDS = {stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}

MAX_IMAGE_PIXELS_ENV = "FUSIONCAM_MAX_IMAGE_PIXELS"
# 16384²: room for the 200-megapixel photos of recent phones (768 MB once decoded). Pillow refuses at 179 MP; a
# genuine large photo is a normal thing to explain, a header that lies about its size is not.
DEFAULT_MAX_IMAGE_PIXELS = 2**28
# OpenCV's own limit (OPENCV_IO_MAX_IMAGE_PIXELS, read once when OpenCV loads), whatever ours says.
_OPENCV_DEFAULT_MAX_PIXELS = 2**30


def printable(text: str) -> str:
    """`text` as valid Unicode, for messages and JSON records.

    A Linux file name may hold bytes that are not UTF-8; Python carries them as surrogate escapes, which UTF-8
    output and JSON files cannot hold (writing them raises). They are spelled `\xe9` instead, as Python's own
    stderr shows them, so a record still tells which file it was.
    """
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that stands for no byte, e.g. from a JSON "\ud800"
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


class ImageDecodeError(ValueError):
    """An image file that cannot be turned into pixels; the message names the file and says why."""

    def __init__(self, name: str, reason: str) -> None:
        name = printable(name)
        super().__init__(f"cannot read image {name}: {reason}")
        self.name = name
        self.reason = reason


def max_image_pixels() -> int:
    """The most pixels an image may have: `$FUSIONCAM_MAX_IMAGE_PIXELS`, else `DEFAULT_MAX_IMAGE_PIXELS`.

    A small file can announce a huge image (a "decompression bomb"); decoding it would take all memory and end
    the whole run, so it is refused from its header, as one failed input. Read at every decode, so that setting
    the variable (or the command-line option that sets it) takes effect at once.
    """
    value = os.environ.get(MAX_IMAGE_PIXELS_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_IMAGE_PIXELS
    if not re.fullmatch(r"[0-9]+", value) or int(value) < 1:
        raise ValueError(f"{MAX_IMAGE_PIXELS_ENV} must be a positive whole number of pixels, got {value!r}")
    return int(value)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file into HxWx3 uint8 RGB (see the module docstring for the colour rules)."""
    return decode_image(_read_file(path), name=str(path))


def _read_file(path: str | os.PathLike) -> bytes:
    """The bytes of an image file, or an `ImageDecodeError` saying why there are none.

    A named pipe is opened without waiting for a writer, so that one nobody writes to fails at once instead of
    hanging the run; one with a writer (bash's `<(curl …)`) is read to its end as usual.
    """
    name = str(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        target = os.readlink(os.fspath(path)) if os.path.islink(path) else None
        reason = "no such file" if target is None else f"broken symbolic link (its target {target} does not exist)"
        raise ImageDecodeError(name, printable(reason)) from None
    except (OSError, ValueError) as error:
        raise ImageDecodeError(name, _os_reason(error)) from None
    if stat.S_ISDIR(mode):
        raise ImageDecodeError(name, "is a directory")
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
        raise ImageDecodeError(name, f"not a file but {_FILE_KINDS.get(stat.S_IFMT(mode), 'a special file')}")
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(descriptor, "rb") as stream:
            os.set_blocking(descriptor, True)
            data = stream.read()
    except OSError as error:
        raise ImageDecodeError(name, _os_reason(error)) from None
    if not data and stat.S_ISFIFO(mode):
        raise ImageDecodeError(name, "a named pipe (FIFO) that nothing was written to")
    return data


def _os_reason(error: OSError | ValueError) -> str:
    if isinstance(error, ValueError):  # a NUL or a lone surrogate in the name, e.g. from a JSONL record
        return f"not a valid file name ({error})"
    if error.errno == errno.ELOOP:
        return "symbolic link loop (its links lead back to themselves)"
    if isinstance(error, PermissionError):
        return "permission denied"
    return error.strerror or str(error)


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
    size = _declared_size(data, image_format)
    limit = max_image_pixels()
    if size is not None and size[0] * size[1] > limit:
        width, height = size
        raise ImageDecodeError(
            name,
            f"its header announces {width}x{height} = {width * height:,} pixels, more than the limit of {limit:,} "
            f"(a decompression bomb, or a corrupt header); if the image is genuine, raise the limit: "
            f"{MAX_IMAGE_PIXELS_ENV}={width * height}",
        )
    if image_format == "JPEG" and not _jpeg_is_complete(data):
        # OpenCV 4.x decodes a truncated JPEG without complaint and fills the missing rows with grey.
        raise ImageDecodeError(name, "truncated JPEG (the data ends before the end-of-image marker)")
    # ANYDEPTH keeps 16-bit samples so that every codec converts them the same way (below);
    # COLOR applies EXIF orientation, replicates grayscale and drops alpha.
    opencv_error = None
    try:
        with _QUIET_CODECS:
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    except cv2.error as error:
        bgr, opencv_error = None, error.err
    if bgr is None:
        raise ImageDecodeError(name, _decode_failure_reason(image_format, size, opencv_error))
    if bgr.dtype == np.uint16:
        bgr = np.right_shift(bgr, 8).astype(np.uint8)
    elif bgr.dtype != np.uint8:
        raise ImageDecodeError(name, f"unsupported sample type {bgr.dtype} (only 8- and 16-bit images are read)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class _QuietCodecs:
    """While a codec runs, what the libraries under OpenCV print on their own is dropped.

    OpenCV logs libtiff's, OpenJPEG's and its own decoders' complaints (silenced through its log level), and
    libjpeg prints warnings such as "Corrupt JPEG data: premature end of data segment" with fprintf to C's
    `stderr` stream, which only pointing that stream at /dev/null silences. File descriptor 2 is left alone:
    Python writes our own messages to it directly, not through C's stream, so none is lost, even one printed by
    another thread while an image decodes (the runner decodes in threads). Both settings belong to the process:
    threads decoding at once share them, counted, so that the last one out restores them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._level = 0
        self._stream: int | None = None

    def __enter__(self) -> None:
        with self._lock:
            self._depth += 1
            if self._depth > 1:
                return
            self._level = cv2.utils.logging.getLogLevel()
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
            c_stderr = _c_stderr()
            if c_stderr is not None:
                pointer, null = c_stderr
                self._stream, pointer.value = pointer.value, null

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth > 0:
                return
            cv2.utils.logging.setLogLevel(self._level)
            c_stderr = _c_stderr()
            if c_stderr is not None:
                c_stderr[0].value = self._stream


@functools.cache
def _c_stderr() -> tuple[ctypes.c_void_p, int] | None:
    """C's `stderr` stream variable (`__stderrp` on macOS) and a stream on /dev/null to point it at; None where the
    C library does not export it (Windows), and libjpeg's warnings then still show."""
    try:
        libc = ctypes.CDLL(None)
    except (OSError, TypeError):
        return None
    for symbol in ("stderr", "__stderrp"):
        try:
            pointer = ctypes.c_void_p.in_dll(libc, symbol)
        except ValueError:
            continue
        fopen = libc.fopen
        fopen.restype = ctypes.c_void_p
        fopen.argtypes = (ctypes.c_char_p, ctypes.c_char_p)
        null = fopen(os.devnull.encode(), b"w")
        return (pointer, null) if null else None
    return None


_QUIET_CODECS = _QuietCodecs()


def _sniff_format(data: bytes) -> str | None:
    for offset, magic, image_format in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return image_format
    return "PNM" if _PNM_HEADER.match(data) else None


def _decode_failure_reason(image_format: str | None, size: tuple[int, int] | None, opencv_error: str | None) -> str:
    if size is not None and size[0] * size[1] > _OPENCV_DEFAULT_MAX_PIXELS:
        return (
            f"OpenCV refuses images of more than {_OPENCV_DEFAULT_MAX_PIXELS:,} pixels; set "
            "OPENCV_IO_MAX_IMAGE_PIXELS before starting fusioncam to allow them"
        )
    if image_format is None:
        return "not an image (unrecognised file signature)"
    if image_format in _NEVER_DECODED:
        return f"unsupported format {image_format} (OpenCV cannot decode it; convert it to JPEG or PNG)"
    if _opencv_lacks(image_format):
        since = " (OpenCV 4.7 and later can)" if image_format == "GIF" else ""
        return f"this OpenCV build ({cv2.__version__}) cannot decode {image_format}{since}; convert it to PNG"
    if opencv_error is not None:
        return f"OpenCV failed: {opencv_error}"
    return f"corrupt or truncated {image_format} data, or a {image_format} variant this OpenCV build cannot decode"


@functools.cache
def _opencv_lacks(image_format: str) -> bool:
    """Whether this OpenCV build was made without a codec: builds before 4.7 have no GIF decoder (nor a "GIF:"
    line in their build information); AVIF, JPEG 2000, WebP and TIFF are build options, "NO" when left out."""
    build_name = _BUILD_NAMES.get(image_format)
    if build_name is None:
        return False
    line = re.search(rf"^\s*{re.escape(build_name)}:\s*(\S*)", cv2.getBuildInformation(), re.MULTILINE)
    if line is None:
        return image_format == "GIF"
    return line.group(1) == "NO"


def _declared_size(data: bytes, image_format: str | None) -> tuple[int, int] | None:
    """(width, height) as the header announces it, read without decoding; None where this module does not parse
    the format's header (JPEG 2000, AVIF: OpenCV's own limit still holds) or the header is too short to say."""
    reader = _SIZE_READERS.get(image_format or "")
    try:
        return reader(data) if reader is not None else None
    except struct.error:
        return None


def _png_size(data: bytes) -> tuple[int, int] | None:
    """IHDR, the first chunk: width and height big-endian from byte 16."""
    return struct.unpack_from(">II", data, 16) if data[12:16] == b"IHDR" else None


def _gif_size(data: bytes) -> tuple[int, int]:
    """The logical screen, the canvas every frame is drawn on: little-endian from byte 6."""
    return struct.unpack_from("<HH", data, 6)


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    """The info header after the 14-byte file header; its own size says which kind it is. A header of no known
    size, or with a plane count other than 1, is not a BMP (two letters "BM" are a weak signature)."""
    (header,) = struct.unpack_from("<I", data, 14)
    if header == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        width, height, planes = struct.unpack_from("<HHH", data, 18)
    elif header in (40, 52, 56, 64, 108, 124):  # BITMAPINFOHEADER and its successors: signed 32-bit sizes
        width, height, planes = struct.unpack_from("<iiH", data, 18)
    else:
        return None
    return (abs(width), abs(height)) if planes == 1 else None  # a negative height stores rows top-down


def _webp_size(data: bytes) -> tuple[int, int] | None:
    """The first chunk after "WEBP": lossy (VP8), lossless (VP8L) or extended (VP8X, the canvas)."""
    chunk = data[12:16]
    if chunk == b"VP8 ":  # 14-bit sizes after the key frame's start code
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":  # 14-bit sizes minus one, packed after the signature byte
        (bits,) = struct.unpack_from("<I", data, 21)
        return (bits & 0x3FFF) + 1, (bits >> 14 & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:  # 24-bit canvas sizes minus one
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    """ImageWidth (tag 256) and ImageLength (257) of the first image file directory: the first page."""
    order = "<" if data[:2] == b"II" else ">"
    (directory,) = struct.unpack_from(order + "I", data, 4)
    (count,) = struct.unpack_from(order + "H", data, directory)
    sizes = {}
    for entry in range(directory + 2, directory + 2 + 12 * count, 12):
        tag, kind = struct.unpack_from(order + "HH", data, entry)
        if tag in (256, 257) and kind in (3, 4):  # SHORT or LONG
            (sizes[tag],) = struct.unpack_from(order + ("H" if kind == 3 else "I"), data, entry + 8)
    return (sizes[256], sizes[257]) if len(sizes) == 2 else None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """The start-of-frame segment: precision, then height and width big-endian."""
    for marker, offset in _jpeg_segments(data):
        if marker in _FRAME_MARKERS:
            height, width = struct.unpack_from(">HH", data, offset + 5)
            return width, height
    return None


def _pnm_size(data: bytes) -> tuple[int, int] | None:
    header = _PNM_HEADER.match(data)
    return (int(header[1]), int(header[2])) if header else None


_SIZE_READERS = {
    "PNG": _png_size, "GIF": _gif_size, "BMP": _bmp_size, "WebP": _webp_size, "TIFF": _tiff_size,
    "JPEG": _jpeg_size, "PNM": _pnm_size,
}  # fmt: skip


def _jpeg_segments(data: bytes) -> Iterator[tuple[int | None, int]]:
    """(marker, offset) of each marker segment up to the start of scan, which comes last.

    Each segment is skipped whole, so an EXIF thumbnail (a whole JPEG inside APP1) is never mistaken for the
    image. Where the data is not a marker the walk ends with (None, offset): malformed, which the decoder
    reports better than we can.
    """
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            yield None, i
            return
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        yield marker, i
        if marker == _START_OF_SCAN:
            return
        i += 2 if marker in _STANDALONE_MARKERS else 2 + int.from_bytes(data[i + 2 : i + 4], "big")


def _jpeg_is_complete(data: bytes) -> bool:
    """Whether an end-of-image marker follows the first scan.

    Entropy-coded data never contains the bytes FF D9 (every FF in it is followed by 00 or a restart marker), and
    bytes after the end marker (camera trailers, motion-photo videos) are allowed.
    """
    for marker, offset in _jpeg_segments(data):
        if marker is None:
            return True
        if marker == _START_OF_SCAN:
            return data.find(b"\xff\xd9", offset) != -1
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
