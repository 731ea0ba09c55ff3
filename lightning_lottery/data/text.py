"""Word-level language-model data (WikiText-2 layout): a train-only vocabulary and truncated-BPTT windows.

The corpus is a folder with ``train``/``valid``/``test`` files of whitespace-separated tokens, one line per
paragraph, named ``<split>.txt`` (pytorch/examples ``word_language_model``) or ``wiki.<split>.tokens`` (the
WikiText release). Tokenisation follows pytorch/examples: ``line.split()`` plus an ``<eos>`` token per line.

Layout of the windows (the standard truncated-BPTT one): each split's token stream is cut into ``batch_size``
contiguous streams (the last ``len % batch_size`` tokens are dropped), and window ``i`` holds columns
``[i*bptt, (i+1)*bptt)`` of every stream as input and the same columns shifted by one as target. Batches are
batch-first, ``(streams, time)``.

Hidden state: models start every window from a zero state (they are not fed the previous window's final
state). Carrying the state across ``training_step`` calls in Lightning is awkward and breaks under DDP, where
a rank does not see consecutive windows. Since no state flows between windows, their order carries no
information, so training windows are shuffled by default (``shuffle=True``); ``shuffle=False`` keeps the
classic in-order schedule. Evaluation windows are always in order. The zero state costs some perplexity
compared with carried-state numbers in the literature (the first tokens of each window see little context).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch import distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lightning_lottery.data.root import CorruptDataError, missing_data_error, resolve_data_root

EOS = "<eos>"
UNK = "<unk>"
SPLITS = ("train", "valid", "test")


def read_words(path: str | os.PathLike[str]) -> Iterator[str]:
    """The tokens of a file: each line's whitespace-separated words followed by ``<eos>``."""
    with open(path, encoding="utf8") as f:
        try:
            for line in f:
                yield from line.split()
                yield EOS
        except UnicodeDecodeError as err:
            raise CorruptDataError(f"{path} is not UTF-8 text ({err})") from err


class Vocabulary:
    """A bijection between words and indices ``0 .. len-1``; unknown words map to ``<unk>``.

    Indices follow first occurrence in the words it was built from (as in pytorch/examples), so the same
    training file always gives the same indices. ``<unk>`` is always present: if the training words lack
    it, it is added last.
    """

    def __init__(self, words: Sequence[str]) -> None:
        self._words = list(words)
        if UNK not in self._words:
            self._words.append(UNK)
        self._index = {word: i for i, word in enumerate(self._words)}
        if len(self._index) != len(self._words):
            raise ValueError("Vocabulary words must be unique")
        self.unk_index = self._index[UNK]

    @classmethod
    def build(cls, words: Iterable[str]) -> Vocabulary:
        """The vocabulary of ``words``, in first-occurrence order."""
        return cls.build_and_encode(words)[0]

    @classmethod
    def build_and_encode(cls, words: Iterable[str]) -> tuple[Vocabulary, Tensor]:
        """Build the vocabulary of ``words`` and encode them, in one pass over the (possibly large) stream."""
        index: dict[str, int] = {}
        ids = [index.setdefault(word, len(index)) for word in words]
        return cls(list(index)), torch.tensor(ids, dtype=torch.long)

    def __len__(self) -> int:
        return len(self._words)

    def __contains__(self, word: object) -> bool:
        return word in self._index

    @property
    def words(self) -> list[str]:
        """All words, in index order."""
        return list(self._words)

    def index(self, word: str) -> int:
        """The index of ``word``, or of ``<unk>`` when it is not in the vocabulary."""
        return self._index.get(word, self.unk_index)

    def word(self, index: int) -> str:
        return self._words[index]

    def encode(self, words: Iterable[str]) -> Tensor:
        """Indices of ``words`` as a LongTensor, unknown words as ``<unk>``."""
        lookup, unk = self._index, self.unk_index
        return torch.tensor([lookup.get(word, unk) for word in words], dtype=torch.long)

    def decode(self, ids: Iterable[int] | Tensor) -> list[str]:
        if isinstance(ids, Tensor):
            ids = ids.flatten().tolist()
        return [self._words[i] for i in ids]


@dataclass(frozen=True)
class Corpus:
    """A tokenised corpus: the train-only vocabulary and each split as a 1-D LongTensor of indices."""

    vocabulary: Vocabulary
    train: Tensor
    valid: Tensor
    test: Tensor

    def split(self, name: str) -> Tensor:
        if name not in SPLITS:
            raise ValueError(f"Unknown split {name!r}; expected one of {SPLITS}")
        return getattr(self, name)


def split_files(directory: str | os.PathLike[str]) -> dict[str, Path | None]:
    """Each split's file in ``directory`` (``<split>.txt``, else ``wiki.<split>.tokens``), or None if absent."""
    directory = Path(directory)
    found: dict[str, Path | None] = {}
    for split in SPLITS:
        candidates = (directory / f"{split}.txt", directory / f"wiki.{split}.tokens")
        found[split] = next((p for p in candidates if p.is_file()), None)
    return found


def load_corpus(directory: str | os.PathLike[str], max_tokens: int | None = None) -> Corpus:
    """Read and tokenise the three splits of ``directory``.

    Args:
        directory: folder with the ``train``/``valid``/``test`` files.
        max_tokens: keep only the first ``max_tokens`` tokens of each split, as if the files ended there
            (the vocabulary is then built from the truncated training text). ``None`` reads everything.

    Raises:
        FileNotFoundError: a split's file is missing.
    """
    if max_tokens is not None and max_tokens < 2:
        raise ValueError(f"`max_tokens={max_tokens}` must be at least 2 (or None)")
    files = split_files(directory)
    missing = [split for split, path in files.items() if path is None]
    if missing:
        raise FileNotFoundError(f"No file for split(s) {missing} in {directory}")

    def words(split: str) -> Iterable[str]:
        return itertools.islice(read_words(files[split]), max_tokens)  # islice(..., None) reads all

    vocabulary, train = Vocabulary.build_and_encode(words("train"))
    return Corpus(vocabulary, train, vocabulary.encode(words("valid")), vocabulary.encode(words("test")))


def batchify(ids: Tensor, num_streams: int) -> Tensor:
    """Cut a 1-D token stream into ``num_streams`` contiguous rows ``(num_streams, len // num_streams)``.

    Row ``s`` is tokens ``[s*L, (s+1)*L)``; the ``len % num_streams`` trailing tokens are dropped.
    """
    if ids.dim() != 1:
        raise ValueError(f"Expected a 1-D token stream, got shape {tuple(ids.shape)}")
    length = ids.numel() // num_streams
    if length < 2:
        raise ValueError(f"{ids.numel()} tokens are too few for {num_streams} streams (each needs at least 2 tokens)")
    return ids[: num_streams * length].view(num_streams, length)


class BPTTWindows(Dataset):
    """Contiguous truncated-BPTT windows over batchified streams; item ``i`` is already a whole batch.

    Item ``i`` is ``(inputs, targets)``, both ``(num_streams, seq_len)``, with ``targets`` the inputs shifted
    by one token; ``seq_len`` is ``bptt`` except possibly for the last window. Use with
    ``DataLoader(batch_size=None)``.
    """

    def __init__(self, streams: Tensor, bptt: int) -> None:
        if streams.dim() != 2 or streams.size(1) < 2:
            raise ValueError(f"Expected streams of shape (num_streams, >=2), got {tuple(streams.shape)}")
        if bptt < 1:
            raise ValueError(f"`bptt={bptt}` must be >= 1")
        self.streams = streams
        self.bptt = bptt

    def __len__(self) -> int:
        # The last token of each stream is only ever a target.
        return math.ceil((self.streams.size(1) - 1) / self.bptt)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        start = index * self.bptt
        seq_len = min(self.bptt, self.streams.size(1) - 1 - start)
        inputs = self.streams[:, start : start + seq_len]
        targets = self.streams[:, start + 1 : start + 1 + seq_len]
        return inputs.contiguous(), targets.contiguous()

    @property
    def num_targets(self) -> int:
        """Tokens predicted over the whole split (every stream position but the first)."""
        return self.streams.size(0) * (self.streams.size(1) - 1)


class UnpaddedDistributedSampler(DistributedSampler):
    """Rank ``r`` of ``n`` gets windows ``r, r+n, r+2n, ...``: each exactly once, none repeated.

    ``DistributedSampler`` pads the index list to a multiple of the world size by repeating windows, which
    would count them twice in a split's loss. Being a ``DistributedSampler`` itself, Lightning keeps it.
    Ranks may get one window more or less than others (evaluation has no per-step collectives).
    """

    def __init__(self, dataset: Dataset) -> None:
        super().__init__(dataset, shuffle=False, drop_last=False)
        self.num_samples = len(range(self.rank, len(dataset), self.num_replicas))  # type: ignore[arg-type]
        self.total_size = len(dataset)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def unigram_perplexity(train: Tensor, evaluation: Tensor, vocab_size: int) -> float:
    """Perplexity of ``evaluation`` under the maximum-likelihood unigram distribution of ``train``.

    A floor any language model should beat. Infinite when ``evaluation`` has a token absent from ``train``.
    """
    counts = torch.bincount(train, minlength=vocab_size).double()
    log_probs = counts.log() - math.log(train.numel())
    return math.exp(-log_probs[evaluation].mean().item())


class WikiText2DataModule(pl.LightningDataModule):
    """WikiText-2 (or any corpus in its layout) as truncated-BPTT windows.

    Reads ``<root>/<folder>/{train,valid,test}.txt`` (or ``wiki.<split>.tokens``). The vocabulary comes from
    the training file only; valid/test words not in it become ``<unk>``. See the module docstring for the
    window layout and why hidden states are not carried between windows.

    Args:
        root: data root; ``None`` uses ``$LOTTERY_DATA``, else ``./data``.
        folder: the corpus folder under ``root``.
        batch_size: training streams per batch.
        bptt: window length in tokens.
        eval_batch_size: streams for the validation and test splits.
        subset: keep only the first ``subset`` tokens of each split (fast presets); the vocabulary is
            built from the truncated training text, so ``vocab_size`` shrinks too.
        eval_test: ``val_dataloader`` also returns the test split, so the test metrics at the
            validation-selected iteration are known.
        shuffle: shuffle the order of training windows (each window starts from a zero hidden state).
        num_workers: DataLoader workers (the data is in memory; 0 is usually fastest).
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        folder: str = "wikitext-2",
        batch_size: int = 30,
        bptt: int = 50,
        eval_batch_size: int = 10,
        subset: int | None = None,
        eval_test: bool = False,
        shuffle: bool = True,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.root = resolve_data_root(root)
        self.folder = folder
        self.batch_size = batch_size
        self.bptt = bptt
        self.eval_batch_size = eval_batch_size
        self.subset = subset
        self.eval_test = eval_test
        self.shuffle = shuffle
        self.num_workers = num_workers
        self._corpus: Corpus | None = None

    @property
    def directory(self) -> Path:
        return self.root / self.folder

    @property
    def corpus(self) -> Corpus:
        """The tokenised corpus, read on first use."""
        if self._corpus is None:
            files = split_files(self.directory)
            if any(path is None for path in files.values()):
                raise missing_data_error(
                    f"Language-model corpus {self.folder!r}",
                    self.root,
                    f"{self.folder}/{{train,valid,test}}.txt or {self.folder}/wiki.{{train,valid,test}}.tokens",
                )
            self._corpus = load_corpus(self.directory, self.subset)
        return self._corpus

    @property
    def vocabulary(self) -> Vocabulary:
        return self.corpus.vocabulary

    @property
    def vocab_size(self) -> int:
        """Size of the train-only vocabulary (33,278 for WikiText-2); reads the corpus if needed."""
        return len(self.corpus.vocabulary)

    def setup(self, stage: str | None = None) -> None:
        self.corpus  # noqa: B018 -- read and tokenise once, before any loader is built

    def windows(self, split: str) -> BPTTWindows:
        """The BPTT windows of ``split`` (``batch_size`` streams for train, ``eval_batch_size`` otherwise)."""
        streams = self.batch_size if split == "train" else self.eval_batch_size
        return BPTTWindows(batchify(self.corpus.split(split), streams), self.bptt)

    def train_dataloader(self) -> DataLoader:
        # batch_size=None: every item is already a (streams, time) batch. Under DDP, Lightning swaps in a
        # DistributedSampler (it may repeat a window or two per epoch, which is harmless for training).
        return DataLoader(self.windows("train"), batch_size=None, shuffle=self.shuffle, num_workers=self.num_workers)

    def _eval_loader(self, split: str) -> DataLoader:
        windows = self.windows(split)
        # Under DDP every window must be evaluated exactly once for the split's perplexity to be exact.
        sampler = UnpaddedDistributedSampler(windows) if _distributed() else None
        return DataLoader(windows, batch_size=None, shuffle=False, sampler=sampler, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        if self.eval_test:
            return [self._eval_loader("valid"), self._eval_loader("test")]
        return self._eval_loader("valid")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
