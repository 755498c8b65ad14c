"""PNP-VQA's string handling, byte for byte what LAVIS does (no models here).

Three places where text changes hands between PNP-VQA's stages:
- the question goes to BLIP ITM (for the Grad-CAM that picks where to caption) with its '?' stripped;
- sampled captions are collected per image, dropping those already covered by a kept caption;
- question and captions are joined into the passages UnifiedQA reads, one passage per group of captions.
The quirks are kept on purpose (a literal backslash-n, '..' after captions ending in '.', a trailing group that is
silently dropped): UnifiedQA answers were measured on exactly these strings.
"""

from __future__ import annotations

from collections.abc import Sequence

# UnifiedQA's question/context separator is a newline written as the two characters backslash and `n`: that is
# how its training data spelled it, and LAVIS feeds it the same way.
QA_SEPARATOR = " \\n "


def question_for_itm(question: str) -> str:
    """The question as PNP-VQA's ITM sees it: '?' removed from both ends only (inner ones and '? ' survive)."""
    return question.strip("?")


def qa_passages(question: str, captions: Sequence[str], num_captions: int, captions_per_passage: int) -> list[str]:
    """UnifiedQA passages for one question: `"{question} \\n {caption}. {caption}. …"`, lowercased.

    The first `num_captions` captions are grouped `captions_per_passage` at a time; the group holding caption
    number `num_captions` closes early. With fewer captions than `num_captions`, a trailing partial group is
    dropped, as in LAVIS (so the list can be empty). The question keeps its '?'.
    """
    if num_captions < 1 or captions_per_passage < 1:
        raise ValueError("num_captions and captions_per_passage must be positive")
    prefix = question.lower().strip() + QA_SEPARATOR
    passages = []
    group = ""
    for number, caption in enumerate(captions[:num_captions], start=1):
        group += caption.strip() + ". "
        if number % captions_per_passage == 0 or number == num_captions:
            passages.append(prefix + group.lower().strip())
            group = ""
    return passages


def add_new_captions(
    kept: Sequence[Sequence[str]], decoded: Sequence[str], prompt: str, num_captions: int
) -> list[list[str]]:
    """Each image's captions after one sampling round, as PNP-VQA's `forward_cap` collects them.

    `decoded` holds the round's decoder outputs, image by image (len(kept) equal runs). The prompt is cut off by
    its character count, not matched. A caption is added while its image has fewer than `num_captions` and it is
    not a substring of a caption already there — one direction only: a caption that *contains* a kept one adds
    information and is added. Rounds repeat until every image has `num_captions`.
    """
    if not kept or len(decoded) % len(kept):
        raise ValueError(f"{len(decoded)} decoded captions cannot be split evenly over {len(kept)} images")
    per_image = len(decoded) // len(kept)
    captions = [list(image_captions) for image_captions in kept]
    for index, output in enumerate(decoded):
        image_captions = captions[index // per_image]
        caption = output[len(prompt) :]
        if len(image_captions) < num_captions and not any(caption in known for known in image_captions):
            image_captions.append(caption)
    return captions
