"""A causal LM that is not in the zoo, as a user brings one (`--model heldout_lm:gpt2_tiny`): GPT-2, untied head."""


def gpt2_tiny(vocab_size: int, context_length: int):
    """A 2-layer GPT-2 (learned positions, GELU MLPs, LayerNorm) sized for the text bundle it is given.

    Its head is untied from the token embedding, so Global MP can empty it and collapse the network.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=vocab_size, n_positions=context_length, n_embd=64, n_layer=2, n_head=4,
                        tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, use_cache=False)
    config._attn_implementation = "eager"
    return GPT2LMHeadModel(config)


def opt_tiny(vocab_size: int, context_length: int):
    """A 2-layer OPT whose token embedding (tied to the head) is narrower than its blocks.

    `project_in` and `project_out` (64 <-> 32) lie on every path, as in OPT-350m.
    """
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, ffn_dim=256, num_attention_heads=4,
                       max_position_embeddings=context_length, word_embed_proj_dim=32, dropout=0.0,
                       attention_dropout=0.0, activation_dropout=0.0, pad_token_id=0, bos_token_id=0, eos_token_id=0,
                       use_cache=False)
    config._attn_implementation = "eager"
    return OPTForCausalLM(config)
