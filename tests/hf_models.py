"""Tiny random Hugging Face models made locally from configs (no hub), with a real fast tokenizer.

Each family differs where the conversion can go wrong: Llama with GQA and Llama-3 rope_scaling,
Mistral with GQA, Qwen2 with QKV bias and tied embeddings. Norm weights and biases are random too,
so a misplaced one shows in the logits.
"""
from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import torch

VOCAB = 300  # the model's rows; the tokenizer has fewer (as Qwen2's real vocabularies do)
SHAPE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=5000.0)
LLAMA3_SCALING = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                      original_max_position_embeddings=64)


def sample_text() -> str:
    return (Path(sysconfig.get_paths()["stdlib"]) / "json" / "decoder.py").read_text()


def save_tokenizer(folder: Path, bos: str | None, eos: str) -> None:
    """A byte-level BPE of ~280 tokens trained here, saved as transformers saves a fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [s for s in (bos, eos) if s]
    tok.train_from_iterator([sample_text()], trainers.BpeTrainer(
        vocab_size=280, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    if bos:  # Llama's convention: the tokenizer itself puts BOS first
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos)
    fast.save_pretrained(str(folder))


def make_model(family: str, folder: Path, seed: int = 0) -> Path:
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    torch.manual_seed(seed)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**SHAPE, rope_scaling=LLAMA3_SCALING, bos_token_id=0, eos_token_id=1))
        bos, eos = "<s>", "</s>"
    elif family == "mistral":  # an eps far from megatron's default 1e-5, so a lost rms_norm_eps shows
        model = MistralForCausalLM(MistralConfig(**(SHAPE | {"rms_norm_eps": 0.05}), sliding_window=None,
                                                 bos_token_id=0, eos_token_id=1))
        bos, eos = "<s>", "</s>"
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**SHAPE, tie_word_embeddings=True, bos_token_id=None, eos_token_id=0))
        bos, eos = None, "<|endoftext|>"
    else:
        raise ValueError(family)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(1.0, 0.3)
            elif name.endswith("bias"):
                param.normal_(0.0, 0.3)
    model.save_pretrained(str(folder))
    save_tokenizer(folder, bos, eos)
    return folder


def rewrite_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


if __name__ == "__main__":  # python -m tests.hf_models FAMILY DIR
    import sys

    make_model(sys.argv[1], Path(sys.argv[2]))
