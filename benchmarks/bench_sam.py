"""CPU/GPU time per image of the real-size EfficientSAM encoder (random weights, 1024² input) next to a BLIP heatmap.

    .venv/bin/python benchmarks/bench_sam.py --sam vitt --repeats 3

No download: both models are built at their official sizes with random weights, which costs the same time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from fusioncam.explain.gradcam import compute_gradcam
from fusioncam.explain.refine import embed_images, refine_heatmaps
from fusioncam.models.blip import BlipITM, BlipITMConfig
from fusioncam.models.efficient_sam import EfficientSam, EfficientSamConfig


def median_seconds(fn, repeats: int, sync) -> float:
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sam", default="vitt", choices=["vitt", "vits"])
    parser.add_argument("--blip", default="base", choices=["base", "large"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    sam = EfficientSam(EfficientSamConfig.preset(args.sam)).to(device).eval().requires_grad_(False)
    blip = BlipITM(BlipITMConfig.preset(args.blip)).to(device).eval().requires_grad_(False)

    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    pixels = torch.rand(1, 3, 1024, 1024, device=device)
    blip_pixels = torch.randn(1, 3, 384, 384, device=device)
    ids = torch.randint(1000, 2000, (1, 8), device=device)
    mask = torch.ones_like(ids)

    with torch.no_grad():
        encoder = median_seconds(lambda: sam.embed(pixels), args.repeats, sync)
        embedded = embed_images(sam, [image])

    def heatmap() -> torch.Tensor:
        with torch.no_grad():
            tokens = blip.encode_image(blip_pixels)
        return compute_gradcam(blip, tokens, ids, mask, 6).sentence_maps

    blip_time = median_seconds(heatmap, args.repeats, sync)
    maps = heatmap().cpu()
    with torch.no_grad():
        refine = median_seconds(lambda: refine_heatmaps(sam, embedded, maps), args.repeats, sync)
    print(f"device {device}, threads {torch.get_num_threads()}")
    print(f"EfficientSAM {args.sam} image encoder, 1024² input: {encoder:.3f} s/image")
    print(f"BLIP ITM {args.blip} heatmap (ViT 384² + Grad-CAM at block 6): {blip_time:.3f} s/image")
    print(f"SAM refinement of one heatmap from a cached embedding (prompt + decoder + blend): {refine:.3f} s")


if __name__ == "__main__":
    main()
