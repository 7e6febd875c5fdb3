"""Text for causal language models: the embedded Python documentation corpus or the user's own file, byte tokens.

`--data text` is the Python reference manual's topic pages that ship inside
every CPython installation (`pydoc_data.topics`: what `help("for")` prints,
~470,000 characters of English prose with code), so it needs no download; its
exact text follows the Python version, and the bundle records its SHA-256.
`--data text:PATH` reads a `.txt` file, a `.jsonl` file (each line's "text"
field, or its first string value) or a Hugging Face `datasets` folder saved with
`save_to_disk` (only when `datasets` is installed).

The tokenizer is byte-level (UTF-8 bytes, vocabulary 256): built with no
training, deterministic, and it round-trips any text exactly. The token stream
is cut into windows of `context + 1` tokens (stride `context`): inputs are a
window's first `context` tokens, targets its last `context` (the inputs shifted
by one). Window i is a test window iff i % 10 == 9: a fixed, deterministic 10 %
spread over the whole text, whatever the seed.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from collapsekit.data import DataBundle
from collapsekit.errors import CollapsekitError

CONTEXT = 128  # tokens per example (input_size)
TEST_EVERY = 10  # window i is a test window iff i % TEST_EVERY == TEST_EVERY - 1
VOCAB_SIZE = 256


@dataclass(frozen=True)
class ByteTokenizer:
    """UTF-8 bytes as tokens: vocabulary 256, no training, exact round trip."""

    vocab_size: int = VOCAB_SIZE

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`."""
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        """The text of token ids (an incomplete UTF-8 sequence at a cut decodes as U+FFFD)."""
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def to_dict(self) -> dict:
        return {"kind": "bytes", "vocab_size": self.vocab_size}


def embedded_corpus() -> str:
    """The Python reference manual's topic pages (`pydoc_data.topics`), in sorted topic order, blank-line separated."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # a Python built without its documentation data
        raise CollapsekitError("this Python has no pydoc_data.topics (the embedded text corpus); pass your own "
                               "text with --data text:PATH") from None
    return "\n\n".join(topics[key] for key in sorted(topics))


def read_text(path) -> str:
    """The text of a .txt file, a .jsonl file (one document per line) or a `datasets` save_to_disk folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        return _read_datasets_folder(path)
    if not path.is_file():
        raise CollapsekitError(f"text file {path} not found")
    if path.suffix == ".jsonl":
        docs = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                docs.append(_document(line, path, number))
        return "\n\n".join(docs)
    if path.suffix in (".txt", ".md", ".text", ""):
        return path.read_text(encoding="utf-8", errors="replace")
    raise CollapsekitError(f"{path}: text data must be a .txt or .jsonl file or a datasets folder "
                           f"(got {path.suffix})")


def _document(line: str, path: Path, number: int) -> str:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CollapsekitError(f"{path}:{number}: not JSON ({exc.msg})") from None
    if isinstance(row, str):
        return row
    text = row.get("text") if isinstance(row, dict) else None
    if text is None and isinstance(row, dict):
        text = next((v for v in row.values() if isinstance(v, str)), None)
    if not isinstance(text, str):
        raise CollapsekitError(f"{path}:{number}: a JSON line needs a \"text\" string")
    return text


def _read_datasets_folder(path: Path) -> str:
    try:
        import datasets
    except ImportError:
        raise CollapsekitError(f"{path} is a folder: reading a Hugging Face datasets folder needs the `datasets` "
                               "package (pip install datasets), or pass a .txt/.jsonl file") from None
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001 - any failure is the folder's, said in one line
        raise CollapsekitError(f"cannot load datasets folder {path}: {type(exc).__name__}: {exc}") from None
    splits = [loaded[name] for name in sorted(loaded)] if isinstance(loaded, datasets.DatasetDict) else [loaded]
    docs = []
    for split in splits:
        if "text" not in split.column_names:
            raise CollapsekitError(f"{path}: the data set has no 'text' column (columns: {split.column_names})")
        docs.extend(str(t) for t in split["text"])
    return "\n\n".join(docs)


def windows(ids: torch.Tensor, context: int) -> tuple[TensorDataset, TensorDataset]:
    """(train, test) TensorDatasets of (inputs, targets) [N, context] from a token stream (module docstring)."""
    n = (len(ids) - 1) // context
    if n < TEST_EVERY:
        raise CollapsekitError(f"the text has {len(ids)} tokens: too short for {TEST_EVERY} windows of "
                               f"{context} + 1 (lower --input-size or give more text)")
    starts = torch.arange(n) * context
    index = starts[:, None] + torch.arange(context + 1)
    chunks = ids[index]
    test = torch.arange(n) % TEST_EVERY == TEST_EVERY - 1
    x, y = chunks[:, :-1].contiguous(), chunks[:, 1:].contiguous()
    return TensorDataset(x[~test], y[~test]), TensorDataset(x[test], y[test])


def text_bundle(text: str, name: str, context: int = CONTEXT, tokenizer: ByteTokenizer | None = None) -> DataBundle:
    """A causal-LM DataBundle of `text`: num_classes = vocab_size, input_size = context, int64 token windows."""
    if context < 2:
        raise CollapsekitError(f"{name}: the context length must be at least 2 tokens, got {context}")
    tokenizer = tokenizer or ByteTokenizer()
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.int64)
    train, test = windows(ids, context)
    return DataBundle(name=name, train=train, test=test, num_classes=tokenizer.vocab_size, in_channels=1,
                      input_size=context, task="causal_lm", tokenizer=tokenizer,
                      source_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest())


def load(path=None, input_size: int | None = None, channels: int | None = None, seed: int = 0) -> DataBundle:
    """The embedded corpus (or the text at `path`) as a causal-LM bundle of `input_size`-token windows.

    `channels` must be 1 or unset (tokens have no channels); `seed` is unused: the split is fixed.
    """
    if channels not in (None, 1):
        raise CollapsekitError(f"text: token inputs have 1 channel, not {channels}")
    text, name = (embedded_corpus(), "text") if path is None else (read_text(path), f"text:{path}")
    return text_bundle(text, name, context=input_size or CONTEXT)


__all__ = ["ByteTokenizer", "embedded_corpus", "read_text", "windows", "text_bundle", "load", "CONTEXT",
           "VOCAB_SIZE"]
