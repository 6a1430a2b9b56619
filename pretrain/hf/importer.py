"""`hetron import-hf DIR --out CKPT`: a Hugging Face model folder -> a hetron checkpoint.

The model is built at TP1/PP1 in this process from DIR's config.json, its weights streamed in
(pretrain.hf.load) and saved through dist_checkpointing, so a run loads it at any TP/PP with
init_from=CKPT. The checkpoint holds weights only (no optimizer state, no data position) and keeps
DIR's config.json and tokenizer files under hf/, for the run's tokenizer and for export.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from pretrain.errors import HetronError

HF_FILES_DIR = "hf"  # inside an imported checkpoint: the source's config.json and tokenizer files
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json")
SOURCE_FILES = ("config.json", "generation_config.json", *TOKENIZER_FILES)


def import_config(folder: Path, overrides: list[str] = ()):
    """The hetron Config of a model initialised from DIR (its architecture and tokenizer)."""
    from pretrain.config import load_config

    return load_config(None, [f"init_from=hf:{folder}", *overrides])


def source_layout(cfg):
    """The conversion layout of DIR's model, known before any model is built."""
    from pretrain.architecture import padded_vocab_size, resolve_model
    from pretrain.hf.tensor_map import Layout

    arch = resolve_model(cfg.model, cfg.parallel)
    return Layout(num_attention_heads=arch.num_attention_heads, num_query_groups=arch.num_query_groups,
                  head_dim=arch.head_dim, vocab_size=cfg.model.vocab_size,
                  padded_vocab_size=padded_vocab_size(cfg.model.vocab_size, cfg.parallel.tensor),
                  tie_embeddings=cfg.model.tie_embeddings, qkv_bias=cfg.model.qkv_bias), arch


def import_hf(folder: Path, out: Path) -> dict:
    """Writes the checkpoint; returns a summary (parameters, bytes, seconds)."""
    from data.tokenizer import load_tokenizer, tokenizer_fingerprint
    from pretrain.hf.staging import check_new_output, staged_folder

    start = time.time()
    folder, out = Path(folder), Path(out)
    check_new_output(out)
    cfg = import_config(folder)  # config.json errors come before torch is imported
    from pretrain.hf.load import check_hf_tensor_names
    from pretrain.hf.weight_files import HfWeightReader

    if not (folder / "tokenizer.json").is_file():
        raise HetronError(f"{folder} holds no tokenizer.json (a checkpoint records its tokenizer; save the model's "
                          "fast tokenizer there)")
    tokenizer = load_tokenizer(folder / "tokenizer.json")
    layout, arch = source_layout(cfg)
    check_hf_tensor_names(HfWeightReader(folder), layout, arch.num_layers)  # before building anything

    import torch
    from megatron.core import dist_checkpointing

    from pretrain.distributed import seed_everything
    from pretrain.hf.load import load_hf_weights
    from pretrain.hf.one_rank import one_rank_process_group
    from pretrain.model import build_gpt_model

    with one_rank_process_group(), staged_folder(out) as tmp:
        seed_everything(cfg.seed)
        model = build_gpt_model(cfg, arch, cfg.model.vocab_size, bf16=False)
        load_hf_weights(folder, [model])
        dist_checkpointing.save({"model": model.sharded_state_dict()}, str(tmp))
        parameters = sum(p.numel() for p in model.parameters())
        del model
        (tmp / HF_FILES_DIR).mkdir()
        for name in SOURCE_FILES:
            if (folder / name).is_file():
                shutil.copy2(folder / name, tmp / HF_FILES_DIR / name)
        torch.save({}, tmp / "components.pt")
        state = {"step": 0, "tokens_seen": 0, "weights_only": True, "imported_from": str(folder.resolve()),
                 "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer), "architecture": arch.__dict__,
                 "model": _model_fields(cfg), "vocab_size": tokenizer.get_vocab_size(),
                 "tokenizer": f"{HF_FILES_DIR}/tokenizer.json"}
        (tmp / "hetron_state.json").write_text(json.dumps(state, indent=2))
    return {"parameters": parameters, "seconds": time.time() - start, "out": str(out)}


def _model_fields(cfg) -> dict:
    import dataclasses

    return dataclasses.asdict(cfg.model)
