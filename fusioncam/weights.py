"""Weight presets: which files a model needs, where they come from, and getting them onto disk.

A preset (see `weights.toml`) is everything needed to run one set of weights, as in open_clip's
`pretrained.py`: the model family and architecture, the checkpoint layout, the files with their sources and
digests, and the preprocessing the weights were trained with. A file comes from one of three sources:

- `url`: downloaded here into `cache_dir()/<preset>/<basename>` — streamed, resumable, sha256-checked, moved
  into place atomically, so the cache never holds a half-written or corrupt file under its final name;
- `hf_repo` + `hf_filename`: fetched through `huggingface_hub`, so HF_HOME, tokens, mirrors and HF_HUB_OFFLINE
  behave exactly as users of other Hugging Face tools expect;
- `path`: a local file (fine-tuned checkpoints, air-gapped machines).

Offline (`FUSIONCAM_OFFLINE=1`, `HF_HUB_OFFLINE=1`, or `download=False`) nothing touches the network: a missing
file fails at once with an error that says which file to put where.
"""

from __future__ import annotations

import difflib
import hashlib
import http.client
import importlib.resources
import os
import re
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import platformdirs
from filelock import FileLock, Timeout
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ENV_HOME = "FUSIONCAM_HOME"
ENV_REGISTRY = "FUSIONCAM_WEIGHTS_TOML"
ENV_OFFLINE = "FUSIONCAM_OFFLINE"
# huggingface_hub treats TRANSFORMERS_OFFLINE like HF_HUB_OFFLINE; so do we, for every source.
_OFFLINE_VARIABLES = (ENV_OFFLINE, "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")

_CHUNK = 1 << 20
_TIMEOUT_S = 30.0
# A dropped connection is retried (resuming from what arrived) this many times in one call before giving up.
_ATTEMPTS = 3
_USER_AGENT = "fusioncam"

_PRESET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_GIT_SHA1 = re.compile(r"[0-9a-f]{40}")
_PRESET_KEYS = frozenset(
    {"kind", "architecture", "layout", "description", "license", "extends", "config", "preprocess", "files"}
)
_FILE_KEYS = frozenset({"url", "hf_repo", "hf_filename", "revision", "path", "sha256", "size", "member"})

_stderr = Console(stderr=True)


class WeightsError(Exception):
    """Base of every error in this module; its message says what to do next, so the CLI just prints it."""


class PresetError(WeightsError):
    """A preset table or preset file is malformed, or asks for a file role it does not declare."""


class UnknownPresetError(PresetError):
    """A model name that is neither a known preset nor a preset `.toml` file."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        super().__init__(
            f"unknown model {name!r}.{_did_you_mean(name, known)}\nKnown presets: {', '.join(known)}.\n"
            "A path to a preset .toml file works too."
        )


def _did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


class WeightsMissingError(WeightsError):
    """A file is not on disk and may not be downloaded (offline, or downloads turned off)."""


class DownloadError(WeightsError):
    """A download failed: HTTP error, unreachable host, timeout, or too many dropped connections."""


class ChecksumError(WeightsError):
    """Downloaded or cached bytes do not match the digest or size the preset declares."""


@dataclass(frozen=True)
class FileSpec:
    """One file of a preset and its single source: `url`, `hf_repo` + `hf_filename`, or `path`."""

    role: str
    url: str | None = None
    hf_repo: str | None = None
    hf_filename: str | None = None
    revision: str | None = None
    path: Path | None = None  # absolute: relative paths are resolved against the declaring toml when parsed
    sha256: str = ""  # lowercase hex; "" = not known, recorded on first download
    size: int = 0  # bytes; 0 = unknown
    member: str | None = None  # the source is a zip archive and the model needs this member

    @property
    def source_kind(self) -> Literal["url", "hf", "path"]:
        if self.url is not None:
            return "url"
        return "hf" if self.hf_repo is not None else "path"

    @property
    def filename(self) -> str:
        """Base name of the file as fetched (the archive, for a `member` spec)."""
        if self.url is not None:
            return Path(urllib.parse.unquote(urllib.parse.urlsplit(self.url).path)).name
        if self.hf_filename is not None:
            return Path(self.hf_filename).name
        assert self.path is not None
        return self.path.name

    @property
    def origin(self) -> str:
        """Where the file comes from, for messages."""
        if self.url is not None:
            return self.url
        if self.hf_repo is not None:
            at = f"@{self.revision}" if self.revision else ""
            return f"hf://{self.hf_repo}/{self.hf_filename}{at}"
        return str(self.path)


@dataclass(frozen=True)
class Preset:
    """A named set of weights and everything needed to run them (see the schema atop `weights.toml`)."""

    name: str
    kind: str  # model family that builds it: blip-itm, blip-caption, efficient-sam, t5-qa
    architecture: str | None  # named config preset of that family; None when `config` says it all
    layout: str  # checkpoint layout: lavis, hf, efficient-sam, t5
    description: str
    license: str
    config: dict[str, Any]  # architecture values applied on top of `architecture`
    preprocess: dict[str, Any]  # image_size, mean, std, interpolation
    files: dict[str, FileSpec]  # by role: checkpoint, vocab, spiece, ...
    source: Path  # the toml that declared it

    def file(self, role: str) -> FileSpec:
        try:
            return self.files[role]
        except KeyError:
            raise PresetError(
                f"preset {self.name!r} ({self.source}) has no file {role!r}; it has: {', '.join(self.files)}"
            ) from None


class VerifyStatus(str, Enum):
    """Outcome of checking one file; the value is what a human reads."""

    OK = "ok"
    MISSING = "missing"
    MISMATCH = "sha256 mismatch"
    UNRECORDED = "no digest recorded"


@dataclass(frozen=True)
class VerifyResult:
    """The check of one file: `expected` came from `digest_source` (preset, recorded, hub); `actual` is fresh."""

    role: str
    status: VerifyStatus
    path: Path | None
    expected: str = ""
    actual: str = ""
    digest_source: str = ""

    @property
    def ok(self) -> bool:
        return self.status is VerifyStatus.OK


# --- registry -------------------------------------------------------------------------------------------------


def load_registry(path: str | os.PathLike[str] | None = None) -> dict[str, Preset]:
    """All presets of `path`, else of `$FUSIONCAM_WEIGHTS_TOML`, else of the `weights.toml` shipped with us."""
    chosen = path if path is not None else os.environ.get(ENV_REGISTRY)
    if chosen:
        return _parse_registry(Path(chosen).expanduser())
    with importlib.resources.as_file(importlib.resources.files("fusioncam") / "weights.toml") as bundled:
        return _parse_registry(bundled)


def get_preset(name_or_path: str | os.PathLike[str]) -> Preset:
    """A preset by registry name, or from a preset file of one's own (any name ending in `.toml`).

    A preset file holds one preset at top level — the registry keys without the `[NAME]` header — and its name
    is the file stem. With `extends = "blip-itm-base"` it only needs to say what differs, typically
    `[files.checkpoint] path = "my-finetune.pth"`.
    """
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix == ".toml":
        table = _read_toml(candidate)
        return _parse_preset(candidate.stem, table, candidate, load_registry() if "extends" in table else {})
    registry = load_registry()
    name = str(name_or_path)
    if name not in registry:
        raise UnknownPresetError(name, sorted(registry))
    return registry[name]


def _parse_registry(path: Path) -> dict[str, Preset]:
    presets: dict[str, Preset] = {}
    for name, table in _read_toml(path).items():
        if not isinstance(table, dict):
            raise PresetError(f"{path}: top-level key {name!r} is not a [preset] table")
        presets[name] = _parse_preset(name, table, path, presets)
    return presets


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PresetError(f"preset file {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise PresetError(f"{path}: invalid TOML: {error}") from None


def _parse_preset(name: str, table: dict[str, Any], source: Path, bases: Mapping[str, Preset]) -> Preset:
    """One preset table; `extends` may name any preset in `bases` (for the registry: those declared earlier)."""
    where = f"{source} [{name}]"
    if not _PRESET_NAME.fullmatch(name):
        raise PresetError(f"{where}: a preset name is letters, digits, '.', '_' and '-' (it names a folder)")
    _check_keys(table, _PRESET_KEYS, where)
    base: Preset | None = None
    if "extends" in table:
        base_name = _string(table, "extends", where)
        if base_name not in bases:
            raise PresetError(
                f"{where}: extends unknown preset {base_name!r}.{_did_you_mean(base_name, sorted(bases))}"
            )
        base = bases[base_name]

    def text(key: str, required: bool) -> str | None:
        if key in table:
            return _string(table, key, where)
        inherited = getattr(base, key) if base is not None else None
        if inherited is None and required:
            raise PresetError(f"{where}: missing {key!r}")
        return inherited

    files = dict(base.files) if base is not None else {}
    for role, spec in _table(table, "files", where).items():
        files[role] = _parse_file(role, spec, source.parent, f"{where} files.{role}")
    if not files:
        raise PresetError(f"{where}: declares no [files]")
    cached = [spec.filename for spec in files.values() if spec.source_kind != "path"]
    cached += [Path(spec.member).name for spec in files.values() if spec.member]
    if clash := sorted({n for n in cached if cached.count(n) > 1}):
        raise PresetError(f"{where}: several files would be cached as {', '.join(clash)}")

    return Preset(
        name=name,
        kind=text("kind", required=True) or "",
        architecture=text("architecture", required=False),
        layout=text("layout", required=True) or "",
        description=text("description", required=False) or "",
        license=text("license", required=False) or "",
        config=_merged(base.config if base else {}, _table(table, "config", where)),
        preprocess=_merged(base.preprocess if base else {}, _table(table, "preprocess", where)),
        files=files,
        source=source,
    )


def _parse_file(role: str, table: Any, root: Path, where: str) -> FileSpec:
    if not isinstance(table, dict):
        raise PresetError(f"{where}: must be a table")
    _check_keys(table, _FILE_KEYS, where)
    sources = [key for key in ("url", "hf_repo", "path") if key in table]
    if len(sources) != 1:
        found = " and ".join(sources) or "none"
        raise PresetError(f"{where}: needs exactly one source (url, hf_repo + hf_filename, or path); found {found}")
    if sources == ["hf_repo"] and "hf_filename" not in table:
        raise PresetError(f"{where}: hf_repo needs hf_filename")
    if sources != ["hf_repo"] and ({"hf_filename", "revision"} & table.keys()):
        raise PresetError(f"{where}: hf_filename and revision belong to an hf_repo source")
    sha256 = _string(table, "sha256", where, allow_empty=True).lower() if "sha256" in table else ""
    if sha256 and not _SHA256.fullmatch(sha256):
        raise PresetError(f"{where}: sha256 must be 64 hex digits (or empty), got {sha256!r}")
    size = table.get("size", 0)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise PresetError(f"{where}: size must be a whole number of bytes (0 = unknown), got {size!r}")

    def optional(key: str) -> str | None:
        return _string(table, key, where) if key in table else None

    local = optional("path")
    return FileSpec(
        role=role,
        url=optional("url"),
        hf_repo=optional("hf_repo"),
        hf_filename=optional("hf_filename"),
        revision=optional("revision"),
        path=(root / Path(local).expanduser()) if local is not None else None,
        sha256=sha256,
        size=size,
        member=optional("member"),
    )


def _check_keys(table: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    if unknown := sorted(table.keys() - allowed):
        raise PresetError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def _string(table: Mapping[str, Any], key: str, where: str, *, allow_empty: bool = False) -> str:
    value = table[key]
    if not isinstance(value, str) or not (value or allow_empty):
        raise PresetError(f"{where}: {key} must be a non-empty string, got {value!r}")
    return value


def _table(table: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = table.get(key, {})
    if not isinstance(value, dict):
        raise PresetError(f"{where}: {key} must be a table")
    return value


def _merged(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `override` applied key by key, recursing into nested tables (config mirrors nested dataclasses)."""
    merged = dict(base)
    for key, value in override.items():
        current = merged.get(key)
        both_tables = isinstance(current, dict) and isinstance(value, dict)
        merged[key] = _merged(current, value) if both_tables else value
    return merged


def _as_preset(preset: Preset | str) -> Preset:
    return preset if isinstance(preset, Preset) else get_preset(preset)


# --- cache and resolution --------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where url files are downloaded: `$FUSIONCAM_HOME`, else the platform's user cache dir / fusioncam."""
    home = os.environ.get(ENV_HOME)
    return Path(home).expanduser() if home else Path(platformdirs.user_cache_dir("fusioncam"))


def resolve_file(preset: Preset | str, role: str, *, download: bool = True, progress: bool = True) -> Path:
    """The local path of one file of `preset`, downloading it first when it is missing and downloads are allowed.

    `progress` draws a bar on stderr for url downloads; Hugging Face downloads show huggingface_hub's own bars
    (HF_HUB_DISABLE_PROGRESS_BARS=1 silences them).
    """
    preset = _as_preset(preset)
    spec = preset.file(role)
    if spec.member is not None and (extracted := _member_path(preset, spec)).is_file():
        return extracted
    offline = _offline_reason(download)
    if spec.source_kind == "path":
        fetched = _check_local(preset, spec)
    elif spec.source_kind == "hf":
        fetched = _fetch_hf(preset, spec, offline)
    else:
        fetched = _fetch_url(preset, spec, offline, progress)
    return _extract_member(fetched, spec, _member_path(preset, spec)) if spec.member is not None else fetched


def pull(preset: Preset | str, *, progress: bool = True) -> dict[str, Path]:
    """Every file of `preset`, downloaded if needed: role → local path."""
    preset = _as_preset(preset)
    return {role: resolve_file(preset, role, progress=progress) for role in preset.files}


def preset_paths(preset: Preset | str) -> dict[str, Path | None]:
    """Role → where the file is or will be put, without downloading.

    None marks a Hugging Face file not in the HF cache yet: huggingface_hub picks its place on download.
    """
    preset = _as_preset(preset)
    paths: dict[str, Path | None] = {}
    for role, spec in preset.files.items():
        paths[role] = _member_path(preset, spec) if spec.member is not None else _fetched_path(preset, spec)
    return paths


def verify(preset: Preset | str) -> list[VerifyResult]:
    """Hash every file of `preset` that is on disk and compare it with the best digest available.

    The expected digest is the preset's `sha256`; else, for url files, the one recorded at first download; else,
    for Hugging Face files, the hub's own (the blob name in the HF cache: sha256 for LFS files, git sha1 for small
    ones). A member extracted from an archive is checked through its archive.
    """
    preset = _as_preset(preset)
    return [_verify_file(preset, spec) for spec in preset.files.values()]


def _verify_file(preset: Preset, spec: FileSpec) -> VerifyResult:
    path = _fetched_path(preset, spec)
    if path is None or not path.is_file():
        if spec.member is not None and (extracted := _member_path(preset, spec)).is_file():
            return VerifyResult(spec.role, VerifyStatus.UNRECORDED, extracted)
        return VerifyResult(spec.role, VerifyStatus.MISSING, path)

    expected, digest_source = spec.sha256, "preset"
    if not expected and spec.source_kind == "url":
        expected, digest_source = _read_record(_record_path(preset, spec)), "recorded"
    if not expected and spec.source_kind == "hf":
        blob = path.resolve().name
        if _SHA256.fullmatch(blob):
            expected, digest_source = blob, "hub"
        elif _GIT_SHA1.fullmatch(blob):
            actual = _git_blob_sha1(path)
            status = VerifyStatus.OK if actual == blob else VerifyStatus.MISMATCH
            return VerifyResult(spec.role, status, path, blob, actual, "hub (git sha1)")
    if not expected:
        return VerifyResult(spec.role, VerifyStatus.UNRECORDED, path)
    actual = _sha256_file(path)
    status = VerifyStatus.OK if actual == expected else VerifyStatus.MISMATCH
    return VerifyResult(spec.role, status, path, expected, actual, digest_source)


def _offline_reason(download: bool) -> str | None:
    """Why nothing may be downloaded now, or None when downloads are allowed."""
    if not download:
        return "download=False"
    for variable in _OFFLINE_VARIABLES:
        value = os.environ.get(variable, "")
        if value.strip().lower() in {"1", "true", "yes", "on"}:
            return f"{variable}={value}"
    return None


def _fetched_path(preset: Preset, spec: FileSpec) -> Path | None:
    """Where the file as fetched (the archive, for a member) is or will be; None: a hub file not cached yet."""
    if spec.source_kind == "hf":
        return _hub_cached(spec)
    return _cache_path(preset, spec) if spec.source_kind == "url" else spec.path


def _cache_path(preset: Preset, spec: FileSpec) -> Path:
    return cache_dir() / preset.name / spec.filename


def _record_path(preset: Preset, spec: FileSpec) -> Path:
    # sha256sum format next to the file, so `sha256sum -c NAME.sha256` works in the cache folder too.
    return cache_dir() / preset.name / f"{spec.filename}.sha256"


def _member_path(preset: Preset, spec: FileSpec) -> Path:
    assert spec.member is not None
    return cache_dir() / preset.name / Path(spec.member).name


def _local_copy_hint(preset: Preset, spec: FileSpec) -> str:
    return (
        f"or keep the file anywhere and use a preset file of your own, e.g. my-{preset.name}.toml:\n"
        f'    extends = "{preset.name}"\n'
        f"    [files.{spec.role}]\n"
        f'    path = "/path/to/{spec.filename}"\n'
        f"  then pass --model my-{preset.name}.toml"
    )


def _check_local(preset: Preset, spec: FileSpec) -> Path:
    assert spec.path is not None
    if not spec.path.is_file():
        raise WeightsMissingError(
            f"{preset.name}: {spec.role} file {spec.path} does not exist (declared in {preset.source})"
        )
    return spec.path


def _fetch_url(preset: Preset, spec: FileSpec, offline: str | None, progress: bool) -> Path:
    assert spec.url is not None
    target = _cache_path(preset, spec)
    if target.is_file():
        return target
    if offline is not None:
        member = f"\n  (or the extracted {spec.member} at {_member_path(preset, spec)})" if spec.member else ""
        raise WeightsMissingError(
            f"{preset.name}: {spec.role} is not in the fusioncam cache and downloads are off ({offline}).\n"
            f"  Put {spec.filename} (from {spec.url}) at\n    {target}{member}\n"
            f"  {_local_copy_hint(preset, spec)}"
        )
    with _exclusive(target):
        if target.is_file():  # another process finished it while we waited
            return target
        digest = _download(spec.url, target, sha256=spec.sha256, size=spec.size, progress=progress)
        _write_record(_record_path(preset, spec), digest, spec.filename)
    if not spec.sha256:
        _stderr.print(
            f"recorded sha256 {digest} for {preset.name} {spec.role} (the preset declares none); "
            "later checks compare against it",
            markup=False,
            highlight=False,
        )
    return target


def _fetch_hf(preset: Preset, spec: FileSpec, offline: str | None) -> Path:
    # Imported here: presets without hub files (and `--help`) do not pay for importing huggingface_hub.
    from huggingface_hub import constants, hf_hub_download

    assert spec.hf_repo is not None and spec.hf_filename is not None
    try:
        path = Path(
            hf_hub_download(
                spec.hf_repo, spec.hf_filename, revision=spec.revision, local_files_only=offline is not None
            )
        )
    except OSError as error:  # huggingface_hub's HTTP and cache-miss errors are OSErrors
        revision = f" --revision {spec.revision}" if spec.revision else ""
        if offline is not None:
            raise WeightsMissingError(
                f"{preset.name}: {spec.role} ({spec.origin}) is not in the Hugging Face cache "
                f"and downloads are off ({offline}).\n"
                f"  On a machine with network run `hf download {spec.hf_repo} {spec.hf_filename}{revision}`, "
                f"copy its Hugging Face cache to {constants.HF_HUB_CACHE} (or point HF_HOME at the copy),\n"
                f"  {_local_copy_hint(preset, spec)}"
            ) from error
        raise DownloadError(
            f"{preset.name}: could not fetch {spec.origin}: {error}\n"
            "  Check the network (or HF_ENDPOINT / HF_TOKEN for mirrors and gated repos); "
            f"without network: {_local_copy_hint(preset, spec)}"
        ) from error
    blob = path.resolve().name
    if spec.sha256 and _SHA256.fullmatch(blob) and blob != spec.sha256:
        # The HF cache names LFS blobs by their sha256: a free check that the hub serves what the preset pins.
        raise ChecksumError(
            f"{preset.name}: {spec.origin} has sha256 {blob} on the hub, the preset expects {spec.sha256}; "
            "pin the preset's revision to the commit it was made from, or update its sha256"
        )
    return path


def _hub_cached(spec: FileSpec) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    assert spec.hf_repo is not None and spec.hf_filename is not None
    cached = try_to_load_from_cache(spec.hf_repo, spec.hf_filename, revision=spec.revision)
    return Path(cached) if isinstance(cached, str) else None


def _extract_member(archive: Path, spec: FileSpec, target: Path) -> Path:
    """Unpack the member a preset asks for next to the cache, through a `.part` file so it appears whole."""
    assert spec.member is not None
    part = target.with_name(target.name + ".part")
    with _exclusive(target):
        if target.is_file():
            return target
        try:
            with zipfile.ZipFile(archive) as bundle:
                if spec.member not in bundle.namelist():
                    members = ", ".join(bundle.namelist())
                    raise PresetError(f"{archive} has no member {spec.member!r}; it holds: {members}")
                with bundle.open(spec.member) as source, part.open("wb") as out:
                    shutil.copyfileobj(source, out, _CHUNK)
        except zipfile.BadZipFile as error:
            part.unlink(missing_ok=True)
            raise ChecksumError(
                f"{archive} is not a valid zip archive ({error}); delete it and download again"
            ) from None
        os.replace(part, target)
    return target


@contextmanager
def _exclusive(target: Path) -> Iterator[None]:
    """Hold `<target>.lock`: parallel runs (batch shards) share one cache and must not write one file twice."""
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(f"{target}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        _stderr.print(f"waiting for another process to finish {target} ...", markup=False, highlight=False)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


# --- download -------------------------------------------------------------------------------------------------


class _Interrupted(Exception):
    """The transfer stopped early; what arrived is kept in the `.part` file for the next attempt to resume."""


def _download(url: str, target: Path, *, sha256: str, size: int, progress: bool) -> str:
    """Stream `url` into `target` atomically and return its sha256; retries dropped connections by resuming."""
    part = target.with_name(target.name + ".part")
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            digest = _stream(url, part, target, progress)
            break
        except _Interrupted as error:
            if attempt == _ATTEMPTS:
                raise DownloadError(
                    f"{url}: the transfer broke off {_ATTEMPTS} times ({error}).\n"
                    f"  What arrived is kept in {part}; run again to resume, or download the file yourself "
                    f"and put it at {target}"
                ) from error
    received = part.stat().st_size
    problem = ""
    if size and received != size:
        problem = f"{received} bytes arrived, the preset expects {size}"
    elif sha256 and digest != sha256:
        problem = f"sha256 is {digest}, the preset expects {sha256}"
    if problem:
        part.unlink()
        raise ChecksumError(
            f"{url}: {problem}. Nothing was kept. The file may have changed upstream or been corrupted in "
            "transit: try again, and if it persists check the preset's sha256/size"
        )
    os.replace(part, target)
    return digest


def _stream(url: str, part: Path, target: Path, progress: bool) -> str:
    """One HTTP request appending to `part` (resuming it with Range when it exists); returns the part's sha256."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # the part is not a prefix of the file (any more): start over
            part.unlink()
            raise _Interrupted("the server refused to resume") from error
        raise DownloadError(
            f"{url}: HTTP {error.code} {error.reason}.\n"
            f"  Check the URL in the preset, or download the file yourself and put it at {target}"
        ) from error
    except OSError as error:  # URLError included: refused, unresolvable, timed out
        reason = getattr(error, "reason", error)
        raise DownloadError(
            f"cannot reach {url} ({reason}).\n"
            f"  Without network, download the file elsewhere and put it at {target} "
            f"({ENV_OFFLINE}=1 skips download attempts)"
        ) from error

    with response:
        if offset and response.status == 206 and _range_start(response) != offset:
            part.unlink()
            raise _Interrupted("the server answered a different range")
        if offset and response.status != 206:  # the server ignored Range and sends everything: restart
            offset = 0
        hasher = hashlib.sha256()
        if offset:
            _hash_into(hasher, part)
        total = _total_length(response, offset)
        received = offset
        with part.open("ab" if offset else "wb") as out, _progress(target.name, total, offset, progress) as bar:
            while chunk := _read_chunk(response):
                out.write(chunk)
                hasher.update(chunk)
                received += len(chunk)
                bar(len(chunk))
    # http.client returns a short body without complaint when the connection drops: check the length ourselves.
    if total is not None and received < total:
        raise _Interrupted(f"the connection closed after {received} of {total} bytes")
    return hasher.hexdigest()


def _read_chunk(response: http.client.HTTPResponse) -> bytes:
    try:
        return response.read(_CHUNK)
    except (http.client.HTTPException, OSError) as error:  # resets and timeouts included
        raise _Interrupted(f"{type(error).__name__}: {error}") from error


def _range_start(response: http.client.HTTPResponse) -> int | None:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _total_length(response: http.client.HTTPResponse, offset: int) -> int | None:
    """Size of the whole file, from Content-Range (partial answers) or Content-Length."""
    if response.status == 206:
        match = re.search(r"/(\d+)$", response.headers.get("Content-Range", ""))
        return int(match.group(1)) if match else None
    length = response.headers.get("Content-Length")
    return offset + int(length) if length and length.isdigit() else None


@contextmanager
def _progress(label: str, total: int | None, completed: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A download bar on stderr (stdout is for data); yields `advance(nbytes)`."""
    if not enabled:
        yield lambda _: None
        return
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=_stderr) as bar:
        task = bar.add_task(label, total=total, completed=completed)
        yield lambda n: bar.advance(task, n)


def _hash_into(hasher: Any, path: Path) -> None:
    with path.open("rb") as source:
        while chunk := source.read(_CHUNK):
            hasher.update(chunk)


def _sha256_file(path: Path) -> str:
    hasher = hashlib.sha256()
    _hash_into(hasher, path)
    return hasher.hexdigest()


def _git_blob_sha1(path: Path) -> str:
    """Git's object id of the file's content, the name the HF cache gives small (non-LFS) files."""
    hasher = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    _hash_into(hasher, path)
    return hasher.hexdigest()


def _write_record(record: Path, digest: str, filename: str) -> None:
    temporary = record.with_name(record.name + ".part")
    temporary.write_text(f"{digest}  {filename}\n", encoding="utf-8")
    os.replace(temporary, record)


def _read_record(record: Path) -> str:
    try:
        return record.read_text(encoding="utf-8").split(maxsplit=1)[0].lower()
    except (FileNotFoundError, IndexError):
        return ""
