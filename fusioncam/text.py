"""BLIP's text side: caption/question cleaning, the WordPiece tokenizer with `[DEC]`/`[ENC]`, word grouping.

BLIP uses `bert-base-uncased` plus two added tokens: `[DEC]` (bos of the caption decoder) and `[ENC]`, which
replaces `[CLS]` at position 0 when the text encoder scores a pair (ITM). Heatmaps are per word-piece; users
think in words, so `Encoding.words` tells which pieces make up each word.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch

if TYPE_CHECKING:
    from transformers import BatchEncoding

_CAPTION_PUNCTUATION = re.compile(r"[.!\"()*#:;~]")


def clean_caption(text: str, max_words: int = 50) -> str:
    """LAVIS `blip_caption` cleaning: lowercase, punctuation → spaces, collapse spaces, keep `max_words`."""
    text = _CAPTION_PUNCTUATION.sub(" ", text.lower())
    text = re.sub(r"\s{2,}", " ", text).rstrip("\n").strip(" ")
    return " ".join(text.split(" ")[:max_words])


def clean_question(text: str, max_words: int = 50) -> str:
    """LAVIS `blip_question` cleaning: lowercase, punctuation removed (not replaced), keep `max_words`."""
    text = _CAPTION_PUNCTUATION.sub("", text.lower()).rstrip(" ")
    return " ".join(text.split(" ")[:max_words])


@dataclass(frozen=True)
class Word:
    """One word of the input and the token positions of its word-pieces."""

    text: str
    positions: tuple[int, ...]


@dataclass
class Encoding:
    """A tokenized batch: ids and mask [B, L] plus, per text, its words and their token positions.

    `truncated[i]` says that text i had more word-pieces than the model reads: its map and words stop early, and
    a user must be told so rather than shown a map of half a sentence as if it were the whole.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    words: list[list[Word]]
    truncated: list[bool]

    def to(self, device: torch.device | str) -> Encoding:
        return Encoding(self.input_ids.to(device), self.attention_mask.to(device), self.words, self.truncated)


class EmptyTextError(ValueError):
    """A text has no tokens left after cleaning; a heatmap averaged over zero tokens is undefined."""


class BlipTokenizer:
    """`bert-base-uncased` WordPiece with BLIP's `[DEC]` and `[ENC]` tokens, from a local `vocab.txt`."""

    def __init__(self, vocab_file: str | Path, max_length: int = 35) -> None:
        from transformers import BertTokenizer

        vocab_file = Path(vocab_file)
        if not vocab_file.is_file():
            raise FileNotFoundError(f"tokenizer vocabulary not found: {vocab_file}")
        # `vocab=` (not `vocab_file=`): transformers 5 silently builds a 5-token vocabulary from the latter.
        self._tokenizer = BertTokenizer(vocab=str(vocab_file), do_lower_case=True)
        self._tokenizer.add_special_tokens({"bos_token": "[DEC]"})
        self._tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
        self.max_length = max_length
        # transformers types the token → id conversions for one token and for a list alike (no overloads).
        self.enc_token_id = cast(int, self._tokenizer.convert_tokens_to_ids("[ENC]"))
        self.bos_token_id = cast(int, self._tokenizer.convert_tokens_to_ids("[DEC]"))
        self.pad_token_id = self._tokenizer.pad_token_id
        self.sep_token_id = self._tokenizer.sep_token_id

    def __len__(self) -> int:
        return len(self._tokenizer)

    def __call__(self, texts: list[str], max_length: int | None = None) -> Encoding:
        """Pad to the longest text, truncate at `max_length` (keeping the final `[SEP]`)."""
        for text in texts:
            if not text.strip():
                raise EmptyTextError("empty text: give at least one word")
        limit = max_length or self.max_length
        batch = self._tokenizer(
            texts,
            padding="longest",
            truncation=True,
            max_length=limit,
            return_offsets_mapping=True,
            return_tensors="pt",
        )
        words = [self._words(text, batch, index) for index, text in enumerate(texts)]
        lengths = [len(ids) for ids in self._tokenizer(texts, truncation=False)["input_ids"]]
        return Encoding(batch["input_ids"], batch["attention_mask"], words, [length > limit for length in lengths])

    @staticmethod
    def _words(text: str, batch: BatchEncoding, index: int) -> list[Word]:
        spans: dict[int, list[int]] = {}
        for position, word_id in enumerate(batch.word_ids(index)):
            if word_id is not None:
                spans.setdefault(word_id, []).append(position)
        offsets = batch["offset_mapping"][index]
        return [
            Word(text[int(offsets[pos[0]][0]) : int(offsets[pos[-1]][1])], tuple(pos))
            for _, pos in sorted(spans.items())
        ]

    def for_itm(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Ids for the ITM branch: position 0 (`[CLS]`) replaced by `[ENC]`."""
        ids = input_ids.clone()
        ids[:, 0] = self.enc_token_id
        return ids

    def prompt_ids(self, prompt: str, batch: int) -> torch.Tensor:
        """Decoder prompt [batch, P]: `[DEC]` then the prompt's word-pieces, without the trailing `[SEP]`."""
        ids = self._tokenizer(prompt, return_tensors="pt")["input_ids"][:, :-1]
        ids[:, 0] = self.bos_token_id
        return ids.expand(batch, -1).clone()

    def decode(self, input_ids: torch.Tensor) -> list[str]:
        """Text of each row, special tokens dropped."""
        return self._tokenizer.batch_decode(input_ids.tolist(), skip_special_tokens=True)

    def tokens(self, input_ids: torch.Tensor) -> list[list[str]]:
        return [cast(list[str], self._tokenizer.convert_ids_to_tokens(row.tolist())) for row in input_ids]
