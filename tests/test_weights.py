"""Presets, cache and downloads, against a real HTTP server on 127.0.0.1 (nothing here reaches the internet)."""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import huggingface_hub.constants
import pytest
from typer.testing import Result

from fusioncam import weights
from fusioncam.weights import (
    ChecksumError,
    DownloadError,
    PresetError,
    UnknownPresetError,
    VerifyStatus,
    WeightsMissingError,
    file_digest,
    get_preset,
    load_registry,
    preset_paths,
    pull,
    require_files,
    resolve_file,
    show_downloads,
    verify,
)

REPO = Path(__file__).resolve().parents[1]
CONTENT = random.Random(0).randbytes(3 * (1 << 20) + 12345)  # several download chunks, not a whole number
DIGEST = hashlib.sha256(CONTENT).hexdigest()


@dataclass
class ServerState:
    """What the handler serves, how it misbehaves, and what it was asked."""

    files: dict[str, bytes] = field(default_factory=dict)
    cut_after: int | None = None  # close the connection after this many body bytes, once
    corrupt: bool = False  # flip one byte of every body
    ignore_range: bool = False  # answer 200 with the whole file even when asked for a range
    delay_s: float = 0.0  # wait before sending the body, so that concurrent clients overlap
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        state.requests.append((self.path, self.headers.get("Range")))
        if self.path not in state.files:
            self.send_error(404)
            return
        body = state.files[self.path]
        if state.corrupt:
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        start = 0
        requested = self.headers.get("Range")
        if requested and not state.ignore_range:
            start = int(requested.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        time.sleep(state.delay_s)
        if state.cut_after is not None:
            payload, state.cut_after = payload[: state.cut_after], None
            self.wfile.write(payload)
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass


@dataclass
class Server:
    state: ServerState
    url: str


@pytest.fixture
def server() -> Iterator[Server]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.state = ServerState(files={"/model.bin": CONTENT})  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield Server(httpd.state, f"http://127.0.0.1:{httpd.server_address[1]}")  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private fusioncam cache and HF cache, downloads allowed, the bundled registry."""
    for variable in ("FUSIONCAM_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "FUSIONCAM_WEIGHTS_TOML"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("FUSIONCAM_HOME", str(tmp_path / "cache"))
    # huggingface_hub reads HF_HUB_CACHE once at import; its functions look the constant up at call time. The
    # variable is for our own lookup when huggingface_hub is not imported (subprocesses).
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path / "cache"


def write_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, file_table: str) -> None:
    """A registry with one preset, `tiny`, whose checkpoint is described by `file_table`."""
    registry = tmp_path / "weights.toml"
    registry.write_text(f'[tiny]\nkind = "blip-itm"\nlayout = "lavis"\n[tiny.files.checkpoint]\n{file_table}\n')
    monkeypatch.setenv("FUSIONCAM_WEIGHTS_TOML", str(registry))


# --- registry ---------------------------------------------------------------------------------------------------


def test_bundled_registry_declares_every_preset_with_one_source_per_file() -> None:
    registry = load_registry()
    assert set(registry) >= {
        "blip-itm-base",
        "blip-itm-large",
        "blip-itm-base-coco-hf",
        "blip-itm-large-coco-hf",
        "blip-caption-large",
        "efficient-sam-vitt",
        "efficient-sam-vits",
        "unifiedqa-v2-t5-base",
        "unifiedqa-v2-t5-large",
        "unifiedqa-v2-t5-3b",
    }
    assert registry["example-image"].files["image"].url  # the picture `make demo` explains
    for preset in (preset for preset in registry.values() if preset.kind != "image"):
        assert preset.license and preset.description and (preset.architecture or preset.config)
        assert "checkpoint" in preset.files
        for spec in preset.files.values():
            assert [spec.url, spec.hf_repo, spec.path].count(None) == 2, (preset.name, spec.role)
        if preset.kind.startswith("blip") and not preset.name.startswith("synth-"):  # the toy set has its own words
            assert preset.files["vocab"].hf_repo == "bert-base-uncased"
            assert preset.preprocess["image_size"] == 384
    assert registry["blip-itm-base"].files["checkpoint"].url == (
        "https://storage.googleapis.com/sfr-vision-language-research/BLIP/models/model_base_retrieval_coco.pth"
    )
    assert registry["blip-itm-base-coco-hf"].config == {"vision": {"layer_norm_eps": 1e-5}}
    assert registry["efficient-sam-vits"].files["checkpoint"].member == "efficient_sam_vits.pt"


def test_packaged_registry_is_the_top_level_file() -> None:
    assert (REPO / "fusioncam" / "weights.toml").resolve() == (REPO / "weights.toml").resolve()


@pytest.mark.parametrize(
    ("file_table", "complaint"),
    [
        ('url = "http://x/a.bin"\npath = "a.bin"', "exactly one source"),
        ('sha256 = ""', "exactly one source"),
        ('hf_repo = "org/name"', "needs hf_filename"),
        ('url = "http://x/a.bin"\nrevision = "main"', "belong to an hf_repo"),
        ('url = "http://x/a.bin"\nsha256 = "abc"', "64 hex digits"),
        ('url = "http://x/a.bin"\nsize = -1', "whole number"),
        ('url = "http://x/a.bin"\nsha = "0"', "unknown key(s) sha"),
    ],
)
def test_malformed_file_entries_are_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, file_table: str, complaint: str
) -> None:
    write_registry(tmp_path, monkeypatch, file_table)
    with pytest.raises(PresetError, match=re.escape(complaint)):
        load_registry()


def test_unknown_name_suggests_the_closest_preset() -> None:
    with pytest.raises(UnknownPresetError, match="Did you mean 'blip-itm-base'") as raised:
        get_preset("blip-itm-bas")
    assert "unifiedqa-v2-t5-base" in str(raised.value)


def test_user_preset_file_resolves_relative_paths_and_extends_a_preset(tmp_path: Path) -> None:
    folder = tmp_path / "finetune"
    (folder / "ckpt").mkdir(parents=True)
    (folder / "ckpt" / "model.pth").write_bytes(b"weights")
    preset_file = folder / "my-blip.toml"
    preset_file.write_text(
        'extends = "blip-itm-base"\ndescription = "my fine-tune"\n'
        "[config.vision]\nlayer_norm_eps = 1e-5\n"
        '[files.checkpoint]\npath = "ckpt/model.pth"\n'
    )

    preset = get_preset(str(preset_file))

    assert (preset.name, preset.kind, preset.layout, preset.description) == (
        "my-blip",
        "blip-itm",
        "lavis",
        "my fine-tune",
    )
    assert preset.config == {"vision": {"layer_norm_eps": 1e-5}}
    assert preset.preprocess == get_preset("blip-itm-base").preprocess
    assert preset.files["vocab"] == get_preset("blip-itm-base").files["vocab"]
    assert resolve_file(preset, "checkpoint") == folder / "ckpt" / "model.pth"
    assert verify(preset)[0].status is VerifyStatus.UNRECORDED


def test_standalone_preset_file_with_a_missing_path(tmp_path: Path) -> None:
    preset_file = tmp_path / "sam.toml"
    preset_file.write_text(
        'kind = "efficient-sam"\narchitecture = "vitt"\nlayout = "efficient-sam"\n'
        '[files.checkpoint]\npath = "absent.pt"\n'
    )
    with pytest.raises(WeightsMissingError, match=str(tmp_path / "absent.pt")):
        resolve_file(str(preset_file), "checkpoint")


# --- downloads --------------------------------------------------------------------------------------------------


def test_first_download_records_the_digest_and_verify_uses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: Server, isolated: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_registry(tmp_path, monkeypatch, f'url = "{server.url}/model.bin"\nsha256 = ""')

    show_downloads(None)  # as a library user has it (a CLI run in this process may have set the CLI's bars)
    with caplog.at_level("INFO", logger="fusioncam.weights"):
        path = resolve_file("tiny", "checkpoint")  # the library logs; the CLI shows it

    assert path == isolated / "tiny" / "model.bin"
    assert path.read_bytes() == CONTENT
    assert f"recorded sha256 {DIGEST}" in caplog.text and "downloading model.bin" in caplog.text
    assert (isolated / "tiny" / "model.bin.sha256").read_text().split() == [DIGEST, "model.bin"]
    assert resolve_file("tiny", "checkpoint") == path and len(server.state.requests) == 1  # cached now

    [result] = verify("tiny")
    assert (result.status, result.expected, result.digest_source) == (VerifyStatus.OK, DIGEST, "recorded")

    flipped = bytearray(CONTENT)
    flipped[1000] ^= 1
    path.write_bytes(bytes(flipped))
    [result] = verify("tiny")
    assert result.status is VerifyStatus.MISMATCH and result.actual != DIGEST


def test_a_dropped_connection_is_resumed_with_a_range_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: Server
) -> None:
    write_registry(tmp_path, monkeypatch, f'url = "{server.url}/model.bin"\nsha256 = "{DIGEST}"\nsize = {len(CONTENT)}')
    cut = (1 << 20) + 4321
    server.state.cut_after = cut

    path = resolve_file("tiny", "checkpoint", progress=False)

    assert server.state.requests == [("/model.bin", None), ("/model.bin", f"bytes={cut}-")]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == DIGEST
    assert not path.with_name("model.bin.part").exists()
    assert verify("tiny")[0].digest_source == "preset"


def test_a_partial_file_from_an_earlier_run_is_resumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: Server, isolated: Path
) -> None:
    write_registry(tmp_path, monkeypatch, f'url = "{server.url}/model.bin"\nsha256 = "{DIGEST}"')
    (isolated / "tiny").mkdir(parents=True)
    (isolated / "tiny" / "model.bin.part").write_bytes(CONTENT[:777])

    assert resolve_file("tiny", "checkpoint", progress=False).read_bytes() == CONTENT
    assert server.state.requests == [("/model.bin", "bytes=777-")]


def test_a_server_that_ignores_range_restarts_from_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: Server, isolated: Path
) -> None:
    write_registry(tmp_path, monkeypatch, f'url = "{server.url}/model.bin"\nsha256 = "{DIGEST}"')
    (isolated / "tiny").mkdir(parents=True)
    (isolated / "tiny" / "model.bin.part").write_bytes(b"stale bytes of another file")
    server.state.ignore_range = True

    assert resolve_file("tiny", "checkpoint", progress=False).read_bytes() == CONTENT


def test_corrupt_content_raises_and_leaves_nothing_in_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: Server, isolated: Path
) -> None:
    write_registry(tmp_path, monkeypatch, f'url = "{server.url}/model.bin"\nsha256 = "{DIGEST}"')
    server.state.corrupt = True

    with pytest.raises(ChecksumError, match=DIGEST):
        resolve_file("tiny", "checkpoint", progress=False)

    leftovers = {path.name for path in (isolated / "tiny").iterdir()}
    assert leftovers <= {"model.bin.lock"}  # no file, no .part, no recorded digest


def test_concurrent_first_use_downloads_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: Server) -> None:
    write_registry(tmp_path, monkeypatch, f'url = "{server.url}/model.bin"\nsha256 = "{DIGEST}"')
    server.state.delay_s = 0.2
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(resolve_file("tiny", "checkpoint", progress=False)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(results) == 2 and results[0] == results[1] and results[0].read_bytes() == CONTENT
    assert len(server.state.requests) == 1


@pytest.mark.parametrize(
    ("variable", "download"), [("FUSIONCAM_OFFLINE", True), ("HF_HUB_OFFLINE", True), (None, False)]
)
def test_offline_fails_fast_and_says_where_to_put_the_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    server: Server,
    isolated: Path,
    variable: str | None,
    download: bool,
) -> None:
    write_registry(tmp_path, monkeypatch, f'url = "{server.url}/model.bin"')
    if variable:
        monkeypatch.setenv(variable, "1")

    with pytest.raises(WeightsMissingError) as raised:
        resolve_file("tiny", "checkpoint", download=download)

    message = str(raised.value)
    assert str(isolated / "tiny" / "model.bin") in message
    assert f"{server.url}/model.bin" in message and 'extends = "tiny"' in message
    assert server.state.requests == []


def test_http_errors_name_the_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: Server) -> None:
    write_registry(tmp_path, monkeypatch, f'url = "{server.url}/gone.bin"')
    with pytest.raises(DownloadError, match=f"{server.url}/gone.bin: HTTP 404"):
        resolve_file("tiny", "checkpoint", progress=False)


def test_unreachable_host_is_a_download_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    write_registry(tmp_path, monkeypatch, f'url = "http://127.0.0.1:{port}/model.bin"')
    with pytest.raises(DownloadError, match="cannot reach"):
        resolve_file("tiny", "checkpoint", progress=False)


def test_archive_member_is_extracted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: Server, isolated: Path
) -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("inner.pt", b"tensor bytes")
    server.state.files["/weights.pt.zip"] = archive.getvalue()
    write_registry(tmp_path, monkeypatch, f'url = "{server.url}/weights.pt.zip"\nmember = "inner.pt"')

    assert pull("tiny", progress=False) == {"checkpoint": isolated / "tiny" / "inner.pt"}
    assert (isolated / "tiny" / "inner.pt").read_bytes() == b"tensor bytes"
    assert preset_paths("tiny") == {"checkpoint": isolated / "tiny" / "inner.pt"}
    monkeypatch.setenv("FUSIONCAM_OFFLINE", "1")
    assert resolve_file("tiny", "checkpoint") == isolated / "tiny" / "inner.pt"
    assert verify("tiny")[0].status is VerifyStatus.OK
    assert len(server.state.requests) == 1


# --- Hugging Face cache -----------------------------------------------------------------------------------------


COMMIT = "0123456789abcdef0123456789abcdef01234567"


def add_to_hf_cache(root: Path, repo: str, filename: str, content: bytes, blob: str) -> Path:
    """Lay a file out the way huggingface_hub caches it: blobs named by digest, a snapshot per commit."""
    commit = COMMIT
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    (folder / "blobs" / blob).write_bytes(content)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
    snapshot = folder / "snapshots" / commit / filename
    snapshot.symlink_to(Path("..", "..", "blobs", blob))
    return snapshot


def test_hub_files_come_from_the_hf_cache_offline_and_verify_against_the_hub_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vocab = b"[PAD]\n[UNK]\n"
    git_sha1 = hashlib.sha1(b"blob %d\0" % len(vocab) + vocab).hexdigest()
    snapshot = add_to_hf_cache(tmp_path / "hf", "org/tiny", "vocab.txt", vocab, git_sha1)
    weights_snapshot = add_to_hf_cache(tmp_path / "hf", "org/tiny-weights", "model.safetensors", CONTENT, DIGEST)
    write_registry(tmp_path, monkeypatch, 'hf_repo = "org/tiny-weights"\nhf_filename = "model.safetensors"')
    with (tmp_path / "weights.toml").open("a") as registry:
        registry.write('[tiny.files.vocab]\nhf_repo = "org/tiny"\nhf_filename = "vocab.txt"\n')
        registry.write('[tiny.files.merges]\nhf_repo = "org/tiny"\nhf_filename = "merges.txt"\n')
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    assert resolve_file("tiny", "vocab") == snapshot
    assert resolve_file("tiny", "checkpoint") == weights_snapshot
    with pytest.raises(WeightsMissingError, match=re.escape("hf download org/tiny merges.txt")):
        resolve_file("tiny", "merges")

    results = {result.role: result for result in verify("tiny")}
    assert (results["checkpoint"].status, results["checkpoint"].digest_source) == (VerifyStatus.OK, "hub")
    assert (results["vocab"].status, results["vocab"].digest_source) == (VerifyStatus.OK, "hub (git sha1)")
    assert results["merges"].status is VerifyStatus.MISSING
    snapshot.resolve().write_bytes(b"[PAD]\n[UNK]\n[CLS]\n")
    assert verify("tiny")[1].status is VerifyStatus.MISMATCH


def test_cli_pull_verify_and_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: Server) -> None:
    """`fusioncam weights pull/verify/path` end to end: exit codes, stdout data, stderr messages."""
    from typer.testing import CliRunner

    from fusioncam.cli import app

    write_registry(tmp_path, monkeypatch, f'url = "{server.url}/model.bin"\nsha256 = "{DIGEST}"')
    runner = CliRunner()

    monkeypatch.setenv("FUSIONCAM_OFFLINE", "1")
    offline = runner.invoke(app, ["weights", "pull", "tiny"])
    assert offline.exit_code == 1 and "model.bin" in offline.stderr and not server.state.requests
    monkeypatch.delenv("FUSIONCAM_OFFLINE")

    pulled = runner.invoke(app, ["weights", "pull", "tiny"])
    assert pulled.exit_code == 0, pulled.stderr
    path = Path(pulled.stdout.strip().split("\t")[-1])
    assert path.read_bytes() == CONTENT
    assert runner.invoke(app, ["weights", "path", "tiny", "--role", "checkpoint"]).stdout.strip() == str(path)
    assert runner.invoke(app, ["weights", "verify", "tiny"]).exit_code == 0

    path.write_bytes(b"tampered" + CONTENT[8:])
    tampered = runner.invoke(app, ["weights", "verify", "tiny"])
    assert tampered.exit_code == 1 and "mismatch" in tampered.stdout
    assert runner.invoke(app, ["weights", "pull", "no-such-preset"]).exit_code == 2


# --- issue 9: paths, verify, offline all at once, sizes, local digests, fast listing ------------------------------


def cli(*args: str) -> Result:
    from typer.testing import CliRunner

    from fusioncam.cli import app

    return CliRunner().invoke(app, list(args))


def tsv_rows(stdout: str) -> list[dict[str, str]]:
    """`print_table` writes TSV with a header line when stdout is not a terminal (as under CliRunner)."""
    header, *lines = stdout.splitlines()
    return [dict(zip(header.split("\t"), line.split("\t"), strict=True)) for line in lines]


def append_registry(tmp_path: Path, text: str) -> None:
    with (tmp_path / "weights.toml").open("a") as registry:
        registry.write(text)


def test_hub_paths_are_computed_from_the_cache_layout_and_never_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vocab = add_to_hf_cache(tmp_path / "hf", "org/tiny", "vocab.txt", b"[PAD]\n", "a" * 40)
    pinned = "89abcdef0123456789abcdef0123456789abcdef"
    write_registry(tmp_path, monkeypatch, 'url = "http://127.0.0.1:9/model.bin"')
    append_registry(
        tmp_path,
        '[tiny.files.vocab]\nhf_repo = "org/tiny"\nhf_filename = "vocab.txt"\n'
        '[tiny.files.merges]\nhf_repo = "org/tiny"\nhf_filename = "merges.txt"\n'
        '[tiny.files.extra]\nhf_repo = "org/elsewhere"\nhf_filename = "extra.json"\n'
        f'[tiny.files.pinned]\nhf_repo = "org/pinned"\nhf_filename = "sub/p.bin"\nrevision = "{pinned}"\n',
    )
    merges = vocab.parent / "merges.txt"  # same commit as refs/main, not downloaded yet
    pinned_path = tmp_path / "hf" / "models--org--pinned" / "snapshots" / pinned / "sub" / "p.bin"

    paths = preset_paths("tiny")
    assert (paths["vocab"], paths["merges"], paths["extra"], paths["pinned"]) == (vocab, merges, None, pinned_path)

    listed = cli("weights", "path", "tiny")
    assert listed.exit_code == 0 and "None" not in listed.stdout
    assert dict(line.split("\t") for line in listed.stdout.splitlines()) == {
        "checkpoint": str(tmp_path / "cache" / "tiny" / "model.bin"),
        "vocab": str(vocab),
        "merges": str(merges),
        "extra": "not downloaded (hf://org/elsewhere/extra.json)",
        "pinned": str(pinned_path),
    }
    # The computed place is where the file is found once it is there.
    printed = Path(cli("weights", "path", "tiny", "--role", "merges").stdout.strip())
    printed.write_text("merges")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_file("tiny", "merges") == merges


@pytest.mark.parametrize(
    "environment",
    [
        {"HF_HUB_CACHE": "{tmp}/explicit"},
        {"HUGGINGFACE_HUB_CACHE": "{tmp}/legacy", "HF_HOME": "{tmp}/home"},
        {"HF_HOME": "{tmp}/home"},
        {"XDG_CACHE_HOME": "{tmp}/xdg"},
        {"HOME": "{tmp}/user"},
        {"HF_HOME": "~/hf-home"},
    ],
)
def test_hf_cache_folder_is_found_like_huggingface_hub_finds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, environment: dict[str, str]
) -> None:
    import importlib.util
    import sys

    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home-dir"))
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value.replace("{tmp}", str(tmp_path)))
    # A fresh copy of huggingface_hub's constants module reads the environment as it is now.
    spec = importlib.util.spec_from_file_location("hf_constants_copy", huggingface_hub.constants.__file__)
    assert spec is not None and spec.loader is not None
    theirs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(theirs)
    monkeypatch.delitem(sys.modules, "huggingface_hub.constants")  # as in a process that never imported it

    assert weights.hf_hub_cache() == Path(theirs.HF_HUB_CACHE)
    assert str(tmp_path) in theirs.HF_HUB_CACHE


def test_verify_lists_missing_files_and_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated: Path
) -> None:
    write_registry(tmp_path, monkeypatch, f'url = "http://127.0.0.1:9/model.bin"\nsha256 = "{DIGEST}"')
    append_registry(
        tmp_path,
        '[tiny.files.vocab]\nhf_repo = "org/tiny"\nhf_filename = "vocab.txt"\n'
        '[other]\nkind = "blip-itm"\nlayout = "lavis"\n'
        '[other.files.checkpoint]\nurl = "http://127.0.0.1:9/other.bin"\n',
    )

    nothing = cli("weights", "verify")
    assert nothing.exit_code == 0 and tsv_rows(nothing.stdout) == [] and "nothing to verify" in nothing.stderr

    (isolated / "tiny").mkdir(parents=True)
    (isolated / "tiny" / "model.bin").write_bytes(CONTENT)
    partly = cli("weights", "verify")
    assert partly.exit_code == 1
    assert tsv_rows(partly.stdout) == [  # `other` has no file here: not listed
        {"preset": "tiny", "file": "checkpoint", "status": "ok", "path": str(isolated / "tiny" / "model.bin")},
        {"preset": "tiny", "file": "vocab", "status": "missing", "path": "not downloaded (hf://org/tiny/vocab.txt)"},
    ]

    named = cli("weights", "verify", "other")
    assert named.exit_code == 1
    assert tsv_rows(named.stdout) == [
        {"preset": "other", "file": "checkpoint", "status": "missing", "path": str(isolated / "other" / "other.bin")}
    ]

    add_to_hf_cache(tmp_path / "hf", "org/tiny", "vocab.txt", b"[PAD]\n", hashlib.sha256(b"[PAD]\n").hexdigest())
    complete = cli("weights", "verify")
    assert complete.exit_code == 0, complete.stdout
    assert [(row["file"], row["status"]) for row in tsv_rows(complete.stdout)] == [
        ("checkpoint", "ok"),
        ("vocab", "ok"),
    ]

    (isolated / "tiny" / "model.bin").write_bytes(b"tampered" + CONTENT[8:])
    tampered = cli("weights", "verify", "tiny", "other")
    assert tampered.exit_code == 1
    assert [row["status"] for row in tsv_rows(tampered.stdout)] == ["sha256 mismatch", "ok", "missing"]


@pytest.mark.parametrize(
    ("variable", "download"), [("FUSIONCAM_OFFLINE", True), ("HF_HUB_OFFLINE", True), (None, False)]
)
def test_offline_reports_every_missing_file_of_a_preset_in_one_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    server: Server,
    isolated: Path,
    variable: str | None,
    download: bool,
) -> None:
    config = add_to_hf_cache(tmp_path / "hf", "org/tiny", "config.json", b"{}", "c" * 40)
    write_registry(tmp_path, monkeypatch, f'url = "{server.url}/model.bin"')
    append_registry(
        tmp_path,
        '[tiny.files.config]\nhf_repo = "org/tiny"\nhf_filename = "config.json"\n'  # here
        '[tiny.files.vocab]\nhf_repo = "org/tiny"\nhf_filename = "vocab.txt"\n'  # commit known, file missing
        '[tiny.files.merges]\nhf_repo = "org/absent"\nhf_filename = "merges.txt"\nrevision = "v1"\n'
        '[tiny.files.extra]\npath = "extra.bin"\n',
    )
    if variable:
        monkeypatch.setenv(variable, "1")

    with pytest.raises(WeightsMissingError) as raised:
        require_files("tiny", download=download)

    message = str(raised.value)
    assert message.startswith("tiny: 4 files are missing and downloads are off")
    assert str(isolated / "tiny" / "model.bin") in message and f"{server.url}/model.bin" in message
    assert "hf download org/tiny vocab.txt`" in message and str(config.parent / "vocab.txt") in message
    assert "hf download org/absent merges.txt --revision v1`" in message
    assert f"extra: {tmp_path / 'extra.bin'} does not exist" in message
    assert "config:" not in message  # it is here
    assert 'extends = "tiny"' in message
    assert all(f"[files.{role}]" in message for role in ("checkpoint", "vocab", "merges"))
    assert "[files.extra]" not in message  # already a local path: the fix is in the preset, not a new one
    assert server.state.requests == []

    assert require_files("tiny", ["config"], download=download) == {"config": config}
    with pytest.raises(WeightsMissingError, match=r"^tiny: checkpoint is missing and downloads are off"):
        require_files("tiny", ["config", "checkpoint"], download=download)


def test_missing_local_files_are_reported_before_anything_is_downloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: Server
) -> None:
    write_registry(tmp_path, monkeypatch, f'url = "{server.url}/model.bin"')
    append_registry(tmp_path, '[tiny.files.a]\npath = "a.bin"\n[tiny.files.b]\npath = "b.bin"\n')

    with pytest.raises(WeightsMissingError) as raised:
        pull("tiny", progress=False)

    assert raised.value.args[0].startswith("tiny: 2 files are missing:")
    assert str(tmp_path / "a.bin") in str(raised.value) and str(tmp_path / "b.bin") in str(raised.value)
    assert server.state.requests == []
    (tmp_path / "a.bin").write_bytes(b"a")
    (tmp_path / "b.bin").write_bytes(b"b")
    assert pull("tiny", progress=False)["checkpoint"].read_bytes() == CONTENT


def test_cli_pull_offline_names_every_missing_file_in_one_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: Server
) -> None:
    write_registry(tmp_path, monkeypatch, f'url = "{server.url}/model.bin"')
    append_registry(tmp_path, '[tiny.files.vocab]\nhf_repo = "org/tiny"\nhf_filename = "vocab.txt"\n')
    monkeypatch.setenv("FUSIONCAM_OFFLINE", "1")

    result = cli("weights", "pull", "tiny")

    assert result.exit_code == 1 and result.stdout == ""
    assert "2 files are missing" in result.stderr
    assert "model.bin" in result.stderr and "hf download org/tiny vocab.txt" in result.stderr


def test_list_shows_sizes_declared_or_on_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated: Path) -> None:
    import json

    write_registry(tmp_path, monkeypatch, 'url = "http://127.0.0.1:9/model.bin"\nsize = 893_768_508')
    append_registry(
        tmp_path,
        '[tiny.files.vocab]\nurl = "http://127.0.0.1:9/vocab.txt"\nsize = 231_508\n'
        '[unknown]\nkind = "blip-itm"\nlayout = "lavis"\n[unknown.files.checkpoint]\nurl = "http://127.0.0.1:9/u.bin"\n'
        '[ondisk]\nkind = "blip-itm"\nlayout = "lavis"\n[ondisk.files.checkpoint]\nurl = "http://127.0.0.1:9/d.bin"\n'
        '[ondisk.files.vocab]\nurl = "http://127.0.0.1:9/v.txt"\n'
        '[photo]\nkind = "image"\nlayout = "none"\n[photo.files.image]\nurl = "http://127.0.0.1:9/p.jpg"\nsize = 5\n',
    )
    (isolated / "ondisk").mkdir(parents=True)
    (isolated / "ondisk" / "d.bin").write_bytes(b"x" * 12_000)
    (isolated / "ondisk" / "v.txt").write_bytes(b"x" * 345)

    table = cli("weights", "list")
    assert table.exit_code == 0
    assert [(row["name"], row["size"], row["here"]) for row in tsv_rows(table.stdout)] == [
        ("tiny", "894 MB", ""),
        ("unknown", "?", ""),
        ("ondisk", "12.3 kB", "yes"),
    ]
    records = [json.loads(line) for line in cli("weights", "list", "--jsonl").stdout.splitlines()]
    assert [(r["name"], r["size_bytes"], r["cached"]) for r in records] == [
        ("tiny", 894_000_016, False),
        ("unknown", None, False),
        ("ondisk", 12_345, True),
    ]

    (isolated / "ondisk" / "v.txt").unlink()  # one file gone: its size is unknown again, so is the total
    assert [(row["size"], row["here"]) for row in tsv_rows(cli("weights", "list").stdout)][2] == ("?", "partly")


def test_human_sizes() -> None:
    from fusioncam.cli.weights import human_size

    assert [human_size(n) for n in (None, 0, 999, 1000, 12_345, 999_400, 999_600, 893_768_508, 1_880_000_000)] == [
        "?",
        "0 B",
        "999 B",
        "1.0 kB",
        "12.3 kB",
        "999 kB",
        "1.0 MB",
        "894 MB",
        "1.9 GB",
    ]


def test_declared_sha256_of_a_local_file_is_checked_at_load_and_hashed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated: Path
) -> None:
    local = tmp_path / "local.bin"
    local.write_bytes(CONTENT)
    time.sleep(0.15)  # older than the racy-timestamp window when hashed (see weights._RACY_NS)
    write_registry(tmp_path, monkeypatch, f'path = "local.bin"\nsha256 = "{DIGEST}"')
    hashed: list[Path] = []
    real_hash = weights._sha256_file
    monkeypatch.setattr(weights, "_sha256_file", lambda path: hashed.append(path) or real_hash(path))
    monkeypatch.setattr(weights, "_DIGEST_MEMO", {})

    assert resolve_file("tiny", "checkpoint") == local and len(hashed) == 1
    assert resolve_file("tiny", "checkpoint") == local and len(hashed) == 1  # remembered in this process
    monkeypatch.setattr(weights, "_DIGEST_MEMO", {})  # as in a new process: the record in the cache answers
    assert require_files("tiny") == {"checkpoint": local} and len(hashed) == 1
    [record] = (isolated / "_digests").iterdir()
    assert f'"sha256": "{DIGEST}"' in record.read_text()

    # Same size, mtime put back: ctime still changes, so the file is hashed again and the change is caught.
    before = local.stat()
    flipped = bytearray(CONTENT)
    flipped[123] ^= 1
    local.write_bytes(bytes(flipped))
    os.utime(local, ns=(before.st_atime_ns, before.st_mtime_ns))
    actual = hashlib.sha256(flipped).hexdigest()
    with pytest.raises(ChecksumError) as raised:
        resolve_file("tiny", "checkpoint")
    assert str(local) in str(raised.value) and DIGEST in str(raised.value) and actual in str(raised.value)
    assert len(hashed) == 2


def test_a_declared_size_or_digest_that_does_not_match_a_local_file_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "local.bin").write_bytes(CONTENT)
    write_registry(tmp_path, monkeypatch, f'path = "local.bin"\nsha256 = "{"0" * 64}"')
    with pytest.raises(ChecksumError, match=f"has sha256 {DIGEST}, the preset .* expects {'0' * 64}"):
        resolve_file("tiny", "checkpoint")
    assert verify("tiny")[0].status is VerifyStatus.MISMATCH

    write_registry(tmp_path, monkeypatch, f'path = "local.bin"\nsha256 = "{DIGEST}"\nsize = 10')
    with pytest.raises(ChecksumError, match=f"has {len(CONTENT)} bytes, the preset .* declares 10"):
        resolve_file("tiny", "checkpoint")


def test_file_digest_for_run_records_never_downloads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: Server
) -> None:
    vocab = b"[PAD]\n[UNK]\n"
    add_to_hf_cache(tmp_path / "hf", "org/tiny", "vocab.txt", vocab, hashlib.sha1(b"blob 12\0" + vocab).hexdigest())
    add_to_hf_cache(tmp_path / "hf", "org/tiny", "model.safetensors", CONTENT, "e" * 64)  # the name is trusted
    (tmp_path / "small.bin").write_bytes(b"small")
    (tmp_path / "big.bin").write_bytes(CONTENT)
    write_registry(tmp_path, monkeypatch, f'url = "{server.url}/model.bin"')
    append_registry(
        tmp_path,
        f'[tiny.files.declared]\nurl = "{server.url}/never.bin"\nsha256 = "{"d" * 64}"\n'
        '[tiny.files.vocab]\nhf_repo = "org/tiny"\nhf_filename = "vocab.txt"\n'
        '[tiny.files.weights]\nhf_repo = "org/tiny"\nhf_filename = "model.safetensors"\n'
        '[tiny.files.absent]\nhf_repo = "org/tiny"\nhf_filename = "absent.txt"\n'
        '[tiny.files.small]\npath = "small.bin"\n[tiny.files.big]\npath = "big.bin"\n',
    )
    monkeypatch.setattr(weights, "_SMALL_FILE_BYTES", 1000)

    assert {role: file_digest("tiny", role) for role in get_preset("tiny").files} == {
        "checkpoint": None,  # not downloaded, no digest declared
        "declared": "d" * 64,
        "vocab": hashlib.sha256(vocab).hexdigest(),
        "weights": "e" * 64,
        "absent": None,
        "small": hashlib.sha256(b"small").hexdigest(),
        "big": None,  # over the size limit and never hashed
    }
    assert server.state.requests == []
    resolve_file("tiny", "checkpoint", progress=False)
    assert file_digest("tiny", "checkpoint") == DIGEST  # recorded at download
    assert len(server.state.requests) == 1


def test_listing_and_locating_files_import_neither_huggingface_hub_nor_torch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated: Path
) -> None:
    import json
    import os
    import subprocess
    import sys

    hf_home = tmp_path / "hf-home"  # found through HF_HOME/hub: the subprocess has no HF_HUB_CACHE
    vocab = add_to_hf_cache(
        hf_home / "hub", "org/tiny", "vocab.txt", b"[PAD]\n", hashlib.sha256(b"[PAD]\n").hexdigest()
    )
    write_registry(tmp_path, monkeypatch, 'url = "http://127.0.0.1:9/model.bin"')
    append_registry(tmp_path, '[tiny.files.vocab]\nhf_repo = "org/tiny"\nhf_filename = "vocab.txt"\n')
    (isolated / "tiny").mkdir(parents=True)
    (isolated / "tiny" / "model.bin").write_bytes(b"weights")
    script = (
        "import sys\n"
        "from fusioncam.cli import app\n"
        "for args in (['weights', 'list', '--jsonl'], ['weights', 'path', 'tiny'], ['weights', 'verify']):\n"
        "    assert app(args, standalone_mode=False) in (None, 0), args\n"
        "print('heavy', [m for m in ('huggingface_hub', 'torch', 'transformers', 'filelock') if m in sys.modules])\n"
    )
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGINGFACE_"))}
    environment["HF_HOME"] = str(hf_home)

    done = subprocess.run(
        [sys.executable, "-c", script], env=environment, capture_output=True, text=True, timeout=120, check=False
    )

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert json.loads(lines[0])["cached"] is True  # both files found, the hub one through the cache layout
    assert f"vocab\t{vocab}" in lines
    assert lines[-1] == "heavy []"
