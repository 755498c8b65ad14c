"""`fusioncam demo` (what `make demo` runs): every kind of output from one picture, with or without a network."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fusioncam.cli import options

if TYPE_CHECKING:
    from fusioncam.demo import DemoPlan, DemoResult
from fusioncam.cli.common import check_device, check_out_dir, fail, stderr, usage_error
from fusioncam.cli.loaders import check_precision


def demo(
    out: options.Out = Path("demo-out"),
    image: Annotated[
        Path | None,
        typer.Option(help="Your own picture instead of the example photo (needs the real models)."),
    ] = None,
    text: Annotated[str | None, typer.Option(help="What to look for in --image.")] = None,
    builtin: Annotated[
        bool,
        typer.Option(
            "--builtin/--no-builtin",
            help="Use the built-in toy models on a generated scene, even where the real ones could be had.",
        ),
    ] = False,
    device: options.Device = "auto",
    precision: options.Precision = "fp32",
    seed: Annotated[int, typer.Option(help="Seed of the generated scene and of VQA's sampling.")] = 0,
) -> None:
    """Explain one picture every way fusioncam can: heatmap with a per-word sheet, SAM-refined heatmap and mask,
    and a VQA answer with its answer map, all under --out.

    With the default real model (cached, or downloadable: about 900 MB on first use) it explains the example
    photo; VQA runs too when PNP-VQA's models are already cached. Offline, it says so in one line and runs the
    built-in toy models (trained by this project on synthetic scenes, shipped in the package) on a generated
    scene.
    """
    from fusioncam import demo as demo_lib
    from fusioncam import weights as weights_lib

    if image is not None and not image.is_file():
        raise usage_error(f"--image {image}: no such file")
    if image is not None and builtin:
        raise usage_error("--builtin runs on a generated scene; --image needs the real models")
    if text is not None and image is None:
        raise usage_error("--text goes with --image")
    check_out_dir(out)
    check_device(device)
    precision = check_precision(precision, device)
    unavailable = None if builtin else _real_models_unavailable(image is None)
    if unavailable is None and not builtin:
        example = image or weights_lib.resolve_file("example-image", "image")
        plan = demo_lib.real_plan(example, text or demo_lib.REAL_TEXT, with_vqa=_cached(demo_lib.REAL_VQA))
    elif image is not None:
        raise fail(f"the real models are needed for --image and cannot be had here: {unavailable}")
    else:
        if unavailable is not None:
            message = f"offline, running the built-in toy models on a generated scene ({unavailable})"
            stderr.print(message, markup=False)
        plan = demo_lib.builtin_plan(out, seed)
    try:
        with stderr.status("explaining …"):
            result = demo_lib.run_demo(plan, out, device, seed, precision)
    except (weights_lib.WeightsError, OSError, ValueError) as error:
        raise fail(error) from None
    _summary(plan, result)


def _real_models_unavailable(with_example: bool) -> str | None:
    """Why the real default models cannot be used here (None when they can: cached, or downloaded now)."""
    from fusioncam import demo as demo_lib
    from fusioncam import weights as weights_lib

    try:
        if with_example:
            weights_lib.resolve_file("example-image", "image")
        for name in (demo_lib.REAL_ITM, demo_lib.REAL_SAM):
            weights_lib.pull(name)
    except weights_lib.WeightsError as error:
        return str(error).splitlines()[0].rstrip(":. ")
    return None


def _cached(names: tuple[str, ...]) -> bool:
    from fusioncam import weights as weights_lib

    return all(path is not None and path.exists() for name in names for path in weights_lib.preset_paths(name).values())


def _summary(plan: DemoPlan, result: DemoResult) -> None:
    """What was written, a line per file, and the answer (with the truth, for a generated scene)."""
    print(f"demo: {plan.text!r} in {plan.image}" + (f" ({plan.note})" if plan.note else ""))
    for step, record in result.records.items():
        for kind, path in record["outputs"].items():
            print(f"{step}\t{kind}\t{path}")
    if "vqa" in result.records:
        answer = result.records["vqa"]["answer"]
        truth = f" (truth: {plan.expected_answer})" if plan.expected_answer is not None else ""
        print(f"vqa\t{plan.question}\t{answer}{truth}")
    else:
        print("vqa\tskipped: PNP-VQA's models are not cached (fusioncam weights pull " + " ".join(_vqa_names()) + ")")


def _vqa_names() -> tuple[str, ...]:
    from fusioncam import demo as demo_lib

    return demo_lib.REAL_VQA
