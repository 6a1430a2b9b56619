"""Where a run's shards live: `data.shards` if set, else a cache folder keyed by the corpus and the
settings that change the shards (vocabulary, max context, eval fraction, tokenizer)."""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from data.corpus import STDLIB
from data.prepare import MANIFEST, Manifest, prepare_shards


def cache_root() -> Path:
    return Path(os.environ.get("HETRON_CACHE", Path.home() / ".cache" / "hetron"))


def default_shards_dir(corpus: str, vocab_size: int, max_context: int, eval_fraction: float, tokenizer: str) -> Path:
    if corpus == STDLIB:
        import sys

        name = f"stdlib-py{sys.version_info.major}.{sys.version_info.minor}"
        key = name
    else:
        resolved = str(Path(corpus).resolve())
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(resolved).name)[:40] or "corpus"
        key = resolved
    key += f"|{vocab_size}|{max_context}|{eval_fraction}|{Path(tokenizer).resolve() if tokenizer else ''}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return cache_root() / "shards" / f"{name}-v{vocab_size}-ctx{max_context}-{digest}"


def ensure_shards(data_cfg, max_context: int, progress: bool = True) -> tuple[Path, Manifest]:
    """The run's shard folder, preparing it first if it is the default cache folder and missing."""
    if data_cfg.shards:
        shards = Path(data_cfg.shards)
        return shards, Manifest.load(shards)
    shards = default_shards_dir(data_cfg.corpus, data_cfg.vocab_size, max_context, data_cfg.eval_fraction,
                                data_cfg.tokenizer)
    if not (shards / MANIFEST).is_file():
        if progress:
            print(f"preparing shards of corpus {data_cfg.corpus!r} in {shards} (once)", flush=True)
        prepare_shards(data_cfg.corpus, shards, vocab_size=data_cfg.vocab_size, max_context=max_context,
                       eval_fraction=data_cfg.eval_fraction, tokenizer_path=data_cfg.tokenizer or None,
                       text_field=data_cfg.text_field, progress=progress)
    return shards, Manifest.load(shards)
