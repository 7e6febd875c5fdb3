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
