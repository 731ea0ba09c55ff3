"""Which tensors of a model are prunable, named the way users name parameters."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torch import Tensor, nn
from torch.nn.utils import parametrize, prune

_RNN_WEIGHT = re.compile(r"weight_(ih|hh)_l\d+(_reverse)?$")
_ATTENTION_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class PrunableTensor:
    """One prunable tensor and every place in the model that uses it.

    ``sites`` has more than one entry for tied weights (e.g. an embedding shared with the output layer):
    the tensor gets one mask, installed on every module that holds it.
    """

    name: str
    sites: tuple[tuple[nn.Module, str], ...]

    @property
    def tensor(self) -> Tensor:
        """The trainable tensor itself: ``weight_orig`` once pruned, else ``weight``."""
        return underlying_tensor(*self.sites[0])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape)

    def numel(self) -> int:
        return self.tensor.numel()


def pruning_hook(module: nn.Module, attr: str) -> prune.BasePruningMethod | None:
    """The ``torch.nn.utils.prune`` forward pre-hook that masks ``module.<attr>``, if any."""
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, prune.BasePruningMethod) and hook._tensor_name == attr:
            return hook
    return None


def underlying_tensor(module: nn.Module, attr: str) -> Tensor:
    """The stored tensor behind ``module.<attr>``: ``<attr>_orig`` when pruned, the parameter itself otherwise."""
    if pruning_hook(module, attr) is not None:
        return getattr(module, attr + "_orig")
    return getattr(module, attr)


def _direct_tensors(module: nn.Module) -> Iterable[tuple[str, Tensor]]:
    """Parameters registered on ``module`` itself, under their unpruned names."""
    for attr, param in module._parameters.items():
        if param is None:
            continue
        if attr.endswith("_orig") and pruning_hook(module, attr[: -len("_orig")]) is not None:
            yield attr[: -len("_orig")], param
        else:
            yield attr, param


def _is_default_prunable(module: nn.Module, attr: str) -> bool:
    if isinstance(module, (nn.Linear, *_CONV)):
        return attr == "weight"
    if isinstance(module, nn.RNNBase):
        return bool(_RNN_WEIGHT.match(attr))
    if isinstance(module, nn.MultiheadAttention):
        return attr in _ATTENTION_WEIGHTS
    return False


def named_tensor_sites(model: nn.Module) -> dict[str, list[tuple[nn.Module, str]]]:
    """Every parameter by its first (canonical) name, with all (module, attribute) sites that hold it."""
    sites: dict[int, list[tuple[nn.Module, str]]] = {}
    names: dict[int, str] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for attr, param in _direct_tensors(module):
            key = id(param)
            site = (module, attr)
            if key not in sites:
                names[key] = f"{module_name}.{attr}" if module_name else attr
                sites[key] = []
            if all(m is not module or a != attr for m, a in sites[key]):
                sites[key].append(site)
    return {names[key]: sites[key] for key in sites}


def _match(patterns: Sequence[str], names: Iterable[str]) -> dict[str, list[str]]:
    names = list(names)
    return {pattern: [n for n in names if n == pattern or fnmatch.fnmatchcase(n, pattern)] for pattern in patterns}


def check_patterns(argument: str, patterns: Sequence[str], names: Iterable[str]) -> None:
    """Raise when a user-given name/pattern matches no tensor (a typo would silently do nothing)."""
    names = list(names)
    unmatched = [p for p, hits in _match(patterns, names).items() if not hits]
    if unmatched:
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        raise ValueError(
            f"`{argument}`: {unmatched} match no parameter of the model. "
            f"Names are as in `model.named_parameters()` (fnmatch patterns allowed), e.g. {shown}"
        )


def matches(name: str, patterns: Sequence[str]) -> bool:
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)


def select_prunable(
    model: nn.Module,
    parameters: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
) -> dict[str, PrunableTensor]:
    """The prunable tensors of ``model``, by canonical parameter name, in model order.

    Args:
        model: any module; pruned modules (``weight_orig``/``weight_mask``) are reported under ``weight``.
        parameters: names or fnmatch patterns of the tensors to prune. ``None`` selects the weights of
            Linear, Conv1d/2d/3d, RNN/LSTM/GRU (``weight_ih_l*``/``weight_hh_l*``) and MultiheadAttention
            projections; biases, norms and embeddings are never selected by default.
        exclude: names or patterns removed from the selection.

    Raises:
        ValueError: a pattern matches nothing, or nothing is left to prune.
    """
    all_sites = named_tensor_sites(model)
    if parameters is not None:
        check_patterns("parameters", parameters, all_sites)
    check_patterns("exclude", exclude, all_sites)

    selected: dict[str, PrunableTensor] = {}
    for name, sites in all_sites.items():
        chosen = any(_is_default_prunable(m, a) for m, a in sites) if parameters is None else matches(name, parameters)
        if chosen and not matches(name, exclude):
            selected[name] = PrunableTensor(name, tuple(sites))
    if not selected:
        raise ValueError(
            "Nothing to prune: the model has no Linear/Conv/RNN/MultiheadAttention weights left after "
            "`parameters`/`exclude`. Pass `parameters=[...]` naming the tensors to prune."
        )
    return selected


def parametrized_tensors(model: nn.Module) -> list[tuple[str, int]]:
    """Weights of Linear/Conv/RNN layers computed by ``torch.nn.utils.parametrize`` (e.g. ``weight_norm``), with
    their sizes: the default selection cannot see them, since their tensors live in ``parametrizations``."""
    found = []
    for module_name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, *_CONV, nn.RNNBase)) or not parametrize.is_parametrized(module):
            continue
        for attr in module.parametrizations:
            if _is_default_prunable(module, attr) or attr == "weight":
                found.append((f"{module_name}.{attr}" if module_name else attr, getattr(module, attr).numel()))
    return found


def uninitialized_parameters(model: nn.Module) -> list[str]:
    """Names of lazy parameters not materialised yet (their shapes are unknown until a first forward)."""
    return [name for name, p in model.named_parameters() if isinstance(p, nn.parameter.UninitializedParameter)]
