"""Every path a run will read, checked before anything is prepared, written or submitted: the corpus
(unless its shards are already prepared), data.shards, data.tokenizer and the stages' streams; resume,
init_from and sp.cost_model are checked by the config's own validation. `hetron train` checks them
before it prepares shards, `hetron submit` before it submits (a job must not find a placeholder corpus
on the cluster), and `--dry-run` of both. One line naming the key."""
from __future__ import annotations

from pathlib import Path

from data.corpus import STDLIB, corpus_problem
from data.prepare import MANIFEST
from data.shard_cache import shards_dir
from pretrain.config import Config
from pretrain.errors import ConfigError


def check_input_paths(cfg: Config, seq_length: int) -> None:
    data = cfg.data
    if data.shards:
        if not (Path(data.shards) / MANIFEST).is_file():
            raise ConfigError(f"data.shards={data.shards}: no prepared shards there (no {MANIFEST}); write them "
                              "with `hetron prepare --out FOLDER`, or leave data.shards empty to prepare data.corpus")
    elif not (shards_dir(data, seq_length) / MANIFEST).is_file():
        problem = corpus_problem(data.corpus)
        if problem:
            raise ConfigError(f"data.corpus={data.corpus} {problem}, or set data.shards=FOLDER of prepared shards")
    if data.tokenizer and not (Path(data.tokenizer).is_file() or (Path(data.tokenizer) / "tokenizer.json").is_file()):
        raise ConfigError(f"data.tokenizer={data.tokenizer}: no such file (a tokenizer.json or a folder holding one; "
                          "empty: train one on the corpus)")
    for i, stage in enumerate(cfg.stages):
        for j, stream in enumerate(stage.data):
            if not stream.path or (Path(stream.path) / MANIFEST).is_file() or stream.path == STDLIB:
                continue
            problem = corpus_problem(stream.path)
            if problem:
                raise ConfigError(f"stages[{i}].data[{j}].path={stream.path} {problem}, or a prepared shards folder")
