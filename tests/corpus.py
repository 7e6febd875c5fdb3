"""The corpus: third-party architectures users prune, each built small, from a config, with random weights.

`CORPUS` maps a name to a builder returning `(model, example_inputs)`; the
inputs are a tensor (image models) or a dict of keyword inputs (token models),
exactly what a user passes to `ck.analyze`. Hugging Face models come from
`transformers` configs (no download); the hand-written modules below show one
pattern real code uses that our zoo does not (cls tokens concatenated with
activations, shape assertions, channel shuffle written with `view`, einsum,
gathers, in-place ops, structured outputs, channels-last layouts, weights
transformed inside `forward`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGE = 32  # image side for the vision models
TOKENS = 8  # sequence length for the token models


@dataclass(frozen=True)
class Entry:
    build: Callable[[], tuple[nn.Module, object]]
    slow: bool = False
    family: str = "hand"  # "vision", "text" or "hand"


def _image(channels: int = 3, side: int = IMAGE) -> torch.Tensor:
    return torch.randn(1, channels, side, side)


def _tokens(vocab: int, decoder: bool = False) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = {"input_ids": torch.randint(0, vocab, (1, TOKENS), generator=g)}
    if decoder:
        ids["decoder_input_ids"] = torch.randint(0, vocab, (1, TOKENS), generator=g)
    return ids


def _hf(model_cls: str, config_cls: str, inputs: Callable, **config):
    def build():
        import transformers

        torch.manual_seed(0)
        cfg = getattr(transformers, config_cls)(**config)
        model = getattr(transformers, model_cls)(cfg).eval()
        return model, inputs(cfg)
    return build


_SMALL_VIT = dict(image_size=IMAGE, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, num_labels=5)
_SMALL_TEXT = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=64, max_position_embeddings=32)
_img = lambda cfg: _image()  # noqa: E731
_ids = lambda cfg: _tokens(cfg.vocab_size)  # noqa: E731
_seq2seq = lambda cfg: _tokens(cfg.vocab_size, decoder=True)  # noqa: E731

HF_VISION = {
    "hf_vit": _hf("ViTForImageClassification", "ViTConfig", _img, **_SMALL_VIT),
    "hf_deit": _hf("DeiTForImageClassificationWithTeacher", "DeiTConfig", _img, **_SMALL_VIT),
    "hf_beit": _hf("BeitForImageClassification", "BeitConfig", _img, use_relative_position_bias=True,
                   **_SMALL_VIT),
    "hf_data2vec_vision": _hf("Data2VecVisionForImageClassification", "Data2VecVisionConfig", _img, **_SMALL_VIT),
    "hf_dinov2": _hf("Dinov2ForImageClassification", "Dinov2Config", _img, **{
        k: v for k, v in _SMALL_VIT.items() if k != "intermediate_size"}, mlp_ratio=2),
    "hf_swin": _hf("SwinForImageClassification", "SwinConfig", _img, image_size=IMAGE, patch_size=4, embed_dim=16,
                   depths=[1, 1], num_heads=[2, 2], window_size=4, num_labels=5),
    "hf_swinv2": _hf("Swinv2ForImageClassification", "Swinv2Config", _img, image_size=IMAGE, patch_size=4,
                     embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4, num_labels=5),
    "hf_convnext": _hf("ConvNextForImageClassification", "ConvNextConfig", _img, hidden_sizes=[8, 16],
                       depths=[1, 1], num_stages=2, num_labels=5),
    "hf_convnextv2": _hf("ConvNextV2ForImageClassification", "ConvNextV2Config", _img, hidden_sizes=[8, 16],
                         depths=[1, 1], num_stages=2, num_labels=5),
    "hf_cvt": _hf("CvtForImageClassification", "CvtConfig", _img, embed_dim=[16, 32], num_heads=[1, 2],
                  depth=[1, 2], patch_sizes=[7, 3], patch_stride=[4, 2], patch_padding=[2, 1],
                  mlp_ratio=[2.0, 2.0], attention_drop_rate=[0.0, 0.0], drop_rate=[0.0, 0.0],
                  drop_path_rate=[0.0, 0.0], qkv_bias=[True, True], cls_token=[False, True],
                  qkv_projection_method=["dw_bn", "dw_bn"], kernel_qkv=[3, 3], padding_kv=[1, 1],
                  stride_kv=[2, 2], padding_q=[1, 1], stride_q=[1, 1], num_labels=5),
    "hf_pvt": _hf("PvtForImageClassification", "PvtConfig", _img, image_size=IMAGE, num_encoder_blocks=2,
                  depths=[1, 1], sequence_reduction_ratios=[2, 1], hidden_sizes=[16, 32], patch_sizes=[4, 2],
                  strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], num_labels=5),
    "hf_pvt_v2": _hf("PvtV2ForImageClassification", "PvtV2Config", _img, image_size=IMAGE, num_encoder_blocks=2,
                     depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], patch_sizes=[7, 3], strides=[4, 2],
                     num_attention_heads=[1, 2], mlp_ratios=[2, 2], num_labels=5),
    "hf_mobilevit": _hf("MobileViTForImageClassification", "MobileViTConfig", _img, image_size=IMAGE,
                        hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 32],
                        num_attention_heads=2, num_labels=5),
    "hf_mobilevitv2": _hf("MobileViTV2ForImageClassification", "MobileViTV2Config", lambda cfg: _image(side=64),
                          image_size=64,
                          width_multiplier=0.25, num_labels=5),
    "hf_mobilenet_v1": _hf("MobileNetV1ForImageClassification", "MobileNetV1Config", _img, image_size=IMAGE,
                           depth_multiplier=0.25, num_labels=5),
    "hf_mobilenet_v2": _hf("MobileNetV2ForImageClassification", "MobileNetV2Config", _img, image_size=IMAGE,
                           depth_multiplier=0.25, num_labels=5),
    "hf_efficientnet": _hf("EfficientNetForImageClassification", "EfficientNetConfig", _img, image_size=IMAGE,
                           width_coefficient=0.25, depth_coefficient=0.25, kernel_sizes=[3, 5], in_channels=[32, 16],
                           out_channels=[16, 24], strides=[1, 2], num_block_repeats=[1, 1], expand_ratios=[1, 6],
                           hidden_dim=320, num_labels=5),
    "hf_regnet": _hf("RegNetForImageClassification", "RegNetConfig", _img, embedding_size=8,
                     hidden_sizes=[8, 16], depths=[1, 1], groups_width=8, num_labels=5),
    "hf_resnet": _hf("ResNetForImageClassification", "ResNetConfig", _img, embedding_size=8,
                     hidden_sizes=[8, 16], depths=[1, 1], layer_type="bottleneck", num_labels=5),
    "hf_bit": _hf("BitForImageClassification", "BitConfig", _img, embedding_size=8, hidden_sizes=[8, 16],
                  depths=[1, 1], num_groups=2, num_labels=5),
    "hf_levit": _hf("LevitForImageClassificationWithTeacher", "LevitConfig", _img, image_size=IMAGE,
                    hidden_sizes=[16, 32, 48], num_attention_heads=[1, 2, 3], depths=[1, 1, 1],
                    key_dim=[8, 8, 8], num_labels=5),
    "hf_poolformer": _hf("PoolFormerForImageClassification", "PoolFormerConfig", _img, hidden_sizes=[8, 16],
                         depths=[1, 1], num_encoder_blocks=2, patch_sizes=[7, 3], strides=[4, 2],
                         padding=[2, 1], num_labels=5),
    "hf_segformer": _hf("SegformerForImageClassification", "SegformerConfig", _img, num_encoder_blocks=2,
                        depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], patch_sizes=[7, 3],
                        strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], num_labels=5),
}

HF_TEXT = {
    "hf_bert": _hf("BertForSequenceClassification", "BertConfig", _ids, num_labels=3, **_SMALL_TEXT),
    "hf_roberta": _hf("RobertaForSequenceClassification", "RobertaConfig", _ids, num_labels=3,
                      **{**_SMALL_TEXT, "max_position_embeddings": 40}),
    "hf_albert": _hf("AlbertForSequenceClassification", "AlbertConfig", _ids, embedding_size=16, num_labels=3,
                     **_SMALL_TEXT),
    "hf_distilbert": _hf("DistilBertForSequenceClassification", "DistilBertConfig", _ids, vocab_size=64, dim=32,
                         n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=32, num_labels=3),
    "hf_electra": _hf("ElectraForSequenceClassification", "ElectraConfig", _ids, embedding_size=16,
                      num_labels=3, **_SMALL_TEXT),
    "hf_gpt2": _hf("GPT2LMHeadModel", "GPT2Config", _ids, vocab_size=64, n_embd=32, n_layer=2, n_head=2,
                   n_positions=32, use_cache=False),
    "hf_gpt_neo": _hf("GPTNeoForCausalLM", "GPTNeoConfig", _ids, vocab_size=64, hidden_size=32, num_layers=2,
                      num_heads=2, attention_types=[[["global", "local"], 1]], window_size=4,
                      max_position_embeddings=32, use_cache=False),
    "hf_llama": _hf("LlamaForCausalLM", "LlamaConfig", _ids, num_key_value_heads=1, use_cache=False,
                    **_SMALL_TEXT),
    "hf_mistral": _hf("MistralForCausalLM", "MistralConfig", _ids, num_key_value_heads=1, use_cache=False,
                      sliding_window=4, **_SMALL_TEXT),
    "hf_qwen2": _hf("Qwen2ForCausalLM", "Qwen2Config", _ids, num_key_value_heads=1, use_cache=False,
                    **_SMALL_TEXT),
    "hf_opt": _hf("OPTForCausalLM", "OPTConfig", _ids, vocab_size=64, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=2, ffn_dim=64, max_position_embeddings=32, word_embed_proj_dim=32,
                  use_cache=False),
    "hf_bloom": _hf("BloomForCausalLM", "BloomConfig", _ids, vocab_size=64, hidden_size=32, n_layer=2, n_head=2,
                    use_cache=False),
    "hf_t5": _hf("T5ForConditionalGeneration", "T5Config", _seq2seq, vocab_size=64, d_model=32, d_kv=16,
                 d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2, use_cache=False),
    "hf_bart": _hf("BartForConditionalGeneration", "BartConfig", _seq2seq, vocab_size=64, d_model=32,
                   encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                   encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=32, use_cache=False),
}


def _hf_shrunk(model_cls: str, config_cls: str, inputs: Callable):
    """A model from its default config with every size attribute it has shrunk to _SHRINK's."""
    def build():
        import transformers

        cfg = getattr(transformers, config_cls)()
        for key, value in _SHRINK.items():
            if hasattr(cfg, key):
                setattr(cfg, key, value)
        torch.manual_seed(0)
        return getattr(transformers, model_cls)(cfg).eval(), inputs(cfg)
    return build


_SHRINK = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
               max_position_embeddings=64, num_key_value_heads=2, use_cache=False, embedding_size=32, head_dim=16,
               # BigBird switches itself to full attention (replacing submodules) on short inputs when it runs;
               # configured so, it stays as built (Invariant 7 is about the analysis, not the model's own forward).
               attention_type="original_full")

# Beyond the list: more families (held out while the rules were written, then added).
HF_MORE = {
    "hf_swiftformer": _hf("SwiftFormerForImageClassification", "SwiftFormerConfig", _img, depths=[1, 1, 1, 1],
                          embed_dims=[8, 16, 24, 32], num_labels=5),
    "hf_glpn": _hf("GLPNForDepthEstimation", "GLPNConfig", _img, num_encoder_blocks=2, depths=[1, 1],
                   sr_ratios=[2, 1], hidden_sizes=[8, 16], patch_sizes=[7, 3], strides=[4, 2],
                   num_attention_heads=[1, 2], mlp_ratios=[2, 2], decoder_hidden_size=8),
    "hf_yolos": _hf("YolosForObjectDetection", "YolosConfig", _img, image_size=[IMAGE, IMAGE], patch_size=8,
                    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    num_detection_tokens=4, num_labels=3),
    "hf_mobilebert": _hf_shrunk("MobileBertForSequenceClassification", "MobileBertConfig", _ids),
    "hf_gpt_neox": _hf_shrunk("GPTNeoXForCausalLM", "GPTNeoXConfig", _ids),
    "hf_phi": _hf_shrunk("PhiForCausalLM", "PhiConfig", _ids),
    "hf_gemma": _hf_shrunk("GemmaForCausalLM", "GemmaConfig", _ids),
    "hf_fnet": _hf_shrunk("FNetForSequenceClassification", "FNetConfig", _ids),
    "hf_squeezebert": _hf_shrunk("SqueezeBertForSequenceClassification", "SqueezeBertConfig", _ids),
    "hf_convbert": _hf_shrunk("ConvBertForSequenceClassification", "ConvBertConfig", _ids),
    "hf_bigbird": _hf_shrunk("BigBirdForSequenceClassification", "BigBirdConfig", _ids),
    "hf_pegasus": _hf_shrunk("PegasusForConditionalGeneration", "PegasusConfig", _seq2seq),
}


# -- hand-written patterns -----------------------------------------------------------------
class ClsTokenViT(nn.Module):
    """A cls token and position embedding (parameters) concatenated with / added to patch activations."""

    def __init__(self, dim=16, classes=5):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 8, 8)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 17, dim))
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
        t = t + t.mean(1, keepdim=True)  # token mixing: the cls token hears the patches
        t = t + self.mlp(t)
        return self.head(t[:, 0])


class ShapeAssert(nn.Module):
    """timm-style shape assertions: `torch._assert(H == self.img_size[0])` traced as comparisons."""

    def __init__(self):
        super().__init__()
        self.img_size = (IMAGE, IMAGE)
        self.proj = nn.Conv2d(3, 8, 4, 4)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        B, C, H, W = x.shape
        torch._assert(H == self.img_size[0], "height")
        torch._assert(W == self.img_size[1], "width")
        y = self.proj(x)
        return self.fc(y.flatten(2).mean(-1))


def channel_shuffle(x, groups: int):
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(b, -1, h, w)


class ShuffleBlock(nn.Module):
    """ShuffleNetV2 unit: split, grouped convs, concat, channel shuffle written with view/transpose."""

    def __init__(self, c=8):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.branch = nn.Sequential(nn.Conv2d(c // 2, c // 2, 1), nn.BatchNorm2d(c // 2), nn.ReLU(inplace=True),
                                    nn.Conv2d(c // 2, c // 2, 3, padding=1, groups=c // 2),
                                    nn.BatchNorm2d(c // 2), nn.Conv2d(c // 2, c // 2, 1), nn.ReLU(inplace=True))
        self.fc = nn.Linear(c, 5)

    def forward(self, x):
        x = self.stem(x)
        a, b = x.chunk(2, dim=1)
        x = channel_shuffle(torch.cat((a, self.branch(b)), dim=1), 2)
        return self.fc(x.mean((2, 3)))


class EinsumAttention(nn.Module):
    """Attention written with einsum, masked_fill on a causal mask, and a gathered output token."""

    def __init__(self, dim=16):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 4)
        self.mix = nn.Parameter(torch.randn(dim, dim))  # a bare weight matrix, applied by einsum
        self.register_buffer("causal", torch.triu(torch.ones(6, 6, dtype=torch.bool), 1))

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        scores = torch.einsum("bqd,bkd->bqk", q, k).masked_fill(self.causal, float("-inf"))
        ctx = scores.softmax(-1) @ torch.einsum("bkd,de->bke", v, self.mix)
        last = torch.gather(self.out(ctx), 1, torch.full((x.shape[0], 1, ctx.shape[-1]), 5))
        picked = torch.index_select(ctx, 1, torch.tensor([0, 2]))
        return self.head(last.squeeze(1) + picked.sum(1))


class InPlace(nn.Module):
    """In-place ops on activations: relu_, add_, mul_, and slice assignment."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        y = self.a(x).relu_()
        z = self.b(y)
        z.add_(y).mul_(0.5)
        z[:, 0] = y[:, 1] * 2  # slice assignment: channel 0 now reads channel 1 of `a`
        return self.fc(z.mean((2, 3)))


@dataclass
class _Out:
    logits: torch.Tensor
    features: torch.Tensor


class StructuredOutputs(nn.Module):
    """Returns a dataclass whose field is a dict and a tuple: every output tensor counts."""

    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3, padding=1)
        self.cls = nn.Linear(8, 5)
        self.aux = nn.Linear(8, 2)

    def forward(self, x):
        f = self.body(x).mean((2, 3))
        return {"main": _Out(self.cls(f), f), "aux": (self.aux(f),)}


class ChannelsLast(nn.Sequential):
    """A conv net kept and fed in channels-last memory format."""

    def __init__(self):
        super().__init__(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


class StdConv2d(nn.Conv2d):
    """Weight standardization (BiT): the mean subtracted inside `forward` un-zeroes pruned weights."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class WeightStandardized(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.ws = StdConv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.ws(self.a(x).relu()).relu().mean((2, 3)))


class _Scale(nn.Module):
    """A zero-keeping parametrization: a pruned zero stays zero."""

    def forward(self, w):
        return w * 2.0


class _Shift(nn.Module):
    """A zero-moving parametrization: every weight becomes live."""

    def forward(self, w):
        return w + 0.1


def parametrized():
    from torch.nn.utils import parametrize

    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 5))
    parametrize.register_parametrization(model[0], "weight", _Scale())
    parametrize.register_parametrization(model[2], "weight", _Shift())
    return model


def weight_normed():
    from torch.nn.utils.parametrizations import weight_norm

    # dim=None: one norm per tensor. Per-row norms (dim=0) turn an emptied row into 0/0 = NaN,
    # which no structural analysis can follow.
    return nn.Sequential(weight_norm(nn.Conv2d(3, 8, 3, padding=1), dim=None), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), weight_norm(nn.Linear(8, 5), dim=None))


class RelPosTable(nn.Module):
    """Swin-v2 style continuous position bias: an MLP maps relative coordinates to a table indexed per pair."""

    def __init__(self, dim=16, window=4):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.cpb = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 1, bias=False))
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
        self.register_buffer("rel_table", torch.stack(torch.meshgrid(
            torch.arange(-window + 1, window), torch.arange(-window + 1, window), indexing="ij"), -1).float())
        self.register_buffer("index", ((rel[..., 0] + window - 1) * (2 * window - 1) + rel[..., 1] + window - 1))
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, -1)
        table = self.cpb(self.rel_table).view(-1)
        bias = table[self.index.view(-1)].view(self.index.shape)
        attn = (q @ k.transpose(-2, -1) + bias).softmax(-1)
        return self.head((attn @ v).mean(1))


HAND = {
    "cls_token_vit": Entry(lambda: (ClsTokenViT(), _image())),
    "shape_assert": Entry(lambda: (ShapeAssert(), _image())),
    "channel_shuffle": Entry(lambda: (ShuffleBlock(), _image(side=8))),
    "einsum_gather": Entry(lambda: (EinsumAttention(), torch.randn(1, 6, 16))),
    "in_place": Entry(lambda: (InPlace(), _image(side=8))),
    "structured_outputs": Entry(lambda: (StructuredOutputs(), _image(side=8))),
    "channels_last": Entry(lambda: (ChannelsLast().to(memory_format=torch.channels_last),
                                    _image(side=8).to(memory_format=torch.channels_last))),
    "weight_standardization": Entry(lambda: (WeightStandardized(), _image(side=8))),
    "parametrize": Entry(lambda: (parametrized(), torch.randn(1, 12))),
    "weight_norm": Entry(lambda: (weight_normed(), _image(side=8))),
    "rel_pos_table": Entry(lambda: (RelPosTable(), torch.randn(1, 16, 16))),
}

# Models whose default-21-level analysis takes more than a few seconds here run as slow tests.
_SLOW = {"hf_t5", "hf_bart", "hf_swinv2", "hf_levit", "hf_cvt", "hf_mobilevit", "hf_mobilevitv2",
         "hf_efficientnet", "hf_beit", "hf_data2vec_vision"}

CORPUS: dict[str, Entry] = {
    **{n: Entry(b, n in _SLOW, "vision") for n, b in HF_VISION.items()},
    **{n: Entry(b, n in _SLOW, "text") for n, b in HF_TEXT.items()},
    **{n: Entry(b, True, "vision" if n in ("hf_swiftformer", "hf_glpn", "hf_yolos") else "text")
       for n, b in HF_MORE.items()},
    **HAND,
}


def build(name: str) -> tuple[nn.Module, object]:
    """The corpus model `name` and its example inputs, built deterministically."""
    torch.manual_seed(0)
    return CORPUS[name].build()
