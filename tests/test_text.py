"""collapsekit.data.text: the embedded corpus, byte tokens, the fixed window split, the user's own text."""
import json

import pytest
import torch

from collapsekit import data
from collapsekit.data import text
from collapsekit.errors import CollapsekitError


@pytest.fixture(scope="module")
def corpus():
    return data.load("text")


def test_embedded_corpus_is_the_python_docs_cut_into_shifted_windows(corpus):
    x_train, y_train = corpus.train.tensors
    x_test, y_test = corpus.test.tensors
    assert corpus.task == "causal_lm" and (corpus.vocab_size, corpus.context_length) == (256, 128)
    assert x_train.dtype == y_train.dtype == torch.int64 and x_train.shape[1] == 128
    n = len(x_train) + len(x_test)
    ids = torch.tensor(list(text.embedded_corpus().encode("utf-8")))
    assert n == (len(ids) - 1) // 128 and len(x_test) == n // 10  # window i is test iff i % 10 == 9
    # Targets are the inputs shifted by one; test window j is window 10 j + 9 of the stream.
    assert torch.equal(x_train[:, 1:], y_train[:, :-1]) and torch.equal(x_test[:, 1:], y_test[:, :-1])
    assert torch.equal(x_train[0], ids[:128]) and torch.equal(y_train[0], ids[1:129])
    assert torch.equal(x_test[0], ids[9 * 128:10 * 128]) and torch.equal(x_train[9], ids[10 * 128:11 * 128])
    assert corpus.example_input().shape == (1, 128) and corpus.example_input().dtype == torch.int64
    assert "Customizing attribute access" in corpus.tokenizer.decode(ids[:200_000].tolist())
    assert corpus.to_dict()["source_sha256"] == corpus.source_sha256 and len(corpus.source_sha256) == 64


def test_split_is_deterministic_whatever_the_seed(corpus):
    again = data.load("text", seed=7)
    assert again.source_sha256 == corpus.source_sha256
    for a, b in zip(corpus.train.tensors + corpus.test.tensors, again.train.tensors + again.test.tensors):
        assert torch.equal(a, b)


def test_context_length_follows_input_size():
    b = data.load("text", input_size=32)
    assert b.train.tensors[0].shape[1] == 32 and b.context_length == 32 and b.model_kwargs() == {
        "vocab_size": 256, "context_length": 32}
    assert data.native_shape("text") == data.native_shape("text:/any/file.txt") == (256, 1, 128)
    assert data.is_text("text") and data.is_text("text:a.txt") and not data.is_text("digits")
    with pytest.raises(CollapsekitError, match="1 channel"):
        data.load("text", channels=3)


def test_byte_tokenizer_round_trips_any_text():
    tok = text.ByteTokenizer()
    s = "Global MP prunes — naïvely? ∑ λ 🙂 \n\ttabs"
    ids = tok.encode(s)
    assert all(0 <= i < 256 for i in ids) and len(ids) == len(s.encode("utf-8"))
    assert tok.decode(ids) == s
    assert tok.decode(tok.encode("é")[:1]) == "\ufffd"  # a cut inside a character never raises


def test_users_txt_file(tmp_path):
    body = "".join(f"line {i}: the quick brown fox.\n" for i in range(200))
    (tmp_path / "mine.txt").write_text(body)
    b = data.load(f"text:{tmp_path / 'mine.txt'}", input_size=16)
    assert b.name == f"text:{tmp_path / 'mine.txt'}" and b.task == "causal_lm"
    n = (len(body.encode()) - 1) // 16
    assert len(b.train) + len(b.test) == n and len(b.test) == n // 10
    assert b.tokenizer.decode(b.train.tensors[0][0].tolist()) == body[:16]


def test_users_jsonl_file_takes_each_lines_text(tmp_path):
    rows = [{"id": i, "text": f"document {i} says hello."} for i in range(100)]
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    b = data.load(f"text:{path}", input_size=8)
    stream = "\n\n".join(r["text"] for r in rows)
    assert b.tokenizer.decode(b.train.tensors[0][0].tolist()) == stream[:8]
    assert b.source_sha256 == text.text_bundle(stream, "x", 8).source_sha256


@pytest.mark.parametrize("content, name, match", [
    (None, "missing.txt", "not found"),
    ("{not json\n", "bad.jsonl", "bad.jsonl:1: not JSON"),
    ('{"n": 1}\n', "nostr.jsonl", 'needs a "text" string'),
    ("short", "short.txt", "too short"),
    ("x" * 100, "data.csv", "must be a .txt or .jsonl"),
])
def test_bad_user_text_gives_one_line_errors(tmp_path, content, name, match):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(CollapsekitError, match=match) as info:
        data.load(f"text:{path}")
    assert "\n" not in str(info.value)


def test_a_datasets_folder_needs_datasets(tmp_path):
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(CollapsekitError, match="needs the `datasets` package"):
            data.load(f"text:{tmp_path}")
    else:
        datasets.Dataset.from_dict({"text": ["a b c " * 50] * 20}).save_to_disk(str(tmp_path / "ds"))
        b = data.load(f"text:{tmp_path / 'ds'}", input_size=16)
        assert b.tokenizer.decode(b.train.tensors[0][0].tolist()) == ("a b c " * 50)[:16]
