"""Run-state files of a fine-tuning run: the per-epoch checkpoint (weights, masks, optimizer, RNG) and the metrics log.

`checkpoint.safetensors` holds weights, masks, optimizer state and RNG states
as tensors, and the run's JSON document (epoch, config, history, optimizer
hyper-parameters) in the header; `metrics.jsonl` one line per finished epoch.
Both are written with `atomic_write`, so a kill leaves the last complete epoch.
No pickles anywhere (Invariant 6).
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import save_file

from collapsekit.errors import CollapsekitError
from collapsekit.files.atomic import atomic_write, atomic_write_text
from collapsekit.files.safefile import read_tagged, separate_storages

STATE_FILE = "checkpoint.safetensors"
METRICS_FILE = "metrics.jsonl"
FORMAT = "collapsekit-finetune"
VERSION = 1


@dataclass(frozen=True)
class RunState:
    """A fine-tuning checkpoint as read back: its JSON document and its tensors by name."""

    doc: dict
    tensors: dict

    @property
    def epoch(self) -> int:
        """Epochs complete when it was written."""
        return int(self.doc["epoch"])

    def masks(self, device="cpu") -> dict[str, torch.Tensor]:
        """The run's masks (name -> bool keep-mask) on `device`."""
        return {n: self.tensors[f"mask/{n}"].to(device) for n in self.doc["mask_names"]}

    def optimizer_state(self, device="cpu") -> dict | None:
        """The optimizer's `state_dict()` as saved (tensors on `device`), None when none was saved."""
        saved = self.doc["optimizer"]
        if saved is None:
            return None
        state: dict = {"state": {}, "param_groups": saved["param_groups"]}
        for key, value in self.tensors.items():
            if key.startswith("optim/"):
                _, idx, name = key.split("/", 2)
                state["state"].setdefault(int(idx), {})[name] = value.to(device)
        for idx, scalars in saved["scalars"].items():
            state["state"].setdefault(int(idx), {}).update(scalars)
        return state

    def load_weights(self, model: nn.Module, path) -> None:
        """Load the saved weights into `model` (shared tensors restored); CollapsekitError when they do not fit."""
        weights = {k[len("model/"):]: v for k, v in self.tensors.items() if k.startswith("model/")}
        for name, source in self.doc["aliases"].items():
            weights[name] = weights[source]
        try:
            model.load_state_dict(weights, strict=True)
        except RuntimeError as exc:
            raise CollapsekitError(f"{path} does not fit the model: {str(exc).splitlines()[0]}") from None

    def restore_rng(self) -> None:
        """Set python's, numpy's and torch's (CPU and, when the devices match, CUDA) RNG states as saved."""
        torch.set_rng_state(self.tensors["rng/torch"])
        cuda = [self.tensors[k] for k in sorted((k for k in self.tensors if k.startswith("rng/cuda/")),
                                                key=lambda k: int(k.rsplit("/", 1)[1]))]
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        name, keys, pos, has_gauss, cached = self.doc["rng"]["numpy"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
        version, internal, gauss = self.doc["rng"]["python"]
        random.setstate((version, tuple(internal), gauss))


def write_state(path, model: nn.Module, masks: dict[str, torch.Tensor], optimizer_state: dict | None,
                document: dict) -> Path:
    """Returns `path` after writing the checkpoint: `model`'s weights, `masks`, the optimizer state, RNG states.

    `document` (epoch, config, history, ...) goes to the header as JSON beside
    what reading needs back (aliases of shared weights, mask names, RNG).
    """
    tensors: dict[str, torch.Tensor] = {}
    aliases = _add_state_dict(tensors, "model/", model.state_dict())
    for name, keep in masks.items():
        tensors[f"mask/{name}"] = keep.detach().cpu().contiguous()
    optim_json = None
    if optimizer_state is not None:
        optim_json = {"param_groups": optimizer_state["param_groups"], "scalars": {}}
        for idx, st in optimizer_state["state"].items():
            for key, value in st.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim/{idx}/{key}"] = value.detach().cpu().contiguous()
                else:
                    optim_json["scalars"].setdefault(str(idx), {})[key] = value
    rng = _rng_state()
    tensors["rng/torch"] = rng.pop("torch")
    for i, t in enumerate(rng.pop("cuda")):
        tensors[f"rng/cuda/{i}"] = t
    doc = {"version": VERSION, **document, "aliases": aliases, "optimizer": optim_json, "mask_names": list(masks),
           "rng": rng}
    return _save_tensors(tensors, path, {"format": FORMAT, "state": json.dumps(doc)})


def read_state(path) -> RunState:
    """The RunState of a fine-tuning checkpoint (no pickle is read)."""
    meta, tensors = read_tagged(path, FORMAT, "fine-tuning checkpoint", json_keys=("state",))
    doc = meta["state"]
    if doc.get("version") != VERSION:
        raise CollapsekitError(f"{path} has checkpoint version {doc.get('version')}, this collapsekit reads {VERSION}")
    return RunState(doc=doc, tensors=tensors)


def write_metrics(out, history: list[dict]) -> Path:
    """Returns the path of `out`'s metrics.jsonl after (re)writing it with one line per epoch of `history`."""
    return atomic_write_text(Path(out) / METRICS_FILE, "".join(json.dumps(m) + "\n" for m in history))


def read_metrics(out) -> list[dict]:
    """The per-epoch metrics of the run in `out` (metrics.jsonl), in order."""
    path = Path(out) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def fingerprint(model: nn.Module) -> str:
    """sha256 of the model's state_dict (names and bytes): resume refuses a run started from another model."""
    digest = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(t.dtype).encode())
        digest.update(_bytes(t))
    return digest.hexdigest()


def masks_fingerprint(masks: dict) -> str | None:
    """sha256 of `masks` (names and bits), None without masks: resume refuses a run started with other masks."""
    if not masks:
        return None
    digest = hashlib.sha256()
    for name in sorted(masks):
        digest.update(name.encode())
        digest.update(_bytes(masks[name].to(torch.bool)))
    return digest.hexdigest()


def _bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _add_state_dict(tensors: dict, prefix: str, state: dict) -> dict[str, str]:
    """Add `state` under `prefix`, each shared storage once; returns {alias name: stored name}."""
    seen: dict = {}
    aliases = {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)) if t.numel() else None
        if key is not None and key in seen:
            aliases[name] = seen[key]
            continue
        if key is not None:
            seen[key] = name
        tensors[prefix + name] = t.detach().cpu().contiguous()
    return aliases


def _save_tensors(tensors: dict, path, metadata: dict) -> Path:
    # A CPU model's tied weights are deduplicated above; views of one buffer are not.
    tensors = separate_storages(tensors)
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def _rng_state() -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
            "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": [py_state[0], list(py_state[1]), py_state[2]]}


__all__ = ["RunState", "write_state", "read_state", "write_metrics", "read_metrics", "fingerprint",
           "masks_fingerprint", "STATE_FILE", "METRICS_FILE", "FORMAT", "VERSION"]
