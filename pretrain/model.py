"""Build megatron-core's GPTModel from the config, with hetron's document attention in its spec."""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch

from pretrain.errors import ConfigError

PRESETS: dict[str, dict] = {
    # 12 layers so LISA (gamma=2 of 12) has something to sample; about 4M parameters.
    "tiny": dict(num_layers=12, hidden_size=128, num_attention_heads=4, num_query_groups=4, ffn_hidden_size=384,
                 seq_length=1024, normalization="RMSNorm", activation="swiglu", position_embedding="rope"),
    "125m": dict(num_layers=12, hidden_size=768, num_attention_heads=12, num_query_groups=12, ffn_hidden_size=2048,
                 seq_length=2048, normalization="RMSNorm", activation="swiglu", position_embedding="rope"),
    "1b": dict(num_layers=16, hidden_size=2048, num_attention_heads=32, num_query_groups=8, ffn_hidden_size=8192,
               seq_length=4096, normalization="RMSNorm", activation="swiglu", position_embedding="rope"),
    "7b": dict(num_layers=32, hidden_size=4096, num_attention_heads=32, num_query_groups=32, ffn_hidden_size=11008,
               seq_length=4096, normalization="RMSNorm", activation="swiglu", position_embedding="rope"),
}


@dataclass(frozen=True)
class Architecture:
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    ffn_hidden_size: int
    seq_length: int
    normalization: str
    activation: str
    position_embedding: str

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def resolve_model(model_cfg, parallel_cfg) -> Architecture:
    """The preset with the config's explicit fields on top, checked for consistency."""
    values = dict(PRESETS[model_cfg.preset])
    for name in values:
        explicit = getattr(model_cfg, name)
        if explicit is not None:
            values[name] = explicit
    if model_cfg.num_attention_heads is not None and model_cfg.num_query_groups is None:
        values["num_query_groups"] = values["num_attention_heads"]
    arch = Architecture(**values)
    for name in ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "ffn_hidden_size", "seq_length"):
        if getattr(arch, name) <= 0:
            raise ConfigError(f"model.{name}={getattr(arch, name)} must be positive")
    if arch.hidden_size % arch.num_attention_heads:
        raise ConfigError(f"model.hidden_size={arch.hidden_size} is not divisible by model.num_attention_heads={arch.num_attention_heads}")
    if arch.num_attention_heads % arch.num_query_groups:
        raise ConfigError(f"model.num_attention_heads={arch.num_attention_heads} is not divisible by model.num_query_groups={arch.num_query_groups}")
    if arch.head_dim % 2:
        raise ConfigError(f"head dim hidden_size/num_attention_heads={arch.head_dim} must be even for RoPE")
    if arch.normalization not in ("RMSNorm", "LayerNorm"):
        raise ConfigError(f"model.normalization={arch.normalization!r} is not one of RMSNorm, LayerNorm")
    if arch.activation not in ("swiglu", "gelu"):
        raise ConfigError(f"model.activation={arch.activation!r} is not one of swiglu, gelu")
    if arch.position_embedding not in ("rope", "learned"):
        raise ConfigError(f"model.position_embedding={arch.position_embedding!r} is not one of rope, learned")
    tp, pp = parallel_cfg.tensor, parallel_cfg.pipeline
    if arch.num_query_groups % tp:
        raise ConfigError(f"model.num_query_groups={arch.num_query_groups} is not divisible by parallel.tensor={tp}")
    if arch.ffn_hidden_size % tp:
        raise ConfigError(f"model.ffn_hidden_size={arch.ffn_hidden_size} is not divisible by parallel.tensor={tp}")
    if arch.num_layers % pp:
        raise ConfigError(f"model.num_layers={arch.num_layers} is not divisible by parallel.pipeline={pp}")
    return arch


def padded_vocab_size(vocab_size: int, tensor_parallel: int, multiple: int = 128) -> int:
    step = multiple * tensor_parallel
    return -(-vocab_size // step) * step


def transformer_layer_spec(arch: Architecture, which: str):
    """megatron-core's layer spec (local, or Transformer Engine when importable) with our core attention."""
    from megatron.core.models.gpt import gpt_layer_specs

    from parallel.document_attention import DocumentAttention

    use_te = which == "te" or (which == "auto" and torch.cuda.is_available() and _te_importable())
    if use_te:
        spec = gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec()
    else:
        spec = gpt_layer_specs.get_gpt_layer_local_spec(normalization=arch.normalization)
    spec = copy.deepcopy(spec)
    spec.submodules.self_attention.submodules.core_attention = DocumentAttention
    return spec


def _te_importable() -> bool:
    try:
        import transformer_engine  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


def transformer_config(arch: Architecture, cfg, *, bf16: bool):
    from megatron.core.transformer.transformer_config import TransformerConfig

    tc = TransformerConfig(
        num_layers=arch.num_layers,
        hidden_size=arch.hidden_size,
        num_attention_heads=arch.num_attention_heads,
        num_query_groups=arch.num_query_groups,
        ffn_hidden_size=arch.ffn_hidden_size,
        kv_channels=arch.head_dim,
        normalization=arch.normalization,
        gated_linear_unit=arch.activation == "swiglu",
        activation_func=torch.nn.functional.silu if arch.activation == "swiglu" else torch.nn.functional.gelu,
        add_bias_linear=False,
        hidden_dropout=cfg.model.dropout,
        attention_dropout=cfg.model.dropout,
        init_method_std=cfg.model.init_method_std,
        tensor_model_parallel_size=cfg.parallel.tensor,
        pipeline_model_parallel_size=cfg.parallel.pipeline,
        sequence_parallel=False,
        bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        pipeline_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_cpu_initialization=not torch.cuda.is_available(),
        # The loss is a sum over tokens divided by the global token count (see pretrain.step).
        calculate_per_token_loss=True,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        bias_activation_fusion=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
    )
    # Read by DocumentAttention: RoPE per document inside the core attention (see its docstring).
    tc.hetron_rotary_base = cfg.model.rotary_base if arch.position_embedding == "rope" else None
    return tc


def build_gpt_model(cfg, arch: Architecture, vocab_size: int, *, bf16: bool, pre_process: bool = True,
                    post_process: bool = True):
    from megatron.core.models.gpt.gpt_model import GPTModel

    tc = transformer_config(arch, cfg, bf16=bf16)
    model = GPTModel(
        config=tc,
        transformer_layer_spec=transformer_layer_spec(arch, cfg.model.spec),
        vocab_size=padded_vocab_size(vocab_size, cfg.parallel.tensor),
        max_sequence_length=arch.seq_length,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=cfg.model.tie_embeddings,
        position_embedding_type="learned_absolute" if arch.position_embedding == "learned" else "none",
    )
    if bf16:
        # Without Apex or TE the norms fall back to torch norms created in fp32 whatever params_dtype
        # says; megatron's non-distributed mixed-precision optimizer cannot checkpoint such a mix.
        # Parameters only: the RoPE inverse-frequency buffer must stay fp32.
        for param in model.parameters():
            if param.dtype == torch.float32:
                param.data = param.data.to(torch.bfloat16)
    return model


def count_parameters(arch: Architecture, vocab_size: int, tie: bool = False) -> int:
    """Analytic parameter count (whole model, unsharded), for MFU and reports."""
    h, f, L = arch.hidden_size, arch.ffn_hidden_size, arch.num_layers
    kv = arch.num_query_groups * arch.head_dim
    attn = h * (h + 2 * kv) + h * h
    mlp = (3 if arch.activation == "swiglu" else 2) * h * f
    per_layer = attn + mlp + 2 * h
    embed = vocab_size * h * (1 if tie else 2)
    pos = arch.seq_length * h if arch.position_embedding == "learned" else 0
    return L * per_layer + embed + pos + h


def as_dict(arch: Architecture) -> dict:
    return dataclasses.asdict(arch)
