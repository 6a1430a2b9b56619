"""Hugging Face config.json <-> hetron's `model.*` fields, for the Llama, Mistral and Qwen2 families.

`hetron_model_fields` reads a config.json dict and returns the model fields that reproduce it, or
raises one ConfigError naming the config.json key hetron cannot represent. `hf_config_fields` goes
the other way for export. Both are pure; `apply_hf_model` is the thin shell that reads the file.
"""
from __future__ import annotations

import json
from pathlib import Path

from parallel.rope_scaling import rope_type
from pretrain.errors import ConfigError

# model_type -> the causal-LM class transformers builds for it.
FAMILIES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
# Without model.seq_length, an imported model trains on contexts up to this (its own maximum if shorter).
DEFAULT_MAX_SEQ_LENGTH = 4096
ARCHITECTURE_FIELDS = ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "ffn_hidden_size",
                       "normalization", "activation", "position_embedding")
# Every model field an imported model sets (hetron_model_fields' keys).
HF_MODEL_FIELDS = ARCHITECTURE_FIELDS + ("seq_length", "rotary_base", "tie_embeddings", "vocab_size", "norm_epsilon",
                                         "qkv_bias", "rope_scaling")


def read_hf_config(folder: Path) -> dict:
    path = Path(folder) / "config.json"
    if not Path(folder).is_dir():
        raise ConfigError(f"{folder}: no such Hugging Face model folder")
    if not path.is_file():
        raise ConfigError(f"{folder} holds no config.json (not a Hugging Face model folder)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    return config


def _require(config: dict, key: str, where: str):
    if key not in config or config[key] is None:
        raise ConfigError(f"{where}: key {key!r} is missing")
    return config[key]


def hetron_model_fields(config: dict, where: str = "config.json") -> dict:
    """The `model.*` fields of hetron's config that build the same network as this HF config."""
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise ConfigError(f"{where}: model_type={model_type!r} is not supported (hetron imports: {', '.join(FAMILIES)})")
    for arch in config.get("architectures") or []:
        if arch != FAMILIES[model_type]:
            raise ConfigError(f"{where}: architectures={arch!r} is not supported (expected {FAMILIES[model_type]})")
    hidden = int(_require(config, "hidden_size", where))
    heads = int(_require(config, "num_attention_heads", where))
    groups = int(config.get("num_key_value_heads") or heads)
    if config.get("head_dim") not in (None, hidden // heads) or hidden % heads:
        raise ConfigError(f"{where}: head_dim={config.get('head_dim')} differs from hidden_size/num_attention_heads="
                          f"{hidden / heads:g}; hetron's attention uses hidden_size/num_attention_heads")
    act = config.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"{where}: hidden_act={act!r} is not supported (hetron's gated MLP is SwiGLU: silu)")
    for key in ("attention_bias", "mlp_bias"):
        if config.get(key):
            raise ConfigError(f"{where}: {key}=true is not supported (hetron's linear layers have no bias)")
    if config.get("pretraining_tp", 1) != 1:
        raise ConfigError(f"{where}: pretraining_tp={config['pretraining_tp']} is not supported (only 1)")
    if config.get("partial_rotary_factor", 1.0) != 1.0:
        raise ConfigError(f"{where}: partial_rotary_factor={config['partial_rotary_factor']} is not supported (only 1.0)")
    if config.get("quantization_config"):
        raise ConfigError(f"{where}: quantization_config is set; import the unquantized model")
    scaling = config.get("rope_scaling")
    if scaling is not None and not isinstance(scaling, dict):
        raise ConfigError(f"{where}: rope_scaling={scaling!r} must be an object or null")
    if rope_type(scaling) not in ("default", "llama3"):
        raise ConfigError(f"{where}: rope_scaling.rope_type={rope_type(scaling)!r} is not supported "
                          "(hetron applies: default, llama3)")
    max_positions = int(config.get("max_position_embeddings") or DEFAULT_MAX_SEQ_LENGTH)
    fields = dict(
        num_layers=int(_require(config, "num_hidden_layers", where)),
        hidden_size=hidden,
        num_attention_heads=heads,
        num_query_groups=groups,
        ffn_hidden_size=int(_require(config, "intermediate_size", where)),
        seq_length=min(max_positions, DEFAULT_MAX_SEQ_LENGTH),
        normalization="RMSNorm",
        activation="swiglu",
        position_embedding="rope",
        rotary_base=float(config.get("rope_theta", 10000.0)),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        vocab_size=int(_require(config, "vocab_size", where)),
        norm_epsilon=float(config.get("rms_norm_eps", 1e-6)),
        qkv_bias=model_type == "qwen2",
        rope_scaling=scaling if rope_type(scaling) != "default" else None,
    )
    return fields


def check_sliding_window(config: dict, seq_length: int, where: str = "config.json") -> None:
    """hetron's attention is full causal: a sliding window shorter than the context changes the model."""
    window = config.get("sliding_window")
    used = config.get("use_sliding_window", config.get("model_type") == "mistral")
    if used and window is not None and int(window) < seq_length:
        raise ConfigError(f"{where}: sliding_window={window} is shorter than model.seq_length={seq_length}; hetron's "
                          f"attention is full causal, so set model.seq_length<={window}")


def hf_config_fields(model: dict, vocab_size: int, *, base: dict | None = None) -> tuple[str, dict]:
    """(model_type, config kwargs) of the HF config for hetron's resolved `model` fields (the
    architecture and ModelConfig values) with `vocab_size` rows. `base`: the config.json the model was
    imported from; its family and other keys are kept where they still hold."""
    if model.get("normalization") != "RMSNorm" or model.get("activation") != "swiglu" \
            or model.get("position_embedding") != "rope":
        raise ConfigError("only RMSNorm + swiglu + rope models export to Hugging Face (Llama/Qwen2); this one has "
                          f"model.normalization={model.get('normalization')}, model.activation={model.get('activation')}, "
                          f"model.position_embedding={model.get('position_embedding')}")
    model_type = "qwen2" if model.get("qkv_bias") else "llama"
    if base and base.get("model_type") in FAMILIES and (base["model_type"] == "qwen2") == bool(model.get("qkv_bias")):
        model_type = base["model_type"]
    kept = {k: v for k, v in (base or {}).items()
            if base.get("model_type") == model_type and k not in ("architectures", "model_type", "torch_dtype",
                                                                     "transformers_version", "auto_map")}
    heads = model["num_attention_heads"]
    fields = dict(kept) | dict(
        architectures=[FAMILIES[model_type]],
        hidden_size=model["hidden_size"],
        num_hidden_layers=model["num_layers"],
        num_attention_heads=heads,
        num_key_value_heads=model["num_query_groups"],
        head_dim=model["hidden_size"] // heads,
        intermediate_size=model["ffn_hidden_size"],
        max_position_embeddings=max(model["seq_length"], int(kept.get("max_position_embeddings", 0))),
        rms_norm_eps=model["norm_epsilon"],
        rope_theta=model["rotary_base"],
        rope_scaling=model.get("rope_scaling"),
        tie_word_embeddings=bool(model["tie_embeddings"]),
        vocab_size=vocab_size,
        hidden_act="silu",
        torch_dtype="float32",
    )
    if model_type == "llama":
        fields |= dict(attention_bias=False, mlp_bias=False)
    if model_type == "qwen2":
        fields |= dict(use_sliding_window=False)
    if model_type == "mistral":
        fields |= dict(sliding_window=None)
    return model_type, fields


def apply_init_model(cfg) -> None:
    """A run started from another model takes that model's architecture: init_from=hf:DIR (DIR's
    config.json) or a checkpoint written by `hetron import-hf` (the fields it recorded). Architecture
    fields the user set explicitly must agree with it (model.seq_length may shorten the context);
    with no data.tokenizer, the model's tokenizer is the run's. Other init_from checkpoints were
    trained by hetron with the run's own model section: nothing changes."""
    if cfg.init_from.startswith("hf:"):
        folder = Path(cfg.init_from[3:])
        where = f"init_from={cfg.init_from}: config.json"
        config = read_hf_config(folder)
        fields = hetron_model_fields(config, where)
    else:
        folder = Path(cfg.init_from) / "hf"  # pretrain.hf.importer.HF_FILES_DIR
        where = f"init_from={cfg.init_from}"
        try:
            state = json.loads((Path(cfg.init_from) / "hetron_state.json").read_text())
        except (OSError, json.JSONDecodeError):
            return  # not a checkpoint folder (a run folder), or unreadable: the trainer reports it
        if not state.get("weights_only") or not isinstance(state.get("model"), dict):
            return
        config = read_hf_config(folder) if (folder / "config.json").is_file() else {}
        fields = {k: v for k, v in state["model"].items() if k in HF_MODEL_FIELDS}
    for name in ARCHITECTURE_FIELDS:
        explicit = getattr(cfg.model, name)
        if explicit is not None and explicit != fields[name]:
            raise ConfigError(f"model.{name}={explicit} disagrees with {where} ({fields[name]}); leave it out")
    if cfg.model.seq_length is not None:
        fields["seq_length"] = cfg.model.seq_length
    check_sliding_window(config, fields["seq_length"], where)
    for name, value in fields.items():
        setattr(cfg.model, name, value)
    if (folder / "tokenizer.json").is_file():
        if cfg.data.tokenizer and not same_tokenizer(cfg.data.tokenizer, folder):
            raise ConfigError(f"data.tokenizer={cfg.data.tokenizer} is not the tokenizer of init_from={cfg.init_from} "
                              f"({folder}); leave data.tokenizer empty to use the model's")
        cfg.data.tokenizer = cfg.data.tokenizer or str(folder)


def same_tokenizer(a, b) -> bool:
    """Same vocabulary and merges (data.tokenizer's fingerprint), read without torch."""
    from data.tokenizer import load_tokenizer, tokenizer_fingerprint

    return tokenizer_fingerprint(load_tokenizer(a)) == tokenizer_fingerprint(load_tokenizer(b))
