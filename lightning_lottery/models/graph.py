"""Graph networks for node classification, as plain ``nn.Module``\\ s built on PyTorch Geometric.

==========  ================================================================  ============
name        network                                                           output layer
==========  ================================================================  ============
``gcn``     :class:`GCN`: ``conv1``, ``conv2`` (GCNConv) + ``fc`` (Linear)    ``fc``
==========  ================================================================  ============

A ``GCNConv`` keeps its weight in ``conv<i>.lin.weight``. That ``lin`` is PyG's own ``Linear``, which is *not* a
subclass of ``torch.nn.Linear``: the lottery callback's default selection (Linear/Conv/RNN/attention weights)
would pick only ``fc.weight``, so the graph recipes name the GCN weights with ``lottery.parameters``
(``model.conv*.lin.weight``). ``torch.nn.utils.prune`` masks them like any other parameter.

Needs PyTorch Geometric: ``pip install 'lightning-lottery[graph]'``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Literal

from torch import Tensor, nn

from lightning_lottery.data.graph import require_torch_geometric

__all__ = ["GCN", "GRAPH_INIT_SCHEMES", "GRAPH_MODELS", "build_graph_model", "initialize_graph_model"]

GraphInit = Literal["default", "glorot_normal"]
GRAPH_INIT_SCHEMES: tuple[str, ...] = ("default", "glorot_normal")


class GCN(nn.Module):
    """Two graph convolutions and a linear classifier (Kipf & Welling's GCN with a linear head).

    ``dropout`` -> ``conv1`` -> leaky_relu -> ``dropout`` -> ``conv2`` -> leaky_relu -> ``dropout`` -> ``fc``.
    GCNConv adds self-loops and uses the symmetric normalisation ``D^-1/2 (A + I) D^-1/2``.

    Args:
        in_channels: node features (Cora: 1433).
        num_classes: output classes (Cora: 7).
        hidden: width of both graph convolutions.
        dropout: dropout rate on the input of every layer.
        negative_slope: leaky_relu slope.
        cached: compute the normalised adjacency once, on the first graph seen, and reuse it (PyG's
            ``GCNConv(cached=True)``). Right for transductive full-batch training on one graph (Cora: it is most
            of a CPU training step's time); pass ``False`` to run one module on several graphs.
    """

    output_layer = "fc"

    def __init__(
        self,
        in_channels: int = 1433,
        num_classes: int = 7,
        hidden: int = 64,
        dropout: float = 0.5,
        negative_slope: float = 0.01,
        cached: bool = True,
    ) -> None:
        super().__init__()
        if in_channels < 1 or num_classes < 1 or hidden < 1:
            raise ValueError(
                f"in_channels, num_classes and hidden must be >= 1, got {in_channels}, {num_classes}, {hidden}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        pyg_nn = require_torch_geometric().nn
        self.in_channels, self.num_classes = in_channels, num_classes
        self.negative_slope = negative_slope
        self.conv1 = pyg_nn.GCNConv(in_channels, hidden, cached=cached)
        self.conv2 = pyg_nn.GCNConv(hidden, hidden, cached=cached)
        self.fc = nn.Linear(hidden, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        act = nn.functional.leaky_relu
        x = act(self.conv1(self.dropout(x), edge_index), self.negative_slope)
        x = act(self.conv2(self.dropout(x), edge_index), self.negative_slope)
        return self.fc(self.dropout(x))


GRAPH_MODELS: dict[str, Callable[..., nn.Module]] = {"gcn": GCN}


def initialize_graph_model(model: nn.Module, scheme: GraphInit | str = "default") -> nn.Module:
    """Re-initialise in place: ``"default"`` keeps each layer's own init (PyG: Glorot uniform for GCNConv,
    zero bias; PyTorch's for ``fc``); ``"glorot_normal"`` draws every 2-D weight from N(0, 2 / (fan_in +
    fan_out)) and zeroes every bias, the Gaussian Glorot of Frankle & Carbin."""
    if scheme not in GRAPH_INIT_SCHEMES:
        raise ValueError(f"Unknown init scheme {scheme!r}; valid: {', '.join(GRAPH_INIT_SCHEMES)}")
    if scheme == "glorot_normal":
        for name, param in model.named_parameters():
            if param.dim() >= 2:
                nn.init.xavier_normal_(param)
            elif name.endswith("bias"):
                nn.init.zeros_(param)
    return model


def build_graph_model(name: str, init: GraphInit | str = "default", **kwargs: object) -> nn.Module:
    """Build a registered graph network by name (``"gcn"``); ``kwargs`` go to its constructor."""
    factory = GRAPH_MODELS.get(name.lower())
    if factory is None:
        raise ValueError(f"Unknown graph model {name!r}; valid names: {', '.join(GRAPH_MODELS)}")
    accepted = inspect.signature(factory).parameters
    if unknown := sorted(set(kwargs) - set(accepted)):
        raise TypeError(f"Graph model {name!r} got unknown arguments {unknown}; it accepts {list(accepted)}")
    return initialize_graph_model(factory(**kwargs), init)
