"""Retrieval as BLIP/LAVIS evaluate it: the ranks and recalls of score matrices, the batched re-ranking against a
brute-force computation pair by pair on a tiny random-weight model, and `fusioncam eval retrieval` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from tiny_presets import write_tiny_presets
from typer.testing import CliRunner, Result

import fusioncam
from fusioncam.api import BlipMatcher
from fusioncam.cli import app
from fusioncam.datasets import RetrievalSplit, read_karpathy_eval
from fusioncam.retrieval import (
    RetrievalScores,
    best_ranks,
    evaluate_retrieval,
    retrieval_metrics,
)

CAPTIONS = [
    ["a red dog on the grass", "a dog running", "the dog is small"],  # several captions: the best one counts
    ["two cats sitting near the window"],
    ["a man riding a horse on the beach", "a horse"],
    ["a pizza on a white plate"],
    ["a blue car on the street", "a car next to a bus"],
    ["a boy playing with a kite", "a child", "a kite in the sky"],
]
LAVIS_KEYS = ["txt_r1", "txt_r5", "txt_r10", "txt_r_mean", "img_r1", "img_r5", "img_r10", "img_r_mean", "r_mean"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six small PNGs under val2014/ and a Karpathy-layout test file beside them."""
    root = tmp_path_factory.mktemp("coco")
    (root / "val2014").mkdir()
    rng = np.random.default_rng(0)
    records = []
    for index, captions in enumerate(CAPTIONS):
        name = f"val2014/COCO_val2014_{index:012d}.png"
        image = np.clip(rng.normal(40 * index, 60, (48, 64, 3)), 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / name), image)
        records.append({"image": name, "caption": [f"{caption.capitalize()}." for caption in captions]})
    (root / "coco_karpathy_test.json").write_text(json.dumps(records))
    return root


@pytest.fixture(scope="module")
def preset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_presets(tmp_path_factory.mktemp("presets"))["itm"]


@pytest.fixture(scope="module")
def matcher(preset: Path) -> BlipMatcher:
    return fusioncam.load(str(preset), device="cpu")


@pytest.fixture(scope="module")
def split(dataset: Path) -> RetrievalSplit:
    return read_karpathy_eval(dataset / "coco_karpathy_test.json")


def lavis_report(i2t: np.ndarray, t2i: np.ndarray, split: RetrievalSplit) -> dict[str, float]:
    """LAVIS's `itm_eval`, written out as it reads, with a stable sort so that ties (the −100s) are ordered."""
    image_ranks = np.zeros(len(i2t))
    for index, score in enumerate(i2t):
        order = np.argsort(score, kind="stable")[::-1]
        image_ranks[index] = min(np.where(order == text)[0][0] for text in split.image_texts[index])
    text_ranks = np.zeros(len(t2i))
    for index, score in enumerate(t2i):
        order = np.argsort(score, kind="stable")[::-1]
        text_ranks[index] = np.where(order == split.text_image[index])[0][0]
    tr = [100.0 * len(np.where(image_ranks < k)[0]) / len(image_ranks) for k in (1, 5, 10)]
    ir = [100.0 * len(np.where(text_ranks < k)[0]) / len(text_ranks) for k in (1, 5, 10)]
    tr_mean, ir_mean = sum(tr) / 3, sum(ir) / 3
    return dict(zip(LAVIS_KEYS, [*tr, tr_mean, *ir, ir_mean, (tr_mean + ir_mean) / 2], strict=True))


@pytest.fixture(scope="module")
def pairwise(matcher: BlipMatcher, split: RetrievalSplit, dataset: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every pair's ITC similarity and ITM match logit [images, texts], brute force: each image and each text
    encoded alone, each pair through the ITM head alone."""
    model, tokenizer = matcher.model, matcher.tokenizer
    texts = [tokenizer([text]) for text in split.texts]
    itc = np.zeros((len(split.images), len(texts)), np.float32)
    itm = np.zeros_like(itc)
    with torch.no_grad(), model.autocast():
        text_features = [model.text_features(text.input_ids, text.attention_mask)[0] for text in texts]
        for i, path in enumerate(split.image_paths(dataset)):
            image = matcher.embed_images([fusioncam.load_image(path)])
            image_feature = model.image_features(image)[0]
            for t, text in enumerate(texts):
                itc[i, t] = image_feature @ text_features[t]
                itm[i, t] = model.itm(image, tokenizer.for_itm(text.input_ids), text.attention_mask).logits[0, 1]
    return itc, itm


def lavis_matrices(itc: np.ndarray, itm: np.ndarray, k_test: int) -> tuple[np.ndarray, np.ndarray]:
    """LAVIS's score matrices: logit + similarity inside each query's top `k_test` by similarity, −100 elsewhere."""
    i2t = np.full_like(itc, -100.0)
    for i, row in enumerate(itc):
        top = np.argsort(-row, kind="stable")[:k_test]
        i2t[i, top] = itm[i, top] + itc[i, top]
    t2i = np.full_like(itc.T, -100.0)
    for t, column in enumerate(itc.T):
        top = np.argsort(-column, kind="stable")[:k_test]
        t2i[t, top] = itm[top, t] + itc[top, t]
    return i2t, t2i


def test_ranks_take_the_best_caption_and_recalls_are_percentages() -> None:
    split = RetrievalSplit(
        images=("a", "b", "c"),
        texts=("a1", "a2", "b1", "c1", "c2"),
        text_image=(0, 0, 1, 2, 2),
        image_texts=((0, 1), (2,), (3, 4)),
    )
    i2t = np.array(
        [
            [0.1, 0.9, 0.5, 0.3, 0.2],  # a: its a2 ranks first (a1 fourth) → rank 0
            [0.9, 0.8, 0.7, 0.6, 0.5],  # b: b1 third → rank 2
            [0.9, 0.8, 0.7, 0.6, 0.5],  # c: c1 fourth, c2 fifth → rank 3
        ],
        np.float32,
    )
    t2i = np.array(
        [[0.9, 0.1, 0.0], [0.1, 0.9, 0.0], [0.1, 0.9, 0.0], [0.0, 0.1, 0.9], [0.9, 0.1, 0.0]], np.float32
    )  # text ranks: 0, 1, 0, 0, 2
    assert list(best_ranks(i2t, split.image_texts)) == [0, 2, 3]
    assert list(best_ranks(t2i, [[image] for image in split.text_image])) == [0, 1, 0, 0, 2]
    metrics = retrieval_metrics(RetrievalScores(torch.from_numpy(i2t), torch.from_numpy(t2i)), split)
    assert (metrics.txt_r1, metrics.txt_r5, metrics.txt_r10) == pytest.approx((100 / 3, 100.0, 100.0))
    assert (metrics.img_r1, metrics.img_r5, metrics.img_r10) == pytest.approx((60.0, 100.0, 100.0))
    report = metrics.to_dict()
    assert list(report) == [*LAVIS_KEYS, "agg_metrics"]
    assert report == lavis_report(i2t, t2i, split) | {"agg_metrics": report["txt_r_mean"]}
    assert report["r_mean"] == pytest.approx(((100 / 3 + 200) / 3 + 260 / 3) / 2)


def test_ties_rank_as_a_reversed_stable_sort_does() -> None:
    """LAVIS finds ranks in `np.argsort(row)[::-1]`; the counting here agrees with a stable sort, ties included."""
    scores = np.random.default_rng(1).integers(0, 4, (40, 30)).astype(np.float32)
    targets = [[column] for column in np.random.default_rng(2).integers(0, 30, 40)]
    expected = [
        np.where(np.argsort(row, kind="stable")[::-1] == own[0])[0][0] for row, own in zip(scores, targets, strict=True)
    ]
    assert list(best_ranks(scores, targets, chunk=7)) == expected


@pytest.mark.parametrize("k_test", [3, 256])
def test_reranked_scores_and_recalls_match_a_brute_force(
    matcher: BlipMatcher, split: RetrievalSplit, dataset: Path, pairwise: tuple[np.ndarray, np.ndarray], k_test: int
) -> None:
    """k_test 3 (< 6 images, < 12 texts): most of each row is −100 and R@5, R@10 see the ties; 256: nothing is."""
    result = evaluate_retrieval(matcher, split, dataset, k_test=k_test, batch_size=4)  # batches cross images
    i2t, t2i = lavis_matrices(*pairwise, k_test)
    np.testing.assert_allclose(result.scores.image_to_text.numpy(), i2t, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.scores.text_to_image.numpy(), t2i, rtol=1e-5, atol=1e-5)
    assert ((i2t == -100).sum(1) == (len(split.texts) - min(k_test, len(split.texts)))).all()
    figures = result.metrics.to_dict()
    assert {key: figures[key] for key in LAVIS_KEYS} == lavis_report(i2t, t2i, split)  # the same ranks, to the bit


def run(*args: object) -> Result:
    return CliRunner().invoke(app, [str(arg) for arg in args])


def test_eval_retrieval_reports_lavis_figures(
    split: RetrievalSplit, dataset: Path, pairwise: tuple[np.ndarray, np.ndarray], preset: Path, tmp_path: Path
) -> None:
    data, report = dataset / "coco_karpathy_test.json", tmp_path / "report.json"
    args = ["--model", preset, "--device", "cpu", "--batch-size", "5", "--quiet"]
    chart = tmp_path / "recall.png"
    result = run(
        "eval", "retrieval", "--data", data, "--images", dataset, "--k-test", 3, "--report", report, "--chart", chart,
        *args,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[0].split("\t") == ["encoder", *LAVIS_KEYS]  # piped: a tab-separated table
    assert result.stdout.splitlines()[1].split("\t")[0] == "blip"
    assert cv2.imread(str(chart)) is not None
    written = json.loads(report.read_text())
    expected = lavis_report(*lavis_matrices(*pairwise, 3), split)
    assert {key: written[key] for key in LAVIS_KEYS} == pytest.approx(expected)
    assert all(0 <= written[key] <= 100 for key in LAVIS_KEYS)
    assert written["agg_metrics"] == written["txt_r_mean"]
    assert (written["k_test"], written["num_images"], written["num_texts"]) == (3, 6, 12)
    assert (written["model"], written["encoder"], written["precision"]) == ("tiny-itm", "blip", "fp32")
    assert written["run"]["device"] == "cpu" and written["run"]["weights"]["itm"]["preset"] == str(preset)
    assert "R@10 orders those ties by index" in result.stderr  # k_test < 10 is warned about

    sampled = run("eval", "retrieval", "--data", data, "--images", dataset, "--limit", 3, "--seed", 1, "--jsonl", *args)
    assert sampled.exit_code == 0, sampled.stderr
    (line,) = [json.loads(text) for text in sampled.stdout.splitlines()]
    chosen = split.sample(3, seed=1)
    assert (line["num_images"], line["num_texts"], line["limit"], line["seed"]) == (3, len(chosen.texts), 3, 1)


def test_eval_retrieval_names_what_is_wrong(dataset: Path, preset: Path, tmp_path: Path) -> None:
    data = dataset / "coco_karpathy_test.json"
    missing = run("eval", "retrieval", "--data", data, "--images", tmp_path, "--model", preset)
    assert missing.exit_code == 2 and "6 of the 6 images" in missing.stderr and "COCO_val2014_" in missing.stderr
    train = tmp_path / "coco_karpathy_train.json"
    train.write_text(json.dumps([{"image": "a.jpg", "caption": "a dog", "image_id": "coco_1"}]))
    wrong = run("eval", "retrieval", "--data", train, "--images", dataset, "--model", preset)
    assert wrong.exit_code == 2 and "as in a train split" in wrong.stderr
    fused = run("eval", "retrieval", "--data", data, "--images", dataset, "--model", preset, "--encoder", "fused")
    assert fused.exit_code == 2 and "--fusion" in fused.stderr
    esam = run("eval", "retrieval", "--data", data, "--images", dataset, "--model", preset, "--encoder", "esam")
    assert esam.exit_code == 2 and "not scores" in esam.stderr


def test_eval_retrieval_resumes_its_re_ranking(dataset: Path, preset: Path, tmp_path: Path) -> None:
    """With --out, each block of images' ITM logits is journaled; --resume reads them back (a block altered in the
    journal shows in the figures), rescoring only the blocks a killed run had not finished (the same figures)."""
    data, out = dataset / "coco_karpathy_test.json", tmp_path / "run"
    args = ["eval", "retrieval", "--data", data, "--images", dataset, "--model", preset, "--device", "cpu"]
    args += ["--batch-size", 4, "--k-test", 3, "--quiet", "--jsonl", "--out", out]
    whole = json.loads(run(*args).stdout)
    journal = out / "retrieval-scores.jsonl"
    lines = journal.read_text().splitlines()
    assert len(lines) == 2  # 6 images in blocks of 4
    journal.write_text(lines[0] + "\n" + lines[1][:30])  # killed while writing the second block
    resumed = json.loads(run(*args, "--resume").stdout)
    assert {key: resumed[key] for key in LAVIS_KEYS} == {key: whole[key] for key in LAVIS_KEYS}
    assert journal.read_text().splitlines() == lines

    boosted = json.loads(lines[1])
    boosted["score"]["logits"] = [1000.0 * (index % 2) for index in range(len(boosted["score"]["logits"]))]
    journal.write_text(lines[0] + "\n" + json.dumps(boosted) + "\n")
    altered = json.loads(run(*args, "--resume").stdout)
    assert {key: altered[key] for key in LAVIS_KEYS} != {key: whole[key] for key in LAVIS_KEYS}
