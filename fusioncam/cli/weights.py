"""`fusioncam weights list|pull|verify|path`: the presets of `weights.toml` and their files."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer

from fusioncam import weights as weights_lib
from fusioncam.cli import options
from fusioncam.cli.common import fail, print_table, usage_error

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
    """Every model preset: what it is, its licence, and whether its files are already here."""
    rows = []
    for name, preset in weights_lib.load_registry().items():
        if preset.kind == "image":
            continue  # the demo's example photo is a file of the registry, not a model
        paths = weights_lib.preset_paths(preset)
        cached = all(path is not None and path.exists() for path in paths.values())
        rows.append(
            {
                "name": name,
                "kind": preset.kind,
                "license": preset.license,
                "cached": cached,
                "description": preset.description,
            }
        )
    if jsonl:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return
    print_table(
        ["name", "kind", "license", "here", "description"],
        [[r["name"], r["kind"], r["license"], "yes" if r["cached"] else "", r["description"]] for r in rows],
    )


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
        list[str] | None, typer.Argument(help="Presets to check (default: every preset).", show_default=False)
    ] = None,
) -> None:
    """Check files already downloaded against their sha256; exit 1 on a mismatch."""
    presets = [_preset(name) for name in names] if names else list(weights_lib.load_registry().values())
    rows = []
    bad = False
    for preset in presets:
        for result in weights_lib.verify(preset):
            if names or result.status is not weights_lib.VerifyStatus.MISSING:
                bad |= result.status is weights_lib.VerifyStatus.MISMATCH
                rows.append([preset.name, result.role, str(result.status.value), str(result.path or "")])
    print_table(["preset", "file", "status", "path"], rows)
    if bad:
        raise typer.Exit(1)


@app.command("path")
def weights_path(
    name: PresetArgument, role: Annotated[str | None, typer.Option(help="Only this file.")] = None
) -> None:
    """Where a preset's files live (or will live once pulled)."""
    preset = _preset(name)
    paths = weights_lib.preset_paths(preset)
    if role is not None and role not in paths:
        raise usage_error(f"{preset.name} has no file {role!r}; it has {', '.join(paths)}")
    for key, path in paths.items():
        if role in (None, key):
            print(f"{key}\t{path}" if role is None else path)


def example_image() -> None:
    """Print the path of the example photo `make demo` uses, downloading it on first use."""
    try:
        print(weights_lib.resolve_file("example-image", "image"))
    except weights_lib.WeightsError as error:
        raise fail(error) from None
