"""Image-folder datamodules (ImageNet layout, Places365 through torchvision) on tiny fake datasets written by the
tests: shapes, labels, the held-out split, augmentation on training only, class selection, and missing data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fake_images import CLASSES, write_image_folder, write_places365
from PIL import Image
from torch.utils.data import RandomSampler, SequentialSampler

from lightning_lottery.data.folder import (
    ImageFolderDataModule,
    ImageNetDataModule,
    Places365DataModule,
    eval_transform,
)
from lightning_lottery.data.root import ENV_VAR


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<root>/imagenet/{train,val}/<3 classes>/``: 6 training and 2 validation images per class."""
    root = tmp_path_factory.mktemp("data")
    write_image_folder(root / "imagenet")
    return root


def make(root: Path, **kwargs) -> ImageNetDataModule:
    args = {"root": root, "image_size": 32, "batch_size": 4, "eval_batch_size": 8, "num_workers": 0, "val_size": 3}
    dm = ImageNetDataModule(**{**args, **kwargs})
    dm.setup("fit")
    return dm


def paths(dataset) -> set[str]:
    return {dataset.path(i) for i in range(len(dataset))}


def test_shapes_labels_and_loaders(data_root: Path) -> None:
    dm = ImageNetDataModule(root=data_root, image_size=32, num_workers=0, val_size=3, batch_size=4)
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (3, 3, 32)  # known before setup: the app needs them
    assert dm.class_names == CLASSES
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (15, 3, 6)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    val, test = dm.val_dataloader()
    tx, ty = next(iter(test))
    assert tx.shape == (6, 3, 32, 32) and ty.tolist() == [0, 0, 1, 1, 2, 2]  # labels = sorted class folders
    for i in range(len(dm.test_set)):  # each image is labelled by the folder it lies in
        assert Path(dm.test_set.path(i)).parent.name == CLASSES[dm.test_set.label(i)]
    # Plain samplers: Lightning swaps in a DistributedSampler under DDP.
    assert isinstance(dm.train_dataloader().sampler, RandomSampler) and isinstance(val.sampler, SequentialSampler)
    assert abs(float(tx.mean())) < 1.0  # normalised with the ImageNet mean/std, not raw [0, 1] pixels


def test_held_out_split_is_disjoint_seeded_and_from_training_images(data_root: Path) -> None:
    dm = make(data_root)
    train, val = paths(dm.train_set), paths(dm.val_set)
    assert not train & val
    assert train | val == {str(p) for p in (data_root / "imagenet" / "train").rglob("*.*")}
    assert all("/train/" in p for p in val) and all("/val/" in p for p in paths(dm.test_set))
    assert paths(make(data_root).val_set) == val  # the seed alone draws it
    assert paths(make(data_root, seed=1).val_set) != val


def test_subset_is_a_seeded_sample_across_classes(data_root: Path) -> None:
    dm = make(data_root, subset=6)
    assert len(dm.train_set) == 6
    assert len({dm.train_set.label(i) for i in range(6)}) > 1  # not the first 6 files (all of one class)
    assert paths(dm.train_set) <= paths(make(data_root).train_set)
    assert paths(dm.val_set) == paths(make(data_root).val_set)  # subset does not change the held-out split


def test_augmentation_on_training_only(data_root: Path) -> None:
    dm = make(data_root)
    torch.manual_seed(0)
    a, b = dm.train_set[0][0], dm.train_set[0][0]
    assert a.shape == (3, 32, 32) and not torch.equal(a, b)  # random resized crop + flip differ per draw
    for split in (dm.val_set, dm.test_set):
        first, second = split[0][0], split[0][0]
        assert torch.equal(first, second)
        with Image.open(split.path(0)) as image:
            assert torch.equal(first, eval_transform(32)(image.convert("RGB")))  # resize 36 + centre crop 32
    plain = make(data_root, augment=False)
    assert torch.equal(plain.train_set[0][0], plain.train_set[0][0])


def test_class_selection_relabels_in_the_given_order(data_root: Path) -> None:
    dm = make(data_root, classes=[CLASSES[2], 0], val_size=2)
    assert dm.num_classes == 2
    assert len(dm.train_set) + len(dm.val_set) == 12 and len(dm.test_set) == 4
    labels = {Path(dm.test_set.path(i)).parent.name: dm.test_set.label(i) for i in range(4)}
    assert labels == {CLASSES[2]: 0, CLASSES[0]: 1}
    with pytest.raises(ValueError, match="neither a class"):
        make(data_root, classes=["n99999999"])


def test_validation_loaders_follow_val_size_and_eval_test(data_root: Path) -> None:
    assert make(data_root, val_size=0).val_dataloader() == []
    single = make(data_root, eval_test=False).val_dataloader()
    assert len(single.dataset) == 3
    with pytest.raises(ValueError, match="leaves no training data"):
        make(data_root, val_size=18)


def test_worker_processes_decode_images(data_root: Path) -> None:
    dm = make(data_root, num_workers=1)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and y.shape == (4,)


def test_root_may_be_the_dataset_folder_itself_or_hold_any_folder(data_root: Path) -> None:
    assert make(data_root / "imagenet").num_classes == 3
    generic = ImageFolderDataModule(root=data_root, folder="imagenet", image_size=32, num_workers=0, val_size=1)
    generic.setup()
    assert len(generic.train_set) == 17


def test_missing_imagenet_says_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    dm = ImageNetDataModule(root=tmp_path / "empty")
    expected = r"(?s)ImageNet not found under .*empty.*imagenet/\{train,val\}.*LOTTERY_DATA"
    with pytest.raises(FileNotFoundError, match=expected):
        dm.num_classes  # noqa: B018 - the property reads the class folders
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "from_env"))
    with pytest.raises(FileNotFoundError, match="from_env"):
        ImageNetDataModule().setup()


def test_missing_imagenet_fails_the_app_before_training(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir

    import lightning_lottery
    from lightning_lottery.app import run

    conf = Path(lightning_lottery.__file__).parent / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        overrides = ["recipe=imagenet_resnet50", f"paths.output_dir={tmp_path / 'run'}", "preset=fast"]
        cfg = compose("config", overrides=[*overrides, f"paths.data_root={tmp_path}"])
    with pytest.raises(FileNotFoundError, match=r"(?s)ImageNet not found.*LOTTERY_DATA"):
        run(cfg)
    assert not (tmp_path / "run" / "lottery").exists()


def test_flat_validation_folder_asks_for_class_folders(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "imagenet")
    for image in list((tmp_path / "imagenet" / "val").rglob("*.*")):  # ImageNet's val archive: one flat folder
        image.rename(tmp_path / "imagenet" / "val" / f"{image.parent.name}_{image.name}")
    with pytest.raises(FileNotFoundError, match="one folder per class"):
        make(tmp_path)


# ---------------------------------------------------------------------------------------------- Places365


@pytest.fixture
def places_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_places365(tmp_path / "places365")
    # The fake file lists cannot match torchvision's MD5s of the real ones.
    monkeypatch.setattr("torchvision.datasets.places365.check_integrity", lambda *args, **kwargs: True)
    return tmp_path


def test_places365_through_torchvision(places_root: Path) -> None:
    dm = Places365DataModule(root=places_root, image_size=32, batch_size=4, num_workers=0, val_size=3)
    assert dm.class_names == ("/a/abbey", "/b/bakery/shop", "/c/canyon") and dm.num_classes == 3
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (15, 3, 6)
    assert all("data_256_standard" in p for p in paths(dm.train_set) | paths(dm.val_set))
    assert all("val_256" in p for p in paths(dm.test_set))
    assert [dm.test_set.label(i) for i in range(6)] == [0, 0, 1, 1, 2, 2]
    for i in range(len(dm.train_set)):
        assert Path(dm.train_set.path(i)).parent.name == dm.class_names[dm.train_set.label(i)].rsplit("/", 1)[-1]
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32)
    assert dm.hparams["small"] is True and dm.hparams["folder"] == "places365"


def test_places365_missing_pieces_are_named(places_root: Path, tmp_path: Path) -> None:
    (places_root / "places365" / "data_256_standard").rename(places_root / "places365" / "data_256")
    with pytest.raises(FileNotFoundError, match=r"data_256_standard.*rename"):
        Places365DataModule(root=places_root, num_workers=0, val_size=1).setup()
    with pytest.raises(FileNotFoundError, match=r"Places365 not found.*categories_places365\.txt"):
        Places365DataModule(root=tmp_path / "nothing").num_classes  # noqa: B018


def test_places365_corrupt_file_list_is_reported(tmp_path: Path) -> None:
    write_places365(tmp_path / "places365")  # the real MD5 check runs: the fake lists fail it
    with pytest.raises(ValueError, match=r"Places365 under .*corrupted"):
        Places365DataModule(root=tmp_path, num_workers=0, val_size=1).setup()


def test_labels_are_numpy_backed(data_root: Path) -> None:
    # No per-image Python objects for forked workers to copy on access.
    dm = make(data_root)
    assert isinstance(dm.train_set.images.paths, np.ndarray) and dm.train_set.images.paths.dtype.kind == "S"
