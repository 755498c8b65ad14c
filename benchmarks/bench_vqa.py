"""Time per question of PNP-VQA, by stage, on random-weight models (no download).

    .venv/bin/python benchmarks/bench_vqa.py --size real --num-captions 100
    .venv/bin/python benchmarks/bench_vqa.py --size real --num-captions 100 --precision bf16
    .venv/bin/python benchmarks/bench_vqa.py --size tiny

`real` builds BLIP ITM large + BLIP caption large + UnifiedQA-T5 base at their official sizes (what PNP-VQA base
runs), `tiny` small stand-ins. Tokenizers are stand-ins too (a made-up WordPiece vocabulary of the real size, a
small SentencePiece model): they change which tokens appear, not how long the models compute. Random captioners
rarely stop early, so captions run to the maximum length, and so do answers (19 tokens, where real ones have a
few): an upper bound of the decoding and explanation time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fusioncam.api import BlipMatcher, Captioner, QuestionAnswerer
from fusioncam.choices import PRECISIONS, Precision
from fusioncam.images import blip_transform
from fusioncam.models.bert import TextConfig
from fusioncam.models.blip import BlipCaption, BlipCaptionConfig, BlipITM, BlipITMConfig
from fusioncam.models.t5_fid import FusionInDecoderQA
from fusioncam.models.vit import VisionConfig
from fusioncam.text import BlipTokenizer
from fusioncam.vqa import PNPVQA, VQAConfig

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [
    "what",
    "is",
    "the",
    "color",
    "of",
    "dog",
    "cat",
    "picture",
    "a",
    "an",
    "on",
    "in",
    "with",
    "two",
    "three",
    "red",
    "blue",
    "green",
    "running",
    "sitting",
]


def make_vocab(folder: Path, size: int) -> Path:
    words = SPECIAL + WORDS + [f"w{i}" for i in range(size - len(SPECIAL) - len(WORDS))]
    path = folder / "vocab.txt"
    path.write_text("\n".join(words) + "\n")
    return path


def make_t5_tokenizer(folder: Path):
    import sentencepiece
    from transformers import T5Tokenizer

    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))) * 20)
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(folder / "spiece"),
        vocab_size=60,
        hard_vocab_limit=False,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    (folder / "tokenizer_config.json").write_text('{"extra_ids": 0}')
    return T5Tokenizer.from_pretrained(str(folder))


def build(
    size: str, folder: Path, device: torch.device, precision: Precision
) -> tuple[BlipMatcher, Captioner, QuestionAnswerer]:
    torch.manual_seed(0)
    if size == "real":
        itm_config, caption_config = BlipITMConfig.preset("large"), BlipCaptionConfig.preset("large")
        qa = FusionInDecoderQA.from_preset("base")
    else:
        vision = VisionConfig(width=64, depth=2, num_heads=4)
        text = TextConfig(hidden_size=64, num_layers=3, num_heads=4, intermediate_size=128, encoder_width=64)
        itm_config, caption_config = BlipITMConfig(vision, text), BlipCaptionConfig(vision, text)
        qa = FusionInDecoderQA.from_preset(
            "base", d_model=64, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=16, vocab_size=256
        )
    tokenizer = BlipTokenizer(make_vocab(folder, itm_config.text.vocab_size - 2), max_length=35)
    transform = blip_transform(itm_config.vision.image_size)
    matcher = BlipMatcher(BlipITM(itm_config), tokenizer, transform, "itm", device, precision=precision)
    caption_model = BlipCaption(caption_config).to(device).eval().requires_grad_(False)
    caption_model.set_precision(precision)
    captioner = Captioner(caption_model, tokenizer, transform, "caption")
    with torch.no_grad():  # else the random answerer writes only pad tokens: an empty answer, nothing to explain
        qa.model.shared.weight[qa.pad_token_id] = 0.0
    qa = qa.to(device).eval().requires_grad_(False)
    qa.set_precision(precision)
    answerer = QuestionAnswerer(qa, make_t5_tokenizer(folder), "qa")
    return matcher, captioner, answerer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", choices=["tiny", "real"])
    parser.add_argument("--num-captions", type=int, default=100)
    parser.add_argument("--questions", type=int, default=1, help="questions answered together")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS, help="of all three models")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        matcher, captioner, answerer = build(args.size, Path(folder), device, args.precision)
        print(f"built {args.size} {args.precision} models in {time.perf_counter() - start:.1f} s on {device}")
        block = min(7, matcher.num_blocks - 1)  # PNP-VQA reads block 7 of 12
        pipeline = PNPVQA(matcher, captioner, answerer, VQAConfig(block=block, num_captions=args.num_captions))
        image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
        questions = ["what is the color of the dog?"] * args.questions
        start = time.perf_counter()
        results = pipeline.answer([image] * args.questions, questions, torch.Generator().manual_seed(0))
        total = time.perf_counter() - start
    stages = ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in results[0].seconds.items())
    print(f"{args.num_captions} captions: {total / args.questions:.2f} s per question ({stages})")


if __name__ == "__main__":
    main()
