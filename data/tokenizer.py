"""The tokenizer: a byte-level BPE trained on the corpus with HF `tokenizers`, or any tokenizer.json."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from pretrain.errors import HetronError

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise HetronError(f"tokenizer file {path} does not exist")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
        raise HetronError(f"tokenizer file {path} is not a valid tokenizer.json ({exc})") from None


def tokenizer_fingerprint(tok: Tokenizer) -> str:
    """A stable id of the vocabulary and merges: shards remember it, training checks it."""
    return hashlib.sha256(tok.to_str().encode()).hexdigest()[:16]


def special_id(tok: Tokenizer, token: str) -> int:
    idx = tok.token_to_id(token)
    if idx is None:
        raise HetronError(f"tokenizer has no {token!r} token; add it as a special token")
    return idx
