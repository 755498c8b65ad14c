"""PNP-VQA learns: a tiny ITM, captioner and UnifiedQA trained here on synthetic scenes answer held-out questions.

The PNP-VQA issue's end-to-end check. Every model starts from random weights, is trained in this file on scenes of
`fusioncam.synth`, saved as preset files and loaded back through the library's loaders, so the pipeline that
answers is the one `fusioncam vqa` runs:

- ITM (the question's heatmap, which picks the patches each caption sees): `fusioncam.train` on synth pairs, a few
  dozen steps. Its heatmap need not be good: with 28 of the 36 patches per caption, every caption sees most of
  the image anyway.
- captioner: a tiny `BlipCaption`. Its ViT is first pre-trained to name the scene's object (shape and colour from
  max-pooled patch tokens), standing in for the ImageNet pre-training BLIP's ViT starts from, then frozen; the
  decoder is trained with `caption_loss` on "a picture of " + the scene caption, every other step from a random
  subset of patch tokens, as PNP-VQA feeds it. Saved in our own layout ("fusioncam").
- UnifiedQA: a tiny T5 with a SentencePiece vocabulary of the synthetic language, trained Fusion-in-Decoder style
  on passages built exactly as PNP-VQA builds them (`qa_passages`), from captions written from the scene's objects
  with some colours and shapes wrong, as a sampling captioner writes them.

Held-out scenes ("val" split) are then asked their colour and shape questions.

Why the pre-training (measured while writing this, greedy captions of held-out scenes): trained from random
weights with the captioner, a tiny ViT learns colours within a few hundred steps and shapes hardly — the right one
of six shapes in 23–30 of 100 captions after 600 to 2000 steps (chance: a sixth), whether on 2 000 or 10 000
scenes, with 4-, 6-, 8- or 12-pixel patches, 48 or 64 px, ViT depth 0 or 2, decoder width 64 or 128; and as rarely
on the training scenes themselves. The shapes are in the patch tokens: a classifier on the same ViT reaches 0.82
from max-pooled tokens after 1500 steps, but 0.38 from the class token and 0.26 from the tokens' mean — soft
pooling, which is all attention gives a captioner, is slow to learn to find a small object's outline. With the
pre-trained ViT frozen the captioner names the shape in about two thirds of held-out greedy captions; fine-tuned
at the captioner's learning rate it forgets them (0.36). The ViT is pre-trained on 6 000 scenes: on 2 000 it
learnt the training scenes' shapes (0.93) and not the held-out ones' (0.40).

Each scene holds one object: with two, neither the captioner nor the QA model learnt to bind a colour to its shape
in time (accuracy 0.45: colours 0.71, shapes 0.21, before the pre-training). Measured with seeds 0, 1, 2 on 120
held-out questions: accuracy 0.78, 0.75, 0.74 (chance 0.15); colours 60/60 each time; shapes 33, 30, 29 of 60
(chance 0.17). The assertions keep a margin below those: accuracy ≥ max(0.6, 3 × chance), colours ≥ 0.9,
shapes ≥ 2 × chance, and every answer a word of the kind asked.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tiny_presets import write_t5_tokenizer

import fusioncam
from fusioncam.api import QuestionAnswerer, load_captioner, load_qa
from fusioncam.checkpoints import T5_TIED_KEYS
from fusioncam.images import BLIP_MEAN, BLIP_STD, ImageTransform
from fusioncam.models.blip import BlipCaption, BlipCaptionConfig, caption_loss
from fusioncam.models.t5_fid import FusionInDecoderQA
from fusioncam.synth import COLORS, SHAPES, VOCABULARY, Description, Scene, describe, generate, synth_scene, write_vocab
from fusioncam.text import BlipTokenizer, clean_question
from fusioncam.train import TrainConfig, to_toml, train
from fusioncam.vqa import PNPVQA, VQAConfig, gather_patches
from fusioncam.vqa_text import qa_passages

SEED = 0
IMAGE_SIZE, PATCH_SIZE, MAX_OBJECTS = 48, 8, 1
GRID = (IMAGE_SIZE // PATCH_SIZE) ** 2
KINDS = {"color": "what color is", "shape": "what shape is"}  # question kind → how its questions start

PROMPT = "a picture of "
NUM_PATCHES = 28  # of 36
NUM_CAPTIONS = 5
# Lengths count the prompt: "[DEC] a picture of" is 10 word-pieces ("picture" is spelt out in the synthetic
# vocabulary). At least two caption tokens, at most "a small purple triangle" and [SEP].
CAPTION_MIN_LENGTH, CAPTION_MAX_LENGTH = 12, 16
TOP_K = 3  # the tiny captioner's words beyond its best few are noise

ITM_SCENES, ITM_STEPS = 256, 60
CAPTION_SCENES, CAPTION_STEPS, CAPTION_BATCH = 6000, 600, 32
VISION_STEPS = 1500  # pre-training of the captioner's ViT
QA_SCENES, QA_STEPS, QA_BATCH = 600, 200, 32
VAL_SCENES = 60  # one colour and one shape question each

TINY_ITM = {
    "embed_dim": 16,
    "max_txt_len": 32,
    "vision": {"image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE, "width": 32, "depth": 1, "num_heads": 2},
    "text": {
        "vocab_size": len(VOCABULARY) + 2,  # [DEC] and [ENC]
        "hidden_size": 32,
        "num_layers": 2,
        "num_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 32,
        "encoder_width": 32,
    },
}
TINY_CAPTION = {
    "prompt": PROMPT,
    "max_txt_len": 40,
    "vision": {"image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE, "width": 64, "depth": 2, "num_heads": 4},
    "text": {
        "vocab_size": len(VOCABULARY) + 2,
        "hidden_size": 64,
        "num_layers": 2,
        "num_heads": 4,
        "intermediate_size": 128,
        "max_position_embeddings": 64,
        "encoder_width": 64,
    },
}
# No dropout: it costs a quarter of a tiny T5's training step on a CPU, and a run this short does not need it.
TINY_T5 = {"d_model": 64, "d_ff": 128, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 4, "d_kv": 16}
TINY_T5 |= {"dropout_rate": 0.0}


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one thread, restoring the count afterwards.

    Tiny models gain little from a second thread, and on shared cores (other test runs, CI neighbours) extra
    threads wait on each other: on a busy machine a tiny T5 training step took 6 times longer on two threads than
    on one. One thread also keeps the numbers the same whatever the machine's core count.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Torch's global generator (model init, `fusioncam.train`) seeded for a block and restored afterwards."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


def _kind(question: str) -> str | None:
    return next((kind for kind, start in KINDS.items() if question.startswith(start)), None)


def _scenes(count: int, split: str) -> list[tuple[Scene, Description]]:
    """Scenes 0..count-1 of the synth dataset (SEED, split), made in memory."""
    return [
        synth_scene(index, SEED, image_size=IMAGE_SIZE, max_objects=MAX_OBJECTS, split=split) for index in range(count)
    ]


def _set_lr(optimizer: torch.optim.Optimizer, peak: float, step: int, steps: int, warmup: int = 50) -> None:
    """Linear warm-up, then a cosine down to zero."""
    lr = peak * min(1.0, (step + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * step / steps))
    for group in optimizer.param_groups:
        group["lr"] = lr


def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], 1.0)
    optimizer.step()


# --- ITM -------------------------------------------------------------------------------------------------------


def _train_itm(root: Path) -> Path:
    """`fusioncam train --what itm --from-scratch` on synth pairs; returns the preset it writes."""
    data = generate(root / "itm-data", ITM_SCENES, SEED, image_size=IMAGE_SIZE, max_objects=MAX_OBJECTS)
    preset = root / "tiny-itm.toml"
    files = {"checkpoint": {"path": "not-trained-yet.safetensors"}, "vocab": {"path": str(data.vocab_txt)}}
    preset.write_text(to_toml({"kind": "blip-itm", "layout": "fusioncam", "config": TINY_ITM, "files": files}))
    config = TrainConfig(
        what="itm",
        data=data.pairs_jsonl,
        out=root / "itm",
        model=str(preset),
        from_scratch=True,
        steps=ITM_STEPS,
        batch_size=16,
        lr=2e-3,
        warmup_steps=10,
        seed=SEED,
        device="cpu",
    )
    with _seeded(SEED):  # `train` reseeds torch's global generator
        return train(config, progress=False).preset


# --- captioner -------------------------------------------------------------------------------------------------


def _bert_init(model: torch.nn.Module) -> None:
    """BERT's initialisation, N(0, 0.02), of linear and embedding weights: with PyTorch's N(0, 1) embeddings the
    tied LM head starts with huge logits."""
    for module in model.modules():
        if isinstance(module, torch.nn.Linear | torch.nn.Embedding):
            torch.nn.init.normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                torch.nn.init.zeros_(module.bias)


def _pretrain_vision(vision: torch.nn.Module, pixels: torch.Tensor, scenes: list[tuple[Scene, Description]]) -> None:
    """Pre-train the captioner's ViT to name its scene's object: shape and colour, read off the max-pooled patch
    tokens — the stand-in for the ImageNet pre-training BLIP's ViT starts from.

    Trained with the captioner from random weights, a tiny ViT learns colours but not shapes within minutes (see the
    module docstring): gathering a small object's shape by soft attention is slow to learn. Max-pooling learns it.
    """
    shapes = torch.tensor([list(SHAPES).index(scene.objects[0].shape) for scene, _ in scenes])
    colors = torch.tensor([list(COLORS).index(scene.objects[0].color) for scene, _ in scenes])
    head = torch.nn.Linear(vision.config.width, len(SHAPES) + len(COLORS))
    parameters = [*vision.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=1e-3, weight_decay=0.01)
    generator = torch.Generator().manual_seed(SEED)
    for _ in range(VISION_STEPS):
        batch = torch.randint(len(scenes), (CAPTION_BATCH,), generator=generator)
        logits = head(vision(pixels[batch])[:, 1:].amax(dim=1))
        loss = F.cross_entropy(logits[:, : len(SHAPES)], shapes[batch])
        _step(optimizer, loss + F.cross_entropy(logits[:, len(SHAPES) :], colors[batch]))


def _train_captioner(root: Path, scenes: list[tuple[Scene, Description]], vocab: Path) -> Path:
    """A tiny BLIP captioner taught "a picture of " + caption on its pre-trained, frozen ViT; returns its preset (our
    own layout, "fusioncam"). Frozen, because the captioning loss at this learning rate soon erases the shapes."""
    config = BlipCaptionConfig.from_dict(TINY_CAPTION)
    tokenizer = BlipTokenizer(vocab, max_length=config.max_txt_len)
    pixels = ImageTransform(IMAGE_SIZE, BLIP_MEAN, BLIP_STD)([scene.image for scene, _ in scenes])
    encoding = tokenizer([PROMPT + description.caption for _, description in scenes])
    ids, mask = encoding.input_ids.clone(), encoding.attention_mask
    ids[:, 0] = tokenizer.bos_token_id  # the decoder reads [DEC] where the tokenizer puts [CLS]
    prompt_length = tokenizer.prompt_ids(PROMPT, 1).shape[1]

    generator = torch.Generator().manual_seed(SEED)
    with _seeded(SEED):
        model = BlipCaption(config)
        _bert_init(model)
        _pretrain_vision(model.vision_encoder, pixels, scenes)
        model.vision_encoder.requires_grad_(False)
        trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=2e-3, weight_decay=0.01)
        for step in range(CAPTION_STEPS):
            _set_lr(optimizer, 2e-3, step, CAPTION_STEPS)
            batch = torch.randint(len(scenes), (CAPTION_BATCH,), generator=generator)
            length = int(mask[batch].sum(1).max())
            batch_ids, batch_mask = ids[batch, :length], mask[batch, :length]
            image_embeds = model.encode_image(pixels[batch])
            if step % 2:  # as PNP-VQA decodes: from NUM_PATCHES patch tokens, without the class token
                draws = torch.rand(CAPTION_BATCH, 1, GRID, generator=generator).argsort(-1)[..., :NUM_PATCHES]
                image_embeds = gather_patches(image_embeds, draws)
            logits = model.logits(image_embeds, batch_ids, batch_mask)
            _step(optimizer, caption_loss(logits, batch_ids, batch_mask, prompt_length))

    save_file(model.state_dict(), root / "caption.safetensors")
    preset = root / "tiny-caption.toml"
    files = {"checkpoint": {"path": "caption.safetensors"}, "vocab": {"path": str(vocab)}}
    table = {"kind": "blip-caption", "layout": "fusioncam", "config": asdict(config), "files": files}
    preset.write_text(to_toml(table))
    return preset


# --- UnifiedQA -------------------------------------------------------------------------------------------------


def _written_captions(scene: Scene, rng: np.random.Generator) -> list[str]:
    """NUM_CAPTIONS captions of `scene` as a sampling captioner writes them: synth's captions (sizes named at
    random), now and then with an object's colour or shape wrong, so that the QA model learns to go with the
    majority of its passages."""
    captions = []
    for _ in range(NUM_CAPTIONS):
        objects = tuple(
            replace(obj, color=_sometimes(rng, COLORS, obj.color, 0.2), shape=_sometimes(rng, SHAPES, obj.shape, 0.4))
            for obj in scene.objects
        )
        captions.append(describe(replace(scene, objects=objects), rng).caption)
    return captions


def _sometimes(rng: np.random.Generator, words: Iterable[str], word: str, probability: float) -> str:
    """`word`, or with `probability` one of `words` drawn at random."""
    return str(rng.choice(list(words))) if rng.random() < probability else word


def _qa_examples(scenes: list[tuple[Scene, Description]]) -> list[tuple[list[str], str]]:
    """(passages, answer) for the colour and shape questions of `scenes`, the passages built as PNP-VQA builds them
    from each scene's `_written_captions`."""
    examples = []
    for index, (scene, description) in enumerate(scenes):
        captions = _written_captions(scene, np.random.default_rng((SEED, index)))
        for question in description.questions:
            if _kind(question.question):
                passages = qa_passages(clean_question(question.question), captions, NUM_CAPTIONS, 1)
                examples.append((passages, question.answer))
    return examples


def _train_qa(root: Path, scenes: list[tuple[Scene, Description]]) -> Path:
    """A tiny UnifiedQA (T5 read Fusion-in-Decoder style) taught to answer from passages; returns its preset."""
    from transformers import T5Tokenizer

    examples = _qa_examples(scenes)
    texts = [text for passages, answer in examples for text in (*passages, answer)]
    # BPE: every word of the synthetic language becomes one piece (unigram splits many).
    spiece = write_t5_tokenizer(root / "t5-tokenizer", texts, vocab_size=150, model_type="bpe")
    tokenizer = T5Tokenizer.from_pretrained(str(spiece.parent))
    config = {"vocab_size": len(tokenizer), **TINY_T5}

    generator = torch.Generator().manual_seed(SEED)
    with _seeded(SEED):
        qa = QuestionAnswerer(FusionInDecoderQA.from_preset("base", **config), tokenizer, "tiny-qa")
        optimizer = torch.optim.AdamW(qa.model.parameters(), lr=3e-3, weight_decay=0.01)
        for step in range(QA_STEPS):
            _set_lr(optimizer, 3e-3, step, QA_STEPS)
            batch = [examples[i] for i in torch.randint(len(examples), (QA_BATCH,), generator=generator)]
            encoding = qa.model.encode(*qa.tokenize([passages for passages, _ in batch]))
            answers = tokenizer([answer for _, answer in batch], padding="longest", return_tensors="pt").input_ids
            _step(optimizer, -qa.model.answer_log_prob(encoding, answers).mean())

    # One embedding under four names: safetensors stores a tensor once, and the loader ties the others back.
    state = {key: value for key, value in qa.model.model.state_dict().items() if key not in T5_TIED_KEYS[1:]}
    save_file(state, root / "qa.safetensors")
    preset = root / "tiny-qa.toml"
    files = {
        "checkpoint": {"path": "qa.safetensors"},
        "spiece": {"path": str(spiece)},
        "tokenizer_config": {"path": str(spiece.parent / "tokenizer_config.json")},
    }
    table = {"kind": "t5-qa", "architecture": "base", "layout": "t5", "config": config, "files": files}
    preset.write_text(to_toml(table))
    return preset


# --- the pipeline ----------------------------------------------------------------------------------------------


@dataclass
class TinyVQA:
    """The trained pipeline, the held-out dataset and what the training saw."""

    pipeline: PNPVQA
    val: Path  # a synth "val" dataset: vqa.jsonl and its images
    answers: dict[str, set[str]]  # question kind → the answers of that kind in the training questions
    seconds: dict[str, float]


@contextmanager
def _timed(seconds: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    seconds[stage] = time.perf_counter() - start


@pytest.fixture(scope="module")
def tiny_vqa(tmp_path_factory: pytest.TempPathFactory) -> TinyVQA:
    """ITM, captioner and UnifiedQA trained from scratch, loaded from their presets into one PNP-VQA pipeline."""
    root = tmp_path_factory.mktemp("vqa-learning")
    scenes = _scenes(CAPTION_SCENES, "train")
    seconds: dict[str, float] = {}
    with _one_thread():
        with _timed(seconds, "itm"):
            itm = _train_itm(root)
        with _timed(seconds, "caption"):
            caption = _train_captioner(root, scenes, write_vocab(root / "vocab.txt"))
        with _timed(seconds, "qa"):
            qa = _train_qa(root, scenes[:QA_SCENES])
    config = VQAConfig(
        block=1,  # the tiny ITM's last block
        num_captions=NUM_CAPTIONS,
        num_patches=NUM_PATCHES,
        caption_min_length=CAPTION_MIN_LENGTH,
        caption_max_length=CAPTION_MAX_LENGTH,
        top_k=TOP_K,
        max_caption_rounds=3,
        explain=False,  # not needed for the answers; the determinism test runs it
    )
    matcher, captioner = fusioncam.load(str(itm), device="cpu"), load_captioner(str(caption), device="cpu")
    pipeline = PNPVQA(matcher, captioner, load_qa(str(qa), device="cpu"), config)
    answers: dict[str, set[str]] = {kind: set() for kind in KINDS}
    for _, description in scenes[:QA_SCENES]:
        for question in description.questions:
            if kind := _kind(question.question):
                answers[kind].add(question.answer)
    val = generate(root, VAL_SCENES, SEED, image_size=IMAGE_SIZE, max_objects=MAX_OBJECTS, split="val")
    return TinyVQA(pipeline, val.root, answers, seconds)


def _val_questions(val: Path) -> list[dict]:
    records = [json.loads(line) for line in (val / "vqa.jsonl").read_text().splitlines()]
    return [record for record in records if _kind(record["question"])]


def _answer(tiny_vqa: TinyVQA, pipeline: PNPVQA, questions: list[dict], seed: int):
    images = [fusioncam.load_image(tiny_vqa.val / record["image"]) for record in questions]
    return pipeline.answer(images, [record["question"] for record in questions], torch.Generator().manual_seed(seed))


def test_answers_held_out_colour_and_shape_questions_far_above_chance(tiny_vqa: TinyVQA) -> None:
    questions = _val_questions(tiny_vqa.val)
    start = time.perf_counter()
    with _one_thread():
        results = _answer(tiny_vqa, tiny_vqa.pipeline, questions, SEED)
    seconds = time.perf_counter() - start
    asked, right = Counter(), Counter()
    for record, result in zip(questions, results, strict=True):
        kind = _kind(record["question"])
        asked[kind] += 1
        right[kind] += result.answer == record["answer"]
    accuracy = sum(right.values()) / len(questions)
    # A uniform guess among the answers the question's kind has in the training questions.
    chance = sum(asked[kind] / len(tiny_vqa.answers[kind]) for kind in KINDS) / len(questions)
    kinds = ", ".join(
        f"{kind} {right[kind]}/{asked[kind]} (chance {1 / len(tiny_vqa.answers[kind]):.3f})" for kind in KINDS
    )
    timing = ", ".join(f"{stage} {value:.0f}s" for stage, value in tiny_vqa.seconds.items())
    print(
        f"\nPNP-VQA, held-out questions: accuracy {accuracy:.3f} over {len(questions)} (chance {chance:.3f}); "
        f"{kinds}. Training: {timing}; answering {seconds:.0f}s"
    )

    assert min(asked.values()) >= 50
    # The QA model reads the question: a colour for a colour question, a shape for a shape question.
    for record, result in zip(questions, results, strict=True):
        assert result.answer in tiny_vqa.answers[_kind(record["question"])], (record, result.answer)
    assert accuracy >= max(0.6, 3 * chance)
    assert right["color"] / asked["color"] >= 0.9
    assert right["shape"] / asked["shape"] >= 2 / len(tiny_vqa.answers["shape"])


def test_same_seed_same_captions_and_answers_other_seed_other_captions(tiny_vqa: TinyVQA) -> None:
    pipeline = tiny_vqa.pipeline
    explained = PNPVQA(pipeline.matcher, pipeline.captioner, pipeline.qa, replace(pipeline.config, explain=True))
    questions = _val_questions(tiny_vqa.val)[:4]

    def run(seed: int) -> list[tuple[str, list[tuple[str, list[int], float | None]]]]:
        results = _answer(tiny_vqa, explained, questions, seed)
        return [(r.answer, [(e.caption, e.patches, e.contribution) for e in r.evidence]) for r in results]

    def captions(answers: list[tuple[str, list[tuple[str, list[int], float | None]]]]) -> list[list[str]]:
        return [[caption for caption, _, _ in evidence] for _, evidence in answers]

    with _one_thread():
        first, again, other = run(1), run(1), run(2)
    assert first == again  # answers, and captions with their patches and contributions
    assert captions(first) != captions(other)
