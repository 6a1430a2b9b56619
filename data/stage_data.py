"""Where each stage's streams live: a prepared shards folder, or a corpus prepared once (into the
shard cache) with the run's tokenizer. Every stream must share that tokenizer."""
from __future__ import annotations

from pathlib import Path

from data.corpus import STDLIB
from data.mixture import StreamSource
from data.prepare import MANIFEST, TOKENIZER, Manifest, prepare_shards
from data.shard_cache import default_shards_dir
from pretrain.errors import ConfigError, HetronError


def stream_folder(path: str, data_cfg, shards: Path, manifest: Manifest, *, prepare: bool, key: str,
                  progress: bool = False) -> Path:
    if not path:
        return shards
    if (Path(path) / MANIFEST).is_file():
        return Path(path)
    if path != STDLIB and not Path(path).exists():
        raise ConfigError(f"{key}.path={path!r} is neither a prepared shards folder nor a corpus that exists")
    tokenizer = shards / TOKENIZER
    folder = default_shards_dir(path, data_cfg.vocab_size, manifest.max_context, data_cfg.eval_fraction, str(tokenizer))
    if prepare and not (folder / MANIFEST).is_file():
        if progress:
            print(f"preparing shards of corpus {path!r} with the run's tokenizer in {folder} (once)", flush=True)
        prepare_shards(path, folder, max_context=manifest.max_context, eval_fraction=data_cfg.eval_fraction,
                       tokenizer_path=str(tokenizer), text_field=data_cfg.text_field, progress=progress)
    return folder


def stage_sources(cfg, shards: Path, manifest: Manifest, seq_length: int, *, prepare: bool) -> list[list[StreamSource]]:
    """The streams of every stage (preparing corpora first when `prepare`), checked against the
    run's tokenizer and the model's context."""
    out = []
    for i, stage in enumerate(cfg.stages):
        sources = []
        for j, stream in enumerate(stage.data):
            key = f"stages[{i}].data[{j}]"
            folder = stream_folder(stream.path, cfg.data, shards, manifest, prepare=prepare, key=key,
                                   progress=prepare and cfg.run.progress)
            other = Manifest.load(folder)
            if other.tokenizer_fingerprint != manifest.tokenizer_fingerprint:
                raise HetronError(
                    f"{key}: shards in {folder} use tokenizer {other.tokenizer_fingerprint}, the run uses "
                    f"{manifest.tokenizer_fingerprint}; prepare them with `hetron prepare --tokenizer {shards / TOKENIZER}`")
            if other.max_context > seq_length:
                raise HetronError(f"{key}: shards in {folder} hold samples of {other.max_context} tokens, more than "
                                  f"model.seq_length={seq_length}")
            sources.append(StreamSource(stream.label, str((folder / "train").resolve()),
                                        str((folder / "eval").resolve()), stream.proportion))
        out.append(sources)
    return out
