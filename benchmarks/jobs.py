"""Benchmark jobs, each run in a fresh process by _measure.in_subprocess; prints one JSON line."""
from __future__ import annotations

import json
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _measure import forked_children_measured, measure  # noqa: E402

import collapsekit as ck  # noqa: E402
import collapsekit.analysis.analysis  # noqa: E402,F401  (imports stay outside the measured region)
from collapsekit.analysis.prunable import find_prunable  # noqa: E402

# LLaMA-style decoders from a `transformers` config (random weights): name -> (config, tokens).
LLAMAS = {
    "llama_374m": dict(hidden_size=1024, num_hidden_layers=24, intermediate_size=2816, vocab_size=32000,
                       num_attention_heads=16, num_key_value_heads=16),
    "llama_1b": dict(hidden_size=2048, num_hidden_layers=22, intermediate_size=5632, vocab_size=32000,
                     num_attention_heads=32, num_key_value_heads=4),
    "llama_tiny": dict(hidden_size=64, num_hidden_layers=2, intermediate_size=176, vocab_size=500,
                       num_attention_heads=4, num_key_value_heads=4),
}
TOKENS = 16  # LLaMA-style decoders
WIDE_TOKENS = 128  # GPT-2 / BERT: issue 23's bar states 128 tokens

# Other third-party architectures at their published base sizes (random weights, from configs):
# name -> (transformers class, config class, config kwargs, input kind).
WIDE = {
    "gpt2_124m": ("GPT2LMHeadModel", "GPT2Config", dict(), "tokens"),
    "bert_110m": ("BertModel", "BertConfig", dict(), "tokens"),
    "vit_86m": ("ViTModel", "ViTConfig", dict(), "image224"),
}


def llama_config(name: str):
    from transformers import LlamaConfig

    return LlamaConfig(**LLAMAS[name], max_position_embeddings=2048, use_cache=False, tie_word_embeddings=False)


def _model(name: str, input_size: int):
    """(model, example input, prunable weights, prunable float32 bytes), after one forward pass."""
    torch.manual_seed(0)
    if name in LLAMAS:
        from transformers import LlamaForCausalLM

        model = LlamaForCausalLM(llama_config(name)).eval()
        x = torch.randint(0, LLAMAS[name]["vocab_size"], (1, TOKENS))
    elif name in WIDE:
        import transformers

        cls, config_cls, kwargs, kind = WIDE[name]
        config = getattr(transformers, config_cls)(**kwargs)
        model = getattr(transformers, cls)(config).eval()
        x = torch.randint(0, config.vocab_size, (1, WIDE_TOKENS)) if kind == "tokens" else torch.randn(1, 3, 224, 224)
    else:
        model = ck.models.create(name, num_classes=10, in_channels=3, input_size=input_size).eval()
        x = torch.randn(1, 3, input_size, input_size)
    with torch.no_grad():  # warm-up: one forward pass, as any model that was used has had
        model(x)
    weights = find_prunable(model)
    return model, x, weights, sum(w.numel for w in weights) * 4


def _warm_up(fn) -> None:
    """One call on a tiny model first: library start-up (lazy imports, op registrations) is not the call's cost."""
    torch.manual_seed(1)
    fn(ck.models.create("lenet5", num_classes=10, in_channels=3, input_size=8))


def report(model: str, input_size: int = 32, sparsities=None, cold: bool = False) -> dict:
    """The default report's time and memory; `cold`: it is the process's first analysis (it pays torch's
    and collapsekit's lazy imports and first-call costs, as every CLI call does), else a tiny one runs first."""
    if not cold:
        _warm_up(lambda m: ck.analyze(m, torch.randn(1, 3, 8, 8), sparsities=[0.5, 0.99]))
    net, x, _, prunable_bytes = _model(model, input_size)
    holder = {}

    def run():
        an = holder["an"] = ck.Analysis(net, x)
        holder["r"] = an.report(sparsities)

    with forked_children_measured() as children:
        stats = measure(run)
    r = holder["r"]
    return {**stats, "forked_children_mib": list(children), "prunable_mib": prunable_bytes / 2**20,
            "levels": len(r.levels),
            "collapse_sparsity": r.collapse_sparsity, "timings": holder["an"].timings.to_dict(),
            "trace_method": r.trace_method, "channel_level": holder["an"].channel_level,
            "threads": torch.get_num_threads()}


def torch_global(model: str, input_size: int = 32, sparsity: float = 0.9, cold: bool = False) -> dict:
    import torch.nn.utils.prune as tprune

    def params_of(net, weights):
        return [(net.get_submodule(w.module), w.name.rsplit(".", 1)[1]) for w in weights]

    if not cold:
        _warm_up(lambda m: tprune.global_unstructured(params_of(m, find_prunable(m)),
                                                      pruning_method=tprune.L1Unstructured, amount=sparsity))
    net, _, weights, prunable_bytes = _model(model, input_size)
    params = params_of(net, weights)
    stats = measure(lambda: tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured,
                                                       amount=sparsity))
    return {**stats, "prunable_mib": prunable_bytes / 2**20}


def ck_prune(model: str, input_size: int = 32, sparsity: float = 0.9) -> dict:
    _warm_up(lambda m: ck.prune(m, sparsity=sparsity))
    net, _, _, prunable_bytes = _model(model, input_size)
    holder = {}
    stats = measure(lambda: holder.setdefault("r", ck.prune(net, sparsity=sparsity)))
    return {**stats, "prunable_mib": prunable_bytes / 2**20, "pruned": holder["r"].pruned}


def stream_report(model: str, checkpoint: str) -> dict:
    """The default report of LLAMAS[model] built on the meta device, its weights streamed from `checkpoint`."""
    from transformers import LlamaForCausalLM

    from collapsekit.files.stream import Checkpoint

    with torch.device("meta"):
        net = LlamaForCausalLM(llama_config(model)).eval()
    x = torch.randint(0, LLAMAS[model]["vocab_size"], (1, TOKENS))
    holder = {}

    def run():
        an = holder["an"] = ck.Analysis(net, x, checkpoint=checkpoint)
        holder["r"] = an.report()

    with forked_children_measured() as children:
        stats = measure(run)
    r = holder["r"]
    return {**stats, "forked_children_mib": list(children),
            "checkpoint_mib": Checkpoint(checkpoint).nbytes() / 2**20, "total": r.total,
            "collapse_sparsity": r.collapse_sparsity, "timings": holder["an"].timings.to_dict(),
            "trace_method": r.trace_method}


JOBS = {"report": report, "torch_global": torch_global, "ck_prune": ck_prune, "stream_report": stream_report}

if __name__ == "__main__":
    if "BENCH_THREADS" in __import__("os").environ:  # default: torch's own count, as users run
        torch.set_num_threads(int(__import__("os").environ["BENCH_THREADS"]))
    name, kwargs = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps(JOBS[name](**kwargs)))
