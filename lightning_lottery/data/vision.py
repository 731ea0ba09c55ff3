"""In-memory image datamodules (MNIST, CIFAR-10, synthetic) for the recipes; they know nothing of pruning.

Whole datasets are held as uint8 tensors (MNIST: 47 MB, CIFAR-10: 184 MB) and each batch is gathered,
augmented and normalised in one vectorised step: there is no per-sample PIL round-trip. The loaders are
ordinary ``torch.utils.data.DataLoader``\\ s (so Lightning can inject a ``DistributedSampler`` under DDP),
over a dataset whose ``__getitems__`` returns a whole batch.

Splits: the validation set (``val_size``, 5,000 in the papers) is held out of the training set with a
permutation drawn from ``seed`` alone (not the global RNG); the test set is never touched by it. With
``eval_test=True`` (default) ``val_dataloader()`` returns ``[val, test]`` so that test metrics are known at
every validation, i.e. at the validation-selected early-stop iteration, as the papers report them.
"""

from __future__ import annotations

import functools
import gzip
import os
import struct
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_lottery.data.root import (
    CorruptDataError,
    missing_data_error,
    removing_new_empty_folders,
    resolve_data_root,
)
from lightning_lottery.data.safe_pickle import NUMPY_GLOBALS, UnsafePickleError, restricted_load

__all__ = [
    "BatchTransform",
    "CIFAR10DataModule",
    "ImageDataModule",
    "InMemoryImages",
    "MNISTDataModule",
    "SyntheticImageDataModule",
    "UnsafePickleError",
    "load_cifar10",
    "load_mnist",
    "random_crop_flip",
    "restricted_pickle_load",
]

Split = tuple[Tensor, Tensor]  # (images N x C x H x W, int64 labels N)


# ---------------------------------------------------------------------------------------------- batches


def random_crop_flip(images: Tensor, padding: int = 4) -> Tensor:
    """Standard CIFAR augmentation on a batch: zero-pad by ``padding``, random crop back, random h-flip.

    Done for the whole batch with one ``gather`` over flat pixel indices (per-sample offsets and flips drawn
    from the global torch RNG), on the stored dtype, so the padding is black before normalisation as with
    torchvision's ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip``.
    """
    n, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    width = w + 2 * padding
    dy = torch.randint(0, 2 * padding + 1, (n, 1, 1))
    dx = torch.randint(0, 2 * padding + 1, (n, 1, 1))
    cols = torch.arange(w).view(1, 1, w)
    cols = torch.where(torch.rand(n, 1, 1) < 0.5, cols.flip(-1), cols)  # a flip reverses the column order
    index = ((dy + torch.arange(h).view(1, h, 1)) * width + dx + cols).view(n, 1, h * w).expand(n, c, h * w)
    return padded.view(n, c, -1).gather(2, index).view(n, c, h, w)


class BatchTransform:
    """uint8 (or float) batch -> float32 normalised batch, optionally augmented and replicated to RGB."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], channels: int, augment: bool = False) -> None:
        self.channels = channels
        self.augment = augment
        std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        # Folded into one multiply-add: x * scale + shift == (x - mean) / std.
        self.scale = 1.0 / std_t
        self.shift = -mean_t / std_t

    def __call__(self, images: Tensor) -> Tensor:
        if self.augment:
            images = random_crop_flip(images)
        scale = self.scale / 255.0 if images.dtype == torch.uint8 else self.scale
        if images.shape[1] != self.channels:  # greyscale -> RGB: the same plane in every channel
            return torch.addcmul(self.shift, images.float().expand(-1, self.channels, -1, -1), scale)
        # One new float buffer, normalised in place (a second allocation per batch costs measurably).
        x = images.float() if images.dtype != torch.float32 else images.clone()
        return x.mul_(scale).add_(self.shift)


class InMemoryImages(Dataset[tuple[Tensor, Tensor]]):
    """Images and labels held as tensors; ``__getitems__`` gathers and transforms a whole batch at once."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Callable[[Tensor], Tensor]) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x, y = self.__getitems__([index])
        return x[0], y[0]

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        # index_select is several times cheaper than advanced indexing for a batch of rows.
        return self.transform(self.images.index_select(0, index)), self.labels.index_select(0, index)


def _whole_batch(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """``collate_fn`` for :class:`InMemoryImages`: the dataset already returns a collated batch."""
    return batch


# ---------------------------------------------------------------------------------------------- MNIST files


def _stamp(paths: Iterable[Path]) -> tuple[int, ...]:
    """Sizes and modification times: part of the read caches' keys, so a replaced file is read again."""
    return tuple(n for path in paths for n in (path.stat().st_size, path.stat().st_mtime_ns))


MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_MNIST_EXPECTED = "MNIST/raw/{train-images-idx3,train-labels-idx1,t10k-images-idx3,t10k-labels-idx1}-ubyte[.gz]"


def _mnist_paths(root: Path) -> dict[str, Path] | None:
    """The four idx files under ``<root>/MNIST/raw`` (uncompressed preferred, else ``.gz``), or None."""
    raw = root / "MNIST" / "raw"
    found = {}
    for key, stem in MNIST_FILES.items():
        path = next((p for p in (raw / stem, raw / f"{stem}.gz") if p.is_file()), None)
        if path is None:
            return None
        found[key] = path
    return found


def read_idx(path: Path) -> np.ndarray:
    """An idx file of unsigned bytes (``.gz`` or plain) as a uint8 array of its declared shape."""
    opener: Callable[[Path], BinaryIO] = gzip.open if path.suffix == ".gz" else open  # type: ignore[assignment]
    try:
        with opener(path) as f:
            data = bytearray(f.read())  # writable, so torch.from_numpy needs no copy and gives no warning
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise CorruptDataError(f"{path} is truncated or corrupt ({type(err).__name__}: {err})") from err
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise CorruptDataError(f"{path} is not an idx file of unsigned bytes (bad magic number)")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise CorruptDataError(f"{path} is truncated: its header is cut short")
    shape = struct.unpack(f">{ndim}I", bytes(data[4 : 4 + 4 * ndim]))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise CorruptDataError(f"{path} is truncated or corrupt: header says {shape}, found {array.size} bytes")
    return array.reshape(shape)


@functools.lru_cache(maxsize=2)
def _read_mnist(paths: tuple[tuple[str, Path], ...], stamp: tuple[int, ...]) -> dict[str, Split]:
    files = dict(paths)
    out = {}
    for split in ("train", "test"):
        images = torch.from_numpy(read_idx(files[f"{split}_images"])).unsqueeze(1)
        labels = torch.from_numpy(read_idx(files[f"{split}_labels"])).long()
        if len(images) != len(labels):
            raise ValueError(f"MNIST {split}: {len(images)} images but {len(labels)} labels")
        out[split] = (images, labels)
    return out


def load_mnist(root: str | os.PathLike[str] | None = None, download: bool = True) -> dict[str, Split]:
    """MNIST as ``{"train": (60000x1x28x28 uint8, labels), "test": (10000x..., labels)}``.

    Reads ``<root>/MNIST/raw/*-idx?-ubyte[.gz]`` directly. If absent and ``download``, asks torchvision to
    fetch them into ``<root>/MNIST/raw``; failing that, raises ``FileNotFoundError`` saying where to put them.
    Results are cached per file set; callers must not modify the returned tensors in place.
    """
    base = resolve_data_root(root)
    paths = _mnist_paths(base)
    if paths is None:
        paths = _download(
            base,
            "MNIST",
            _MNIST_EXPECTED,
            download,
            lambda: _torchvision_mnist(base),
            _mnist_paths,
            base / "MNIST" / "raw",
        )
    files = tuple(sorted(paths.items()))
    return _read_mnist(files, _stamp(p for _, p in files))


def _torchvision_mnist(root: Path) -> None:
    from torchvision.datasets import MNIST

    MNIST(str(root), train=True, download=True)


def _download(
    root: Path,
    dataset: str,
    expected: str,
    allowed: bool,
    fetch: Callable[[], None],
    find: Callable[[Path], Any],
    target: Path,
) -> Any:
    """Try ``fetch()`` (a torchvision download into ``target``) and ``find(root)`` again; else the missing-data
    error. Folders the failed download created are removed again."""
    if not allowed:
        raise missing_data_error(dataset, root, expected + "; download=False")
    try:
        with removing_new_empty_folders(target):
            fetch()
    except Exception as err:  # offline, read-only folder, bad mirror: all end in the same advice
        raise missing_data_error(dataset, root, expected, err) from err
    found = find(root)
    if found is None:
        raise missing_data_error(dataset, root, expected, RuntimeError("the download left no such files"))
    return found


# ---------------------------------------------------------------------------------------------- CIFAR files

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = "test_batch"
_CIFAR10_EXPECTED = f"{CIFAR10_FOLDER}/{{data_batch_1..5,test_batch}}"


def restricted_pickle_load(path: str | os.PathLike[str]) -> Any:
    """Unpickle ``path`` allowing only numpy arrays, lists, dicts, strings and numbers (raises
    :class:`UnsafePickleError` for anything else: unpickling untrusted objects can run arbitrary code)."""
    return restricted_load(path, NUMPY_GLOBALS, what="a CIFAR-10 batch", contents="numpy arrays")


def _cifar_batch(path: Path) -> Split:
    batch = restricted_pickle_load(path)
    if not isinstance(batch, dict) or "data" not in batch or "labels" not in batch:
        raise CorruptDataError(f"{path} is not a CIFAR-10 batch (expected a dict with 'data' and 'labels')")
    data = np.asarray(batch["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(batch["labels"]):
        raise CorruptDataError(f"{path}: unexpected CIFAR-10 data shape {data.shape}")
    images = torch.from_numpy(np.ascontiguousarray(data)).view(-1, 3, 32, 32)  # rows are R, G, B planes
    return images, torch.tensor(batch["labels"], dtype=torch.long)


def _cifar_paths(root: Path) -> Path | None:
    folder = root / CIFAR10_FOLDER
    names = (*CIFAR10_TRAIN, CIFAR10_TEST)
    return folder if all((folder / n).is_file() for n in names) else None


@functools.lru_cache(maxsize=1)
def _read_cifar10(folder: Path, stamp: tuple[int, ...]) -> dict[str, Split]:
    train = [_cifar_batch(folder / name) for name in CIFAR10_TRAIN]
    return {
        "train": (torch.cat([x for x, _ in train]), torch.cat([y for _, y in train])),
        "test": _cifar_batch(folder / CIFAR10_TEST),
    }


def load_cifar10(root: str | os.PathLike[str] | None = None, download: bool = True) -> dict[str, Split]:
    """CIFAR-10 as ``{"train": (50000x3x32x32 uint8, labels), "test": (10000x..., labels)}``.

    Reads the python batches in ``<root>/cifar-10-batches-py`` with a restricted unpickler (no MD5 check:
    rebuilt copies without the ``filenames`` key are accepted). If absent and ``download``, asks torchvision
    to fetch them; failing that, raises ``FileNotFoundError`` saying where to put them. Cached; callers must
    not modify the returned tensors in place.
    """
    base = resolve_data_root(root)
    folder = _cifar_paths(base)
    if folder is None:
        folder = _download(
            base, "CIFAR-10", _CIFAR10_EXPECTED, download, lambda: _torchvision_cifar10(base), _cifar_paths, base
        )
    return _read_cifar10(folder, _stamp(folder / name for name in (*CIFAR10_TRAIN, CIFAR10_TEST)))


def _torchvision_cifar10(root: Path) -> None:
    from torchvision.datasets import CIFAR10

    CIFAR10(str(root), train=True, download=True)


# ---------------------------------------------------------------------------------------------- datamodules


def _resize(images: Tensor, size: int, chunk: int = 10000) -> Tensor:
    """Bilinear (antialiased) resize of a whole uint8/float image set, in chunks to bound memory."""
    out = []
    for part in images.split(chunk):
        resized = torch.nn.functional.interpolate(
            part.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
        out.append(resized.round_().clamp_(0, 255).to(torch.uint8) if images.dtype == torch.uint8 else resized)
    return torch.cat(out)


def _keep_classes(images: Tensor, labels: Tensor, classes: Sequence[int]) -> Split:
    """Only the examples of ``classes``, relabelled 0..k-1 in the order given."""
    lookup = torch.full((max(int(labels.max()), *classes) + 1,), -1, dtype=torch.long)
    lookup[torch.tensor(classes)] = torch.arange(len(classes))
    new = lookup[labels]
    keep = new >= 0
    return images[keep], new[keep]


class HeldOutSplits:
    """The three dataloaders of a datamodule with a held-out validation split, built by its ``_loader``.

    Validation returns ``[validation, test]`` with ``eval_test`` (dataloader_idx 0 and 1), so test accuracy is
    recorded at every validation; with ``val_size=0`` there is nothing to validate on: an empty list (Lightning
    skips validation).
    """

    train_set: Any
    val_set: Any
    test_set: Any
    batch_size: int
    eval_batch_size: int
    val_size: int
    eval_test: bool

    def _loader(self, dataset: Any, batch_size: int, shuffle: bool = False) -> DataLoader:
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        if not self.val_size:
            return []
        val = self._loader(self.val_set, self.eval_batch_size)
        return [val, self.test_dataloader()] if self.eval_test else val

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size)


class ImageDataModule(HeldOutSplits, pl.LightningDataModule):
    """Base class: a train/val/test image dataset held in memory. Subclasses implement :meth:`load`.

    Args:
        root: data folder (``None``: ``$LOTTERY_DATA``, else ``./data``).
        batch_size: training batch size (the papers: 60 for LeNet/Conv-*).
        val_size: examples held out of the training set for validation (papers: 5000); 0 for none.
        seed: seeds the validation split only (independent of the global RNG).
        num_workers: DataLoader workers; 0 is fastest for in-memory data.
        subset: keep only the first ``subset`` training examples after the split (fast presets).
        eval_test: ``val_dataloader()`` returns ``[val, test]``: test metrics are logged at every validation.
        resize: square side to resize images to once at setup (e.g. 32 for MNIST into CIFAR networks).
        channels: channels fed to the network; a greyscale dataset is replicated to 3 for RGB networks.
        classes: keep only these classes, relabelled 0..k-1 in the given order.
        augment: random crop (pad 4) + horizontal flip per training batch (ResNet/VGG recipes).
        eval_batch_size: batch size of the validation/test loaders (results do not depend on it).
        download: try a torchvision download when the files are absent.
        drop_last: drop the last incomplete training batch.
    """

    name = "images"
    native_channels = 1
    native_size = 28
    native_classes = 10
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        batch_size: int = 60,
        val_size: int = 5000,
        seed: int = 0,
        num_workers: int = 0,
        subset: int | None = None,
        eval_test: bool = True,
        resize: int | None = None,
        channels: int | None = None,
        classes: Sequence[int] | None = None,
        augment: bool = False,
        eval_batch_size: int = 500,
        download: bool = True,
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        if type(self).__init__ is ImageDataModule.__init__:  # subclasses with their own arguments save theirs
            self.save_hyperparameters()
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError(f"batch sizes must be >= 1, got {batch_size} and {eval_batch_size}")
        if val_size < 0 or (subset is not None and subset < 1):
            raise ValueError(f"val_size must be >= 0 and subset >= 1 or None, got {val_size} and {subset}")
        channels = self.native_channels if channels is None else channels
        if channels != self.native_channels and not (self.native_channels == 1 and channels == 3):
            raise ValueError(f"{self.name} has {self.native_channels} channel(s); channels={channels} not supported")
        if classes is not None:
            classes = [int(c) for c in classes]
            if len(set(classes)) != len(classes) or not all(0 <= c < self.native_classes for c in classes):
                raise ValueError(f"classes must be distinct labels in 0..{self.native_classes - 1}, got {classes}")
        self.root = root
        self.batch_size = batch_size
        self.val_size = val_size
        self.seed = seed
        self.num_workers = num_workers
        self.subset = subset
        self.eval_test = eval_test
        self.resize = resize
        self.channels = channels
        self.classes = classes
        self.augment = augment
        self.eval_batch_size = eval_batch_size
        self.download = download
        self.drop_last = drop_last
        self.train_set: InMemoryImages | None = None
        self.val_set: InMemoryImages | None = None
        self.test_set: InMemoryImages | None = None
        self.train_indices: Tensor | None = None
        self.val_indices: Tensor | None = None

    # -------------------------------------------------------------- shape

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes is not None else self.native_classes

    @property
    def in_channels(self) -> int:
        return self.channels

    @property
    def image_size(self) -> int:
        return self.resize or self.native_size

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)

    # -------------------------------------------------------------- data

    def load(self) -> dict[str, Split]:
        """``{"train": (images, labels), "test": (images, labels)}`` with uint8 (or float) NCHW images."""
        raise NotImplementedError

    def prepare_data(self) -> None:
        self.load()  # downloads on rank 0 only if needed (loading is cached)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        data = self.load()
        (train_x, train_y), (test_x, test_y) = data["train"], data["test"]
        if self.classes is not None:
            train_x, train_y = _keep_classes(train_x, train_y, self.classes)
            test_x, test_y = _keep_classes(test_x, test_y, self.classes)
        if self.val_size >= len(train_y):
            raise ValueError(f"val_size={self.val_size} leaves no training data ({len(train_y)} examples)")
        # The split depends on `seed` only, so every run and every pruning round validates on the same images.
        perm = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(self.seed))
        self.val_indices = perm[: self.val_size].sort().values
        self.train_indices = perm[self.val_size :].sort().values[: self.subset]
        train_tf = BatchTransform(self._mean(), self._std(), self.channels, self.augment)
        eval_tf = BatchTransform(self._mean(), self._std(), self.channels)
        splits = {
            "train": (train_x[self.train_indices], train_y[self.train_indices], train_tf),
            "val": (train_x[self.val_indices], train_y[self.val_indices], eval_tf),
            "test": (test_x, test_y, eval_tf),
        }
        sets = {}
        for name, (images, labels, transform) in splits.items():
            if self.resize is not None and self.resize != images.shape[-1]:
                images = _resize(images, self.resize)  # once, and only the images kept
            sets[name] = InMemoryImages(images, labels, transform)
        self.train_set, self.val_set, self.test_set = sets["train"], sets["val"], sets["test"]

    def _mean(self) -> tuple[float, ...]:
        return self.mean * self.channels if len(self.mean) == 1 else self.mean

    def _std(self) -> tuple[float, ...]:
        return self.std * self.channels if len(self.std) == 1 else self.std

    def _loader(self, dataset: InMemoryImages | None, batch_size: int, shuffle: bool = False) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not run")
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,  # RandomSampler seeded from the global torch RNG at each epoch
            drop_last=shuffle and self.drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=_whole_batch,
        )


class MNISTDataModule(ImageDataModule):
    """MNIST (60,000 train / 10,000 test, 28x28 greyscale) from ``<root>/MNIST/raw``; arguments: see
    :class:`ImageDataModule`.

    With the defaults: 55,000 training, 5,000 validation and 10,000 test images, batch 60.
    """

    name = "MNIST"
    native_channels = 1
    native_size = 28
    native_classes = 10
    mean = (0.1307,)
    std = (0.3081,)

    def load(self) -> dict[str, Split]:
        return load_mnist(self.root, download=self.download)


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10 (50,000 train / 10,000 test, 32x32 RGB) from ``<root>/cifar-10-batches-py``; see
    :class:`ImageDataModule`. Pass ``augment=True`` for the ResNet/VGG recipes (crop + flip)."""

    name = "CIFAR-10"
    native_channels = 3
    native_size = 32
    native_classes = 10
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)  # per-pixel std over the training set

    def load(self) -> dict[str, Split]:
        return load_cifar10(self.root, download=self.download)


class SyntheticImageDataModule(ImageDataModule):
    """Random float images with a learnable signal, for tests and ``fast`` presets (no files needed).

    Each class has a fixed random prototype image; an example is ``signal * prototype[label] + N(0, 1)``
    noise. Everything is drawn from ``seed``, so two instances with the same arguments hold the same data.
    """

    name = "synthetic"
    mean = (0.0,)
    std = (1.0,)

    def __init__(
        self,
        num_train: int = 512,
        num_test: int = 128,
        image_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 10,
        signal: float = 0.5,
        val_size: int = 128,
        batch_size: int = 64,
        **options: Any,
    ) -> None:
        """``options`` are those of :class:`ImageDataModule` (``subset``, ``classes``, ``resize``, ...), so this
        module can stand in for MNIST or CIFAR-10 under any recipe; ``root`` and ``download`` are ignored."""
        c, h, w = (int(v) for v in image_shape)
        if h != w:
            raise ValueError(f"images must be square, got image_shape={tuple(image_shape)}")
        # Shape attributes are per instance here; the base class reads them as class attributes.
        self.native_channels, self.native_size, self.native_classes = c, h, num_classes
        options.pop("root", None)
        options.pop("download", None)
        options.setdefault("eval_batch_size", 500)
        super().__init__(batch_size=batch_size, val_size=val_size, download=False, **options)
        self.save_hyperparameters()
        self.num_train, self.num_test, self.signal = num_train, num_test, signal

    def load(self) -> dict[str, Split]:
        g = torch.Generator().manual_seed(self.seed)
        shape = (self.native_channels, self.native_size, self.native_size)
        prototypes = torch.randn(self.native_classes, *shape, generator=g)

        def draw(n: int) -> Split:
            labels = torch.randint(0, self.native_classes, (n,), generator=g)
            images = self.signal * prototypes[labels] + torch.randn(n, *shape, generator=g)
            return images, labels

        return {"train": draw(self.num_train + self.val_size), "test": draw(self.num_test)}
