"""Instruction tokenizer: deterministic word hashing, so nothing is downloaded and ids never drift.

Collisions are possible but harmless at our vocabulary size: the embedding is learned per id, and the
suite's 37 instruction words have none at 1,024 ids (tests/test_learner.py checks). A larger table buys
nothing here and costs every network's embedding gradient and optimiser step (~15% of an update at
the reference size on CPU).
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

PAD_TOKEN = 0
VOCAB_SIZE = 1024
MAX_TOKENS = 16
_WORD = re.compile(r"[a-z0-9]+")


def token_id(word: str, vocab_size: int = VOCAB_SIZE) -> int:
    digest = hashlib.blake2s(word.encode(), digest_size=4).digest()
    return 1 + int.from_bytes(digest, "little") % (vocab_size - 1)


def tokenize(instruction: str, max_tokens: int = MAX_TOKENS, vocab_size: int = VOCAB_SIZE) -> np.ndarray:
    words = _WORD.findall(instruction.lower())[:max_tokens]
    ids = np.full(max_tokens, PAD_TOKEN, dtype=np.int32)
    ids[: len(words)] = [token_id(word, vocab_size) for word in words]
    return ids
