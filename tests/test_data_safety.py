"""Data files that cannot hurt: pickles that cannot run code, corrupt files named, no folders left by failures."""

from __future__ import annotations

import collections
import gzip
import importlib.util
import os
import pickle
import shutil
import struct
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_lottery.data.graph import CORA_FILES, CoraDataModule, read_planetoid
from lightning_lottery.data.root import ENV_VAR, CorruptDataError
from lightning_lottery.data.safe_pickle import UnsafePickleError, restricted_load
from lightning_lottery.data.text import WikiText2DataModule
from lightning_lottery.data.vision import CIFAR10DataModule, MNISTDataModule


class _Exploit:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _fake_planetoid(folder: Path, nodes: int = 40, features: int = 6, classes: int = 3, tests: int = 10) -> None:
    """Tiny Planetoid-format files (numpy arrays and an adjacency defaultdict, as pickled by Python 2 tools)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    onehot = np.eye(classes)[rng.integers(0, classes, nodes)]
    feats = (rng.random((nodes, features)) < 0.3).astype(np.float32)
    known = nodes - tests
    test_index = rng.permutation(np.arange(known, nodes))
    adjacency = collections.defaultdict(list)
    for a, b in rng.integers(0, nodes, (60, 2)):
        adjacency[int(a)].append(int(b))
        adjacency[int(b)].append(int(a))
    parts = {
        "x": feats[:5],
        "y": onehot[:5],
        "allx": feats[:known],
        "ally": onehot[:known],
        "tx": feats[np.sort(test_index)],
        "ty": onehot[np.sort(test_index)],
        "graph": adjacency,
    }
    for part, value in parts.items():  # protocol 4: Python 3's protocol 2 pickles bytes through _codecs.encode
        (folder / f"ind.cora.{part}").write_bytes(pickle.dumps(value, protocol=4))
    (folder / "ind.cora.test.index").write_text("\n".join(str(i) for i in test_index) + "\n")


def _cora_root(tmp_path: Path, shared_data: Path | None = None) -> Path:
    """A writable copy of Cora's raw files: the real ones when available, else tiny fakes."""
    raw = tmp_path / "data" / "Cora" / "raw"
    real = shared_data / "Cora" / "raw" if shared_data else None
    if real is not None and all((real / n).is_file() for n in CORA_FILES):
        shutil.copytree(real, raw)
        for path in raw.iterdir():
            path.chmod(0o644)
    else:
        _fake_planetoid(raw)
    return tmp_path / "data"


# ---------------------------------------------------------------------------------------------- pickles


@pytest.mark.parametrize("part", ["x", "graph", "ty"])
def test_a_planted_payload_in_a_cora_file_does_not_run(tmp_path: Path, part: str):
    root = _cora_root(tmp_path)
    marker = tmp_path / "pwned"
    target = root / "Cora" / "raw" / f"ind.cora.{part}"
    target.write_bytes(pickle.dumps({"rows": _Exploit(marker)}, protocol=2))
    data = CoraDataModule(root=root, cache_dir=tmp_path / "cache")
    with pytest.raises(UnsafePickleError) as info:
        data.setup()
    assert str(target) in str(info.value) and "system" in str(info.value)
    assert not marker.exists()
    assert pickle.loads(target.read_bytes()) and marker.exists()  # the payload is live: plain pickle runs it


def test_real_cora_planted_payload_does_not_run(tmp_path: Path, shared_data: Path):
    root = _cora_root(tmp_path, shared_data)
    marker = tmp_path / "pwned"
    (root / "Cora" / "raw" / "ind.cora.allx").write_bytes(pickle.dumps(_Exploit(marker), protocol=2))
    with pytest.raises(UnsafePickleError, match=r"ind\.cora\.allx"):
        CoraDataModule(root=root, cache_dir=tmp_path / "cache").setup()
    assert not marker.exists()


def test_the_fake_planetoid_files_load_with_the_public_split(tmp_path: Path):
    root = _cora_root(tmp_path)
    graph = read_planetoid(root / "Cora" / "raw")
    assert graph["x"].shape == (40, 6) and graph["y"].shape == (40,)
    # As in PyG: training nodes are the first len(y), validation the next 500 (here all 35 others), test those listed.
    assert (int(graph["train_mask"].sum()), int(graph["val_mask"].sum()), int(graph["test_mask"].sum())) == (5, 35, 10)
    edges = graph["edge_index"]
    assert bool((edges[0] != edges[1]).all())  # no self loops
    keys = edges[1] * 40 + edges[0]
    assert torch.equal(keys, torch.unique(keys))  # no duplicates, sorted by target then source


@pytest.mark.skipif(importlib.util.find_spec("torch_geometric") is None, reason="compares with PyTorch Geometric")
def test_the_safe_cora_reader_matches_pyg_planetoid(tmp_path: Path, shared_data: Path):
    from torch_geometric.datasets import Planetoid

    real = shared_data / "Cora" / "raw"
    if not all((real / n).is_file() for n in CORA_FILES):
        pytest.skip(f"Cora's Planetoid files are not in {real}")
    root = _cora_root(tmp_path, shared_data)
    ours = read_planetoid(root / "Cora" / "raw")
    theirs = Planetoid(str(root), "Cora", split="public")[0]  # trusted files: PyG unpickles them itself
    for key in ("x", "edge_index", "y", "train_mask", "val_mask", "test_mask"):
        assert torch.equal(ours[key], getattr(theirs, key)), key


def test_a_truncated_pickle_names_the_file(tmp_path: Path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": np.arange(100)}, protocol=2)[:40])
    with pytest.raises(CorruptDataError, match=r"data_batch_1 is truncated or corrupt"):
        restricted_load(path)


# ---------------------------------------------------------------------------------------------- corrupt files


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _fake_mnist(root: Path, n: int = 20) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, count in (("train", n), ("t10k", n // 2)):
        _write_idx(raw / f"{split}-images-idx3-ubyte.gz", np.zeros((count, 28, 28)))
        _write_idx(raw / f"{split}-labels-idx1-ubyte.gz", np.arange(count) % 10)
    return raw


def test_a_corrupt_mnist_gz_names_the_file(tmp_path: Path):
    raw = _fake_mnist(tmp_path / "root")
    MNISTDataModule(root=tmp_path / "root", download=False, val_size=5).setup("fit")  # the fakes are valid
    bad = raw / "t10k-images-idx3-ubyte.gz"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # cut short, as by a failed copy
    with pytest.raises(CorruptDataError, match=r"t10k-images-idx3-ubyte\.gz is truncated or corrupt"):
        MNISTDataModule(root=tmp_path / "root", download=False, val_size=5).setup("fit")
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(CorruptDataError, match=r"t10k-images-idx3-ubyte\.gz"):
        MNISTDataModule(root=tmp_path / "root", download=False, val_size=5).setup("fit")


def test_a_corpus_that_is_not_utf8_names_the_file(tmp_path: Path):
    folder = tmp_path / "wikitext-2"
    folder.mkdir()
    for split in ("train", "valid", "test"):
        (folder / f"{split}.txt").write_text("the cat sat\n" * 5)
    (folder / "valid.txt").write_bytes(b"the \xff\xfe cat\n")
    with pytest.raises(CorruptDataError, match=r"valid\.txt is not UTF-8"):
        WikiText2DataModule(root=tmp_path).setup("fit")


# ---------------------------------------------------------------------------------------------- missing data


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every download fails as on a machine without network (after torchvision has made its folders)."""

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.mark.parametrize(("module", "dataset"), [(MNISTDataModule, "MNIST"), (CIFAR10DataModule, "CIFAR-10")])
def test_a_failed_download_leaves_no_folders(tmp_path: Path, monkeypatch, offline, module, dataset: str):
    monkeypatch.delenv(ENV_VAR, raising=False)
    missing = tmp_path / "no" / "such" / "root"
    with pytest.raises(FileNotFoundError) as info:
        module(root=missing).prepare_data()
    message = str(info.value)
    assert f"{dataset} not found under {missing}" in message and "does not exist" in message
    assert "Name or service not known" in message and ENV_VAR in message
    assert not (tmp_path / "no").exists()

    work = tmp_path / "work"  # the default root is ./data in the working directory
    work.mkdir()
    monkeypatch.chdir(work)
    with pytest.raises(FileNotFoundError, match=dataset):
        module().prepare_data()
    assert list(work.iterdir()) == []

    existing = tmp_path / "existing"  # an existing root keeps itself, loses only what the download made
    existing.mkdir()
    with pytest.raises(FileNotFoundError):
        module(root=existing).prepare_data()
    assert existing.is_dir() and list(existing.iterdir()) == []


def test_cora_without_files_creates_nothing(tmp_path: Path, monkeypatch, offline):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(FileNotFoundError, match=r"Cora not found"):
        CoraDataModule(root=tmp_path / "missing", cache_dir=tmp_path / "cache").setup()
    assert sorted(tmp_path.iterdir()) == []
    pytest.importorskip("torch_geometric", reason="downloading Cora needs PyTorch Geometric")
    with pytest.raises(FileNotFoundError, match=r"(?s)Cora not found.*Downloading failed"):
        CoraDataModule(root=tmp_path / "missing", cache_dir=tmp_path / "cache", download=True).setup()
    assert sorted(tmp_path.iterdir()) == []
