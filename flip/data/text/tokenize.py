"""Hashed word n-grams: token ids every site computes alike, with no vocabulary to share.

A note becomes its lower-cased words (``\\w+``), then its n-grams in text order (at each word
the unigram, then the bigram starting there, ...), each hashed with blake2b into one of
``num_buckets - 1`` buckets (ids 1 .. num_buckets - 1; 0 pads). blake2b, unlike Python's
salted ``hash()``, gives the same id in every process, on every machine, at every site.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from flip.data.text.schema import tokenizer_problems

if TYPE_CHECKING:
    import torch

PAD = 0
WORD = re.compile(r"\w+")


def words(text: str, lowercase: bool = True) -> list[str]:
    """The note's words: runs of letters, digits and underscores."""
    return WORD.findall(text.lower() if lowercase else text)


def ngrams(tokens: Sequence[str], ngram_range: tuple[int, int] = (1, 2)) -> Iterator[str]:
    """Word n-grams in text order; at each position the shortest first."""
    low, high = ngram_range
    for start in range(len(tokens)):
        for n in range(low, high + 1):
            if start + n <= len(tokens):
                yield " ".join(tokens[start : start + n])


@lru_cache(maxsize=1 << 18)
def bucket(ngram: str, num_buckets: int) -> int:
    """The stable bucket of one n-gram, in 1 .. num_buckets - 1."""
    digest = hashlib.blake2b(ngram.encode("utf-8"), digest_size=8).digest()
    return 1 + int.from_bytes(digest, "little") % (num_buckets - 1)


@dataclass(frozen=True)
class HashedNgrams:
    """Turns a note into a fixed-length tensor of hashed n-gram ids, padded with 0."""

    num_buckets: int = 1 << 14
    ngram_range: tuple[int, int] = (1, 2)
    max_tokens: int = 512
    lowercase: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "ngram_range", tuple(self.ngram_range))
        for problem in tokenizer_problems(self.num_buckets, self.ngram_range, self.max_tokens):
            raise ValueError(problem)

    def ids(self, text: str) -> list[int]:
        """The note's first `max_tokens` n-gram ids, unpadded."""
        ids = []
        for gram in ngrams(words(text, self.lowercase), self.ngram_range):
            ids.append(bucket(gram, self.num_buckets))
            if len(ids) == self.max_tokens:
                break
        return ids

    def encode(self, text: str) -> torch.Tensor:
        """int64 ids of shape [max_tokens], padded with PAD."""
        import torch  # here, so that tokenising alone (other processes, tools) needs no torch

        ids = self.ids(text)
        return torch.tensor(ids + [PAD] * (self.max_tokens - len(ids)), dtype=torch.int64)
