"""`fusioncam report OUT_DIR`: a gallery page over the results a run wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from fusioncam.cli.common import stderr, usage_error


def report(
    out_dir: Annotated[
        Path, typer.Argument(help="The --out folder of heatmap, segment or vqa runs.", show_default=False)
    ],
    title: Annotated[str | None, typer.Option(help="Page title (default: the folder's name).")] = None,
) -> None:
    """Write OUT_DIR/index.html, a gallery of the results that `heatmap`, `segment` and `vqa` wrote under OUT_DIR
    (searched recursively).

    Each JSON record gets a card with a thumbnail of its overlay, the image name, the text or question, the ITM and
    ITC scores, and links to every file of the pair (overlay, per-word sheet, mask, cut-out, raw maps, the record).
    VQA cards also show the answer, the answer map and the captions with their contribution to the answer as bars.
    The page needs no network and no server: open it from disk or copy the whole folder. Sort by ITM score or name
    and filter by words in the page; the state is kept in the URL (e.g. index.html#sort=itm-desc&q=dog).
    Thumbnails are kept in OUT_DIR/.thumbs/ and remade only for changed overlays, so running `report` again after
    more results is quick. JSON files that cannot be read are listed on the page, and make the exit code 1.

    Example: fusioncam heatmap photos/ "a dog" --out maps/ && fusioncam report maps/ && xdg-open maps/index.html
    """
    from fusioncam.report import write_report

    if not out_dir.is_dir():
        raise usage_error(f"{out_dir} is not a folder")
    with stderr.status("writing the gallery …"):
        summary = write_report(out_dir, title)
    for item in summary.skipped:
        stderr.print(f"[red]skipped[/red] {escape(str(item.path))}: {escape(item.reason)}")
    print(summary.path)
    stderr.print(
        f"{summary.records} record(s) in the gallery" + (f", {len(summary.skipped)} skipped" if summary.skipped else "")
    )
    if summary.skipped:
        raise typer.Exit(1)
