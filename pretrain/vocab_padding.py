"""Padded vocabulary rows out of the softmax, for models whose vocabulary size is fixed by where they
came from (model.vocab_size: an imported Hugging Face model).

megatron pads the embedding and output layer to a multiple of 128 x TP rows (pretrain.architecture.
padded_vocab_size). An imported model's padded rows are zero, so their logits are 0 and would take
part in the cross-entropy: the loss would differ from the source model's by about log(1 + pad/V)
for a flat distribution, and differ between TP sizes (the padding grows with TP). A forward hook on
the output layer sets the padded columns of this rank's logits to -inf: the loss and its gradients
are the unpadded model's, at any TP.
"""
from __future__ import annotations

import torch


def mask_padded_logits(model, vocab_size: int) -> None:
    """Registers the hook on GPTModel.output_layer (the last pipeline stage only has one)."""
    from megatron.core import parallel_state as ps

    padded = model.vocab_size
    if padded == vocab_size or getattr(model, "output_layer", None) is None:
        return
    tp_rank, tp_size = ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()
    local = padded // tp_size
    columns = torch.arange(tp_rank * local, (tp_rank + 1) * local)
    padded_columns = columns >= vocab_size
    if not padded_columns.any():
        return

    def hook(module, inputs, output):
        logits, bias = output
        return logits.masked_fill(padded_columns.to(logits.device), float("-inf")), bias

    model.output_layer.register_forward_hook(hook)
