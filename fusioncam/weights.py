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
file fails at once with an error that says which file to put where, and `require_files` names every missing file
of a preset in one error. Looking files up (`preset_paths`, `verify`, `weights list`) reads the Hugging Face cache
layout directly and never imports `huggingface_hub` (nor the HTTP, zip, lock and progress-bar modules): those are
imported only when a file is actually fetched.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.resources
import json
import logging
import os
import re
import shutil
import sys
import time
import urllib.parse
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import platformdirs

if TYPE_CHECKING:
    import http.client

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
# A file no bigger than this is hashed when a digest is asked for and none is known (sha256 of 64 MiB took 0.04 s
# on a 2-core AMD EPYC VM); a bigger one only when its preset declares a sha256 to check it against.
_SMALL_FILE_BYTES = 64 << 20
# Folder of cache_dir() holding the digests of local files (see `_local_sha256`); a preset name cannot start
# with "_", so it never clashes with a preset's folder.
_DIGESTS_FOLDER = "_digests"

_PRESET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_GIT_SHA1 = re.compile(r"[0-9a-f]{40}")
_PRESET_KEYS = frozenset(
    {"kind", "architecture", "layout", "description", "license", "extends", "config", "preprocess", "files"}
)
_FILE_KEYS = frozenset({"url", "hf_repo", "hf_filename", "revision", "path", "sha256", "size", "member"})

log = logging.getLogger(__name__)

# How downloads show their progress: `(label, total bytes or None, bytes already there)` → a context manager
# yielding `advance(nbytes)`. The library only logs a download's start and end; the CLI draws bars through
# `show_downloads`. (Library code never prints: what a user sees is the application's choice.)
DownloadProgress = Callable[[str, "int | None", int], AbstractContextManager[Callable[[int], None]]]
_download_progress: DownloadProgress | None = None


def show_downloads(progress: DownloadProgress | None) -> None:
    """Report url downloads through `progress` (None: log their start and end only)."""
    global _download_progress
    _download_progress = progress


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
        if isinstance(current, dict) and isinstance(value, dict):
            value = _merged(current, value)
        merged[key] = value
    return merged


def _as_preset(preset: Preset | str) -> Preset:
    return preset if isinstance(preset, Preset) else get_preset(preset)


# --- writing presets ------------------------------------------------------------------------------------------
# Beside the parser, so that the schema has one owner: what is written here is what `_parse_preset` reads.


def preset_toml(table: Mapping[str, Any]) -> str:
    """A preset table — or a registry, a table of preset tables — as the TOML `get_preset` / `load_registry` read.

    The top-level keys come first, then one `[a.b]` section per sub-table; a table holding only sub-tables gets no
    header of its own (TOML defines it implicitly). Values are scalars and lists of them.
    """
    sections: list[str] = []

    def add(values: Mapping[str, Any], name: str) -> None:
        lines = [f"{key} = {_toml_value(value)}" for key, value in values.items() if not isinstance(value, dict)]
        tables = {key: value for key, value in values.items() if isinstance(value, dict)}
        if lines or not tables:
            sections.append("\n".join(([f"[{name}]"] if name else []) + lines))
        for key, value in tables.items():
            add(value, f"{name}.{key}" if name else key)

    add(table, "")
    return "\n\n".join(sections) + "\n"


def write_preset(path: Path, table: Mapping[str, Any]) -> None:
    """Write one preset file (`get_preset(path)` reads it, named after the file's stem).

    Keys the parser does not know are refused here, when the preset is made, rather than when someone loads it.
    """
    where = str(path)
    _check_keys(table, _PRESET_KEYS, where)
    for role, spec in _table(table, "files", where).items():
        _check_keys(spec, _FILE_KEYS, f"{where} files.{role}")
    path.write_text(preset_toml(table), encoding="utf-8")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


# --- cache and resolution --------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where url files are downloaded: `$FUSIONCAM_HOME`, else the platform's user cache dir / fusioncam."""
    home = os.environ.get(ENV_HOME)
    return Path(home).expanduser() if home else Path(platformdirs.user_cache_dir("fusioncam"))


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache, found the way huggingface_hub finds it but without importing its download API
    (`from huggingface_hub import hf_hub_download` took 0.18 s with huggingface_hub 2.4.0 on a 2-core AMD EPYC VM).

    `$HF_HUB_CACHE` (or the older `$HUGGINGFACE_HUB_CACHE`), else `$HF_HOME/hub`, else
    `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`. Once huggingface_hub is imported, its
    `constants.HF_HUB_CACHE` wins: it read the environment at its import, and this process downloads there.
    """
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        return Path(constants.HF_HUB_CACHE)

    def expand(value: str) -> str:
        return os.path.expandvars(os.path.expanduser(value))

    xdg_cache = os.getenv("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    home = expand(os.getenv("HF_HOME", os.path.join(xdg_cache, "huggingface")))
    return Path(expand(os.getenv("HF_HUB_CACHE", os.getenv("HUGGINGFACE_HUB_CACHE", os.path.join(home, "hub")))))


def _hub_snapshot(spec: FileSpec) -> Path | None:
    """Where the HF cache keeps (or will keep) a hub file: `<hf_hub_cache>/models--ORG--NAME/snapshots/COMMIT/FILE`.

    COMMIT is what `refs/<revision>` (default `main`) of the repo's cache folder holds — written by the first
    download of that revision — or the revision itself when it is a commit id. None when neither: the revision
    was never fetched here, and only the hub knows its commit. The lookup `huggingface_hub.try_to_load_from_cache`
    does, read straight from the documented cache layout so that listing files does not import huggingface_hub.
    """
    assert spec.hf_repo is not None and spec.hf_filename is not None
    revision = spec.revision or "main"
    repo = hf_hub_cache() / f"models--{spec.hf_repo.replace('/', '--')}"
    try:
        commit = (repo / "refs" / revision).read_text(encoding="utf-8").strip()
    except OSError:  # never fetched, or a commit id (which has no ref)
        commit = revision if _GIT_SHA1.fullmatch(revision) else ""
    return repo / "snapshots" / commit / spec.hf_filename if commit else None


def resolve_file(preset: Preset | str, role: str, *, download: bool = True, progress: bool = True) -> Path:
    """The local path of one file of `preset`, downloading it first when it is missing and downloads are allowed.

    `progress` draws a bar on stderr for url downloads; Hugging Face downloads show huggingface_hub's own bars
    (HF_HUB_DISABLE_PROGRESS_BARS=1 silences them). A local `path` file with a declared `sha256` is checked
    against it (hashed once per version of the file, see `_local_sha256`). To get several files of a preset,
    `require_files` reports every missing one at once.
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


def require_files(
    preset: Preset | str, roles: Collection[str] | None = None, *, download: bool = True, progress: bool = True
) -> dict[str, Path]:
    """Role → local path of each file of `roles` (default: every file of the preset), downloading what is missing.

    Before anything is fetched, every file that cannot be — all missing files when downloads are off, missing
    local `path` files always — is named in one `WeightsMissingError`, each with the place to put it or its
    source: someone copying weights onto an air-gapped machine learns of all of them in one run, not one per run.
    Loaders pass the roles they read, so a file they do not need is neither required nor downloaded.
    """
    preset = _as_preset(preset)
    wanted = [roles] if isinstance(roles, str) else list(preset.files if roles is None else roles)
    specs = [preset.file(role) for role in wanted]
    offline = _offline_reason(download)
    unfetchable = [
        spec for spec in specs if (offline is not None or spec.source_kind == "path") and not _is_here(preset, spec)
    ]
    if unfetchable:
        raise _missing_error(preset, unfetchable, offline)
    return {spec.role: resolve_file(preset, spec.role, download=download, progress=progress) for spec in specs}


def pull(preset: Preset | str, *, progress: bool = True) -> dict[str, Path]:
    """Every file of `preset`, downloaded if needed: role → local path (offline: every missing file in one error)."""
    return require_files(preset, progress=progress)


def preset_paths(preset: Preset | str) -> dict[str, Path | None]:
    """Role → where the file is or will be put, without downloading or importing huggingface_hub.

    A Hugging Face file's place is its snapshot path in the HF cache (see `_hub_snapshot`); None only for a hub
    file of a revision never fetched on this machine, whose commit — part of the path — the hub decides.
    """
    preset = _as_preset(preset)
    return {role: _place(preset, spec) for role, spec in preset.files.items()}


def file_location(preset: Preset | str, role: str) -> str:
    """Where a file is or will be, for people: its path, or `not downloaded (hf://ORG/NAME/FILE@REV)` for a hub
    file whose place in the HF cache is not known before its first download."""
    preset = _as_preset(preset)
    spec = preset.file(role)
    place = _place(preset, spec)
    return str(place) if place is not None else f"not downloaded ({spec.origin})"


def files_here(preset: Preset | str) -> dict[str, bool]:
    """Role → whether the file is on disk (for a `member`: extracted, or its archive), without downloading."""
    preset = _as_preset(preset)
    return {role: _is_here(preset, spec) for role, spec in preset.files.items()}


def preset_size(preset: Preset | str) -> int | None:
    """Bytes of all the files of `preset`, or None when the size of one of them is not known.

    Per file: the declared `size`, else its size on disk when it is here (for a `member`: the archive's, else the
    extracted member's).
    """
    preset = _as_preset(preset)
    total = 0
    for spec in preset.files.values():
        size: int | None = spec.size or _size_on_disk(_fetched_path(preset, spec))
        if size is None and spec.member is not None:
            size = _size_on_disk(_member_path(preset, spec))
        if size is None:
            return None
        total += size
    return total


def file_digest(preset: Preset | str, role: str) -> str | None:
    """The sha256 of one file of `preset` as fetched (for a `member`: of its archive), for run records.

    Never downloads, and hashes only a small file (at most 64 MiB) whose digest is not known otherwise. In order:
    the preset's declared `sha256` (downloads and local files are checked against it); the digest recorded at
    download (url files); the hub's (an LFS file's blob name in the HF cache); one computed earlier (see
    `_local_sha256`); one computed now for a small file. None when the file is not here and declares no digest,
    or it is big and was never hashed.
    """
    preset = _as_preset(preset)
    spec = preset.file(role)
    if spec.sha256:
        return spec.sha256
    path = _fetched_path(preset, spec)
    if path is None or not path.is_file():
        return None
    if spec.source_kind == "url" and (recorded := _read_record(_record_path(preset, spec))):
        return recorded
    if spec.source_kind == "hf" and _SHA256.fullmatch(blob := path.resolve().name):
        return blob
    return _local_sha256(path, compute=path.stat().st_size <= _SMALL_FILE_BYTES)


def verify(preset: Preset | str) -> list[VerifyResult]:
    """Hash every file of `preset` that is on disk and compare it with the best digest available.

    The expected digest is the preset's `sha256`; else, for url files, the one recorded at first download; else,
    for Hugging Face files, the hub's own (the blob name in the HF cache: sha256 for LFS files, git sha1 for small
    ones). A member extracted from an archive is checked through its archive. A missing file has status MISSING
    and the `path` it is expected at (None: a hub file whose place is not known yet, see `preset_paths`). Files
    are always hashed afresh here; the digest is remembered for loading (see `_local_sha256`).
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
    actual = _hash_and_remember(path)
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
    """Where the file as fetched (the archive, for a member) is or will be; None: a hub file of a revision never
    fetched here."""
    if spec.source_kind == "hf":
        return _hub_snapshot(spec)
    return _cache_path(preset, spec) if spec.source_kind == "url" else spec.path


def _place(preset: Preset, spec: FileSpec) -> Path | None:
    """Where the model reads the file from: the extracted member, or the file as fetched."""
    return _member_path(preset, spec) if spec.member is not None else _fetched_path(preset, spec)


def _is_here(preset: Preset, spec: FileSpec) -> bool:
    if spec.member is not None and _member_path(preset, spec).is_file():
        return True
    path = _fetched_path(preset, spec)
    return path is not None and path.is_file()


def _size_on_disk(path: Path | None) -> int | None:
    try:
        return path.stat().st_size if path is not None else None
    except OSError:
        return None


def _cache_path(preset: Preset, spec: FileSpec) -> Path:
    return cache_dir() / preset.name / spec.filename


def _record_path(preset: Preset, spec: FileSpec) -> Path:
    # sha256sum format next to the file, so `sha256sum -c NAME.sha256` works in the cache folder too.
    return cache_dir() / preset.name / f"{spec.filename}.sha256"


def _member_path(preset: Preset, spec: FileSpec) -> Path:
    assert spec.member is not None
    return cache_dir() / preset.name / Path(spec.member).name


def _local_copy_hint(preset: Preset, specs: list[FileSpec]) -> str:
    tables = "".join(f'    [files.{spec.role}]\n    path = "/path/to/{spec.filename}"\n' for spec in specs)
    return (
        f"or keep the files anywhere and use a preset file of your own, e.g. my-{preset.name}.toml:\n"
        f'    extends = "{preset.name}"\n{tables}'
        f"  then pass --model my-{preset.name}.toml"
    )


def _where_to_put(preset: Preset, spec: FileSpec) -> str:
    """One missing file: what it is and where it goes (or what to run to get it there)."""
    if spec.source_kind == "path":
        return f"{spec.role}: {spec.path} does not exist (declared in {preset.source})"
    if spec.source_kind == "url":
        member = f"\n      (or the extracted {spec.member} at {_member_path(preset, spec)})" if spec.member else ""
        return f"{spec.role}: put {spec.filename} (from {spec.url}) at\n      {_cache_path(preset, spec)}{member}"
    revision = f" --revision {spec.revision}" if spec.revision else ""
    snapshot = _hub_snapshot(spec)
    goes_to = f", it goes to\n      {snapshot}" if snapshot is not None else ""
    return (
        f"{spec.role}: {spec.origin} is not in the Hugging Face cache{goes_to}\n"
        f"      get it with `hf download {spec.hf_repo} {spec.hf_filename}{revision}` on a machine with network "
        f"and copy that machine's Hugging Face cache to {hf_hub_cache()} (or point HF_HOME at the copy)"
    )


def _missing_error(preset: Preset, specs: list[FileSpec], offline: str | None) -> WeightsMissingError:
    """One error naming every file of `specs` (all of `preset`, none on disk) with where to put it."""
    if len(specs) == 1 and specs[0].source_kind == "path":
        spec = specs[0]
        return WeightsMissingError(
            f"{preset.name}: {spec.role} file {spec.path} does not exist (declared in {preset.source})"
        )
    what = f"{specs[0].role} is" if len(specs) == 1 else f"{len(specs)} files are"
    reason = f" and downloads are off ({offline})" if offline is not None else ""
    lines = "".join(f"\n  {_where_to_put(preset, spec)}" for spec in specs)
    fetched = [spec for spec in specs if spec.source_kind != "path"]
    hint = f"\n  {_local_copy_hint(preset, fetched)}" if fetched else ""
    return WeightsMissingError(f"{preset.name}: {what} missing{reason}:{lines}{hint}")


def _check_local(preset: Preset, spec: FileSpec) -> Path:
    assert spec.path is not None
    if not spec.path.is_file():
        raise _missing_error(preset, [spec], None)
    size = spec.path.stat().st_size
    if spec.size and size != spec.size:
        raise ChecksumError(
            f"{preset.name}: {spec.role} file {spec.path} has {size} bytes, the preset ({preset.source}) "
            f"declares {spec.size}: use the file the preset was written for, or fix its size"
        )
    if spec.sha256 and (actual := _local_sha256(spec.path)) != spec.sha256:
        raise ChecksumError(
            f"{preset.name}: {spec.role} file {spec.path} has sha256 {actual}, the preset ({preset.source}) "
            f"expects {spec.sha256}: the file is corrupt or not the one the preset was written for; "
            "use the right file, or fix the preset's sha256"
        )
    return spec.path


def _fetch_url(preset: Preset, spec: FileSpec, offline: str | None, progress: bool) -> Path:
    assert spec.url is not None
    target = _cache_path(preset, spec)
    if target.is_file():
        return target
    if offline is not None:
        raise _missing_error(preset, [spec], offline)
    with _exclusive(target):
        if target.is_file():  # another process finished it while we waited
            return target
        digest = _download(spec.url, target, sha256=spec.sha256, size=spec.size, progress=progress)
        _write_record(_record_path(preset, spec), digest, spec.filename)
    if not spec.sha256:
        log.warning(
            "recorded sha256 %s for %s %s (the preset declares none); later checks compare against it",
            digest,
            preset.name,
            spec.role,
        )
    return target


def _fetch_hf(preset: Preset, spec: FileSpec, offline: str | None) -> Path:
    assert spec.hf_repo is not None and spec.hf_filename is not None
    if offline is not None:
        # What hf_hub_download(local_files_only=True) would find, without importing huggingface_hub.
        path = _hub_snapshot(spec)
        if path is None or not path.is_file():
            raise _missing_error(preset, [spec], offline)
    else:
        # Imported here: presets without hub files, offline runs and `--help` do not pay for importing it.
        from huggingface_hub import hf_hub_download

        try:
            path = Path(hf_hub_download(spec.hf_repo, spec.hf_filename, revision=spec.revision))
        except OSError as error:  # huggingface_hub's HTTP and cache-miss errors are OSErrors
            raise DownloadError(
                f"{preset.name}: could not fetch {spec.origin}: {error}\n"
                "  Check the network (or HF_ENDPOINT / HF_TOKEN for mirrors and gated repos); "
                f"without network: {_local_copy_hint(preset, [spec])}"
            ) from error
    blob = path.resolve().name
    if spec.sha256 and _SHA256.fullmatch(blob) and blob != spec.sha256:
        # The HF cache names LFS blobs by their sha256: a free check that the hub serves what the preset pins.
        raise ChecksumError(
            f"{preset.name}: {spec.origin} has sha256 {blob} on the hub, the preset expects {spec.sha256}; "
            "pin the preset's revision to the commit it was made from, or update its sha256"
        )
    return path


# --- digests of local files -------------------------------------------------------------------------------------

_DigestKey = tuple[str, int, int, int, int]  # resolved path, size, mtime_ns, ctime_ns, inode
_DIGEST_KEY_FIELDS = ("path", "size", "mtime_ns", "ctime_ns", "inode")
# A digest is trusted only for a file last changed this long before it was hashed: a file rewritten within one
# timestamp tick of its hashing would otherwise keep its stat and its stale digest (git's "racy clean" problem).
_RACY_NS = 100_000_000
_DIGEST_MEMO: dict[_DigestKey, tuple[str, int]] = {}  # key → (sha256, time.time_ns() when hashing began)


def _local_sha256(path: Path, *, compute: bool = True) -> str | None:
    """The sha256 of a file on disk, hashed once per version of the file rather than on every run.

    Hashing a 1 GB checkpoint takes seconds and every CLI run is a new process, so a per-process cache alone
    would hash it again on every run. The digest is therefore kept in a record under `cache_dir()/_digests/`: one
    small JSON file per hashed file, named by a hash of its resolved path and replaced atomically (parallel runs
    never read half a record), trusted while the file's size, mtime, ctime and inode are unchanged — the test
    git's index uses to skip unchanged files. ctime cannot be set back by a program, so a file rewritten in place
    with its mtime restored is hashed again; a file changed less than 0.1 s before it was hashed is hashed again
    next time too (see `_RACY_NS`). A dict spares re-reading the record within a process. Where the cache folder
    is read-only no record is kept and the file is hashed once per process. `verify` always hashes afresh and
    refreshes the record. `compute=False`: only a digest already known, else None.
    """
    resolved = path.resolve()
    key = _digest_key(resolved)
    known = _DIGEST_MEMO.get(key)
    if known is None:
        try:
            stored = json.loads(_digest_record(key[0]).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stored = None
        if isinstance(stored, dict) and tuple(stored.get(field) for field in _DIGEST_KEY_FIELDS) == key:
            digest, hashed_at = stored.get("sha256"), stored.get("hashed_at_ns")
            if isinstance(digest, str) and _SHA256.fullmatch(digest) and isinstance(hashed_at, int):
                known = _DIGEST_MEMO[key] = (digest, hashed_at)
    if known is not None and max(key[2], key[3]) < known[1] - _RACY_NS:
        return known[0]
    return _hash_and_remember(resolved) if compute else None


def _hash_and_remember(path: Path) -> str:
    """Hash `path` now and remember the digest for `_local_sha256` (stat first, so a change while hashing shows)."""
    resolved = path.resolve()
    hashed_at = time.time_ns()
    key = _digest_key(resolved)
    digest = _sha256_file(resolved)
    _DIGEST_MEMO[key] = (digest, hashed_at)
    record = _digest_record(key[0])
    temporary = record.with_name(f"{record.name}.{os.getpid()}.part")
    fields = dict(zip(_DIGEST_KEY_FIELDS, key, strict=True))
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps({**fields, "sha256": digest, "hashed_at_ns": hashed_at}), encoding="utf-8")
        os.replace(temporary, record)
    except OSError:  # a read-only or full cache: the digest is still remembered for this process
        temporary.unlink(missing_ok=True)
    return digest


def _digest_key(resolved: Path) -> _DigestKey:
    stat = resolved.stat()
    return (str(resolved), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)


def _digest_record(resolved: str) -> Path:
    name = hashlib.sha256(resolved.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return cache_dir() / _DIGESTS_FOLDER / f"{name}.json"


def _extract_member(archive: Path, spec: FileSpec, target: Path) -> Path:
    """Unpack the member a preset asks for next to the cache, through a `.part` file so it appears whole."""
    import zipfile

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
    from filelock import FileLock, Timeout

    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(f"{target}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.warning("waiting for another process to finish %s ...", target)
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
    import urllib.error
    import urllib.request

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
    import http.client

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
    """`advance(nbytes)` of one download, reported through `show_downloads`'s choice, or logged."""
    if not enabled:
        yield lambda _: None
    elif _download_progress is not None:
        with _download_progress(label, total, completed) as advance:
            yield advance
    else:
        log.info("downloading %s (%s bytes)", label, total if total else "an unknown number of")
        yield lambda _: None
        log.info("downloaded %s", label)


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
