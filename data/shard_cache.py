"""Where a run's shards live: `data.shards` if set, else a cache folder keyed by the corpus and the
settings that change the shards (vocabulary, max context, eval fraction, tokenizer)."""
from __future__ import annotations

import hashlib
import os
import re
import shlex
from pathlib import Path

from data.corpus import STDLIB, corpus_problem
from data.prepare import MANIFEST, Manifest, prepare_shards
from pretrain.errors import HetronError


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


def shards_dir(data_cfg, max_context: int) -> Path:
    """`data.shards` if set, else the cache folder of the corpus at these settings."""
    if data_cfg.shards:
        return Path(data_cfg.shards)
    return default_shards_dir(data_cfg.corpus, data_cfg.vocab_size, max_context, data_cfg.eval_fraction,
                              data_cfg.tokenizer)


def prepare_command(corpus: str, out: Path, *, vocab_size: int, max_context: int, eval_fraction: float,
                    tokenizer: str = "", text_field: str = "text") -> str:
    """The `hetron prepare` command line that writes exactly these shards into `out`."""
    corpus = corpus if corpus == STDLIB else str(Path(corpus).resolve())
    argv = ["hetron", "prepare", "--corpus", corpus, "--out", str(Path(out).resolve()), "--vocab-size",
            str(vocab_size), "--max-context", str(max_context), "--eval-fraction", str(eval_fraction)]
    if tokenizer:
        argv += ["--tokenizer", str(Path(tokenizer).resolve())]
    if text_field != "text":
        argv += ["--text-field", text_field]
    return shlex.join(argv)


def missing_shards_error(folder: Path, what: str, command: str) -> HetronError:
    return HetronError(f"no prepared shards in {folder} ({what}): the ranks of a distributed launch do not "
                       f"prepare data (one rank would do it while the others time out waiting); prepare them "
                       f"first, on a host that sees this path as the job does: {command}")


def require_shards(data_cfg, max_context: int) -> tuple[Path, Manifest]:
    """The run's shard folder, which must already be prepared (inside a distributed launch)."""
    shards = shards_dir(data_cfg, max_context)
    if not (shards / MANIFEST).is_file():
        what = f"data.shards={data_cfg.shards}" if data_cfg.shards else f"data.corpus={data_cfg.corpus}"
        raise missing_shards_error(shards, what, prepare_command(
            data_cfg.corpus, shards, vocab_size=data_cfg.vocab_size, max_context=max_context,
            eval_fraction=data_cfg.eval_fraction, tokenizer=data_cfg.tokenizer, text_field=data_cfg.text_field))
    return shards, Manifest.load(shards)


def ensure_shards(data_cfg, max_context: int, progress: bool = True) -> tuple[Path, Manifest]:
    """The run's shard folder, preparing it first if it is the default cache folder and missing."""
    if data_cfg.shards:
        shards = Path(data_cfg.shards)
        return shards, Manifest.load(shards)
    shards = shards_dir(data_cfg, max_context)
    if not (shards / MANIFEST).is_file():
        problem = corpus_problem(data_cfg.corpus)
        if problem:  # before saying that it is being prepared
            raise HetronError(f"data.corpus={data_cfg.corpus} {problem}")
        if progress:
            print(f"preparing shards of corpus {data_cfg.corpus!r} in {shards} (once)", flush=True)
        prepare_shards(data_cfg.corpus, shards, vocab_size=data_cfg.vocab_size, max_context=max_context,
                       eval_fraction=data_cfg.eval_fraction, tokenizer_path=data_cfg.tokenizer or None,
                       text_field=data_cfg.text_field, progress=progress)
    return shards, Manifest.load(shards)
