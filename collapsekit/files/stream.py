"""Weights read on demand from a safetensors checkpoint: one file, or a sharded directory with its index.

`ck.analyze(meta_model, example_inputs, checkpoint=path)` analyses a model whose
parameters live on the meta device (no memory) while every weight a question
needs is read, one tensor at a time, in the dtype it is stored in (bf16, fp16 as
stored); `collapsekit.analysis.streamed` pairs these tensors with the model's
prunable weights. This module only reads files. A tensor is a view of its own private (copy-on-write) mapping of the
file's bytes: nothing is copied, a question that reads it a block at a time
brings in only the pages it reads, and the mapping closes when the tensor is
freed. No tensor outlives the question that read it, so the process never holds
the whole checkpoint. (safetensors' `get_tensor` copies a tensor whole while its
mapping is open: twice its bytes at once, and a heap the size of the largest.)
The Hugging Face sharded layout is a directory holding
`model.safetensors.index.json` (its `weight_map` names the shard of every
tensor) or that index file itself.
"""
from __future__ import annotations

import copy
import json
import math
import mmap
import os
from pathlib import Path

import torch
import torch.nn as nn

from collapsekit.errors import CollapsekitError, first_line

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
# and every other dtype safetensors writes that this torch has (fp8 checkpoints, unsigned ints)
_DTYPES.update({name: getattr(torch, attr) for name, attr in (
    ("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"), ("U16", "uint16"), ("U32", "uint32"),
    ("U64", "uint64")) if hasattr(torch, attr)})


class Checkpoint:
    """The tensors of a safetensors checkpoint, by name: shapes from the headers, data read when asked."""

    def __init__(self, path):
        self.path = Path(path)
        self.files: dict[str, Path] = {}  # tensor name -> shard holding it
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, str] = {}
        self.spans: dict[str, tuple[int, int]] = {}  # tensor name -> [begin, end) bytes in its shard
        for shard in _shards(self.path):
            header, data_start = _header(shard)
            for name, entry in header.items():
                self.files[name] = shard
                self.shapes[name] = tuple(entry["shape"])
                self.dtypes[name] = entry["dtype"]
                begin, end = entry["data_offsets"]
                self.spans[name] = (data_start + begin, data_start + end)

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def nbytes(self) -> int:
        """Bytes of tensor data in all shards."""
        return sum(_data_bytes(f) for f in set(self.files.values()))

    def read(self, name: str) -> torch.Tensor:
        """Tensor `name` as stored: a view of a private mapping of its bytes, closed when the tensor is freed.
        Writing into it changes this process's copy only, never the file."""
        shard, (begin, end) = self.files[name], self.spans[name]
        dtype = _DTYPES.get(self.dtypes[name])
        if dtype is None:
            raise CollapsekitError(f"checkpoint shard {shard}: tensor {name} has dtype {self.dtypes[name]}, "
                                   "which collapsekit cannot read")
        try:
            with open(shard, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if size < end:
                    raise ValueError(f"tensor {name} ends at byte {end} of {size}: the file is truncated")
                if end == begin:
                    return torch.empty(self.shapes[name], dtype=dtype)
                start = begin - begin % mmap.ALLOCATIONGRANULARITY
                mapped = mmap.mmap(fh.fileno(), end - start, access=mmap.ACCESS_COPY, offset=start)
            data = torch.frombuffer(memoryview(mapped)[begin - start:], dtype=torch.uint8)
            if begin % dtype.itemsize:
                data = data.clone()  # unaligned for its dtype: an aligned copy
            return data.view(dtype).view(self.shapes[name])
        except Exception as exc:  # noqa: BLE001 - a shard changed or broke since it was opened
            raise _corrupt(shard, exc) from None

    def first_of(self, names) -> str | None:
        """The first of `names` (a weight and its aliases) the checkpoint holds."""
        return next((n for n in names if n in self.files), None)


def materialize(model: nn.Module, checkpoint: Checkpoint) -> nn.Module:
    """A copy of `model` holding real values: every parameter or buffer the checkpoint has, read from it
    (in the model's dtype), the rest the model's own. Questions that run the model on data (the
    trainability forecast) need it; the user's model is not touched.

    Raises CollapsekitError naming the tensors that are on the meta device and not in the file
    (non-persistent buffers such as rotary frequencies): build the model off the meta device then.
    """
    memo, lacking = {}, []
    named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    names: dict[int, list[str]] = {}
    for name, tensor in named:
        names.setdefault(id(tensor), []).append(name)
    for name, tensor in named:
        if id(tensor) in memo:
            continue  # a tied tensor: read once, shared again by the copy
        found = checkpoint.first_of(names[id(tensor)])
        if found is None:
            if tensor.is_meta:
                lacking.append(name)
            continue
        if checkpoint.shapes[found] != tuple(tensor.shape):
            raise CollapsekitError(f"checkpoint {checkpoint.path} does not fit the model: {found}: "
                                   f"{list(checkpoint.shapes[found])} in the file vs {list(tensor.shape)}")
        value = checkpoint.read(found).to(tensor.dtype)
        memo[id(tensor)] = nn.Parameter(value, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else value
    if lacking:
        more = f" and {len(lacking) - 3} more" if len(lacking) > 3 else ""
        raise CollapsekitError(f"running the model on data needs real values of {', '.join(lacking[:3])}{more}, "
                               f"which are on the meta device and not in {checkpoint.path}: build the model off "
                               "the meta device (its own values stand where the checkpoint has none)")
    return copy.deepcopy(model, memo)


def _shards(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint path: a file, an index file, or a directory holding either."""
    if path.is_dir():
        if (path / INDEX_NAME).is_file():
            path = path / INDEX_NAME
        elif (path / SINGLE_NAME).is_file():
            return [path / SINGLE_NAME]
        else:
            raise CollapsekitError(f"checkpoint directory {path} holds neither {INDEX_NAME} nor {SINGLE_NAME}")
    if not path.is_file():
        raise CollapsekitError(f"checkpoint {path} not found")
    if path.name.endswith(".index.json"):
        try:
            weight_map = json.loads(path.read_text())["weight_map"]
            shards = sorted({str(v) for v in weight_map.values()})
        except Exception as exc:  # noqa: BLE001 - not JSON, no weight_map, not a dict
            raise CollapsekitError(f"checkpoint index {path} is corrupt: {first_line(exc, 300)}") from None
        missing = [s for s in shards if not (path.parent / s).is_file()]
        if missing:
            raise CollapsekitError(f"checkpoint shard {path.parent / missing[0]} named in {path.name} not found")
        return [path.parent / s for s in shards]
    return [path]


def _header(shard: Path) -> tuple[dict, int]:
    """({tensor name: {dtype, shape, data_offsets}}, the byte where the data the offsets count from begins)
    of one safetensors file, bounds-checked against its size."""
    try:
        size = shard.stat().st_size
        with open(shard, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if size < 8 or n > min(size - 8, _MAX_HEADER):
                raise ValueError(f"header of {n} bytes in a file of {size}")
            header = json.loads(fh.read(n))
        header.pop("__metadata__", None)
        data = size - 8 - n
        for name, entry in header.items():
            begin, end = entry["data_offsets"]
            if not 0 <= begin <= end <= data:
                raise ValueError(f"tensor {name} ends at byte {end} of {data}: the file is truncated")
            if entry["dtype"] in _DTYPES and (end - begin) != _DTYPES[entry["dtype"]].itemsize * math.prod(
                    entry["shape"]):
                raise ValueError(f"tensor {name} holds {end - begin} bytes, not those of its shape and dtype")
        return header, 8 + n
    except CollapsekitError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated, not safetensors, bad JSON
        raise _corrupt(shard, exc) from None


def _data_bytes(shard: Path) -> int:
    return sum(e["data_offsets"][1] - e["data_offsets"][0] for e in _header(shard)[0].values())


def _corrupt(shard: Path, exc: BaseException) -> CollapsekitError:
    """The one-line error for a shard that cannot be read (truncated, not safetensors, changed since opened)."""
    return CollapsekitError(f"checkpoint shard {shard} is corrupt: {first_line(exc, 300)}")


def is_streamable(path) -> bool:
    """True for a path `Checkpoint` reads: a .safetensors file, an index file, or a directory of them."""
    p = Path(path)
    return p.is_dir() or p.name.endswith(".index.json") or p.suffix == ".safetensors"
