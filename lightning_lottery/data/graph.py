"""Full-batch node-classification datamodules (Cora, synthetic graphs) for the graph recipes.

The whole graph is one batch: every training step and every validation sees all nodes and edges, and a node
mask says which nodes the loss and metrics are over. Each loader yields one :class:`GraphBatch`
(``x``, ``edge_index``, ``y``, ``mask``), a named tuple of tensors that Lightning moves between devices as usual.
With ``eval_test=True`` (default) ``val_dataloader()`` returns ``[val, test]`` like the vision datamodules, so
test metrics are logged at every validation and can be read at the validation-selected early-stop iteration.

``subset`` keeps only the first ``subset`` training nodes (Cora has 140, so the generic ``preset=fast`` value of
600 changes nothing) and ``eval_batch_size`` is accepted and ignored: evaluation is always full-batch. Both exist
so that presets written for the image datamodules apply unchanged.

Cora's raw files are read without PyTorch Geometric (and without unpickling anything but plain data); the GCN
model needs it (``pip install 'lightning-lottery[graph]'``), and so does downloading Cora. The synthetic graph
needs only torch.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

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
from lightning_lottery.data.safe_pickle import (
    CONTAINER_GLOBALS,
    NUMPY_GLOBALS,
    SPARSE_GLOBALS,
    SparseMatrixState,
    restricted_load,
)

__all__ = [
    "CORA_FILES",
    "CoraDataModule",
    "GraphBatch",
    "GraphDataModule",
    "SyntheticGraphDataModule",
    "default_cache_dir",
    "read_planetoid",
    "require_torch_geometric",
]

PYG_HINT = "pip install 'lightning-lottery[graph]' (from a checkout: pip install -e '.[graph]')"
CORA_FILES = tuple(f"ind.cora.{part}" for part in ("x", "y", "tx", "ty", "allx", "ally", "graph", "test.index"))
_CORA_EXPECTED = "Cora/raw/ind.cora.{x,y,tx,ty,allx,ally,graph,test.index} (the Planetoid files)"


def require_torch_geometric() -> Any:
    """The ``torch_geometric`` module, or an ImportError that says how to install it."""
    try:
        import torch_geometric
    except ImportError as err:
        raise ImportError(f"The graph datasets and models need PyTorch Geometric: {PYG_HINT}") from err
    return torch_geometric


def default_cache_dir() -> Path:
    """Where Cora is copied and processed: ``$XDG_CACHE_HOME`` (else ``~/.cache``) ``/lightning_lottery/Planetoid``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lightning_lottery" / "Planetoid"


class GraphBatch(NamedTuple):
    """One full-graph batch: node features, edges (COO, 2 x E), labels, and the nodes this split scores."""

    x: Tensor
    edge_index: Tensor
    y: Tensor
    mask: Tensor


class _OneGraph(Dataset[GraphBatch]):
    """A dataset of exactly one item: the graph with one split's mask."""

    def __init__(self, batch: GraphBatch) -> None:
        self.batch = batch

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> GraphBatch:
        if index != 0:
            raise IndexError(index)
        return self.batch


class GraphDataModule(pl.LightningDataModule):
    """Base class: one graph with train/val/test node masks, served full-batch. Subclasses implement :meth:`load`.

    Args:
        subset: keep only the first ``subset`` training nodes (in node order); ``None`` keeps all.
        eval_test: ``val_dataloader()`` returns ``[val, test]``: test metrics at every validation.
        eval_batch_size: accepted for preset compatibility and ignored (evaluation is full-batch).
    """

    name = "graph"

    def __init__(self, subset: int | None = None, eval_test: bool = True, eval_batch_size: int | None = None) -> None:
        super().__init__()
        if subset is not None and subset < 1:
            raise ValueError(f"subset must be >= 1 or None, got {subset}")
        self.subset = subset
        self.eval_test = eval_test
        self.eval_batch_size = eval_batch_size  # unused: see the module docstring
        self.graph: dict[str, Tensor] | None = None

    # -------------------------------------------------------------- shape (before setup: subclasses know it)

    @property
    def in_channels(self) -> int:
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    # -------------------------------------------------------------- data

    def load(self) -> dict[str, Tensor]:
        """``{"x", "edge_index", "y", "train_mask", "val_mask", "test_mask"}`` for the whole graph."""
        raise NotImplementedError

    def prepare_data(self) -> None:
        self.load()

    def setup(self, stage: str | None = None) -> None:
        if self.graph is not None:
            return
        graph = dict(self.load())
        if graph["x"].shape[1] != self.in_channels or int(graph["y"].max()) >= self.num_classes:
            raise ValueError(
                f"{self.name}: loaded {graph['x'].shape[1]} features and labels up to {int(graph['y'].max())}, "
                f"but declares in_channels={self.in_channels}, num_classes={self.num_classes}"
            )
        if self.subset is not None:
            train = graph["train_mask"].clone()
            keep = train.nonzero().flatten()[: self.subset]
            train[:] = False
            train[keep] = True
            graph["train_mask"] = train
        self.graph = graph

    def _loader(self, split: str) -> DataLoader:
        if self.graph is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not run")
        g = self.graph
        batch = GraphBatch(g["x"], g["edge_index"], g["y"], g[f"{split}_mask"])
        # batch_size=None: no collation, the loader yields the graph itself (once per epoch).
        return DataLoader(_OneGraph(batch), batch_size=None, shuffle=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        val = self._loader("val")
        return [val, self._loader("test")] if self.eval_test else val

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def split_sizes(self) -> dict[str, int]:
        """Nodes per split after :meth:`setup` (Cora: 140 / 500 / 1000)."""
        if self.graph is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not run")
        return {split: int(self.graph[f"{split}_mask"].sum()) for split in ("train", "val", "test")}


def read_planetoid(folder: str | os.PathLike[str], prefix: str = "cora") -> dict[str, Tensor]:
    """The graph and public split of a Planetoid dataset from its raw files ``ind.<prefix>.*`` in ``folder``.

    The files are Python pickles; they are read with a restricted unpickler that builds numpy arrays, lists and
    dicts only (scipy's sparse matrices become plain arrays), so a planted file cannot run code: it is refused
    with an :class:`~lightning_lottery.data.safe_pickle.UnsafePickleError` naming it. The result matches PyTorch
    Geometric's ``Planetoid(split="public")`` (the same node order, features, labels, masks and edge order: self
    loops and duplicate edges dropped, edges sorted by target then source). Only the datasets whose test nodes
    are contiguous (Cora, PubMed) are handled; Citeseer's isolated test nodes are not.
    """
    folder = Path(folder)
    items = {part: _read_planetoid_part(folder / f"ind.{prefix}.{part}") for part in _PLANETOID_PARTS}
    x = torch.cat([items["allx"], items["tx"]])
    labels = torch.cat([items["ally"], items["ty"]])
    test_index = items["test.index"]
    num_nodes, num_train = len(x), len(items["y"])
    if len(labels) != num_nodes or len(test_index) != len(items["tx"]) or int(test_index.max()) >= num_nodes:
        raise CorruptDataError(
            f"Planetoid files in {folder} disagree: {num_nodes} feature rows, {len(labels)} label rows, "
            f"{len(test_index)} test indices for {len(items['tx'])} test rows (largest {int(test_index.max())})"
        )
    ordered = test_index.sort().values  # the test rows are stored in sorted-index order
    x[test_index] = x[ordered]
    y = labels.max(dim=1).indices
    y[test_index] = y[ordered]
    masks = {
        "train_mask": torch.arange(num_nodes) < num_train,
        "val_mask": (torch.arange(num_nodes) >= num_train) & (torch.arange(num_nodes) < num_train + 500),
        "test_mask": torch.zeros(num_nodes, dtype=torch.bool).index_fill_(0, test_index, True),
    }
    return {"x": x, "edge_index": _edges_from_adjacency(items["graph"], num_nodes, folder), "y": y, **masks}


_PLANETOID_PARTS = ("x", "y", "tx", "ty", "allx", "ally", "graph", "test.index")


def _read_planetoid_part(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    if path.name.endswith(".test.index"):
        try:
            return torch.tensor([int(line) for line in path.read_text().split()], dtype=torch.long)
        except (ValueError, UnicodeDecodeError) as err:
            raise CorruptDataError(f"{path} is not a list of node indices ({err})") from err
    allowed = {**NUMPY_GLOBALS, **CONTAINER_GLOBALS, **SPARSE_GLOBALS}
    value = restricted_load(path, allowed, what="a Planetoid file", contents="numpy arrays, sparse matrices, lists")
    if path.name.endswith(".graph"):
        if not isinstance(value, dict):
            raise CorruptDataError(f"{path} is not an adjacency dict (got {type(value).__name__})")
        return dict(value)
    try:
        array = value.to_dense() if isinstance(value, SparseMatrixState) else np.asarray(value)
        if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
            raise ValueError(f"expected a 2-D numeric matrix, got shape {array.shape} of {array.dtype}")
    except ValueError as err:
        raise CorruptDataError(f"{path}: {err}") from err
    return torch.from_numpy(np.ascontiguousarray(array)).float()


def _edges_from_adjacency(adjacency: dict[Any, Any], num_nodes: int, folder: Path) -> Tensor:
    """Directed edges (source, target) of an adjacency dict, without self loops or duplicates, in PyG's order."""
    try:
        sources = torch.tensor([int(node) for node, targets in adjacency.items() for _ in targets], dtype=torch.long)
        targets = torch.tensor([int(t) for ts in adjacency.values() for t in ts], dtype=torch.long)
    except (TypeError, ValueError) as err:
        raise CorruptDataError(f"the adjacency dict in {folder} holds non-integer nodes ({err})") from err
    if len(sources) and (min(sources.min(), targets.min()) < 0 or max(sources.max(), targets.max()) >= num_nodes):
        raise CorruptDataError(f"the adjacency dict in {folder} names nodes outside 0..{num_nodes - 1}")
    keep = sources != targets
    keys = torch.unique(targets[keep] * num_nodes + sources[keep])  # sorted by target, then source
    return torch.stack([keys % num_nodes, keys // num_nodes])


class CoraDataModule(GraphDataModule):
    """Cora (2,708 papers, 1,433 bag-of-words features, 7 classes, 10,556 directed edges) with the standard
    public Planetoid split: 140 training, 500 validation and 1,000 test nodes.

    The raw Planetoid files are read from ``<root>/Cora/raw`` with :func:`read_planetoid` (a restricted
    unpickler: the files are pickles, and a planted one cannot run code); nothing is written to the root. If the
    root lacks them but ``cache_dir`` has them, the cache is used; failing both, ``download=True`` fetches them
    into the cache (that needs PyTorch Geometric); otherwise a ``FileNotFoundError`` says where to put them.

    Args:
        root: data folder (``None``: ``$LOTTERY_DATA``, else ``./data``).
        cache_dir: writable folder for downloaded files (default :func:`default_cache_dir`).
        normalize_features: scale each node's features to sum 1 (the preprocessing of Kipf & Welling's GCN).
        download: download the files into the cache when neither root nor cache has them.
        subset, eval_test, eval_batch_size: see :class:`GraphDataModule`.
    """

    name = "Cora"

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        normalize_features: bool = True,
        download: bool = False,
        subset: int | None = None,
        eval_test: bool = True,
        eval_batch_size: int | None = None,
    ) -> None:
        super().__init__(subset=subset, eval_test=eval_test, eval_batch_size=eval_batch_size)
        self.save_hyperparameters()
        self.root = root
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.normalize_features = normalize_features
        self.download = download

    @property
    def in_channels(self) -> int:
        return 1433

    @property
    def num_classes(self) -> int:
        return 7

    def raw_folder(self) -> Path:
        """The folder holding the raw files: the data root's, else the cache's (downloading there if allowed)."""
        source = resolve_data_root(self.root) / "Cora" / "raw"
        cached = self.cache_dir / "Cora" / "raw"
        for folder in (source, cached):
            if all((folder / name).is_file() for name in CORA_FILES):
                return folder
        if not self.download:
            raise missing_data_error("Cora", source.parent.parent, _CORA_EXPECTED)
        self._download(cached)
        return cached

    def _download(self, folder: Path) -> None:
        """Fetch the raw files into ``folder`` (each through a temporary name: no half files are left)."""
        require_torch_geometric()
        from torch_geometric.data import download_url
        from torch_geometric.datasets import Planetoid

        try:
            with removing_new_empty_folders(folder):
                folder.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryDirectory(dir=folder, prefix=".download.") as staging:
                    for name in CORA_FILES:
                        if not (folder / name).is_file():
                            os.replace(download_url(f"{Planetoid.url}/{name}", staging, log=False), folder / name)
        except Exception as err:  # offline, read-only cache: the same advice
            raise missing_data_error("Cora", resolve_data_root(self.root), _CORA_EXPECTED, err) from err

    def load(self) -> dict[str, Tensor]:
        graph = read_planetoid(self.raw_folder(), "cora")
        if self.normalize_features:
            graph["x"] = graph["x"] / graph["x"].sum(dim=1, keepdim=True).clamp_min(1.0)
        return graph


class SyntheticGraphDataModule(GraphDataModule):
    """A random homophilous graph with a learnable signal, for tests and demos (no files, no PyG needed).

    Node ``i`` gets a label, features ``signal * prototype[label] + N(0, 1)`` and about ``avg_degree`` edges,
    each to a node of its own class with probability ``homophily`` (else to any node); edges are undirected
    (both directions listed) without self-loops. The split is Planetoid-like: the first ``train_per_class``
    nodes of each class train, then ``num_val`` validation and ``num_test`` test nodes. Drawn from ``seed``.
    """

    name = "synthetic graph"

    def __init__(
        self,
        num_nodes: int = 300,
        num_features: int = 32,
        num_classes: int = 4,
        avg_degree: float = 6.0,
        homophily: float = 0.8,
        signal: float = 0.5,
        train_per_class: int = 10,
        num_val: int = 60,
        num_test: int = 120,
        seed: int = 0,
        subset: int | None = None,
        eval_test: bool = True,
        eval_batch_size: int | None = None,
    ) -> None:
        super().__init__(subset=subset, eval_test=eval_test, eval_batch_size=eval_batch_size)
        self.save_hyperparameters()
        if num_classes * train_per_class + num_val + num_test > num_nodes:
            raise ValueError(f"{num_nodes} nodes are too few for the requested train/val/test split")
        if not 0.0 <= homophily <= 1.0:
            raise ValueError(f"homophily must be in [0, 1], got {homophily}")
        self.num_nodes, self.num_features, self._num_classes = num_nodes, num_features, num_classes
        self.avg_degree, self.homophily, self.signal = avg_degree, homophily, signal
        self.train_per_class, self.num_val, self.num_test, self.seed = train_per_class, num_val, num_test, seed

    @property
    def in_channels(self) -> int:
        return self.num_features

    @property
    def num_classes(self) -> int:
        return self._num_classes

    def load(self) -> dict[str, Tensor]:
        g = torch.Generator().manual_seed(self.seed)
        n, c = self.num_nodes, self._num_classes
        y = torch.arange(n) % c  # balanced classes, shuffled below
        y = y[torch.randperm(n, generator=g)]
        prototypes = torch.randn(c, self.num_features, generator=g)
        x = self.signal * prototypes[y] + torch.randn(n, self.num_features, generator=g)
        edge_index = self._edges(y, g)
        train = torch.zeros(n, dtype=torch.bool)
        for label in range(c):
            train[(y == label).nonzero().flatten()[: self.train_per_class]] = True
        rest = (~train).nonzero().flatten()
        val = torch.zeros(n, dtype=torch.bool)
        test = torch.zeros(n, dtype=torch.bool)
        val[rest[: self.num_val]] = True
        test[rest[self.num_val : self.num_val + self.num_test]] = True
        return {"x": x, "edge_index": edge_index, "y": y, "train_mask": train, "val_mask": val, "test_mask": test}

    def _edges(self, y: Tensor, g: torch.Generator) -> Tensor:
        n = len(y)
        count = max(1, round(n * self.avg_degree / 2))
        src = torch.randint(0, n, (count,), generator=g)
        anywhere = torch.randint(0, n, (count,), generator=g)
        # A same-class partner: a random node among those of src's class (sorted by class, index by offset).
        order = torch.argsort(y, stable=True)
        sizes = torch.bincount(y, minlength=self._num_classes)
        starts = torch.cumsum(sizes, 0) - sizes
        offset = (torch.rand(count, generator=g) * sizes[y[src]]).long()
        same = order[starts[y[src]] + offset]
        dst = torch.where(torch.rand(count, generator=g) < self.homophily, same, anywhere)
        keep = src != dst
        pairs = torch.stack([torch.cat([src[keep], dst[keep]]), torch.cat([dst[keep], src[keep]])])
        return torch.unique(pairs, dim=1)  # duplicates removed, sorted by source node
