"""Hugging Face models built from small configs (random weights, nothing downloaded) for the docs' examples."""
import torch


def tiny_vit():
    """A 2-layer ViT classifier for 32x32 images (patches of 8: 16 tokens and a cls token)."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)  # the same weights every call, so the docs' output repeats
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, num_labels=5)
    return ViTForImageClassification(config)


def tiny_t5():
    """A 2+2-layer T5 encoder-decoder over a 64-token vocabulary."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(vocab_size=64, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_decoder_layers=2,
                      num_heads=2, use_cache=False)
    return T5ForConditionalGeneration(config)


def tiny_llama():
    """A 2-layer Llama causal LM over a 97-token vocabulary: a stand-in for a real checkpoint's factory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=97, max_position_embeddings=64, use_cache=False)
    return LlamaForCausalLM(config)


if __name__ == "__main__":  # python docs/examples/hf_models.py FACTORY DIR: save it as a sharded HF checkpoint
    import sys

    globals()[sys.argv[1]]().save_pretrained(sys.argv[2], max_shard_size="50KB")
