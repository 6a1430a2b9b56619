"""The tokenizer: a byte-level BPE trained on the corpus with HF `tokenizers`, or any tokenizer.json."""
from __future__ import annotations

import hashlib
import json
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


TOKENIZER_CONFIG = "tokenizer_config.json"  # transformers' file beside tokenizer.json: BOS/EOS/PAD names


def tokenizer_file(path: str | Path) -> Path:
    """A tokenizer.json, or a folder holding one (a Hugging Face model or tokenizer folder)."""
    path = Path(path)
    return path / "tokenizer.json" if path.is_dir() else path


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = tokenizer_file(path)
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


def _token_name(value) -> str | None:
    """transformers writes special tokens as text or as {"content": text, ...}."""
    return value.get("content") if isinstance(value, dict) else value


def document_special_ids(tok: Tokenizer, path: str | Path | None) -> tuple[int, int]:
    """(EOS appended to every document, PAD of packed micro-batches). A tokenizer with a transformers
    tokenizer_config.json beside it uses its eos_token and pad_token (EOS when it has none); BOS, where
    a model family uses one, is added by tokenizer.json's own post-processor. hetron's own BPE uses
    <|endoftext|> and <|pad|>."""
    config_file = tokenizer_file(path).parent / TOKENIZER_CONFIG if path else None
    if config_file is None or not config_file.is_file():
        return special_id(tok, EOS), special_id(tok, PAD)
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise HetronError(f"{config_file} is not valid JSON ({exc.msg})") from None
    eos_name = _token_name(config.get("eos_token"))
    if not eos_name:
        raise HetronError(f"{config_file} names no eos_token: documents need an end-of-text token")
    eos = special_id(tok, eos_name)
    pad_name = _token_name(config.get("pad_token"))
    return eos, special_id(tok, pad_name) if pad_name else eos
