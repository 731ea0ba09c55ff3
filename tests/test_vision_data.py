"""Image datamodules: synthetic end-to-end, MNIST/CIFAR-10 on the shared copy (skipped when absent), the
restricted unpickler, augmentation, and the missing-data error."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_lottery.data.root import ENV_VAR
from lightning_lottery.data.vision import (
    CIFAR10DataModule,
    MNISTDataModule,
    SyntheticImageDataModule,
    UnsafePickleError,
    random_crop_flip,
    restricted_pickle_load,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def data_root() -> Path:
    """``$LOTTERY_DATA`` if set, else ``../shared/data`` next to the repository."""
    return Path(os.environ[ENV_VAR]) if os.environ.get(ENV_VAR) else SHARED


@pytest.fixture(scope="module")
def mnist_root(data_root: Path) -> Path:
    if not (data_root / "MNIST" / "raw").is_dir():
        pytest.skip(f"MNIST not found at {data_root}/MNIST/raw; set {ENV_VAR} to a folder holding MNIST/raw/")
    return data_root


@pytest.fixture(scope="module")
def cifar_root(data_root: Path) -> Path:
    if not (data_root / "cifar-10-batches-py").is_dir():
        pytest.skip(f"CIFAR-10 not found at {data_root}/cifar-10-batches-py; set {ENV_VAR} to a folder holding it")
    return data_root


@pytest.fixture(scope="module")
def mnist(mnist_root: Path) -> MNISTDataModule:
    dm = MNISTDataModule(root=mnist_root)
    dm.setup("fit")
    return dm


def first_batch(loader) -> tuple[torch.Tensor, torch.Tensor]:
    return next(iter(loader))


# ---------------------------------------------------------------------------------------------- synthetic


def test_synthetic_end_to_end() -> None:
    dm = SyntheticImageDataModule(num_train=100, val_size=30, num_test=20, image_shape=(3, 8, 8), num_classes=4)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (100, 30, 20)
    assert (dm.num_classes, dm.in_channels, dm.image_size, dm.input_shape) == (4, 3, 8, (3, 8, 8))
    x, y = first_batch(dm.train_dataloader())
    assert x.shape == (64, 3, 8, 8) and x.dtype == torch.float32
    assert y.dtype == torch.long and int(y.min()) >= 0 and int(y.max()) < 4
    assert sum(len(b[1]) for b in dm.train_dataloader()) == 100
    val, test = dm.val_dataloader()
    assert len(val.dataset) == 30 and len(test.dataset) == 20
    # The signal is learnable: class means of the training images differ far more than noise would allow.
    images, labels = dm.train_set.images, dm.train_set.labels
    means = torch.stack([images[labels == c].mean(0) for c in range(4)])
    assert (means[0] - means[1]).norm() > 3 * (images[labels == 0].std(0).mean())


def test_synthetic_is_deterministic_and_rebuildable_from_hparams() -> None:
    a = SyntheticImageDataModule(num_train=40, val_size=10, num_test=10, seed=3)
    b = type(a)(**a.hparams)
    c = SyntheticImageDataModule(num_train=40, val_size=10, num_test=10, seed=4)
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(a.train_set.images, b.train_set.images) and torch.equal(a.test_set.labels, b.test_set.labels)
    assert not torch.equal(a.train_set.images, c.train_set.images)


def test_eval_test_switches_the_validation_loaders() -> None:
    on = SyntheticImageDataModule(num_train=20, val_size=10, num_test=10)
    off = SyntheticImageDataModule(num_train=20, val_size=10, num_test=10, eval_test=False)
    for dm in (on, off):
        dm.setup()
    assert isinstance(on.val_dataloader(), list) and len(on.val_dataloader()) == 2
    assert on.val_dataloader()[1].dataset is on.test_dataloader().dataset
    assert off.val_dataloader().dataset is off.val_set


def test_train_order_follows_the_global_rng() -> None:
    dm = SyntheticImageDataModule(num_train=50, val_size=10, num_test=10, batch_size=50)
    dm.setup()
    torch.manual_seed(0)
    a = first_batch(dm.train_dataloader())[1]
    torch.manual_seed(0)
    b = first_batch(dm.train_dataloader())[1]
    c = first_batch(dm.train_dataloader())[1]
    assert torch.equal(a, b) and not torch.equal(b, c)


# ---------------------------------------------------------------------------------------------- augmentation


def test_random_crop_flip_is_a_padded_crop_or_its_mirror() -> None:
    torch.manual_seed(0)
    images = torch.randint(1, 256, (16, 3, 6, 6), dtype=torch.uint8)
    out = random_crop_flip(images, padding=2)
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    kinds = set()
    for i in range(16):
        matches = [
            (dy, dx, flip)
            for dy in range(5)
            for dx in range(5)
            for flip in (False, True)
            if torch.equal(out[i], (lambda c: c.flip(-1) if flip else c)(padded[i, :, dy : dy + 6, dx : dx + 6]))
        ]
        assert matches, f"sample {i} is not a crop of the padded image"
        kinds.add(matches[0][2])
    assert kinds == {False, True}  # 16 samples: both flipped and unflipped occur (p = 1 - 2 * 2**-16)


def test_augment_applies_to_training_batches_only() -> None:
    kwargs = {"num_train": 64, "val_size": 16, "num_test": 16, "image_shape": (3, 8, 8), "batch_size": 64}
    plain, augmented = SyntheticImageDataModule(**kwargs), SyntheticImageDataModule(augment=True, **kwargs)
    for dm in (plain, augmented):
        dm.setup()
    torch.manual_seed(0)
    x_plain, y_plain = first_batch(plain.train_dataloader())
    torch.manual_seed(0)
    x_aug, y_aug = first_batch(augmented.train_dataloader())
    assert torch.equal(y_plain, y_aug) and not torch.equal(x_plain, x_aug)
    assert torch.equal(first_batch(plain.val_dataloader()[0])[0], first_batch(augmented.val_dataloader()[0])[0])


# ---------------------------------------------------------------------------------------------- MNIST


def test_mnist_split_sizes_and_batches(mnist: MNISTDataModule) -> None:
    assert (len(mnist.train_set), len(mnist.val_set), len(mnist.test_set)) == (55_000, 5_000, 10_000)
    assert (mnist.num_classes, mnist.in_channels, mnist.image_size) == (10, 1, 28)
    x, y = first_batch(mnist.train_dataloader())
    assert x.shape == (60, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.long
    assert len(mnist.train_dataloader()) == 917  # ceil(55000 / 60)
    for split in (mnist.train_set, mnist.val_set, mnist.test_set):
        assert split.labels.min() == 0 and split.labels.max() == 9
    assert torch.bincount(mnist.test_set.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # Normalised with MNIST's mean/std: a large batch has mean ~0 and std ~1.
    big = mnist.train_set.__getitems__(list(range(5000)))[0]
    assert abs(big.mean().item()) < 0.05 and abs(big.std().item() - 1) < 0.05


def test_mnist_split_is_disjoint_seeded_and_independent_of_global_rng(mnist_root: Path, mnist) -> None:
    train, val = mnist.train_indices, mnist.val_indices
    assert len(set(train.tolist()) | set(val.tolist())) == 60_000
    assert not set(train.tolist()) & set(val.tolist())
    torch.manual_seed(123)  # the split must not depend on this
    again = MNISTDataModule(root=mnist_root, seed=0)
    other = MNISTDataModule(root=mnist_root, seed=1)
    again.setup("fit")
    other.setup("fit")
    assert torch.equal(again.val_indices, val) and torch.equal(again.val_set.images, mnist.val_set.images)
    assert not torch.equal(other.val_indices, val)
    assert torch.equal(other.test_set.images, mnist.test_set.images)  # test data is never split


def test_mnist_classes_subset_relabels_in_the_given_order(mnist_root: Path) -> None:
    dm = MNISTDataModule(root=mnist_root, classes=[7, 3], val_size=1000)
    dm.setup("fit")
    assert dm.num_classes == 2
    assert torch.bincount(dm.test_set.labels).tolist() == [1028, 1010]  # 7s become 0, 3s become 1
    assert len(dm.train_set) + len(dm.val_set) == 6265 + 6131
    assert set(first_batch(dm.train_dataloader())[1].tolist()) <= {0, 1}


def test_mnist_subset_keeps_the_first_training_examples(mnist_root: Path, mnist: MNISTDataModule) -> None:
    dm = MNISTDataModule(root=mnist_root, subset=1000)
    dm.setup("fit")
    assert len(dm.train_set) == 1000 and torch.equal(dm.train_indices, mnist.train_indices[:1000])
    assert len(dm.val_set) == 5000 and len(dm.test_set) == 10_000


def test_mnist_resize_and_channels_feed_cifar_shaped_networks(mnist_root: Path) -> None:
    dm = MNISTDataModule(root=mnist_root, resize=32, channels=3, subset=600)
    dm.setup("fit")
    assert dm.input_shape == (3, 32, 32)
    x, _ = first_batch(dm.train_dataloader())
    assert x.shape == (60, 3, 32, 32)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    x_test, _ = first_batch(dm.test_dataloader())
    assert x_test.shape[1:] == (3, 32, 32)


def test_invalid_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="classes"):
        MNISTDataModule(classes=[3, 3])
    with pytest.raises(ValueError, match="classes"):
        MNISTDataModule(classes=[10])
    with pytest.raises(ValueError, match="channels"):
        CIFAR10DataModule(channels=1)
    with pytest.raises(ValueError, match="val_size"):
        MNISTDataModule(val_size=-1)


def test_no_validation_split_gives_no_validation_loader() -> None:
    dm = SyntheticImageDataModule(num_train=20, val_size=0, num_test=10)
    dm.setup()
    assert dm.val_dataloader() == [] and len(dm.train_set) == 20


# ---------------------------------------------------------------------------------------------- CIFAR-10


def test_cifar10_split_sizes_and_batches(cifar_root: Path) -> None:
    dm = CIFAR10DataModule(root=cifar_root, augment=True)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (45_000, 5_000, 10_000)
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (10, 3, 32)
    x, _ = first_batch(dm.train_dataloader())
    assert x.shape == (60, 3, 32, 32) and x.dtype == torch.float32
    assert torch.bincount(dm.test_set.labels).tolist() == [1000] * 10
    assert int(dm.test_set.labels[0]) == 3  # test[0] is a cat, as in the original
    assert not set(dm.train_indices.tolist()) & set(dm.val_indices.tolist())
    big = dm.test_set.__getitems__(list(range(5000)))[0]
    assert big.mean(dim=(0, 2, 3)).abs().max() < 0.1 and (big.std(dim=(0, 2, 3)) - 1).abs().max() < 0.1


def _fake_cifar(folder: Path, n: int = 8) -> None:
    """A miniature cifar-10-batches-py: a dict of labels and a numpy uint8 array, as in the real one.

    Protocol 3, because Python 3's protocol 2 pickles bytes through ``_codecs.encode``, which the restricted
    unpickler refuses (the genuine Python 2 batches do not need it).
    """
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        batch = {"batch_label": name, "labels": [(i + j) % 10 for j in range(n)]}
        batch["data"] = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        (folder / name).write_bytes(pickle.dumps(batch, protocol=3))


def test_cifar10_reads_batches_without_md5_or_filenames(tmp_path: Path) -> None:
    _fake_cifar(tmp_path / "cifar-10-batches-py")
    dm = CIFAR10DataModule(root=tmp_path, val_size=10, download=False)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (30, 10, 8)
    raw = pickle.loads((tmp_path / "cifar-10-batches-py" / "test_batch").read_bytes())
    assert torch.equal(dm.test_set.images.reshape(8, -1), torch.from_numpy(raw["data"]))  # R, G, B planes


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_other_globals(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar-10-batches-py"
    _fake_cifar(folder)
    (folder / "data_batch_3").write_bytes(pickle.dumps({"data": _Exploit(marker), "labels": []}, protocol=2))
    with pytest.raises(UnsafePickleError, match=r"system.*only numpy arrays"):
        restricted_pickle_load(folder / "data_batch_3")
    with pytest.raises(UnsafePickleError, match="data_batch_3"):
        CIFAR10DataModule(root=tmp_path, download=False).setup("fit")
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [3, 4])
def test_restricted_unpickler_accepts_plain_numpy(tmp_path: Path, protocol: int) -> None:
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps({"a": np.arange(5, dtype=np.int64), "b": [1, "x"]}, protocol=protocol))
    out = restricted_pickle_load(path)
    assert out["b"] == [1, "x"] and out["a"].tolist() == [0, 1, 2, 3, 4]


def test_restricted_unpickler_refuses_codecs_too(tmp_path: Path) -> None:
    # Only the numpy globals are allowed, even harmless-looking ones like _codecs.encode (protocol-2 bytes).
    path = tmp_path / "p2.pkl"
    path.write_bytes(pickle.dumps({"a": np.arange(3, dtype=np.uint8)}, protocol=2))
    with pytest.raises(UnsafePickleError, match=r"_codecs\.encode"):
        restricted_pickle_load(path)


# ---------------------------------------------------------------------------------------------- missing data


def _offline(*args, **kwargs):
    raise RuntimeError("offline")


@pytest.mark.parametrize(
    ("module", "torchvision_class", "dataset", "expected"),
    [
        (MNISTDataModule, "MNIST", "MNIST", "train-images-idx3"),
        (CIFAR10DataModule, "CIFAR10", "CIFAR-10", "cifar-10-batches-py"),
    ],
)
def test_missing_data_error_says_what_and_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module, torchvision_class: str, dataset: str, expected: str
) -> None:
    import torchvision.datasets

    monkeypatch.setattr(getattr(torchvision.datasets, torchvision_class), "download", _offline)
    with pytest.raises(FileNotFoundError) as info:
        module(root=tmp_path).setup("fit")
    message = str(info.value)
    for part in (dataset, str(tmp_path.resolve()), expected, "offline", ENV_VAR):
        assert part in message
    # Also through $LOTTERY_DATA, and with downloads off (no torchvision call at all).
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "elsewhere"))
    monkeypatch.setattr(getattr(torchvision.datasets, torchvision_class), "download", None)
    with pytest.raises(FileNotFoundError, match=r"elsewhere.*download=False"):
        module(download=False).prepare_data()
