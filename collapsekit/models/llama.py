"""A small LLaMA-style causal LM built with Hugging Face `transformers` (an optional dependency)."""
from __future__ import annotations

import torch.nn as nn

from collapsekit.errors import CollapsekitError
from collapsekit.models.registry import register


@register("llama_tiny", layout="tokens")
def llama_tiny(num_classes: int = 256, in_channels: int = 1, input_size: int = 128, vocab_size: int | None = None,
               context_length: int | None = None, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
               intermediate_size: int | None = None) -> nn.Module:
    """`transformers.LlamaForCausalLM`: RMSNorm, rotary positions, SwiGLU MLPs; hidden 64, 2 layers, 4 heads.

    It returns Hugging Face's output object; `collapsekit.data.tasks.model_logits`
    reads its `.logits` [batch, steps, vocab]. The vocabulary is `vocab_size`
    (the text bundle's, default `num_classes`), positions up to `context_length`
    (default `input_size`); `in_channels` is unused (tokens have no channels).
    """
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:
        raise CollapsekitError("llama_tiny needs the transformers package (pip install 'collapsekit[hf]')") from None
    config = LlamaConfig(vocab_size=vocab_size or num_classes, hidden_size=hidden_size,
                         intermediate_size=intermediate_size or 4 * hidden_size, num_hidden_layers=num_layers,
                         num_attention_heads=num_heads, num_key_value_heads=num_heads,
                         max_position_embeddings=context_length or input_size, tie_word_embeddings=False,
                         use_cache=False)
    config._attn_implementation = "eager"  # traceable by torch.fx, and the same numbers on every machine
    return LlamaForCausalLM(config)
