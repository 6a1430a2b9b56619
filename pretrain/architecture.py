"""The model's architecture as numbers: the presets, the resolved `Architecture` (preset + explicit
`model.*` keys, checked against `parallel.*`) and what follows from it analytically (parameter count).
Pure Python: the config is validated with it before torch or megatron-core is imported."""
from __future__ import annotations

from dataclasses import dataclass

from pretrain.errors import ConfigError

PRESETS: dict[str, dict] = {
    # 12 layers so LISA (gamma=2 of 12) has something to sample; 3.6M parameters with its 4096-token vocabulary.
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


def matmul_parameters(arch: Architecture, vocab_size: int) -> int:
    """Parameters that enter a matrix multiply for every token: each layer's attention and MLP projections
    and the output head (the input embedding is a lookup; norms and biases are negligible)."""
    h, f = arch.hidden_size, arch.ffn_hidden_size
    kv = arch.num_query_groups * arch.head_dim
    attn = h * (h + 2 * kv) + h * h
    mlp = (3 if arch.activation == "swiglu" else 2) * h * f
    return arch.num_layers * (attn + mlp) + vocab_size * h


def training_flops_per_token(arch: Architecture, vocab_size: int) -> int:
    """Model FLOPs of one trained token, forward and backward, without recomputation: 6 per matmul
    parameter, plus attention's scores and weighted values, 12 * layers * seq_length * hidden (a forward
    of 4 * seq_length * hidden per layer, the backward twice that), over the whole sequence as PaLM
    (Chowdhery et al. 2022, appendix B) and Megatron-LM count it, whatever the documents' masks skip.
    `vocab_size`: the padded vocabulary the output head multiplies by."""
    attention = 12 * arch.num_layers * arch.seq_length * arch.hidden_size
    return 6 * matmul_parameters(arch, vocab_size) + attention
