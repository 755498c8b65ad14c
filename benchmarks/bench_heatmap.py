"""Time a BLIP ITM Grad-CAM heatmap on a real-size model with random weights (no download needed).

    .venv/bin/python benchmarks/bench_heatmap.py --arch base --batch-size 1 4 --device cpu

Compares fusioncam's path (vision encoder and the text blocks before the probe without autograd, gradient
only with respect to the probed attention) with the cost of the LAVIS way (everything under autograd,
`loss.backward()` into every parameter of the vision and text encoders). That both give the same maps is what
the reference tests check; this only measures time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fusioncam.explain.gradcam import compute_gradcam
from fusioncam.models.blip import BlipITM, BlipITMConfig


def lavis_style(model: BlipITM, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> None:
    """What LAVIS pays for the same map: the whole graph recorded, gradients into every parameter."""
    model.requires_grad_(True)
    logits = model.itm(model.encode_image(pixels), ids, mask).logits
    logits[:, 1].sum().backward()
    model.zero_grad(set_to_none=True)
    model.requires_grad_(False)


def ours(model: BlipITM, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, block: int):
    with torch.no_grad():
        image_embeds = model.encode_image(pixels)
    return compute_gradcam(model, image_embeds, ids, mask, block).attention_grad


def timed(fn, inputs: tuple, repeats: int, sync) -> float:
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn(*inputs)
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="base", choices=["base", "large"])
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--tokens", type=int, default=12, help="text length incl. [ENC] and [SEP]")
    parser.add_argument("--block", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    model = BlipITM(BlipITMConfig.preset(args.arch)).to(device).eval().requires_grad_(False)
    size = model.config.vision.image_size
    print(f"BLIP ITM {args.arch} (random weights) on {device}, {args.tokens} tokens, block {args.block}")
    print("batch  fusioncam s/pair  LAVIS-style s/pair  speed-up")
    for batch in args.batch_size:
        pixels = torch.randn(batch, 3, size, size, device=device)
        ids = torch.randint(1000, 2000, (batch, args.tokens), device=device)
        mask = torch.ones_like(ids)
        fast = timed(ours, (model, pixels, ids, mask, args.block), args.repeats, sync) / batch
        slow = timed(lavis_style, (model, pixels, ids, mask), args.repeats, sync) / batch
        print(f"{batch:5d}  {fast:16.3f}  {slow:18.3f}  {slow / fast:8.2f}x")


if __name__ == "__main__":
    main()
