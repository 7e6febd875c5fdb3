"""Datasets as DataBundles: bundled digits, CIFAR-10 and UCI HAR from local files, synthetic clusters, text."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from collapsekit.errors import CollapsekitError
from collapsekit.spec import call_with_accepted, load_callable


@dataclass(frozen=True)
class DataBundle:
    """A train/test split of float32 inputs and int64 labels, with the shape a model needs.

    Images are [N, in_channels, input_size, input_size]; sequences are
    [N, input_size, in_channels] (input_size = steps, in_channels = features).
    A causal-LM bundle (`task="causal_lm"`, `collapsekit.data.text`) holds int64
    token windows [N, input_size] with the next tokens as targets; num_classes is
    its vocabulary size and input_size its context length.
    """

    name: str
    train: TensorDataset
    test: TensorDataset
    num_classes: int
    in_channels: int
    input_size: int
    task: str = "classification"  # a key of collapsekit.data.tasks.TASKS
    tokenizer: object = field(default=None, repr=False, compare=False)  # text: encode/decode
    source_sha256: str | None = None  # text: the SHA-256 of the text it was cut from

    @property
    def vocab_size(self) -> int | None:
        """Tokens a language model must predict (None unless the task is causal_lm)."""
        return self.num_classes if self.task == "causal_lm" else None

    @property
    def context_length(self) -> int | None:
        """Tokens per example of a language model (None unless the task is causal_lm)."""
        return self.input_size if self.task == "causal_lm" else None

    def model_kwargs(self) -> dict:
        """Keywords a model factory may accept beyond the shapes: vocab_size and context_length for text."""
        return {} if self.task == "classification" else {"vocab_size": self.vocab_size,
                                                          "context_length": self.context_length}

    def example_input(self) -> torch.Tensor:
        """A batch holding the first test input: what tracing and analysis need."""
        return self.test.tensors[0][:1].clone()

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, without the batch dimension."""
        return tuple(self.train.tensors[0].shape[1:])

    def to_dict(self) -> dict:
        """Description for metadata and reports (no tensors)."""
        extra = {} if self.task == "classification" else {
            "task": self.task, **self.model_kwargs(), "source_sha256": self.source_sha256,
            "tokenizer": self.tokenizer.to_dict() if hasattr(self.tokenizer, "to_dict") else None}
        return {
            **extra,
            "name": self.name,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "input_size": self.input_size,
            "input_shape": list(self.input_shape),
            "train_size": len(self.train),
            "test_size": len(self.test),
        }


# name -> ("module:function", native (num_classes, in_channels, input_size)).
# Modules are imported on use so loading CIFAR never imports scikit-learn.
_LOADERS: dict[str, tuple[str, tuple[int, int, int]]] = {
    "digits": ("collapsekit.data.digits:load", (10, 1, 8)),
    "cifar10": ("collapsekit.data.cifar10:load", (10, 3, 32)),
    "har": ("collapsekit.data.har:load", (6, 9, 128)),
    "har2": ("collapsekit.data.har:load_har2", (2, 9, 128)),
    "synthetic": ("collapsekit.data.synthetic:load", (10, 1, 8)),
    "synthetic_seq": ("collapsekit.data.synthetic:load_seq", (10, 3, 16)),
    "text": ("collapsekit.data.text:load", (256, 1, 128)),  # byte tokens, context 128
}
TEXT_PREFIX = "text:"  # --data text:PATH, the user's own text


def names() -> list[str]:
    """Sorted names accepted by `load`."""
    return sorted(_LOADERS)


_SEQUENCES = {"har", "har2", "synthetic_seq"}


def is_sequence(name: str) -> bool:
    """True for data sets of [N, steps, features] sequences, False for [N, C, H, W] images."""
    return _check_name(name) in _SEQUENCES


def native_shape(name: str) -> tuple[int, int, int]:
    """(num_classes, in_channels, input_size) of a dataset as stored, without loading it."""
    return _LOADERS["text" if is_text(name) else _check_name(name)][1]


def is_text(name: str | None) -> bool:
    """True for the causal-LM data sets: `text` and `text:PATH`."""
    return bool(name) and (name == "text" or name.startswith(TEXT_PREFIX))


def load(name: str, path=None, input_size: int | None = None, channels: int | None = None,
         seed: int = 0) -> DataBundle:
    """The named dataset as a DataBundle, resized to `input_size` and `channels` where that makes sense.

    `path` is where the files of a downloaded dataset live (cifar10, har, har2);
    `seed` only changes synthetic data: real splits are fixed. A `package.module:loader`
    name calls the user's loader with the keywords it accepts; it must return a DataBundle.
    `text:PATH` is the user's own text (`collapsekit.data.text`).
    """
    if name.startswith(TEXT_PREFIX):  # the text loader, on the user's file
        name, path = "text", name[len(TEXT_PREFIX):]
    if ":" in name and name not in _LOADERS:
        loader = load_callable(name, "data")
        try:
            bundle = call_with_accepted(loader, dict(path=path, input_size=input_size, channels=channels, seed=seed))
        except CollapsekitError:
            raise
        except Exception as exc:  # the user's loader failed: say so in one line
            raise CollapsekitError(f"data loader {name!r} failed: {type(exc).__name__}: {exc}") from None
        if not isinstance(bundle, DataBundle):
            raise CollapsekitError(f"data loader {name!r} returned {type(bundle).__name__}, not a "
                                   "collapsekit.data.DataBundle")
        return bundle
    target, _ = _LOADERS[_check_name(name)]
    module_name, _, attr = target.partition(":")
    loader = getattr(importlib.import_module(module_name), attr)
    return loader(path=Path(path).expanduser() if path is not None else None,
                  input_size=input_size, channels=channels, seed=seed)


def _check_name(name: str) -> str:
    if name not in _LOADERS:
        raise CollapsekitError(f"unknown data set {name!r}; known: {', '.join(names())}")
    return name


def fit_images(x: torch.Tensor, name: str, input_size: int | None, channels: int | None) -> torch.Tensor:
    """Images [N, C, H, W] resized (bilinear) to input_size and with C changed to `channels`.

    A gray image is repeated to 3 channels; a colour one is averaged to 1.
    """
    c = x.shape[1]
    if channels is not None and channels != c:
        if c == 1:
            x = x.repeat(1, channels, 1, 1)
        elif channels == 1:
            x = x.mean(dim=1, keepdim=True)
        else:
            raise CollapsekitError(f"{name}: cannot turn {c} channels into {channels} (use 1 or {c})")
    if input_size is not None and input_size != x.shape[-1]:
        if input_size < 1:
            raise CollapsekitError(f"{name}: input size must be positive, got {input_size}")
        # In chunks: one interpolate over all of CIFAR-10 at 64x64 would need several GB at once.
        x = torch.cat([F.interpolate(chunk, size=(input_size, input_size), mode="bilinear",
                                     align_corners=False) for chunk in x.split(4096)])
    return x.contiguous()


def check_sequence_shape(name: str, steps: int, features: int, input_size: int | None,
                         channels: int | None) -> None:
    """Raise unless the requested input_size/channels match a sequence data set's steps/features."""
    if input_size is not None and input_size != steps:
        raise CollapsekitError(f"{name}: sequences have {steps} steps; input size {input_size} is not supported")
    if channels is not None and channels != features:
        raise CollapsekitError(f"{name}: sequences have {features} features; {channels} channels is not supported")


def bundle(name: str, x_train, y_train, x_test, y_test, num_classes: int, in_channels: int,
           input_size: int) -> DataBundle:
    """A DataBundle from tensors, cast to float32 inputs and int64 labels."""
    return DataBundle(
        name=name,
        train=TensorDataset(torch.as_tensor(x_train, dtype=torch.float32), torch.as_tensor(y_train, dtype=torch.int64)),
        test=TensorDataset(torch.as_tensor(x_test, dtype=torch.float32), torch.as_tensor(y_test, dtype=torch.int64)),
        num_classes=int(num_classes),
        in_channels=int(in_channels),
        input_size=int(input_size),
    )


__all__ = ["DataBundle", "load", "names", "native_shape", "is_sequence", "is_text"]
