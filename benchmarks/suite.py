"""`make bench`: fusioncam against the LAVIS way and the original EfficientSAM attention, at every precision.

    make bench                                   # every section (a 2-core CPU takes the better part of an hour)
    make bench ARGS=--quick                      # about a minute: BLIP base heatmaps and the SAM ViT-T encoder
    .venv/bin/python -m benchmarks.suite --only heatmap cli --device cuda --out results.jsonl

Every model has random weights at its real size: time does not depend on their values, and nothing is downloaded.

Sections (`--only`):
  heatmap      Grad-CAM of batches of (photo, text) pairs with BLIP ITM base and large: the LAVIS way
               (`benchmarks/lavis_way.py`: transformers' BLIP under full autograd, the same weights) against
               fusioncam's `BlipMatcher.heatmaps`, both from uint8 photos and strings
  esam         the same heatmaps refined by EfficientSAM ViT-T (`explain_pairs` with a fresh `SamRefiner`)
  fused        BLIP base + EfficientSAM fusion (`BlipFusionITM`, random fusion, gate opened to 0.1 so that it counts)
  sam-encoder  EfficientSAM ViT-T and ViT-S image encoder, 1024² input: fusioncam's (scaled_dot_product_attention)
               against the original's explicit attention (`benchmarks/explicit_attention.py`, the same weights)
  vqa          PNP-VQA per question, by stage (the models of `benchmarks/bench_vqa.py`)
  cli          `fusioncam heatmap FOLDER TEXT --batch-size 8 --precision P --quiet` in a subprocess, on a folder
               of photo-sized JPEGs, with a BLIP base preset written to disk: decoding, overlays and files included

Each measurement is one warm-up run, then up to `--repeats` timed runs (fewer once they have taken `--budget`
seconds); the median is reported. A batch whose warm-up and one run would take more than `--max-seconds`, or more
memory than the device has free, judged from the same series at the previous batch size, is skipped and listed as
such. The table goes to stdout, progress to stderr, and one JSON record per row to `--out` (with device, torch
version, threads and git commit, so that runs compare).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import shutil
import statistics
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import cv2
import numpy as np
import torch
from safetensors.torch import save_file
from transformers import BlipForImageTextRetrieval

from benchmarks.bench_vqa import build as build_vqa
from benchmarks.bench_vqa import make_vocab
from benchmarks.explicit_attention import ExplicitAttentionEncoder
from benchmarks.lavis_way import HF_BLIP_ITM, hf_blip_itm_config, lavis_gradcam, twin_models
from benchmarks.measure import (
    LEGEND,
    REPO,
    Outputs,
    Report,
    Row,
    available_mib,
    device_name,
    environment,
    log,
    measure,
    run_command,
)
from fusioncam.api import BlipMatcher, SamRefiner, explain_pairs, pick_device
from fusioncam.choices import Precision
from fusioncam.images import blip_transform
from fusioncam.models.blip import BlipITM, BlipITMConfig
from fusioncam.models.efficient_sam import EfficientSam, EfficientSamConfig
from fusioncam.models.fusion import BlipFusionITM, FusionConfig
from fusioncam.models.layers import Model
from fusioncam.text import BlipTokenizer, clean_caption
from fusioncam.vqa import PNPVQA, VQAConfig
from fusioncam.weights import write_preset

SECTIONS = ("heatmap", "esam", "fused", "sam-encoder", "vqa", "cli")
QUICK_SECTIONS = ("heatmap", "sam-encoder")
# Texts of different lengths, so that every batch has padding; words of bench_vqa's stand-in vocabulary.
TEXTS = (
    "a dog",
    "a red dog running in the picture",
    "two cat sitting on the green picture with a blue dog",
    "the cat",
)
FUSION_GATE = 0.1
QUESTION = "what is the color of the dog?"


@dataclass
class Sizes:
    """What is built: BLIP ITM as transformers `BlipConfig` values by architecture, EfficientSAM configs, the
    fusion, bench_vqa's model size and the photos' size. `REAL` is every official size; tests pass tiny ones."""

    blip: dict[str, dict[str, Any]]
    sam: dict[str, EfficientSamConfig]
    fusion: FusionConfig
    vqa: str
    photo: tuple[int, int] = (640, 480)


REAL = Sizes(HF_BLIP_ITM, {name: EfficientSamConfig.preset(name) for name in ("vitt", "vits")}, FusionConfig(), "real")


@dataclass
class Plan:
    """What is measured: sections, precisions (int8 last: quantising is one-way), batch sizes and repeats."""

    sections: tuple[str, ...]
    precisions: tuple[Precision, ...]
    heatmap_batches: dict[str, tuple[int, ...]]
    skip: dict[tuple[str, int], str] = field(default_factory=dict)  # (BLIP architecture, batch) → why not
    pipeline_batch: int = 8  # esam and fused
    sam_archs: tuple[str, ...] = ("vitt", "vits")
    sam_batches: tuple[int, ...] = (1,)
    cli_images: int = 16
    cli_batch: int = 8
    vqa_captions: int = 100
    block: int = 6  # the CLI's default Grad-CAM block
    repeats: int = 3
    budget: float = 60.0
    max_seconds: float = 300.0


def device_precisions(device: torch.device) -> tuple[Precision, ...]:
    """Every precision `device` runs: int8 only on CPU (its only kernels), fp16 only where it is fast (GPUs)."""
    if device.type == "cpu":
        return ("fp32", "bf16", "int8")
    if device.type == "cuda":
        return ("fp32", "fp16", "bf16")
    return ("fp32",)


def make_plan(quick: bool, device: torch.device) -> Plan:
    """`--quick`: BLIP base at batch 2 (LAVIS, fp32, bf16) and the SAM ViT-T encoder, timed once: about a minute
    on a 2-core CPU, where the LAVIS way alone takes seconds per pair. Otherwise every section at the sizes people
    run, except BLIP large at batch 32 on a CPU, which takes many minutes per variant (listed as skipped)."""
    if quick:
        precisions = tuple(p for p in device_precisions(device) if p != "int8")
        return Plan(QUICK_SECTIONS, precisions, {"base": (2,)}, sam_archs=("vitt",), repeats=1)
    on_cpu = device.type == "cpu"
    skip = {("large", 32): "minutes per variant on a CPU; --batch-sizes 32 runs it"} if on_cpu else {}
    return Plan(
        SECTIONS,
        device_precisions(device),
        {"base": (1, 8, 32), "large": (1, 8, 32)},
        skip,
        sam_batches=(1,) if on_cpu else (1, 8),
    )


# --- the bench: inputs, models, timing ------------------------------------------------------------------------------


class Precisions:
    """One model at several precisions: the float model switched in place, int8 on a copy made once (quantising
    cannot be undone, and later float runs still need the float model)."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self._int8: Model | None = None

    def __call__(self, precision: Precision) -> Model:
        if precision != "int8":
            self.model.set_precision(precision)
            return self.model
        if self._int8 is None:
            self._int8 = copy.deepcopy(self.model)
            self._int8.set_precision("int8")
        return self._int8


def photos(count: int, size: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """Photo-sized RGB uint8 images of smooth random colour (JPEG-friendly, unlike white noise)."""
    rng = np.random.default_rng(seed)
    return [
        cv2.resize(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), size, interpolation=cv2.INTER_CUBIC)
        for _ in range(count)
    ]


class Bench:
    """Everything the sections share: the plan, the sizes, the device, the report, models built once."""

    def __init__(self, plan: Plan, sizes: Sizes, device: torch.device, report: Report, scratch: Path) -> None:
        self.plan, self.sizes, self.device, self.report, self.scratch = plan, sizes, device, report, scratch
        self._last: dict[tuple[str, ...], Row] = {}  # the latest row of each series, for the skip estimates
        self._blip: dict[str, BlipITM] = {}
        self._sam: dict[str, EfficientSam] = {}
        self._tokenizers: dict[int, BlipTokenizer] = {}

    def pairs(self, count: int) -> tuple[list[np.ndarray], list[str]]:
        return photos(count, self.sizes.photo), [TEXTS[index % len(TEXTS)] for index in range(count)]

    def blip_config(self, arch: str) -> BlipITMConfig:
        return hf_blip_itm_config(self.sizes.blip[arch])

    def vocab(self, vocab_size: int) -> Path:
        """A made-up WordPiece vocabulary (bench_vqa's) that BLIP's tokenizer turns into `vocab_size` tokens."""
        folder = self.scratch / f"vocab-{vocab_size}"
        if not folder.exists():
            folder.mkdir()
            make_vocab(folder, vocab_size - 2)  # the tokenizer adds [DEC] and [ENC]
        return folder / "vocab.txt"

    def tokenizer(self, vocab_size: int) -> BlipTokenizer:
        if vocab_size not in self._tokenizers:
            self._tokenizers[vocab_size] = BlipTokenizer(self.vocab(vocab_size), max_length=35)
        return self._tokenizers[vocab_size]

    def blip_itm(self, arch: str) -> BlipITM:
        """fusioncam's BLIP ITM with random weights (seed 0), on the device; built once for the sections."""
        if arch not in self._blip:
            torch.manual_seed(0)
            self._blip[arch] = BlipITM(self.blip_config(arch)).to(self.device).eval().requires_grad_(False)
        return self._blip[arch]

    def sam(self, arch: str) -> EfficientSam:
        """EfficientSAM with random weights (seed 0), on the device; built once for the sections."""
        if arch not in self._sam:
            torch.manual_seed(0)
            self._sam[arch] = EfficientSam(self.sizes.sam[arch]).to(self.device).eval().requires_grad_(False)
        return self._sam[arch]

    def timed(
        self,
        section: str,
        name: str,
        impl: str,
        precision: str,
        batch: int,
        run: Callable[[], Outputs],
        warmup: Callable[[], object] | None = None,
    ) -> Row:
        """A measured row, or a skipped one when the same series at a smaller batch says that this one would take
        too long or not fit in memory."""
        row = Row(section, name, impl, precision, batch, batch)
        key = (section, name, impl, precision)
        if key in self._last and (reason := self.too_big(self._last[key], batch)):
            row.skipped = reason
            return row
        log(f"{section}: {name}, {impl} {precision}, batch {batch}")
        row.seconds, row.peak_mib, row.memory, row.outputs = measure(
            run, self.device, self.plan.repeats, self.plan.budget, warmup
        )
        row.extra |= row.outputs[-1].extra
        if stages := [outputs.stages for outputs in row.outputs if outputs.stages]:
            row.extra["stages_s"] = {stage: statistics.median(each[stage] for each in stages) for stage in stages[0]}
            row.note = ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in row.extra["stages_s"].items())
        self._last[key] = row
        return row

    def too_big(self, smaller: Row, batch: int) -> str | None:
        """Why `batch` should not be run, scaling linearly from a row at a smaller batch: its warm-up and one run
        would exceed `max_seconds`, or its memory would exceed what the device has free (a swapping or killed
        run measures nothing, and on a shared machine it hurts the others)."""
        scale = batch / smaller.batch
        seconds = 2 * scale * statistics.median(smaller.seconds)
        if seconds > self.plan.max_seconds:
            return f"~{seconds:.0f} s for warm-up + 1 run > --max-seconds {self.plan.max_seconds:.0f}"
        needed, free = scale * (smaller.peak_mib or 0.0), available_mib(self.device)
        if free is not None and needed > 0.8 * free:
            return f"~{needed / 1024:.1f} GiB needed, {free / 1024:.1f} GiB available"
        return None


def probe_block(preferred: int, config: BlipITMConfig) -> int:
    """`preferred`, or the last block but one of a smaller model: in the last block only `[ENC]`'s row reaches the
    ITM head, so every word-piece map (and the sentence map) is 0 there by construction."""
    return max(0, min(preferred, config.text.num_layers - 2))


# --- sections -----------------------------------------------------------------------------------------------------


def lavis_run(
    model: BlipForImageTextRetrieval,
    tokenizer: BlipTokenizer,
    transform: Callable[[Sequence[np.ndarray]], torch.Tensor],
    images: list[np.ndarray],
    texts: list[str],
    block: int,
    device: torch.device,
) -> Outputs:
    """The LAVIS way from the same photos and strings: preprocess, tokenize (`[ENC]` first), Grad-CAM."""
    pixels = transform(images).to(device)
    encoding = tokenizer([clean_caption(text) for text in texts])
    ids = tokenizer.for_itm(encoding.input_ids).to(device)
    cam = lavis_gradcam(model, pixels, ids, encoding.attention_mask.to(device), block)
    return Outputs(maps=cam.sentence_maps.float().cpu(), itm=cam.itm_logits.softmax(-1)[:, 1].float().cpu())


def heatmap_run(matcher: BlipMatcher, images: list[np.ndarray], texts: list[str], block: int) -> Outputs:
    """fusioncam's `BlipMatcher.heatmaps`, which also computes the ITC score the LAVIS way leaves out."""
    results = matcher.heatmaps(images, texts, block=block)
    return Outputs(
        maps=torch.stack([result.heatmap for result in results]),
        itm=torch.tensor([result.itm_score for result in results]),
    )


def explain_run(
    matcher: BlipMatcher, images: list[np.ndarray], texts: list[str], block: int, sam: EfficientSam | None = None
) -> Outputs:
    """`explain_pairs`, refined by `sam` when given; a fresh refiner each run, so every run encodes its images."""
    explained = explain_pairs(matcher, images, texts, block=block, refiner=SamRefiner(sam) if sam else None)
    return Outputs(
        maps=torch.stack([item.map for item in explained]),
        itm=torch.tensor([item.heatmap.itm_score for item in explained]),
    )


def heatmap_section(bench: Bench) -> None:
    """BLIP ITM Grad-CAM: the LAVIS way (fp32) and fusioncam at each precision, per architecture and batch size."""
    for arch, batches in bench.plan.heatmap_batches.items():
        log(f"heatmap: building BLIP ITM {arch} twice (transformers and fusioncam, the same random weights)")
        hf, ours = twin_models(bench.sizes.blip[arch])
        hf.to(bench.device)
        at = Precisions(ours.to(bench.device).requires_grad_(False))
        tokenizer = bench.tokenizer(ours.config.text.vocab_size)
        transform = blip_transform(ours.config.vision.image_size)
        block = probe_block(bench.plan.block, ours.config)
        name = f"blip-itm {arch} (block {block})"
        for batch in batches:
            if reason := bench.plan.skip.get((arch, batch)):
                bench.report.add([Row("heatmap", name, "all", "-", batch, batch, skipped=reason)])
                continue
            images, texts = bench.pairs(batch)
            lavis = partial(lavis_run, hf, tokenizer, transform, images, texts, block, bench.device)
            rows = [bench.timed("heatmap", name, "lavis", "fp32", batch, lavis)]
            for precision in bench.plan.precisions:
                matcher = BlipMatcher(
                    at(precision), tokenizer, transform, name=arch, device=bench.device, precision=precision
                )
                run = partial(heatmap_run, matcher, images, texts, block)
                rows.append(bench.timed("heatmap", name, "fusioncam", precision, batch, run))
            bench.report.add(rows)
        del hf, ours, at
        gc.collect()


def refine_run(refiner: SamRefiner, keys: list[int], images: list[np.ndarray], heatmaps: torch.Tensor) -> Outputs:
    """SAM refinement alone: prompts, mask decoder and blend, the embeddings being in the refiner's cache."""
    return Outputs(maps=torch.stack([refined.heatmap for refined in refiner.refine(keys, images, heatmaps)]))


def esam_section(bench: Bench) -> None:
    """`--encoder esam`: BLIP base heatmaps refined by EfficientSAM ViT-T, at each precision (both models); then
    the refinement alone, from cached embeddings, as an image explained with many texts pays it."""
    config = bench.blip_config("base")
    blip_at, sam_at = Precisions(bench.blip_itm("base")), Precisions(bench.sam("vitt"))
    tokenizer, transform = bench.tokenizer(config.text.vocab_size), blip_transform(config.vision.image_size)
    batch, block = bench.plan.pipeline_batch, probe_block(bench.plan.block, config)
    images, texts = bench.pairs(batch)
    rows = []
    for precision in bench.plan.precisions:
        matcher = BlipMatcher(
            blip_at(precision), tokenizer, transform, name="base", device=bench.device, precision=precision
        )
        sam = sam_at(precision)
        assert isinstance(sam, EfficientSam)
        run = partial(explain_run, matcher, images, texts, block, sam)
        rows.append(bench.timed("esam", "blip-itm base + sam vitt refine", "fusioncam", precision, batch, run))
    bench.report.add(rows)

    matcher = BlipMatcher(blip_at("fp32"), tokenizer, transform, name="base", device=bench.device)
    heatmaps = heatmap_run(matcher, images, texts, block).maps
    assert heatmaps is not None
    keys = list(range(batch))
    rows = []
    for precision in bench.plan.precisions:
        sam = sam_at(precision)
        assert isinstance(sam, EfficientSam)
        refiner = SamRefiner(sam)
        refiner.embed(keys, images)
        run = partial(refine_run, refiner, keys, images, heatmaps)
        rows.append(bench.timed("esam", "sam vitt refine, cached embedding", "fusioncam", precision, batch, run))
    bench.report.add(rows)


def fused_section(bench: Bench) -> None:
    """`--encoder fused`: BLIP base with a random fusion on EfficientSAM ViT-T embeddings, at each precision.

    An untrained fusion has its gate at 0 and adds nothing; it is opened to `FUSION_GATE` so that the fusion's own
    arithmetic shows in the fidelity columns as it would for a trained one (the time is the same either way).
    """
    config = bench.blip_config("base")
    torch.manual_seed(0)
    fused = BlipFusionITM(bench.blip_itm("base"), bench.sizes.fusion).eval()
    with torch.no_grad():
        fused.fusion.gate.fill_(FUSION_GATE)
    fused_at, sam_at = Precisions(fused), Precisions(bench.sam("vitt"))
    tokenizer, transform = bench.tokenizer(config.text.vocab_size), blip_transform(config.vision.image_size)
    batch, block = bench.plan.pipeline_batch, probe_block(bench.plan.block, config)
    images, texts = bench.pairs(batch)
    rows = []
    for precision in bench.plan.precisions:
        model, sam = fused_at(precision), sam_at(precision)
        assert isinstance(model, BlipFusionITM) and isinstance(sam, EfficientSam)
        matcher = BlipMatcher(
            model, tokenizer, transform, name="base", device=bench.device, sam=sam, precision=precision
        )
        run = partial(explain_run, matcher, images, texts, block)
        rows.append(bench.timed("fused", "blip-itm base + sam vitt fusion", "fusioncam", precision, batch, run))
    bench.report.add(rows)


def encode_run(model: Model, pixels: torch.Tensor) -> Outputs:
    """The image encoder of `model` (EfficientSam or its explicit-attention copy) at the model's precision."""
    encoder = model.image_encoder
    assert isinstance(encoder, torch.nn.Module)
    with torch.inference_mode(), model.autocast():
        return Outputs(embeddings=encoder(pixels).float().cpu())


def sam_encoder_section(bench: Bench) -> None:
    """EfficientSAM image encoder, fusioncam's against explicit attention, per architecture, precision, batch."""
    for arch in bench.plan.sam_archs:
        sam = bench.sam(arch)
        ours, theirs = Precisions(sam), Precisions(ExplicitAttentionEncoder(sam.image_encoder))
        size = sam.config.encoder.image_size
        name = f"efficient-sam {arch} encoder {size}²"
        for batch in bench.plan.sam_batches:
            torch.manual_seed(0)
            pixels = sam.preprocess(torch.rand(batch, 3, size, size, device=bench.device))
            rows = []
            for precision in bench.plan.precisions:
                for impl, models in (("explicit", theirs), ("fusioncam", ours)):
                    run = partial(encode_run, models(precision), pixels)
                    rows.append(bench.timed("sam-encoder", name, impl, precision, batch, run))
            bench.report.add(rows)


def vqa_run(pipeline: PNPVQA, image: np.ndarray) -> Outputs:
    """One question. How many distinct captions it got is recorded: random captioners repeat themselves, and the
    rounds of sampling needed for `num_captions` distinct ones (the caption stage's time) differ by precision."""
    result = pipeline.answer([image], [QUESTION], torch.Generator().manual_seed(0))[0]
    return Outputs(maps=result.heatmap[None], stages=result.seconds, extra={"distinct_captions": len(result.evidence)})


def vqa_section(bench: Bench) -> None:
    """PNP-VQA on one question, per precision of all three models; the warm-up asks for 5 captions only."""
    folder = bench.scratch / "vqa"
    folder.mkdir()
    log(f"vqa: building the {bench.sizes.vqa}-size PNP-VQA models")
    matcher, captioner, answerer = build_vqa(bench.sizes.vqa, folder, bench.device, "fp32")
    block = probe_block(7, matcher.model.config)  # PNP-VQA reads block 7 of 12
    captions = bench.plan.vqa_captions
    pipeline = PNPVQA(matcher, captioner, answerer, VQAConfig(block=block, num_captions=captions))
    warm = PNPVQA(matcher, captioner, answerer, VQAConfig(block=block, num_captions=min(5, captions)))
    image = bench.pairs(1)[0][0]
    rows = []
    for precision in bench.plan.precisions:  # int8 comes last: it quantises these models for good
        for model in (matcher.model, captioner.model, answerer.model):
            model.set_precision(precision)
        name = f"pnp-vqa {bench.sizes.vqa} ({captions} captions)"
        run, warmup = partial(vqa_run, pipeline, image), partial(vqa_run, warm, image)
        row = bench.timed("vqa", name, "fusioncam", precision, 1, run, warmup)
        row.note += f"; {row.extra.get('distinct_captions')} distinct captions"
        rows.append(row)
    bench.report.add(rows)


def write_cli_preset(folder: Path, model: BlipITM, vocab: Path) -> Path:
    """A preset file for `model` as `fusioncam train` would leave one: fusioncam layout, local checkpoint + vocab."""
    checkpoint = folder / "blip-itm.safetensors"
    save_file({key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}, str(checkpoint))
    preset = folder / "bench-blip-itm.toml"
    write_preset(
        preset,
        {
            "kind": "blip-itm",
            "layout": "fusioncam",
            "description": "random-weight BLIP ITM written by benchmarks/suite.py",
            "config": asdict(model.config),
            "files": {"checkpoint": {"path": str(checkpoint)}, "vocab": {"path": str(vocab)}},
        },
    )
    return preset


def cli_outputs(out: Path) -> Outputs:
    """The maps (`.heatmap.npy`) and ITM scores (`.json`) a `fusioncam heatmap` run wrote, in name order."""
    maps = sorted(out.glob("*.heatmap.npy"))
    scores = [json.loads(path.with_name(path.name.replace(".heatmap.npy", ".json")).read_text()) for path in maps]
    return Outputs(
        maps=torch.stack([torch.from_numpy(np.load(path)) for path in maps]),
        itm=torch.tensor([record["itm_score"] for record in scores]),
    )


def cli_heatmap(
    bench: Bench, preset: Path, photos_folder: Path, block: int, precision: str
) -> tuple[float, float | None, Path]:
    """One `fusioncam heatmap` run over a folder into a fresh `--out`: wall seconds, peak MiB, that folder."""
    out = Path(tempfile.mkdtemp(dir=photos_folder.parent))
    arguments = [
        *("heatmap", str(photos_folder), TEXTS[1], "--model", str(preset), "--out", str(out), "--quiet"),
        *("--block", str(block), "--batch-size", str(bench.plan.cli_batch), "--precision", precision),
        *("--device", str(bench.device)),
    ]
    seconds, peak = run_command([sys.executable, "-m", "fusioncam.cli", *arguments], out / "stderr.log")
    return seconds, peak, out


def cli_section(bench: Bench) -> None:
    """`fusioncam heatmap` on a folder of JPEGs, per precision; a one-photo run separates start-up and model load
    from the time per pair."""
    folder = bench.scratch / "cli"
    one, many = folder / "one", folder / "many"
    one.mkdir(parents=True)
    many.mkdir()
    model = bench.blip_itm("base")
    log("cli: writing a BLIP base preset (checkpoint + vocab) and the photos")
    preset = write_cli_preset(folder, model, bench.vocab(model.config.text.vocab_size))
    block, count = probe_block(bench.plan.block, model.config), bench.plan.cli_images
    for index, image in enumerate(photos(count, bench.sizes.photo)):
        for target in (many, one) if index == 0 else (many,):
            cv2.imwrite(str(target / f"{index:03d}.jpg"), image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    rows = []
    for precision in bench.plan.precisions:
        log(f"cli: fusioncam heatmap --precision {precision}")
        row = Row("cli", f"fusioncam heatmap base, {count} photos", "cli", precision, bench.plan.cli_batch, count)
        shutil.rmtree(cli_heatmap(bench, preset, one, block, precision)[2])  # warm-up: page cache, compiled bytecode
        one_photo, peaks = [], []
        for _ in range(bench.plan.repeats):
            one_photo.append(cli_heatmap(bench, preset, one, block, precision)[0])
            seconds, peak, out = cli_heatmap(bench, preset, many, block, precision)
            row.seconds.append(seconds)
            peaks.append(peak)
            if not row.outputs:
                row.outputs.append(cli_outputs(out))
            shutil.rmtree(out)
            if sum(row.seconds) + sum(one_photo) >= bench.plan.budget:
                break
        marginal = (statistics.median(row.seconds) - statistics.median(one_photo)) / max(1, count - 1)
        startup = statistics.median(one_photo) - marginal
        row.peak_mib = max((peak for peak in peaks if peak is not None), default=None)
        row.memory = "child-vmhwm"
        row.extra = {"one_photo_s": one_photo, "startup_s": startup, "marginal_s_per_item": marginal}
        row.note = f"start-up + model load {startup:.1f} s, then {marginal:.2f} s/pair"
        rows.append(row)
    bench.report.add(rows)


SECTION_RUNNERS: dict[str, Callable[[Bench], None]] = {
    "heatmap": heatmap_section,
    "esam": esam_section,
    "fused": fused_section,
    "sam-encoder": sam_encoder_section,
    "vqa": vqa_section,
    "cli": cli_section,
}


def run_suite(
    plan: Plan, sizes: Sizes, device: torch.device, out: Path, mode: str, stream: TextIO = sys.stdout
) -> bool:
    """Run the plan's sections in order; a failing section is reported on stderr and the others still run.
    Returns whether every section completed."""
    report = Report(out, environment(device, mode), stream)
    ok = True
    with tempfile.TemporaryDirectory(prefix="fusioncam-bench-") as scratch:
        bench = Bench(plan, sizes, device, report, Path(scratch))
        for section in plan.sections:
            try:
                SECTION_RUNNERS[section](bench)
            except Exception:
                ok = False
                log(f"{section} failed:\n{traceback.format_exc()}")
    print(f"\n{LEGEND}\nresults: {out}", file=stream, flush=True)
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a subset that takes about a minute on a 2-core CPU")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, metavar="SECTION", help=f"of {', '.join(SECTIONS)}")
    parser.add_argument("--device", default="auto", help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:1, ...")
    parser.add_argument("--out", type=Path, help="JSONL file (default: bench-results/<date-time>.jsonl)")
    parser.add_argument("--repeats", type=int, help="timed runs per measurement (default: 3, --quick 1)")
    parser.add_argument("--budget", type=float, help="stop repeating once the timed runs took this long (s)")
    parser.add_argument("--max-seconds", type=float, help="skip a batch estimated to take longer than this (s)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", help="BLIP heatmap batch sizes, every architecture")
    parser.add_argument("--vqa-captions", type=int, help="PNP-VQA captions per question (default: 100, LAVIS's)")
    args = parser.parse_args(argv)

    device = pick_device(args.device)
    plan = make_plan(args.quick, device)
    overrides: dict[str, Any] = {
        "sections": tuple(args.only) if args.only else None,
        "repeats": args.repeats,
        "budget": args.budget,
        "max_seconds": args.max_seconds,
        "vqa_captions": args.vqa_captions,
        "heatmap_batches": {arch: tuple(args.batch_sizes) for arch in plan.heatmap_batches}
        if args.batch_sizes
        else None,
        "skip": {} if args.batch_sizes else None,  # asked for by name: run
    }
    plan = replace(plan, **{key: value for key, value in overrides.items() if value is not None})
    out = args.out or REPO / "bench-results" / f"{datetime.now():%Y%m%d-%H%M%S}.jsonl"
    sections = ", ".join(plan.sections)
    log(f"device {device} ({device_name(device)}), {torch.get_num_threads()} threads, sections: {sections}")
    return 0 if run_suite(plan, REAL, device, out, "quick" if args.quick else "full") else 1


if __name__ == "__main__":
    sys.exit(main())
