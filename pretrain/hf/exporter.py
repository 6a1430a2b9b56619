"""`hetron export-hf RUN_OR_CHECKPOINT --out DIR`: a hetron checkpoint -> a Hugging Face model folder.

The checkpoint is read through dist_checkpointing, which reassembles whole tensors whatever TP/PP/DP
layout it was saved at, one layer at a time (memory: one layer plus one output shard, not the
model). Tensors are converted with pretrain.hf.tensor_map (fused QKV and gate/up split, vocabulary
unpadded) and written as safetensors shards; config.json, generation_config.json and the tokenizer
files go beside them. The folder is built under a temporary name and renamed when complete.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from pretrain.errors import HetronError

DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class CheckpointModel:
    """What a hetron checkpoint says about its model."""

    path: Path
    model: dict  # resolved architecture + ModelConfig fields
    vocab_size: int  # rows of the exported embedding (unpadded)
    hf_source: Path | None  # config.json (+ tokenizer files) of the model it was imported from
    tokenizer: Path | None  # a tokenizer.json, or a folder of transformers tokenizer files


def find_checkpoint(source: Path) -> Path:
    from pretrain.checkpoint import STATE_FILE, newest_checkpoint

    source = Path(source)
    if (source / STATE_FILE).is_file():
        return source
    if not source.exists():
        raise HetronError(f"{source}: no such run folder or checkpoint")
    found = newest_checkpoint(source) or newest_checkpoint(source / "checkpoints")
    if found is None and (source / "config.yaml").is_file():
        run_cfg = yaml.safe_load((source / "config.yaml").read_text()) or {}
        ckpt_dir = (run_cfg.get("checkpoint") or {}).get("dir")
        found = newest_checkpoint(Path(ckpt_dir)) if ckpt_dir else None
    if found is None:
        raise HetronError(f"{source} holds no complete checkpoint (nor under its checkpoints/)")
    return found


def _run_config(checkpoint: Path) -> dict:
    """The resolved config.yaml of the run that wrote the checkpoint (run/checkpoints/step_N), if any."""
    for folder in (checkpoint.parent.parent, checkpoint.parent):
        if (folder / "config.yaml").is_file():
            return yaml.safe_load((folder / "config.yaml").read_text()) or {}
    return {}


def describe_checkpoint(checkpoint: Path) -> CheckpointModel:
    from pretrain.checkpoint import STATE_FILE
    from pretrain.hf.importer import HF_FILES_DIR

    try:
        state = json.loads((checkpoint / STATE_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise HetronError(f"{checkpoint / STATE_FILE} is corrupt ({exc.msg})") from None
    run_cfg = _run_config(checkpoint)
    model = dict(state.get("model") or run_cfg.get("model") or {})
    if not model or "architecture" not in state:
        raise HetronError(f"{checkpoint}: neither its {STATE_FILE} nor a run config.yaml above it describes the model")
    model.update(state["architecture"])
    model.setdefault("norm_epsilon", 1e-5)
    hf_source = checkpoint / HF_FILES_DIR if (checkpoint / HF_FILES_DIR / "config.json").is_file() else None
    init_from = str(run_cfg.get("init_from") or "")
    if hf_source is None and init_from.startswith("hf:") and (Path(init_from[3:]) / "config.json").is_file():
        hf_source = Path(init_from[3:])
    # the run's data.tokenizer (an HF folder keeps its tokenizer_config.json), else the shards' tokenizer.json
    tokenizer = (run_cfg.get("data") or {}).get("tokenizer") or state.get("tokenizer")
    if hf_source is not None and (hf_source / "tokenizer.json").is_file():
        tokenizer = hf_source
    tokenizer = (checkpoint / tokenizer) if tokenizer and not Path(tokenizer).is_absolute() else tokenizer
    tokenizer = Path(tokenizer) if tokenizer else _shards_tokenizer(checkpoint)
    vocab_size = model.get("vocab_size") or state.get("vocab_size")
    if not vocab_size and tokenizer is not None:  # checkpoints of older hetron: the tokenizer's size
        from data.tokenizer import load_tokenizer

        vocab_size = load_tokenizer(tokenizer).get_vocab_size()
    if not vocab_size:
        raise HetronError(f"{checkpoint}: neither the vocabulary size nor the tokenizer is recorded; pass --tokenizer")
    return CheckpointModel(checkpoint, model, int(vocab_size), hf_source, tokenizer)


def _shards_tokenizer(checkpoint: Path) -> Path | None:
    """The tokenizer.json of the shards a checkpoint's run trained on (its components record them)."""
    import torch

    from pretrain.checkpoint import COMPONENTS_FILE

    if not (checkpoint / COMPONENTS_FILE).is_file():
        return None
    split = torch.load(checkpoint / COMPONENTS_FILE, weights_only=False).get("train_split")
    candidate = Path(split).parent / "tokenizer.json" if split else None
    return candidate if candidate is not None and candidate.is_file() else None


def export_layout(described: CheckpointModel, metadata: dict):
    from pretrain.hf.tensor_map import CHECKPOINT_KEYS, Layout

    m = described.model
    return Layout(num_attention_heads=m["num_attention_heads"], num_query_groups=m["num_query_groups"],
                  head_dim=m["hidden_size"] // m["num_attention_heads"], vocab_size=described.vocab_size,
                  padded_vocab_size=int(metadata[CHECKPOINT_KEYS["embedding"]].global_shape[0]),
                  tie_embeddings=bool(m.get("tie_embeddings", CHECKPOINT_KEYS["output"] not in metadata)),
                  qkv_bias=CHECKPOINT_KEYS["qkv_bias"] in metadata)


def _load_whole(checkpoint: Path, metadata: dict, key: str):
    """One checkpoint tensor, whole (a layer tensor with its leading layer axis). dist_checkpointing
    reads any saved TP/PP layout into it; one key at a time bounds the memory to the largest stack."""
    import torch
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    meta = metadata[key]
    request = {key: ShardedTensor.from_rank_offsets(key, torch.empty(meta.global_shape, dtype=meta.dtype))}
    return dist_checkpointing.load(request, str(checkpoint), validate_access_integrity=False)[key]


def export_weights(described: CheckpointModel, folder: Path, *, max_shard_bytes: int, dtype: str) -> tuple[int, list[str]]:
    """Writes the safetensors files; returns (tensor bytes written, file names)."""
    import torch
    from megatron.core import dist_checkpointing

    from pretrain.hf import tensor_map
    from pretrain.hf.weight_files import SafetensorsShardWriter

    metadata = dist_checkpointing.load_tensors_metadata(str(described.path))
    missing = [k for k in (tensor_map.CHECKPOINT_KEYS["embedding"], tensor_map.CHECKPOINT_KEYS["qkv_weight"])
               if k not in metadata]
    if missing:
        raise HetronError(f"{described.path}: the checkpoint holds no {missing[0]!r}; is it a hetron GPT checkpoint?")
    layout = export_layout(described, metadata)
    num_layers = int(metadata[tensor_map.CHECKPOINT_KEYS["qkv_weight"]].global_shape[0])
    if num_layers != described.model["num_layers"]:
        raise HetronError(f"{described.path}: {num_layers} layers saved, the recorded architecture says "
                          f"{described.model['num_layers']}")
    target = getattr(torch, dtype)
    writer = SafetensorsShardWriter(folder, max_shard_bytes)

    def emit(kind: str, layer: int | None, tensor) -> None:
        for name, part in zip(tensor_map.hf_names(kind, layer, layout), tensor_map.to_hf(kind, tensor, layout)):
            writer.add(name, part.to(target))

    for kind in ("embedding", *tensor_map.layer_kinds(layout), "final_norm", "output"):
        if kind not in tensor_map.global_kinds(layout) + tensor_map.layer_kinds(layout):
            continue
        whole = _load_whole(described.path, metadata, tensor_map.CHECKPOINT_KEYS[kind])
        if kind in tensor_map.LAYER_KINDS:
            for layer in range(num_layers):
                emit(kind, layer, whole[layer])
        else:
            emit(kind, None, whole)
        del whole
    return writer.total_bytes, writer.finish()


def write_hf_config(described: CheckpointModel, folder: Path, dtype: str, special: dict) -> str:
    from transformers import AutoConfig, GenerationConfig

    from pretrain.hf.hf_config import hf_config_fields

    base = json.loads((described.hf_source / "config.json").read_text()) if described.hf_source else None
    model_type, fields = hf_config_fields(described.model, described.vocab_size, base=base)
    fields = fields | special | {"torch_dtype": dtype}  # a token the tokenizer lacks is None, not a default id
    AutoConfig.for_model(model_type, **fields).save_pretrained(str(folder))
    generation = {k: v for k, v in special.items() if k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    GenerationConfig(**{k: v for k, v in generation.items() if v is not None}).save_pretrained(str(folder))
    return model_type


def write_tokenizer(tokenizer: Path | None, folder: Path, vocab_size: int) -> dict:
    """Tokenizer files into `folder`; returns the bos/eos/pad ids. A transformers tokenizer folder is
    copied; a bare tokenizer.json (hetron's own BPE: EOS <|endoftext|>, PAD <|pad|>) is saved as a
    transformers fast tokenizer."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from data.tokenizer import EOS, PAD
    from pretrain.hf.importer import TOKENIZER_FILES

    if tokenizer is not None and tokenizer.is_dir() and (tokenizer / "tokenizer_config.json").is_file():
        for name in TOKENIZER_FILES:
            if (tokenizer / name).is_file():
                shutil.copy2(tokenizer / name, folder / name)
        tok = AutoTokenizer.from_pretrained(str(folder))
    else:
        file = tokenizer / "tokenizer.json" if tokenizer is not None and tokenizer.is_dir() else tokenizer
        if file is None or not file.is_file():
            raise HetronError(f"the checkpoint's tokenizer is not found (recorded: {tokenizer}); pass --tokenizer "
                              "FILE_OR_DIR")
        vocab = PreTrainedTokenizerFast(tokenizer_file=str(file)).get_vocab()
        specials = {k: v for k, v in (("eos_token", EOS), ("pad_token", PAD)) if v in vocab}
        tok = PreTrainedTokenizerFast(tokenizer_file=str(file), **specials)
        tok.save_pretrained(str(folder))
    if len(tok) > vocab_size:
        raise HetronError(f"the tokenizer has {len(tok)} tokens but the model only {vocab_size} embedding rows")
    return {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}


def export_hf(source: Path, out: Path, *, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, dtype: str = "float32",
              tokenizer: Path | None = None) -> dict:
    from pretrain.hf.one_rank import one_rank_process_group
    from pretrain.hf.staging import check_new_output, staged_folder

    start = time.time()
    out = Path(out)
    check_new_output(out)
    if dtype not in DTYPES:
        raise HetronError(f"--dtype {dtype} is not one of {', '.join(DTYPES)}")
    described = describe_checkpoint(find_checkpoint(source))
    if tokenizer is not None:
        tokenizer = Path(tokenizer)
        if not (tokenizer.is_file() or (tokenizer / "tokenizer.json").is_file()):
            raise HetronError(f"--tokenizer {tokenizer}: no tokenizer.json there")
        described.tokenizer = tokenizer
    with one_rank_process_group(), staged_folder(out) as tmp:
        special = write_tokenizer(described.tokenizer, tmp, described.vocab_size)
        model_type = write_hf_config(described, tmp, dtype, special)
        size, files = export_weights(described, tmp, max_shard_bytes=max_shard_bytes, dtype=dtype)
    return {"checkpoint": str(described.path), "model_type": model_type, "bytes": size, "files": files,
            "seconds": time.time() - start}
