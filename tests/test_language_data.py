"""Word-level LM data: train-only vocabulary, tokenisation, batchify and truncated-BPTT windows."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_lottery.data.text import (
    EOS,
    UNK,
    BPTTWindows,
    Vocabulary,
    WikiText2DataModule,
    batchify,
    load_corpus,
    read_words,
    unigram_perplexity,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
WIKITEXT2 = SHARED_DATA / "wikitext-2"


def write_corpus(directory: Path, train: str, valid: str, test: str, names: str = "{}.txt") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for split, text in (("train", train), ("valid", valid), ("test", test)):
        (directory / names.format(split)).write_text(text, encoding="utf8")
    return directory


@pytest.fixture
def tiny_root(tmp_path: Path) -> Path:
    # Ids by first occurrence in train: the=0 cat=1 sat=2 <eos>=3 dog=4 <unk>=5.
    write_corpus(tmp_path / "wikitext-2", "the cat sat\n the  dog <unk>\n", "the bird sat\n", "a cat\n\n")
    return tmp_path


def test_vocabulary_from_train_only_with_exact_ids(tiny_root: Path) -> None:
    corpus = load_corpus(tiny_root / "wikitext-2")
    assert corpus.vocabulary.words == ["the", "cat", "sat", EOS, "dog", UNK]
    assert corpus.train.tolist() == [0, 1, 2, 3, 0, 4, 5, 3]
    assert corpus.valid.tolist() == [0, 5, 2, 3]  # "bird" is not in train -> <unk>
    assert corpus.test.tolist() == [5, 1, 3, 3]  # "a" -> <unk>; an empty line is just <eos>
    assert corpus.train.dtype == torch.long
    assert corpus.vocabulary.decode(corpus.valid) == ["the", UNK, "sat", EOS]


def test_unk_added_last_when_train_lacks_it() -> None:
    vocab = Vocabulary.build(["b", "a", "b", EOS])
    assert vocab.words == ["b", "a", EOS, UNK]
    assert vocab.index("zzz") == vocab.unk_index == 3
    assert "a" in vocab and "zzz" not in vocab
    assert vocab.encode(["a", "zzz", "b"]).tolist() == [1, 3, 0]
    with pytest.raises(ValueError, match="unique"):
        Vocabulary(["a", "a"])


def test_read_words_appends_eos_per_line(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    path.write_text(" = Title = \n\n x  y\n", encoding="utf8")
    assert list(read_words(path)) == ["=", "Title", "=", EOS, EOS, "x", "y", EOS]


def test_wiki_tokens_file_names_accepted(tmp_path: Path) -> None:
    write_corpus(tmp_path / "wt", "a b\n", "b\n", "c a\n", names="wiki.{}.tokens")
    dm = WikiText2DataModule(root=tmp_path, folder="wt", batch_size=1, eval_batch_size=1)
    assert dm.vocabulary.words == ["a", "b", EOS, UNK]
    assert dm.corpus.test.tolist() == [3, 0, 2]


def test_missing_files_raise_with_hint(tmp_path: Path) -> None:
    write_corpus(tmp_path / "wikitext-2", "a\n", "a\n", "a\n")
    (tmp_path / "wikitext-2" / "test.txt").unlink()
    dm = WikiText2DataModule(root=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"wikitext-2/\{train,valid,test\}\.txt.*LOTTERY_DATA"):
        dm.setup("fit")
    with pytest.raises(FileNotFoundError):
        WikiText2DataModule(root=tmp_path / "nowhere").vocab_size  # noqa: B018


def test_root_from_environment(tiny_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOTTERY_DATA", str(tiny_root))
    assert WikiText2DataModule().vocab_size == 6


def test_batchify_and_windows_exact() -> None:
    streams = batchify(torch.arange(23), 3)  # 23 % 3 = 2 trailing tokens dropped
    assert streams.tolist() == [list(range(0, 7)), list(range(7, 14)), list(range(14, 21))]
    windows = BPTTWindows(streams, bptt=4)
    assert len(windows) == 2  # 6 predicted positions per stream: 4 + 2
    (x0, y0), (x1, y1) = windows[0], windows[1]
    assert x0.tolist() == [[0, 1, 2, 3], [7, 8, 9, 10], [14, 15, 16, 17]]
    assert y0.tolist() == [[1, 2, 3, 4], [8, 9, 10, 11], [15, 16, 17, 18]]
    assert x1.tolist() == [[4, 5], [11, 12], [18, 19]]
    assert y1.tolist() == [[5, 6], [12, 13], [19, 20]]
    assert windows.num_targets == 18
    with pytest.raises(IndexError):
        windows[2]
    with pytest.raises(ValueError, match="too few"):
        batchify(torch.arange(5), 3)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 300), streams=st.integers(1, 8), bptt=st.integers(1, 40))
def test_windows_tile_each_stream(n: int, streams: int, bptt: int) -> None:
    ids = torch.arange(n)
    if n // streams < 2:
        with pytest.raises(ValueError):
            batchify(ids, streams)
        return
    data = batchify(ids, streams)
    windows = BPTTWindows(data, bptt)
    xs, ys = zip(*(windows[i] for i in range(len(windows))))
    assert all(x.shape == y.shape and x.size(0) == streams and 1 <= x.size(1) <= bptt for x, y in zip(xs, ys))
    assert all(x.size(1) == bptt for x in xs[:-1])
    assert torch.equal(torch.cat(xs, 1), data[:, :-1])
    assert torch.equal(torch.cat(ys, 1), data[:, 1:])
    assert sum(y.numel() for y in ys) == windows.num_targets


def test_datamodule_loaders(tmp_path: Path) -> None:
    words = [f"w{i % 7}" for i in range(200)]
    lines = "\n".join(" ".join(words[i : i + 9]) for i in range(0, 200, 9)) + "\n"
    write_corpus(tmp_path / "wikitext-2", lines, lines, lines[: len(lines) // 2])
    dm = WikiText2DataModule(root=tmp_path, batch_size=4, bptt=5, eval_batch_size=2, shuffle=False)
    dm.setup("fit")
    assert dm.vocab_size == 9  # w0..w6, <eos>, <unk>
    train = list(dm.train_dataloader())
    x, y = train[0]
    assert x.shape == y.shape == (4, 5)
    streams = batchify(dm.corpus.train, 4)
    assert torch.equal(x, streams[:, :5]) and torch.equal(y, streams[:, 1:6])
    assert len(train) == math.ceil((streams.size(1) - 1) / 5)
    valid = dm.val_dataloader()
    assert next(iter(valid))[0].shape == (2, 5)
    assert torch.equal(next(iter(dm.test_dataloader()))[0], batchify(dm.corpus.test, 2)[:, :5])

    dm_shuffled = WikiText2DataModule(root=tmp_path, batch_size=4, bptt=5, eval_test=True)
    torch.manual_seed(0)
    shuffled = list(dm_shuffled.train_dataloader())
    as_set = sorted(tuple(b[0].flatten().tolist()) for b in shuffled)
    assert as_set == sorted(tuple(b[0].flatten().tolist()) for b in train)
    assert [b[0].tolist() for b in shuffled] != [b[0].tolist() for b in train]
    valid, test = dm_shuffled.val_dataloader()
    assert torch.equal(next(iter(valid))[0], batchify(dm.corpus.valid, 10)[:, :5])
    assert torch.equal(next(iter(test))[0], next(iter(dm_shuffled.test_dataloader()))[0])


def test_subset_truncates_every_split_and_the_vocabulary(tiny_root: Path) -> None:
    dm = WikiText2DataModule(root=tiny_root, subset=3, batch_size=1, eval_batch_size=1)
    assert dm.corpus.train.tolist() == [0, 1, 2]
    assert dm.vocabulary.words == ["the", "cat", "sat", UNK]
    assert dm.corpus.valid.tolist() == [0, 3, 2]
    assert dm.corpus.test.tolist() == [3, 1, 3]  # <eos> is not in the truncated vocabulary


def test_unigram_perplexity_small() -> None:
    train = torch.tensor([0, 0, 0, 1])
    assert unigram_perplexity(train, torch.tensor([0, 1]), 2) == pytest.approx(math.exp(-0.5 * math.log(3 / 16)))
    assert unigram_perplexity(train, torch.tensor([2]), 3) == math.inf


@pytest.mark.skipif(not WIKITEXT2.is_dir(), reason=f"WikiText-2 not found at {WIKITEXT2} (shared offline data)")
def test_real_wikitext2_counts_and_unigram_baseline() -> None:
    dm = WikiText2DataModule(root=SHARED_DATA)
    dm.setup("fit")
    corpus = dm.corpus
    assert (corpus.train.numel(), corpus.valid.numel(), corpus.test.numel()) == (2_088_628, 217_646, 245_569)
    # The train-only vocabulary is the usual 33,278 words: valid and test hold no word missing from train.
    assert dm.vocab_size == 33_278
    assert corpus.vocabulary.words[0] == EOS  # the file starts with an empty line
    unk = corpus.vocabulary.unk_index
    for split in ("valid", "test"):
        text = set(read_words(WIKITEXT2 / f"{split}.txt"))
        assert text <= set(corpus.vocabulary.words)
        assert int((corpus.split(split) == unk).sum()) == sum(
            1 for w in read_words(WIKITEXT2 / f"{split}.txt") if w == UNK
        )
    # The floor every recipe must beat: test perplexity under the train unigram distribution.
    assert unigram_perplexity(corpus.train, corpus.test, dm.vocab_size) == pytest.approx(911.705, abs=0.01)
    assert unigram_perplexity(corpus.train, corpus.valid, dm.vocab_size) == pytest.approx(965.086, abs=0.01)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == y.shape == (30, 50)
    assert len(dm.windows("train")) == math.ceil((2_088_628 // 30 - 1) / 50)
