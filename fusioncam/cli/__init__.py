"""`fusioncam` command line: parse, call the library, print. Data goes to stdout, everything human to stderr.

Exit codes: 0 everything done (or nothing to do); 1 some inputs failed (each named with its reason, the rest
done); 2 usage error. Each command lives in the module of its concern and imports the heavy libraries (torch,
transformers, OpenCV) only when it runs, so that `--help` and `weights list` answer at once.
"""

from __future__ import annotations

from typing import Annotated

import typer

from fusioncam.cli import demo, evaluate, explain, report, training, weights
from fusioncam.cli.common import report_library_messages

app = typer.Typer(
    help="Where does a vision-language model look? BLIP image-text matching scores, Grad-CAM heatmaps, "
    "SAM-refined masks and PNP-VQA answers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain: `[x0, y0, x1, y1]` is an example, not markup
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from fusioncam import __version__

        print(f"fusioncam {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = None,
) -> None:
    """Where does a vision-language model look? BLIP image-text matching scores, Grad-CAM heatmaps,
    SAM-refined masks and PNP-VQA answers.
    """
    report_library_messages()


app.command()(explain.heatmap)
app.command()(explain.segment)
app.command()(explain.vqa)
app.command()(explain.score)
app.command()(training.synth)
app.command()(training.train)
app.command()(report.report)
app.command()(demo.demo)
app.command("example-image")(weights.example_image)
app.add_typer(weights.app, name="weights")
app.add_typer(evaluate.app, name="eval")


def main() -> None:
    app()
