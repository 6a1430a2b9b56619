"""Build megatron-core's GPTModel from the config, with hetron's document attention in its spec."""
from __future__ import annotations

import copy

import torch

from pretrain.architecture import Architecture, padded_vocab_size
from pretrain.errors import HetronError


def uses_te_layers(which: str) -> bool:
    return which == "te" or (which == "auto" and torch.cuda.is_available() and _te_importable())


def uses_te_attention(cfg) -> bool:
    """megatron's TE core attention with its fused RoPE (thd, packed documents) instead of hetron's
    document attention: only without hetron's sequence parallelism (whose all-to-alls live in the
    document attention) and without Hugging Face rope_scaling (megatron's RoPE has none)."""
    if cfg.model.attention == "document":
        return False
    eligible = uses_te_layers(cfg.model.spec) and cfg.sp.mode == "off" and not cfg.model.rope_scaling
    if cfg.model.attention == "te":
        if not (uses_te_layers(cfg.model.spec) and _te_importable()):
            raise HetronError("model.attention=te needs Transformer Engine, which is not importable here; "
                              "use model.attention=document (or auto)")
        return eligible
    return eligible and torch.cuda.is_available()


def transformer_layer_spec(arch: Architecture, which: str, *, te_attention: bool = False):
    """megatron-core's layer spec (local, or Transformer Engine when importable) with hetron's
    document attention as core attention, or TE's own (te_attention)."""
    from megatron.core.models.gpt import gpt_layer_specs

    from parallel.document_attention import DocumentAttention

    if uses_te_layers(which):
        spec = gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec()
    else:
        spec = gpt_layer_specs.get_gpt_layer_local_spec(normalization=arch.normalization)
    spec = copy.deepcopy(spec)
    if not te_attention:
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
        layernorm_epsilon=cfg.model.norm_epsilon,
        add_qkv_bias=cfg.model.qkv_bias,
        tensor_model_parallel_size=cfg.parallel.tensor,
        pipeline_model_parallel_size=cfg.parallel.pipeline,
        sequence_parallel=False,
        **recompute_args(cfg.train, arch.num_layers // cfg.parallel.pipeline),
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
    tc.hetron_rope_scaling = cfg.model.rope_scaling
    return tc


def recompute_args(train, layers_per_stage: int) -> dict:
    """train.recompute_* as megatron's TransformerConfig takes them (validated in pretrain.config)."""
    if train.recompute_granularity == "none":
        return {}
    if train.recompute_granularity == "selective":
        return {"recompute_granularity": "selective"}
    default = 1 if train.recompute_method == "uniform" else layers_per_stage
    return {"recompute_granularity": "full", "recompute_method": train.recompute_method,
            "recompute_num_layers": train.recompute_num_layers or default}


def build_gpt_model(cfg, arch: Architecture, vocab_size: int, *, bf16: bool, pre_process: bool = True,
                    post_process: bool = True):
    from megatron.core.models.gpt.gpt_model import GPTModel

    tc = transformer_config(arch, cfg, bf16=bf16)
    te_attention = uses_te_attention(cfg)
    rope = arch.position_embedding == "rope"
    if te_attention and rope:  # megatron applies RoPE, per document with TE's fused thd kernel (no host sync)
        tc.apply_rope_fusion = True
        tc.hetron_rotary_base = None
    model = GPTModel(
        config=tc,
        transformer_layer_spec=transformer_layer_spec(arch, cfg.model.spec, te_attention=te_attention),
        # model.vocab_size (an imported model's embedding rows) may exceed the tokenizer's vocabulary.
        vocab_size=padded_vocab_size(cfg.model.vocab_size or vocab_size, cfg.parallel.tensor),
        max_sequence_length=arch.seq_length,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=cfg.model.tie_embeddings,
        position_embedding_type="learned_absolute" if not rope else "rope" if te_attention else "none",
        rotary_base=cfg.model.rotary_base if te_attention and rope else 10000,
    )
    if cfg.model.vocab_size is not None and post_process:
        from pretrain.vocab_padding import mask_padded_logits

        mask_padded_logits(model, cfg.model.vocab_size)  # an imported model's vocabulary, at any TP
    if bf16:
        # Without Apex or TE the norms fall back to torch norms created in fp32 whatever params_dtype
        # says; megatron's non-distributed mixed-precision optimizer cannot checkpoint such a mix.
        # Parameters only: the RoPE inverse-frequency buffer must stay fp32.
        for param in model.parameters():
            if param.dtype == torch.float32:
                param.data = param.data.to(torch.bfloat16)
    return model
