"""Datamodules over folders of image files (ImageNet, Places365, any ``ImageFolder``): the source datasets of
ticket transfer (Morcos et al. 2019). They know nothing of pruning.

Unlike the in-memory datamodules of :mod:`lightning_lottery.data.vision`, images are decoded from disk per
sample (PIL) in ``num_workers`` DataLoader workers, with the standard ImageNet pipeline:

* training (``augment=True``): ``RandomResizedCrop(image_size)``, ``RandomHorizontalFlip``, ``ToTensor``,
  ``Normalize`` with the ImageNet mean and std;
* evaluation: ``Resize(int(image_size * 256 / 224))``, ``CenterCrop(image_size)``, ``ToTensor``, ``Normalize``.

Splits follow the vision datamodules: ``val_size`` training images are held out for validation (the
early-stop bookkeeping of the lottery callback) with a permutation drawn from ``seed`` alone; the dataset's
own validation set plays the test set and, with ``eval_test=True``, is the second validation loader, so test
accuracy is known at every validation. The loaders are plain ``DataLoader``\\ s, so Lightning injects a
``DistributedSampler`` under DDP.

File lists are held as numpy arrays (one bytes array of paths, one int64 array of labels) rather than a list of
``(path, label)`` tuples: DataLoader workers forked from a list of 1.28M Python objects copy its pages as they
touch reference counts, multiplying memory by the number of workers; numpy buffers are never written to.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_lottery.data.root import missing_data_error, resolve_data_root
from lightning_lottery.data.vision import HeldOutSplits

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageFiles",
    "ImageFolderDataModule",
    "ImageList",
    "ImageNetDataModule",
    "Places365DataModule",
    "eval_transform",
    "train_transform",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Split = Literal["train", "test"]  # "test" is the dataset's own validation set


# ---------------------------------------------------------------------------------------------- transforms


def train_transform(image_size: int, augment: bool = True) -> Callable[[Any], Tensor]:
    """The ImageNet training pipeline (random resized crop + flip), or the evaluation one without ``augment``."""
    from torchvision import transforms  # imported late: torchvision loads slowly

    if not augment:
        return eval_transform(image_size)
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(image_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def eval_transform(image_size: int) -> Callable[[Any], Tensor]:
    """Resize the short side to ``image_size * 256 / 224`` (256 for 224) and take the central square."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize(int(image_size * 256 / 224)),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


# ---------------------------------------------------------------------------------------------- files


@dataclass(frozen=True)
class ImageList:
    """Image files of one split: ``paths`` (bytes array), ``labels`` (int64 array) and the class names."""

    paths: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]

    @classmethod
    def from_samples(cls, samples: Sequence[tuple[str, int | None]], classes: Sequence[str]) -> ImageList:
        """From ``(path, label)`` pairs, as torchvision's ``ImageFolder.samples`` and ``Places365.imgs`` hold."""
        paths = np.array([os.fsencode(path) for path, _ in samples], dtype=np.bytes_)
        labels = np.array([-1 if label is None else label for _, label in samples], dtype=np.int64)
        return cls(paths, labels, tuple(classes))

    def __len__(self) -> int:
        return len(self.labels)

    def keep_classes(self, classes: Sequence[int]) -> ImageList:
        """Only the images of ``classes`` (indices), relabelled 0..k-1 in the order given."""
        lookup = np.full(len(self.classes), -1, dtype=np.int64)
        lookup[np.asarray(classes, dtype=np.int64)] = np.arange(len(classes))
        new = lookup[self.labels]
        keep = new >= 0
        return ImageList(self.paths[keep], new[keep], tuple(self.classes[c] for c in classes))


class ImageFiles(Dataset[tuple[Tensor, int]]):
    """The images ``indices`` of an :class:`ImageList`, decoded as RGB with PIL and transformed."""

    def __init__(self, images: ImageList, indices: np.ndarray, transform: Callable[[Any], Tensor]) -> None:
        self.images = images
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def path(self, index: int) -> str:
        """The file of item ``index``."""
        return os.fsdecode(self.images.paths[self.indices[index]])

    def label(self, index: int) -> int:
        return int(self.images.labels[self.indices[index]])

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        from torchvision.datasets.folder import default_loader

        return self.transform(default_loader(self.path(index))), self.label(index)


# ---------------------------------------------------------------------------------------------- datamodules


class ImageFolderDataModule(HeldOutSplits, pl.LightningDataModule):
    """Any dataset in torchvision's ``ImageFolder`` layout: ``<root>/<folder>/<train_dir>/<class>/<image>`` and
    ``<root>/<folder>/<val_dir>/<class>/<image>`` (class folders sorted by name give labels 0..C-1).

    Args:
        root: data folder holding ``<folder>`` (``None``: ``$LOTTERY_DATA``, else ``./data``). ``root`` may also
            be the dataset folder itself (the one holding ``<train_dir>``).
        folder: the dataset's folder under ``root``; ``None`` or ``""``: ``root`` itself.
        train_dir, val_dir: the training split and the dataset's own validation split (used as the test set).
        image_size: side of the square crops fed to the network (224 for ImageNet; fast presets use 32).
        batch_size: training batch size per device (the global batch is ``batch_size * devices * num_nodes``).
        eval_batch_size: batch size of the validation/test loaders (results do not depend on it).
        num_workers: DataLoader worker processes decoding images (ImageNet needs several per GPU).
        val_size: training images held out for validation, drawn with ``seed`` (0: no validation at all, as
            with the vision datamodules).
        seed: seeds the held-out split and the subset only (independent of the global RNG).
        subset: keep only ``subset`` training images, the first of the seeded shuffle (the files are sorted by
            class, so the first N files would hold one or two classes): fast presets.
        eval_test: ``val_dataloader()`` returns ``[val, test]``: test metrics at every validation.
        augment: random resized crop + horizontal flip for training (else the evaluation transform).
        classes: keep only these classes (folder names, or indices into the sorted class list), relabelled
            0..k-1 in the order given.
        drop_last: drop the last incomplete training batch.
        pin_memory: pin host memory for faster GPU copies (``None``: when CUDA is available).
    """

    name = "Image folder"
    default_folder = "imagenet"

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        folder: str | None = "imagenet",
        train_dir: str = "train",
        val_dir: str = "val",
        image_size: int = 224,
        batch_size: int = 256,
        eval_batch_size: int = 256,
        num_workers: int = 8,
        val_size: int = 0,
        seed: int = 0,
        subset: int | None = None,
        eval_test: bool = True,
        augment: bool = True,
        classes: Sequence[str | int] | None = None,
        drop_last: bool = False,
        pin_memory: bool | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if image_size < 1 or batch_size < 1 or eval_batch_size < 1:
            raise ValueError(
                f"image_size and batch sizes must be >= 1, got {image_size}, {batch_size}, {eval_batch_size}"
            )
        if val_size < 0 or (subset is not None and subset < 1) or num_workers < 0:
            raise ValueError(
                f"val_size and num_workers must be >= 0 and subset >= 1 or None, "
                f"got {val_size}, {num_workers} and {subset}"
            )
        if classes is not None and len(set(classes)) != len(classes):
            raise ValueError(f"classes must be distinct, got {list(classes)}")
        self.root = root
        self.folder = folder
        self.train_dir = train_dir
        self.val_dir = val_dir
        self._image_size = image_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.val_size = val_size
        self.seed = seed
        self.subset = subset
        self.eval_test = eval_test
        self.augment = augment
        self.classes = None if classes is None else list(classes)
        self.drop_last = drop_last
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.train_set: ImageFiles | None = None
        self.val_set: ImageFiles | None = None
        self.test_set: ImageFiles | None = None
        self._class_names: tuple[str, ...] | None = None

    # -------------------------------------------------------------- shape

    @property
    def num_classes(self) -> int:
        """Classes the network must predict (reads the class list from disk, so a missing dataset fails here)."""
        return len(self.classes) if self.classes is not None else len(self.class_names)

    @property
    def in_channels(self) -> int:
        return 3

    @property
    def image_size(self) -> int:
        return self._image_size

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)

    @property
    def class_names(self) -> tuple[str, ...]:
        """All class names of the dataset, in label order (before ``classes`` selects some)."""
        if self._class_names is None:
            self._class_names = self.find_classes()
        return self._class_names

    # -------------------------------------------------------------- files

    @property
    def dataset_dir(self) -> Path:
        """``<root>/<folder>``, or ``root`` itself when it already holds the training split."""
        base = resolve_data_root(self.root)
        nested = base / self.folder if self.folder else base
        if not (nested / self.train_dir).is_dir() and (base / self.train_dir).is_dir():
            return base
        return nested

    def expected_layout(self) -> str:
        """What :meth:`missing` says it looked for."""
        prefix = f"{self.folder}/" if self.folder else ""
        return f"{prefix}{{{self.train_dir},{self.val_dir}}}/<class>/<image>"

    def missing(self, reason: str = "") -> FileNotFoundError:
        """The error for a dataset that is not on disk: where it looked, and how to point at it."""
        error = missing_data_error(self.name, resolve_data_root(self.root), self.expected_layout())
        return FileNotFoundError(f"{error}{reason}") if reason else error

    def find_classes(self) -> tuple[str, ...]:
        """Class folder names of the training split, sorted (label order)."""
        train = self.dataset_dir / self.train_dir
        if not train.is_dir():
            raise self.missing()
        names = tuple(sorted(entry.name for entry in os.scandir(train) if entry.is_dir()))
        if not names:
            raise self.missing(f" {train} holds no class folders.")
        return names

    def scan(self, split: Split) -> ImageList:
        """The image files of ``split`` ("test": the dataset's own validation split), labelled by class folder."""
        from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

        directory = self.dataset_dir / (self.train_dir if split == "train" else self.val_dir)
        if not directory.is_dir():
            raise self.missing()
        classes = self.class_names
        index = {name: i for i, name in enumerate(classes)}
        # Every training class must have images; a validation split may lack some.
        samples = make_dataset(str(directory), index, extensions=IMG_EXTENSIONS, allow_empty=split == "test")
        if not samples:
            raise self.missing(
                f" {directory} has no images in class folders named like those of {self.train_dir}/ (ImageNet's "
                "validation images come as one flat folder: sort them into one folder per class (wnid) first, see "
                "ImageNetDataModule)."
            )
        return ImageList.from_samples(samples, classes)

    def _class_indices(self) -> list[int]:
        """``classes`` as indices into :attr:`class_names`."""
        names = self.class_names
        out = []
        for item in self.classes or []:
            if isinstance(item, str) and item in names:
                out.append(names.index(item))
            elif isinstance(item, int) and 0 <= item < len(names):
                out.append(item)
            else:
                raise ValueError(
                    f"classes: {item!r} is neither a class of {self.name} nor an index in 0..{len(names) - 1}"
                )
        return out

    # -------------------------------------------------------------- splits

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train, test = self.scan("train"), self.scan("test")
        if self.classes is not None:
            keep = self._class_indices()
            train, test = train.keep_classes(keep), test.keep_classes(keep)
        if self.val_size >= len(train):
            raise ValueError(f"val_size={self.val_size} leaves no training data ({len(train)} images)")
        # The split depends on `seed` only, so every run, rank and pruning round validates on the same images.
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.seed)).numpy()
        val_indices = np.sort(perm[: self.val_size])
        train_indices = np.sort(perm[self.val_size :][: self.subset])
        evaluate = eval_transform(self.image_size)
        self.train_set = ImageFiles(train, train_indices, train_transform(self.image_size, self.augment))
        self.val_set = ImageFiles(train, val_indices, evaluate)
        self.test_set = ImageFiles(test, np.arange(len(test)), evaluate)

    def _loader(self, dataset: ImageFiles | None, batch_size: int, shuffle: bool = False) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not run")
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,  # Lightning swaps in a DistributedSampler (shuffling likewise) under DDP
            drop_last=shuffle and self.drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
        )


class ImageNetDataModule(ImageFolderDataModule):
    """ImageNet (ILSVRC-2012: 1,281,167 training and 50,000 validation images, 1000 classes) in the
    ``ImageFolder`` layout ``<root>/imagenet/{train,val}/<wnid>/<image>.JPEG``; arguments: see
    :class:`ImageFolderDataModule`. The validation set is the test set, as in the papers.

    Getting the layout: download ``ILSVRC2012_img_train.tar`` and ``ILSVRC2012_img_val.tar`` from
    image-net.org. Training: extract it into ``train/``, then extract each of its 1000 per-class tars into a folder
    named after it (``n01440764.tar`` -> ``train/n01440764/``). Validation: the archive is one flat folder of
    50,000 images; sort them into ``val/<wnid>/`` with the labels of the devkit, e.g. with the widely used
    ``valprep.sh`` of the PyTorch ImageNet example, or with ``torchvision.datasets.ImageNet(<dir>, split="val")``
    given the devkit (it writes the same layout). Folders ``train/`` and ``val/`` are all this module reads.
    """

    name = "ImageNet"


class Places365DataModule(ImageFolderDataModule):
    """Places365-Standard (1,803,460 training and 36,500 validation images, 365 scene classes), read with
    torchvision's ``Places365(<root>/places365, split=..., small=True, download=False)``: ``train-standard`` for
    training (and the held-out split), ``val`` as the test set. Arguments: see :class:`ImageFolderDataModule`
    (``train_dir`` and ``val_dir`` are not used: torchvision fixes the layout), plus ``small`` (256x256 images,
    default, as the papers train; ``False``: the high-resolution ones).

    Layout, as torchvision expects it (``small=True``): ``categories_places365.txt``,
    ``places365_train_standard.txt``, ``places365_val.txt`` (from ``filelist_places365-standard.tar``), and the
    images in ``data_256_standard/`` (from ``train_256_places365standard.tar``, which extracts as ``data_256/``:
    rename it) and ``val_256/`` (from ``val_256.tar``). torchvision checks the MD5 of the text files. Nothing is
    downloaded (the archives are ~26 GB; torchvision's ``download=True`` can fetch them once, by hand).
    """

    name = "Places365"
    _CATEGORIES = "categories_places365.txt"
    _FILE_LISTS: ClassVar[dict[str, str]] = {"train": "places365_train_standard.txt", "test": "places365_val.txt"}
    _SPLITS: ClassVar[dict[str, str]] = {"train": "train-standard", "test": "val"}

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        folder: str | None = "places365",
        small: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(root=root, folder=folder, **options)
        self.small = small

    @property
    def dataset_dir(self) -> Path:
        base = resolve_data_root(self.root)
        nested = base / self.folder if self.folder else base
        if not (nested / self._CATEGORIES).is_file() and (base / self._CATEGORIES).is_file():
            return base
        return nested

    def _images_dir(self, split: Split) -> str:
        size = "256" if self.small else "large"
        return f"data_{size}_standard" if split == "train" else f"val_{size}"

    def expected_layout(self) -> str:
        prefix = f"{self.folder}/" if self.folder else ""
        files = [self._CATEGORIES, *self._FILE_LISTS.values(), self._images_dir("train"), self._images_dir("test")]
        return f"{prefix}{{{','.join(files)}}}"

    def find_classes(self) -> tuple[str, ...]:
        """The 365 category names (``/a/abbey``, ...) in label order, from ``categories_places365.txt``."""
        path = self.dataset_dir / self._CATEGORIES
        if not path.is_file():
            raise self.missing()
        pairs = [line.split() for line in path.read_text().splitlines() if line.strip()]
        return tuple(name for name, _ in sorted(pairs, key=lambda pair: int(pair[1])))

    def scan(self, split: Split) -> ImageList:
        from torchvision.datasets import Places365

        directory = self.dataset_dir
        for needed in (self._CATEGORIES, self._FILE_LISTS[split], self._images_dir(split)):
            if not (directory / needed).exists():
                hint = (
                    " (train_256_places365standard.tar extracts as data_256/: rename it)" if "data_" in needed else ""
                )
                raise self.missing(f" Missing: {directory / needed}{hint}.")
        try:
            dataset = Places365(str(directory), split=self._SPLITS[split], small=self.small, download=False)
        except RuntimeError as err:  # torchvision's MD5 check of the text files
            raise ValueError(
                f"Places365 under {directory}: {err} (re-extract filelist_places365-standard.tar)"
            ) from err
        return ImageList.from_samples(dataset.imgs, self.class_names)
