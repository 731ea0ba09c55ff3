"""Masks installed with ``torch.nn.utils.prune``, and kept enforced cheaply during training.

Every masked tensor gets the usual reparametrisation: the parameter ``<name>_orig``, the buffer ``<name>_mask``
and a forward pre-hook that sets ``<name>``. The hook is a :class:`LotteryMask`, so ``prune.is_pruned`` and
``prune.remove`` work as for any torch pruning method.

Why a fast path: the stock hook computes ``orig * mask`` on every forward (and autograd multiplies the
gradient again on the way back). :class:`MaskEnforcer` instead keeps ``<name>_orig`` exactly zero where the
mask is zero -- it zeroes masked gradients as backward accumulates them, and masked weights after a step when
the optimizer could have moved them -- so the hook may hand out ``<name>_orig`` itself. The effective weights,
gradients and optimizer updates are the same as with the stock hook; the hook falls back to the product whenever
no enforcer guarantees the zeros.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.utils import prune

from lightning_lottery.core.selection import PrunableTensor, pruning_hook


class LotteryMask(prune.BasePruningMethod):
    """A fixed mask as a ``torch.nn.utils.prune`` method.

    ``masked_zero`` is set while a :class:`MaskEnforcer` guarantees ``<name>_orig`` is zero wherever the mask
    is; the forward then uses ``<name>_orig`` as is instead of multiplying it by the mask.
    """

    PRUNING_TYPE = "unstructured"

    def __init__(self, mask: Tensor) -> None:
        self.mask = mask
        self.masked_zero = False

    def compute_mask(self, t: Tensor, default_mask: Tensor) -> Tensor:
        return default_mask * self.mask.to(device=default_mask.device, dtype=default_mask.dtype)

    def apply_mask(self, module: nn.Module) -> Tensor:
        orig = getattr(module, self._tensor_name + "_orig")
        if self.masked_zero:
            return orig.view_as(orig)
        return orig * getattr(module, self._tensor_name + "_mask")

    def __call__(self, module: nn.Module, inputs: Any) -> None:
        if self.masked_zero:
            # ``<name>_orig`` itself, set as a plain attribute (``setattr`` would register a second parameter):
            # no view to make per forward and no view node in backward.
            module.__dict__[self._tensor_name] = module._parameters[self._tensor_name + "_orig"]
        else:
            setattr(module, self._tensor_name, self.apply_mask(module))


def _keep_position(module: nn.Module, before: list[str], old: str, new: str) -> None:
    """Put parameter ``new`` where ``old`` was: pruned and unpruned models list parameters (and so optimizer
    state in checkpoints) in the same order."""
    params = module._parameters
    order = [new if key == old else key for key in before if (new if key == old else key) in params]
    order += [key for key in params if key not in order]
    reordered = {key: params[key] for key in order}
    params.clear()
    params.update(reordered)


def _accept_dense_weights(module: nn.Module, state_dict: dict, prefix: str, *args: object) -> None:
    """Let a dense state dict (``<name>`` with zeros where pruned, as checkpoints and fresh models have it) load
    into a pruned module: its values go to ``<name>_orig`` and its nonzero pattern becomes the mask."""
    for hook in module._forward_pre_hooks.values():
        if not isinstance(hook, LotteryMask):
            continue
        key = prefix + hook._tensor_name
        if key in state_dict and key + "_orig" not in state_dict:
            value = state_dict.pop(key)
            state_dict[key + "_orig"] = value
            if key + "_mask" not in state_dict:
                state_dict[key + "_mask"] = (value != 0).to(getattr(module, hook._tensor_name + "_mask").dtype)


def _new_reparametrisation(module: nn.Module, attr: str, mask: Tensor) -> Tensor:
    """What ``BasePruningMethod.apply`` sets up (``<attr>_orig``, ``<attr>_mask``, the forward pre-hook), without
    its all-ones mask and product copies; ``prune.is_pruned`` and ``prune.remove`` work on it as usual."""
    before = list(module._parameters)
    orig = module._parameters.pop(attr)
    module.register_parameter(attr + "_orig", orig)
    _keep_position(module, before, attr, attr + "_orig")
    buffer = mask.to(device=orig.device, dtype=orig.dtype)
    module.register_buffer(attr + "_mask", buffer)
    hook = LotteryMask(buffer)
    hook._tensor_name = attr
    module.register_forward_pre_hook(hook)
    if not getattr(module, "_lottery_accepts_dense", False):
        module.register_load_state_dict_pre_hook(_accept_dense_weights)
        module._lottery_accepts_dense = True
    return buffer


def _install_site(module: nn.Module, attr: str, mask: Tensor, shared: Tensor | None, replace: bool) -> Tensor:
    """Mask ``module.<attr>`` with ``mask`` (intersected with any mask it already has, unless ``replace``);
    returns the buffer."""
    hook = pruning_hook(module, attr)
    if hook is None:
        buffer = _new_reparametrisation(module, attr, mask)
    else:
        buffer = getattr(module, attr + "_mask")
        if replace:
            buffer.copy_(mask)
        else:
            buffer.mul_(mask.to(device=buffer.device))  # in place: float mask times bool mask
        if not isinstance(hook, LotteryMask):
            # Pruned by another method (or a container of several): keep its buffers, take over its hook.
            for key, value in list(module._forward_pre_hooks.items()):
                if value is hook:
                    ours = LotteryMask(buffer)
                    ours._tensor_name = attr
                    module._forward_pre_hooks[key] = ours
    if shared is not None and buffer is not shared:
        # Tied weights: every site reads the one mask tensor.
        module._buffers[attr + "_mask"] = shared
        buffer = shared
    hook = pruning_hook(module, attr)
    assert isinstance(hook, LotteryMask)
    hook.mask = buffer
    orig = getattr(module, attr + "_orig")
    with torch.no_grad():
        orig.mul_(buffer)
    # orig is zero where masked right now, so a view of it is exactly orig * mask (and costs no copy).
    setattr(module, attr, orig.view_as(orig))
    return buffer


def _refresh(module: nn.Module, hook: LotteryMask) -> None:
    """Set ``module.<name>`` now, with autograd on. Some modules read a child's weight without calling the child
    (``nn.MultiheadAttention`` passes ``out_proj.weight`` to the functional form), so the child's hook never runs
    and this value is what they use: in the fast path it is ``<name>_orig`` itself."""
    hook(module, ())


def install_masks(tensors: Mapping[str, PrunableTensor], masks: Mapping[str, Tensor], replace: bool = False) -> None:
    """Install (or shrink to) ``masks`` on the model holding ``tensors``.

    Masks only shrink: an existing mask is intersected with the new one, unless ``replace`` (controls whose
    masks are not nested, e.g. a fresh random mask per round). Weights at masked positions are set to zero in
    ``<name>_orig``, so the model stays correct with or without an enforcer.
    """
    for name, mask in masks.items():
        shared = None
        for module, attr in tensors[name].sites:
            shared = _install_site(module, attr, mask.bool(), shared, replace)


def current_masks(tensors: Mapping[str, PrunableTensor]) -> dict[str, Tensor]:
    """The bool mask of each tensor (all True for a tensor that is not pruned)."""
    masks = {}
    for name, tensor in tensors.items():
        module, attr = tensor.sites[0]
        if pruning_hook(module, attr) is None:
            masks[name] = torch.ones_like(tensor.tensor, dtype=torch.bool)
        else:
            masks[name] = getattr(module, attr + "_mask").detach().bool()
    return masks


def lottery_hooks(model: nn.Module) -> Iterable[tuple[nn.Module, LotteryMask]]:
    for module in model.modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, LotteryMask):
                yield module, hook


def remove_masks(model: nn.Module) -> None:
    """Make every :class:`LotteryMask` permanent (``prune.remove``): plain dense modules with zeros in them."""
    for module, hook in list(lottery_hooks(model)):
        before = list(module._parameters)
        prune.remove(module, hook._tensor_name)
        _keep_position(module, before, hook._tensor_name + "_orig", hook._tensor_name)


# Optimizers that update each weight from its own gradient, value and per-weight state only: a weight that is zero
# and whose gradient has been zero since the optimizer was created stays exactly zero (SGD with momentum and weight
# decay, Adam/AdamW's zero moments, ...). Their masked weights need no multiply after the step; others get one.
ELEMENTWISE_OPTIMIZERS = (
    torch.optim.SGD,
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.Adamax,
    torch.optim.NAdam,
    torch.optim.RAdam,
    torch.optim.RMSprop,
    torch.optim.Adagrad,
    torch.optim.Adadelta,
)


# Per-weight state that stock (not fused) optimizers take the square root of at every step, with nothing added
# before the root. A masked weight's entry is exactly zero (its gradient always is), and on CPU ``sqrt`` of exact
# zeros, or of subnormals, is many times slower than of normal numbers: at 90% sparsity stock Adam's step took 1.6x
# the dense one on LeNet-300-100. Any positive value there leaves the masked weight's update at exactly zero (the
# numerator is its zero gradient or first moment), and element-wise updates leave every other weight bit for bit as
# they were: so while an enforcer is attached these entries hold 1 (refreshed before they decay towards subnormals),
# and they are zero again in checkpoints and after ``detach``, as in training without an enforcer.
ROOTED_STATE: dict[type, tuple[str, ...]] = {
    torch.optim.Adam: ("exp_avg_sq", "max_exp_avg_sq"),
    torch.optim.AdamW: ("exp_avg_sq", "max_exp_avg_sq"),
    torch.optim.NAdam: ("exp_avg_sq",),
    torch.optim.RAdam: ("exp_avg_sq",),
    torch.optim.RMSprop: ("square_avg",),
    torch.optim.Adagrad: ("sum",),
}


class _RootedState:
    """The :data:`ROOTED_STATE` entries of one stock optimizer's masked CPU weights, and the masked positions."""

    def __init__(self, optimizer: torch.optim.Optimizer, params: list[Tensor], masks: list[Tensor]) -> None:
        self.optimizer, self.keys = optimizer, ROOTED_STATE[type(optimizer)]
        mine = {id(p): m for p, m in zip(params, masks)}
        self.sites: list[tuple[Tensor, int, Tensor]] = []  # (param, its index in state_dict(), masked positions)
        index = 0
        for group in optimizer.param_groups:
            # fused kernels have no slow root; Adagrad's sum may start above zero (then stays there where masked)
            zero = not group.get("fused") and not group.get("initial_accumulator_value")
            for p in group["params"]:
                if id(p) in mine and zero and p.device.type == "cpu":
                    self.sites.append((p, index, mine[id(p)] == 0))
                index += 1
        self.steps = 0

    def fill(self, value: float) -> None:
        for param, _, masked in self.sites:
            state = self.optimizer.state.get(param, {})
            for key in self.keys:
                entry = state.get(key)
                if isinstance(entry, Tensor) and entry.shape == masked.shape:
                    entry.masked_fill_(masked, value)

    def zeroed_copy(self, state_dict: dict[str, Any]) -> None:
        """Zero the masked entries in ``state_dict`` (this optimizer's ``state_dict()``, which shares the live state's
        per-weight dicts and tensors): new dicts and tensors, the live state untouched."""
        packed = state_dict.get("state")
        if not isinstance(packed, dict):
            return
        for _, index, masked in self.sites:
            state = packed.get(index)
            if not isinstance(state, dict):
                continue
            copy = dict(state)
            for key in self.keys:
                entry = state.get(key)
                if isinstance(entry, Tensor) and entry.shape == masked.shape:
                    copy[key] = entry.masked_fill(masked, 0.0)
            packed[index] = copy


class _GradientMask:
    """A post-accumulate-grad hook: masks one parameter's gradient right after backward accumulated it."""

    def __init__(self, enforcer: MaskEnforcer, index: int) -> None:
        self.enforcer, self.index = enforcer, index

    def __call__(self, param: Tensor) -> None:
        # Backward runs these hooks with grad mode off (or records the multiply, under create_graph).
        grad = param.grad
        grad.mul_(self.enforcer._masks[self.index])
        # Remember which tensor, at which version, is masked: anything that replaces or rewrites the gradient
        # afterwards (DDP's copy of the all-reduced bucket, a user's hook) makes mask_gradients mask it again.
        self.enforcer._masked_in_backward[self.index] = (grad, grad._version)


class MaskEnforcer:
    """Keeps masked weights at exactly zero during training, for about one multiply per gradient and step.

    :meth:`attach` hooks the parameters and the optimizers. Each masked gradient is multiplied by its mask as soon
    as backward has accumulated it, while it is still in cache (a separate pass after backward would stream every
    gradient through memory once more); call :meth:`mask_gradients` before the optimizer step (and before gradient
    clipping) to mask any gradient that did not come from backward or was rewritten after it (DDP's all-reduce, a
    user's hook).
    After a step of an element-wise optimizer (:data:`ELEMENTWISE_OPTIMIZERS`) on masked gradients, masked weights
    are still zero, so they are only checked every ``verify_every`` steps; after any other step (another
    optimizer, or a step without masked gradients) they are zeroed. A failed check zeroes them after every step
    from then on. While active, the models' hooks skip the per-forward multiplication, and stock optimizers' square-
    rooted state of masked weights holds 1 instead of 0 (:data:`ROOTED_STATE`: the same updates, without CPU's slow
    ``sqrt`` of zeros); :meth:`detach` and :meth:`stock_optimizer_states` put the zeros back.
    """

    def __init__(self, model: nn.Module, verify_every: int = 100) -> None:
        pairs = []
        self._sites = list(lottery_hooks(model))
        self._hooks = [hook for _, hook in self._sites]
        for module, hook in self._sites:
            orig = getattr(module, hook._tensor_name + "_orig")
            mask = getattr(module, hook._tensor_name + "_mask")
            if all(orig is not p for p, _ in pairs):
                pairs.append((orig, mask))
        self._params = [p for p, _ in pairs]
        self._masks = [m.to(p.dtype) if m.dtype != p.dtype else m for p, m in pairs]
        self._handles: list[Any] = []
        self.verify_every = verify_every
        self.always = False  # zero masked weights after every step (a check found one that was not)
        self._grads_masked = False
        # index -> (gradient, its version) that a backward hook masked since the last step
        self._masked_in_backward: dict[int, tuple[Tensor, int]] = {}
        self._skipped = 0
        self._rooted: dict[int, _RootedState] = {}  # id(optimizer) -> its rooted state (stock optimizers on CPU)

    def __len__(self) -> int:
        return len(self._params)

    def attach(self, optimizers: Iterable[torch.optim.Optimizer], in_backward: bool | None = None) -> MaskEnforcer:
        """Activate, and keep masked weights zero after every step of ``optimizers``; returns ``self``.

        ``in_backward`` masks gradients as backward accumulates them; by default only in a single process, since
        a data-parallel reducer all-reduces gradients from its own backward hooks, concurrently with ours.
        """
        self.activate()
        optimizers = list(optimizers)
        self._handles = [opt.register_step_post_hook(lambda opt, *_: self._after_step(opt)) for opt in optimizers]
        for opt in optimizers:
            if type(opt) in ROOTED_STATE and (rooted := _RootedState(opt, self._params, self._masks)).sites:
                self._rooted[id(opt)] = rooted
        if in_backward is None:
            in_backward = not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)
        if in_backward:
            hooks = [_GradientMask(self, i) for i in range(len(self._params))]
            self._handles += [p.register_post_accumulate_grad_hook(h) for p, h in zip(self._params, hooks)]
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for rooted in self._rooted.values():
            rooted.fill(0.0)  # the optimizer's state as training without an enforcer leaves it
        self._rooted = {}
        self.deactivate()

    def stock_optimizer_states(
        self, optimizers: Iterable[torch.optim.Optimizer], state_dicts: Iterable[dict[str, Any]]
    ) -> None:
        """Put zeros back at masked weights' :data:`ROOTED_STATE` entries of ``state_dicts`` (the
        ``optimizers``' ``state_dict()``, e.g. a checkpoint's), as training without an enforcer has them."""
        for optimizer, state_dict in zip(optimizers, state_dicts):
            rooted = self._rooted.get(id(optimizer))
            if rooted is not None and isinstance(state_dict, dict):
                rooted.zeroed_copy(state_dict)

    def activate(self) -> None:
        self.zero_masked_weights()
        for module, hook in self._sites:
            hook.masked_zero = True
            _refresh(module, hook)

    def deactivate(self) -> None:
        # ``module.<name>`` stays ``<name>_orig`` until the next forward: its masked entries are zero, so it equals
        # ``orig * mask``.
        for hook in self._hooks:
            hook.masked_zero = False

    def mask_gradients(self) -> None:
        """Mask the gradients that backward's hooks have not masked, or that changed since they did."""
        stale = [i for i, p in enumerate(self._params) if p.grad is not None and not self._still_masked(i, p.grad)]
        if stale:  # none in a single process: backward's hooks masked them all (no grad-mode switch then)
            with torch.no_grad():
                torch._foreach_mul_([self._params[i].grad for i in stale], [self._masks[i] for i in stale])
        self._grads_masked = True

    def _still_masked(self, index: int, grad: Tensor) -> bool:
        seen = self._masked_in_backward.get(index)
        return seen is not None and seen[0] is grad and seen[1] == grad._version

    @torch.no_grad()
    def zero_masked_weights(self) -> None:
        if self._params:
            torch._foreach_mul_(self._params, self._masks)

    @torch.no_grad()
    def leaked(self) -> bool:
        """Whether a masked weight is not zero."""
        return any(bool((p.detach() * (1 - m)).any()) for p, m in zip(self._params, self._masks))

    def _after_step(self, optimizer: torch.optim.Optimizer) -> None:
        rooted = self._rooted.get(id(optimizer))
        if rooted is not None:
            # after the step that created the state (or the first after a resume), then before 1 decays far
            if rooted.steps % self.verify_every == 0:
                rooted.fill(1.0)
            rooted.steps += 1
        safe = self._grads_masked and not self.always and type(optimizer) in ELEMENTWISE_OPTIMIZERS
        self._grads_masked = False
        self._masked_in_backward.clear()
        if not safe:
            self.zero_masked_weights()
            return
        self._skipped += 1
        if self._skipped % self.verify_every == 0 and self.leaked():
            self.always = True
            self.zero_masked_weights()
