"""`fusioncam weights list|pull|verify|path`: the presets of `weights.toml` and their files."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fusioncam import weights as weights_lib
from fusioncam.cli import options
from fusioncam.cli.common import fail, print_table, stderr, usage_error

if TYPE_CHECKING:
    from fusioncam.weights import Preset

app = typer.Typer(help="List, download, verify and locate model weights.", no_args_is_help=True)

PresetArgument = Annotated[
    str, typer.Argument(help="Preset name (see `fusioncam weights list`) or preset .toml file.", show_default=False)
]


def _preset(name: str) -> Preset:
    try:
        return weights_lib.get_preset(name)
    except weights_lib.PresetError as error:
        raise usage_error(str(error)) from None


@app.command("list")
def weights_list(jsonl: options.Jsonl = False) -> None:
    """Every model preset: what it is, its licence, its size, and whether its files are already here."""
    rows: list[dict[str, Any]] = []
    for name, preset in weights_lib.load_registry().items():
        if preset.kind == "image":
            continue  # the demo's example photo is a file of the registry, not a model
        here = weights_lib.files_here(preset).values()
        rows.append(
            {
                "name": name,
                "kind": preset.kind,
                "license": preset.license,
                "size_bytes": weights_lib.preset_size(preset),
                "cached": all(here),
                "partly_cached": any(here) and not all(here),
                "description": preset.description,
            }
        )
    if jsonl:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return
    print_table(
        ["name", "kind", "license", "size", "here", "description"],
        [[r["name"], r["kind"], r["license"], human_size(r["size_bytes"]), _here(r), r["description"]] for r in rows],
    )


def _here(row: dict[str, Any]) -> str:
    return "yes" if row["cached"] else "partly" if row["partly_cached"] else ""


def human_size(size: int | None) -> str:
    """Bytes for people, in decimal units as download tools show them: 894 MB, 1.9 GB, 12.5 kB; "?" if unknown."""
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 999.5 or unit == "GB":
            break
        value /= 1000
    if unit == "B":
        return f"{size} B"
    return f"{value:.0f} {unit}" if value >= 99.95 else f"{value:.1f} {unit}"


@app.command("pull")
def weights_pull(
    names: Annotated[list[str], typer.Argument(help="Preset name(s) or preset .toml file(s).", show_default=False)],
) -> None:
    """Download every file of the named presets into the cache (resumable, checked against sha256)."""
    presets = [_preset(name) for name in names]
    try:
        for preset in presets:
            for role, path in weights_lib.pull(preset).items():
                print(f"{preset.name}\t{role}\t{path}", flush=True)
    except weights_lib.WeightsError as error:
        raise fail(error) from None


@app.command("verify")
def weights_verify(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Presets to check (default: every preset with files here).", show_default=False),
    ] = None,
) -> None:
    """Check files against their sha256 and list missing ones; exit 1 on a mismatch or a missing file.

    Without names, every preset with at least one file here is checked, and the files still missing from a
    partly downloaded one are listed.
    """
    presets = [_preset(name) for name in names] if names else list(weights_lib.load_registry().values())
    rows = []
    bad = False
    for preset in presets:
        results = weights_lib.verify(preset)
        if not names and all(result.status is weights_lib.VerifyStatus.MISSING for result in results):
            continue  # never downloaded: nothing to check
        for result in results:
            bad |= result.status in (weights_lib.VerifyStatus.MISMATCH, weights_lib.VerifyStatus.MISSING)
            where = weights_lib.file_location(preset, result.role) if result.path is None else str(result.path)
            rows.append([preset.name, result.role, str(result.status.value), where])
    if not rows:
        stderr.print("no preset has files here yet: nothing to verify (`fusioncam weights pull NAME` fetches some)")
    print_table(["preset", "file", "status", "path"], rows)
    if bad:
        raise typer.Exit(1)


@app.command("path")
def weights_path(
    name: PresetArgument, role: Annotated[str | None, typer.Option(help="Only this file.")] = None
) -> None:
    """Where a preset's files live (or will live once pulled); a Hugging Face file of a revision never fetched
    here shows `not downloaded (hf://...)`, as the hub decides its place on first download."""
    preset = _preset(name)
    if role is not None and role not in preset.files:
        raise usage_error(f"{preset.name} has no file {role!r}; it has {', '.join(preset.files)}")
    for key in preset.files:
        if role in (None, key):
            location = weights_lib.file_location(preset, key)
            print(f"{key}\t{location}" if role is None else location)


def example_image() -> None:
    """Print the path of the example photo `make demo` uses, downloading it on first use."""
    try:
        print(weights_lib.resolve_file("example-image", "image"))
    except weights_lib.WeightsError as error:
        raise fail(error) from None
