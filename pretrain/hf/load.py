"""Load a Hugging Face model's weights into the GPTModel chunks of this rank, at any TP/PP layout.

Every parameter of this rank is built from its HF tensors (tensor_map.to_megatron), cut to this
tensor-parallel rank's part and copied in place; one HF tensor group is in memory at a time.
"""
from __future__ import annotations

from pathlib import Path

import torch

from pretrain.errors import HetronError
from pretrain.hf import tensor_map
from pretrain.hf.hf_config import read_hf_config
from pretrain.hf.weight_files import HfWeightReader


def _unwrap(chunk):
    while hasattr(chunk, "module"):
        chunk = chunk.module
    return chunk


def model_layout(model, hf_vocab_size: int) -> tensor_map.Layout:
    """The conversion layout of a built GPTModel (whole-model sizes, not this rank's)."""
    config = model.config
    return tensor_map.Layout(
        num_attention_heads=config.num_attention_heads,
        num_query_groups=config.num_query_groups,
        head_dim=config.kv_channels,
        vocab_size=hf_vocab_size,
        padded_vocab_size=model.vocab_size,  # GPTModel keeps the padded size it was built with
        tie_embeddings=model.share_embeddings_and_output_weights,
        qkv_bias=bool(config.add_qkv_bias),
    )


def expected_hf_names(layout: tensor_map.Layout, num_layers: int) -> set[str]:
    names = {n for kind in tensor_map.global_kinds(layout) for n in tensor_map.hf_names(kind, None, layout)}
    for layer in range(num_layers):
        for kind in tensor_map.layer_kinds(layout):
            names.update(tensor_map.hf_names(kind, layer, layout))
    return names


def check_hf_tensor_names(reader: HfWeightReader, layout: tensor_map.Layout, num_layers: int) -> None:
    """The weights hold exactly the tensors of the architecture config.json describes."""
    expected = expected_hf_names(layout, num_layers)
    present = reader.names()
    if layout.tie_embeddings:
        present.discard("lm_head.weight")  # some tied checkpoints store the shared matrix twice
    missing, unexpected = sorted(expected - present), sorted(present - expected)
    if missing:
        raise HetronError(f"{reader.folder}: the weights lack {missing[0]!r}"
                          + (f" and {len(missing) - 1} more tensors" if len(missing) > 1 else "")
                          + " that config.json's architecture needs")
    if unexpected:
        raise HetronError(f"{reader.folder}: the weights hold {unexpected[0]!r}"
                          + (f" and {len(unexpected) - 1} more tensors" if len(unexpected) > 1 else "")
                          + " that hetron's model has no place for")


def load_hf_weights(folder: Path, model_chunks) -> int:
    """Copies DIR's weights into this rank's parameters; returns how many parameters were set."""
    from megatron.core import parallel_state as ps

    folder = Path(folder)
    config = read_hf_config(folder)
    reader = HfWeightReader(folder)
    tp_rank, tp_size = ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()
    count = 0
    for chunk in model_chunks:
        model = _unwrap(chunk)
        layout = model_layout(model, int(config["vocab_size"]))
        check_hf_tensor_names(reader, layout, model.config.num_layers)
        for name, param in model.named_parameters():
            kind, local = tensor_map.parameter_kind(name)
            layer = None if local is None else model.decoder.layers[local].layer_number - 1
            sources = [reader.get(n) for n in tensor_map.hf_names(kind, layer, layout)]
            whole = tensor_map.to_megatron(kind, sources, layout)
            shard = tensor_map.tensor_parallel_shard(kind, whole, tp_rank, tp_size)
            if tuple(shard.shape) != tuple(param.shape):
                raise HetronError(f"{folder}: {', '.join(tensor_map.hf_names(kind, layer, layout))} give a "
                                  f"{tuple(shard.shape)} part for {name}, which is {tuple(param.shape)}")
            with torch.no_grad():
                param.data.copy_(shard)
            count += 1
    return count


def reload_optimizer_params(optimizer) -> None:
    """Mixed-precision optimizers keep fp32 main copies of the weights: refresh them from the model."""
    if optimizer is not None and hasattr(optimizer, "reload_model_params"):
        optimizer.reload_model_params()
