"""Streamed report of a ~1.1 B-parameter LLaMA-style bf16 checkpoint: time and peak memory vs its bytes.

Goal (issue 13, scale): `ck.analyze(meta_model, x, checkpoint=dir)` on a sharded
HF-layout checkpoint (random weights from a `transformers` config, written
shard by shard so the generator never holds the model) takes at most 60 s (issue 23; 120 s in issue 13),
with peak extra memory (the job's VmHWM delta, default allocator) at most 0.5x the
checkpoint's bytes. The checkpoint is deleted at the end.

    python benchmarks/bench_stream.py [--model llama_1b] [--dir /tmp] [--keep]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from _measure import in_subprocess, table, verdict

SHARD_BYTES = 512 * 2**20


def generate(model: str, out: Path) -> int:
    """Writes a random bf16 checkpoint of jobs.LLAMAS[model] to `out` (shards + index); returns its bytes."""
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM

    sys.path.insert(0, str(Path(__file__).parent))
    from jobs import llama_config

    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in LlamaForCausalLM(llama_config(model)).state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    shards, current, size = [], {}, 0

    def flush():
        nonlocal current, size
        if current:
            name = f"model-{len(shards) + 1:05d}.safetensors"
            save_file(current, str(out / name))
            shards.append((name, list(current)))
            current, size = {}, 0

    total = 0
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            t = torch.ones(shape, dtype=torch.bfloat16)
        else:
            t = (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)
        if size + t.numel() * 2 > SHARD_BYTES:
            flush()
        current[name] = t
        size += t.numel() * 2
        total += t.numel() * 2
    flush()
    weight_map = {k: f for f, keys in shards for k in keys}
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": weight_map}))
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama_1b")
    ap.add_argument("--dir", default=None, help="where to write the checkpoint (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the generated checkpoint")
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="ck-stream-", dir=args.dir))
    try:
        print(f"free disk: {shutil.disk_usage(out).free / 2**30:.1f} GiB; writing {args.model} to {out}")
        nbytes = generate(args.model, out)
        r = in_subprocess("stream_report", model=args.model, checkpoint=str(out))
        mib = r["checkpoint_mib"]
        print(f"{args.model}: {r['total'] / 1e9:.2f} B prunable weights; checkpoint {nbytes / 2**30:.2f} GiB bf16; "
              f"trace {r['trace_method']}; collapse sparsity {r['collapse_sparsity']:.6f}")
        child = max(r["forked_children_mib"], default=0.0)  # an upper bound (_measure.forked_children_measured)
        print(table([["", "seconds", "peak extra MiB", "x checkpoint bytes"],
                     ["streamed report", f"{r['seconds']:.1f}", f"{r['peak_extra_mib']:.0f}",
                      f"{r['peak_extra_mib'] / mib:.2f}"],
                     ["its largest forked flow worker (upper bound)", "", f"{child:.0f}", f"{child / mib:.2f}"]]))
        print("report stages:")
        print(table([[name, f"{t['seconds']:.2f} s", f"{t['calls']} calls"] for name, t in r["timings"].items()]))
        print(f"seconds: {verdict(r['seconds'], 60)}")
        print(f"memory ratio report / checkpoint bytes: {verdict(r['peak_extra_mib'] / mib, 0.5)}")
        print(f"(ru_maxrss delta {r['ru_maxrss_extra_mib']:.0f} MiB: it inherits this generating process's "
              f"peak through exec, see _measure.py)")
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
