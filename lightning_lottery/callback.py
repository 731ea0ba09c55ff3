"""``LotteryTicketCallback``: the whole lottery-ticket search inside one ``trainer.fit``."""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.seed import isolate_rng
from torch import Tensor

from lightning_lottery import _relaunch
from lightning_lottery._rng import collect_rng_state, derive_seed, restore_rng_state
from lightning_lottery.core import (
    MaskEnforcer,
    PrunableTensor,
    SparsitySchedule,
    State,
    counts,
    current_masks,
    dense_state,
    install_masks,
    remove_masks,
    select_prunable,
)
from lightning_lottery.core.inits import add_noise, reshuffle, signed_constant
from lightning_lottery.core.reparam import lottery_hooks
from lightning_lottery.core.rounds import next_masks, rewind
from lightning_lottery.core.snapshot import state_mismatches
from lightning_lottery.ticket import Ticket, atomic_write_csv, atomic_write_json, ticket_metadata
from lightning_lottery.transfer import TicketSequence

Rewind = Literal["init", "none", "reinit"] | int | str
_REWIND_WORDS = ("init", "none", "reinit", "reshuffle", "signed_constant")
_INIT_CONTROLS = ("reshuffle", "signed_constant")


def _parse_rewind(rewind: Any) -> tuple[Rewind, int | None]:
    """The rewind setting and, for ``"epoch:E"``, the epoch E."""
    if isinstance(rewind, int) and not isinstance(rewind, bool) and rewind >= 0:
        return ("init" if rewind == 0 else rewind), None
    if rewind in _REWIND_WORDS:
        return rewind, None
    if isinstance(rewind, str) and rewind.startswith("epoch:") and rewind[6:].isdigit() and int(rewind[6:]) >= 1:
        return rewind, int(rewind[6:])
    raise ValueError(
        f"`rewind={rewind!r}` is not one of 'init', 'none', 'reinit', 'reshuffle', 'signed_constant', "
        "a step k >= 0 or 'epoch:E' (E >= 1)"
    )


_STATE_VERSION = 1
# Settings that define a search: resuming with different values would mix two searches.
_FIXED_SETTINGS = (
    "transfer",
    "amount",
    "scope",
    "layer_amounts",
    "parameters",
    "exclude",
    "rewind",
    "rewind_noise",
    "pruning",
    "monitor",
    "mode",
)


def _patterns(value: str | Sequence[str] | None, argument: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    value = tuple(value)
    if not all(isinstance(v, str) for v in value):
        raise TypeError(f"`{argument}` must be parameter names or fnmatch patterns (strings), got {value!r}")
    return value


def _scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, Tensor):
            if value.numel() != 1:
                continue
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    return out


class LotteryTicketCallback(Callback):
    r"""Find lottery tickets (Frankle & Carbin, 2019) with iterative magnitude pruning and rewinding.

    One ``trainer.fit`` runs the whole search: round 0 trains the dense model; each of the ``rounds`` that follow
    prunes the smallest surviving weights, rewinds the survivors and trains again. Each round is a real relaunch:
    ``configure_optimizers`` runs again (fresh optimizer state and LR schedulers), EarlyStopping and
    ModelCheckpoint start over, epoch and step counters restart at 0, the global RNG is reset to its state at the
    start of ``fit`` (same data order and dropout as round 0), and the per-round budget is the trainer's
    ``max_epochs`` / ``max_steps``. An EarlyStopping stop ends the round, not the search.

    Masks are ``torch.nn.utils.prune`` masks (``weight_orig`` / ``weight_mask``); during training they cost
    one fused multiply on the gradients and one on the weights per optimizer step, not one per forward.

    Args:
        rounds: pruning rounds after the dense round 0 (0: only train dense and snapshot θ₀).
        amount: fraction of the still-unpruned weights removed each round, in (0, 1); or one cumulative
            sparsity target per round, strictly increasing, e.g. ``[0.2, 0.52, 0.8, 0.96, 0.9996]``.
        scope: ``"global"``: one magnitude threshold across all prunable tensors; ``"layer"``: each tensor
            pruned at its own rate.
        layer_amounts: per-round rates for some tensors by name or fnmatch pattern, e.g. ``{"fc3.weight": 0.1}``
            (the paper's output layer at half rate); such tensors are pruned on their own. 0 keeps a tensor dense.
        parameters: names/patterns of the prunable tensors. Default: weights of Linear, Conv1d/2d/3d,
            RNN/LSTM/GRU and MultiheadAttention; never biases, norms or embeddings.
        exclude: names/patterns removed from the prunable tensors.
        rewind: ``"init"``: survivors go back to θ₀; ``k`` (int): to θ_k, the weights after global step ``k``
            of round 0 (late rewinding), with the LR schedule as it was at step k; ``"epoch:E"``: likewise, at
            the end of round 0's epoch E (e.g. ``"epoch:1"``, as in Yu et al. 2020); ``"none"``: keep the trained
            weights (prune and fine-tune); ``"reinit"``: a fresh random initialisation each round, drawn by
            constructing the LightningModule again from its ``hparams`` (random-reinit control);
            ``"reshuffle"``: the survivors' θ₀ values permuted among them within each tensor; ``"signed_constant"``:
            sign(θ₀) times the tensor's θ₀ standard deviation (Zhou et al. 2019's controls).
        rewind_noise: add Gaussian noise of this many θ₀ standard deviations (per tensor) to the rewound
            prunable weights (0: none); a robustness control for ``"init"`` and late rewinding.
        pruning: ``"magnitude"`` of the trained weights, or ``"random"``: the same per-tensor counts as
            magnitude pruning would give, positions drawn at random (random-pruning control).
        monitor: validation metric whose best value defines each round's early-stop iteration; ``None`` to
            record only the final metrics.
        mode: ``"min"`` or ``"max"``: whether lower or higher ``monitor`` is better.
        seed: seeds random pruning and reinitialisation; ``None`` draws one (kept in checkpoints).
        dirpath: folder for the per-round artifacts (``round_XX/ticket.safetensors``, ``round_XX/summary.json``,
            ``history.json``); default ``<trainer.log_dir>/lottery``. Written by rank zero, atomically.
        save_tickets: write those artifacts.
        verbose: print one line per round.
        tickets: transfer instead of search: round r trains ticket r of a :class:`~lightning_lottery.transfer.
            TicketSequence` (masks and weights from a source search, or its random controls); ``rounds``,
            ``amount``, ``scope``, ``pruning`` and ``rewind`` are then not used.

    Example::

        >>> import lightning.pytorch as pl
        >>> from lightning_lottery import LotteryTicketCallback
        >>> lottery = LotteryTicketCallback(rounds=5, amount=0.2, rewind="init")
        >>> trainer = pl.Trainer(max_epochs=10, callbacks=[lottery])
        >>> # trainer.fit(model, datamodule)   # round 0 dense, then 5 prune -> rewind -> retrain rounds
        >>> # lottery.history[-1]["sparsity"]  # 1 - 0.8**5 = 0.672...

    After ``fit``: :attr:`history` has one record per round and :attr:`masks` the bool masks by parameter name.
    Other callbacks may define ``on_lottery_round_end(trainer, pl_module, record, folder)``: it is called when a
    round ends, with the round's history record and its artifact folder (``None`` off rank zero).
    """

    def __init__(
        self,
        rounds: int = 5,
        amount: float | Sequence[float] = 0.2,
        scope: Literal["global", "layer"] = "global",
        layer_amounts: Mapping[str, float] | None = None,
        parameters: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] = (),
        rewind: Rewind = "init",
        rewind_noise: float = 0.0,
        pruning: Literal["magnitude", "random"] = "magnitude",
        monitor: str | None = "val_loss",
        mode: Literal["min", "max"] = "min",
        seed: int | None = None,
        dirpath: str | os.PathLike[str] | None = None,
        save_tickets: bool = True,
        verbose: bool = True,
        tickets: TicketSequence | None = None,
    ) -> None:
        super().__init__()
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
            raise ValueError(f"`rounds={rounds!r}` must be an int >= 0 (pruning rounds after the dense round 0)")
        self.rounds = rounds
        self.schedule = SparsitySchedule.build(amount, rounds, scope, layer_amounts)
        self.parameters = _patterns(parameters, "parameters")
        self.exclude = _patterns(exclude, "exclude") or ()
        self.rewind, self._rewind_epoch = _parse_rewind(rewind)
        if isinstance(rewind_noise, bool) or not isinstance(rewind_noise, (int, float)) or rewind_noise < 0:
            raise ValueError(f"`rewind_noise={rewind_noise!r}` must be a float >= 0 (standard deviations of θ₀)")
        if rewind_noise and self.rewind in ("none", "reinit", *_INIT_CONTROLS):
            raise ValueError(f"`rewind_noise` perturbs rewound weights; it does not apply to rewind={self.rewind!r}")
        self.rewind_noise = float(rewind_noise)
        if pruning not in ("magnitude", "random"):
            raise ValueError(f"`pruning={pruning!r}` is not one of 'magnitude', 'random'")
        self.pruning = pruning
        if monitor is not None and not isinstance(monitor, str):
            raise TypeError(f"`monitor` must be a metric name or None, got {monitor!r}")
        self.monitor = monitor
        if mode not in ("min", "max"):
            raise ValueError(f"`mode={mode!r}` is not one of 'min', 'max'")
        self.mode = mode
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"`seed` must be an int or None, got {seed!r}")
        self.seed = seed
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.save_tickets = save_tickets
        self.verbose = verbose
        if tickets is not None and not isinstance(tickets, TicketSequence):
            raise TypeError(f"`tickets` must be a TicketSequence, got {type(tickets).__name__}")
        self.tickets = tickets
        if tickets is not None:
            self.rounds = len(tickets) - 1

        self.history: list[dict[str, Any]] = []
        self.round = 0
        self._tensors: dict[str, PrunableTensor] = {}
        self._masks: dict[str, Tensor] | None = None
        self._theta0: State | None = None
        self._theta_k: State | None = None
        self._round_start: State | None = None  # what "none"/"reinit" rounds started from
        self._schedule_k: dict[str, Any] | None = None
        self._theta_k_step: int | None = None
        self._rng_state: dict[str, Any] | None = None
        self._best: dict[str, Any] | None = None
        self._last_metrics: dict[str, float] = {}
        self._curve: list[dict[str, float]] = []  # this round's metrics at every validation
        self._steps_done = 0
        self._monitor_checked = False
        self._round_clock = time.monotonic()
        self._rng_resume: dict[str, Any] | None = None
        self._enforcer: MaskEnforcer | None = None
        self._optimizer_hooks: list[Any] = []
        self._model_class = ""
        self._sparsity_cache: tuple[Any, tuple[float, int, int, dict[str, float]]] | None = None

    # ------------------------------------------------------------------ public state

    @property
    def amount(self) -> float | tuple[float, ...]:
        return self.schedule.amount

    @property
    def scope(self) -> str:
        return self.schedule.scope

    @property
    def layer_amounts(self) -> dict[str, float]:
        return dict(self.schedule.layer_amounts)

    @property
    def masks(self) -> dict[str, Tensor]:
        """Current bool masks by parameter name (``True`` keeps the weight); empty before ``fit``."""
        return {name: mask.clone() for name, mask in (self._masks or {}).items()}

    @property
    def rewind_weights(self) -> State | None:
        """The weights the current round started from: θ₀, θ_k, or for ``"none"``/``"reinit"`` the trained
        or freshly drawn weights (θ₀ in round 0)."""
        if self.tickets is not None:
            return self._round_start
        if self.round == 0 or (self.rewind == "init" and not self.rewind_noise):
            return self._theta0
        if self.late_rewinding and not self.rewind_noise:
            return self._theta_k
        return self._round_start

    def _rewind_kind(self) -> Any:
        if self.tickets is not None:
            return f"transfer:{self.tickets.variant}"
        return self.rewind if self.round > 0 else "init"

    @property
    def late_rewinding(self) -> bool:
        """Whether survivors go back to θ_k (a step or an epoch of round 0) rather than θ₀."""
        return isinstance(self.rewind, int) or self._rewind_epoch is not None

    def ticket(self) -> Ticket:
        """The current ticket: this round's masks and the weights its survivors started from."""
        if self._masks is None or self.rewind_weights is None:
            raise RuntimeError("No ticket yet: call trainer.fit with this callback first")
        sparsity, remaining, total, per_tensor = self.sparsity()
        record = next((r for r in self.history if r["round"] == self.round), None)
        extra = {
            "settings": self.settings(),
            "rewind_kind": self._rewind_kind(),
            "rewind_step": self._theta_k_step if self.late_rewinding and self.round > 0 else 0,
            "sparsity": sparsity,
            "remaining": remaining,
            "total": total,
            "tensor_sparsity": per_tensor,
            "record": record,
        }
        metadata = ticket_metadata(self._model_class, self._masks, extra)
        weights = {n: w.clone() for n, w in self.rewind_weights.items()}
        return Ticket({n: m.clone() for n, m in self._masks.items()}, weights, self.round, metadata)

    def settings(self) -> dict[str, Any]:
        """The callback's arguments, as plain values (stored with checkpoints and tickets)."""
        return {
            "rounds": self.rounds,
            "amount": list(self.amount) if isinstance(self.amount, tuple) else self.amount,
            "scope": self.scope,
            "layer_amounts": self.layer_amounts,
            "parameters": list(self.parameters) if self.parameters is not None else None,
            "exclude": list(self.exclude),
            "rewind": self.rewind,
            "rewind_noise": self.rewind_noise,
            "pruning": self.pruning,
            "monitor": self.monitor,
            "mode": self.mode,
            "seed": self.seed,
            "transfer": self.tickets.settings() if self.tickets is not None else None,
        }

    def sparsity(self) -> tuple[float, int, int, dict[str, float]]:
        """(overall sparsity, remaining, total, per-tensor sparsity) of the current masks."""
        masks = self._masks or {}
        if self._sparsity_cache is None or self._sparsity_cache[0] is not masks:
            total = sum(m.numel() for m in masks.values())
            remaining = sum(counts(masks).values())
            per_tensor = {n: 1.0 - float(m.sum()) / m.numel() for n, m in masks.items()}
            overall = 1.0 - remaining / total if total else 0.0
            self._sparsity_cache = (masks, (overall, remaining, total, per_tensor))
        return self._sparsity_cache[1]

    # ------------------------------------------------------------------ Lightning hooks

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        _relaunch.check_strategy(trainer)
        if trainer.ckpt_path is not None and any(True for _ in lottery_hooks(pl_module)):
            # Checkpoints hold dense weights (see on_save_checkpoint); masks come back from this callback's state.
            remove_masks(pl_module)
        if self.tickets is not None:
            fresh = self.tickets.check(pl_module)  # another architecture is refused here, before training
            masked = [n for n in self.tickets.tickets[0].masks if n not in fresh]
            self._tensors = select_prunable(pl_module, parameters=masked)
        else:
            self._tensors = select_prunable(pl_module, self.parameters, self.exclude)
            self.schedule.check_names(list(self._tensors))
        self._model_class = f"{type(pl_module).__module__}.{type(pl_module).__qualname__}"
        log_dir = trainer.log_dir  # a collective call under DDP: every rank asks
        if self.dirpath is None:
            self.dirpath = Path(log_dir or trainer.default_root_dir) / "lottery"
        if self.rewind == "reinit":
            self._fresh_state(pl_module, round_index=0)  # fail now, not after round 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._rng_resume is not None:
            restore_rng_state(self._rng_resume)
            self._rng_resume = None
        if self.seed is None:
            self.seed = random.SystemRandom().randrange(2**31)
        if self._theta0 is None:
            self._theta0 = dense_state(pl_module)
        if self._masks is None and self.tickets is not None:
            self._rewind_to(trainer, pl_module, self.tickets.masks(0, pl_module), round_index=0)
        if self._masks is None:
            self._masks = {n: m.cpu() for n, m in current_masks(self._tensors).items()}
        if not all(bool(m.all()) for m in self._masks.values()):
            install_masks(self._tensors, self._masks)
        if self._rng_state is None:
            self._rng_state = collect_rng_state()
        self._check_rewind_step(trainer)
        self._activate_masks(trainer)
        _relaunch.wrap_fit_loop(trainer, lambda: self._next_round(trainer, pl_module))
        self._wrap_progress_bar(trainer)
        self._announce(trainer)
        self._round_clock = time.monotonic()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        k = self.rewind
        if isinstance(k, int) and self.round == 0 and self._theta_k is None and trainer.global_step >= k:
            self._capture_theta_k(trainer, pl_module)

    def _capture_theta_k(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._theta_k = dense_state(pl_module)
        self._schedule_k = _relaunch.capture_schedule(trainer)
        self._theta_k_step = trainer.global_step

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if self._enforcer is not None:
            self._enforcer.mask_gradients()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            # With several validation loaders Lightning keeps the sanity check's metrics to itself: check then
            # only if it shared some, else at the first real validation.
            if trainer.callback_metrics:
                self._check_monitor(trainer)
            return
        self._observe(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.enable_validation:
            self._observe(trainer)
        epoch = self._rewind_epoch
        if epoch is not None and self.round == 0 and self._theta_k is None and trainer.current_epoch + 1 >= epoch:
            self._capture_theta_k(trainer, pl_module)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._release(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._release(trainer)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        """Store dense weights: the checkpoint loads into a fresh, unpruned model (masks live in our state)."""
        state = checkpoint.get("state_dict")
        if state is None:
            return
        for module_name, module in pl_module.named_modules():
            prefix = f"{module_name}." if module_name else ""
            for _, hook in ((m, h) for m, h in lottery_hooks(module) if m is module):
                name = prefix + hook._tensor_name
                if name + "_orig" in state and name + "_mask" in state:
                    state[name] = state.pop(name + "_orig") * state.pop(name + "_mask")

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "settings": self.settings(),
            "round": self.round,
            "masks": self._masks,
            "theta0": self._theta0,
            "theta_k": self._theta_k,
            "round_start": self._round_start,
            "schedule_k": self._schedule_k,
            "theta_k_step": self._theta_k_step,
            "history": self.history,
            "best": self._best,
            "last_metrics": self._last_metrics,
            "curve": self._curve,
            "steps_done": self._steps_done,
            "rng_state": self._rng_state,
            # The RNG as of this checkpoint: a resumed run draws the same shuffles and dropout masks.
            "rng_now": collect_rng_state(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict["settings"]
        ours = self.settings()
        different = [
            f"{k}: checkpoint {saved.get(k)!r} vs now {ours[k]!r}" for k in _FIXED_SETTINGS if saved.get(k) != ours[k]
        ]
        if different:
            raise ValueError(
                "The checkpoint belongs to a different lottery search; resume it with the same settings "
                f"({'; '.join(different)})"
            )
        self.seed = saved["seed"]
        self.round = state_dict["round"]
        self._masks = state_dict["masks"]
        self._theta0 = state_dict["theta0"]
        self._theta_k = state_dict["theta_k"]
        self._round_start = state_dict["round_start"]
        self._schedule_k = state_dict["schedule_k"]
        self._theta_k_step = state_dict["theta_k_step"]
        self.history = list(state_dict["history"])
        self._best = state_dict["best"]
        self._last_metrics = dict(state_dict["last_metrics"])
        self._curve = list(state_dict["curve"])
        self._steps_done = state_dict["steps_done"]
        self._rng_state = state_dict["rng_state"]
        self._rng_resume = state_dict.get("rng_now")

    # ------------------------------------------------------------------ rounds

    def _next_round(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        """Close the round that just ended; start the next one if any. Called between fit-loop runs."""
        self._finish_round(trainer)
        if self.round >= self.rounds or _relaunch.search_interrupted(trainer):
            return False
        if self.late_rewinding and self._theta_k is None:
            raise RuntimeError(
                f"rewind={self.rewind!r} cannot be honoured: round 0 stopped after {self.history[0]['steps']} "
                f"optimizer steps ({self.history[0]['epochs']} epochs), before reaching that point "
                "(EarlyStopping?). Rewind to an earlier point."
            )
        masks = trainer.strategy.broadcast(self._prune(pl_module), src=0)
        self._rewind_to(trainer, pl_module, masks, round_index=self.round + 1)
        self.round += 1
        self._best = None
        self._last_metrics = {}
        self._curve = []
        self._relaunch(trainer)
        self._announce(trainer)
        self._round_clock = time.monotonic()
        return True

    def _prune(self, pl_module: pl.LightningModule) -> dict[str, Tensor]:
        if self.tickets is not None:
            return self.tickets.masks(self.round + 1, pl_module)
        assert self._masks is not None
        generator = torch.Generator().manual_seed(derive_seed(self.seed or 0, self.round + 1, 1))
        return next_masks(self._tensors, self._masks, self.schedule, self.round + 1, self.pruning, generator)

    def _rewind_to(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, masks: dict[str, Tensor], round_index: int
    ) -> None:
        if self.tickets is not None:
            assert self._theta0 is not None
            state = self.tickets.weights(round_index, pl_module, self._theta0)
            rewind(pl_module, self._tensors, masks, state, replace=True)
            self._masks = masks
            self._round_start = state
            return
        if self.rewind == "reinit":
            state = trainer.strategy.broadcast(self._fresh_state(pl_module, round_index), src=0)
        elif self.rewind == "none":
            state = None
        else:
            state = self._controlled(self._theta_k if self.late_rewinding else self._theta0, masks, round_index)
        rewind(pl_module, self._tensors, masks, state)
        self._masks = masks
        if self.rewind in ("none", "reinit", *_INIT_CONTROLS) or self.rewind_noise:
            self._round_start = dense_state(pl_module)

    def _controlled(self, state: State | None, masks: dict[str, Tensor], round_index: int) -> State:
        """The rewind point with this search's initialisation control applied to the prunable tensors."""
        assert state is not None
        if self.rewind not in _INIT_CONTROLS and not self.rewind_noise:
            return state
        generator = torch.Generator().manual_seed(derive_seed(self.seed or 0, round_index, 3))
        out = dict(state)
        for name, mask in masks.items():
            theta = state[name]
            if self.rewind == "reshuffle":
                out[name] = reshuffle(theta, mask, generator)
            elif self.rewind == "signed_constant":
                out[name] = signed_constant(theta, mask)
            else:
                out[name] = add_noise(theta, self.rewind_noise, generator)
        return out

    def _relaunch(self, trainer: pl.Trainer) -> None:
        self._steps_done += trainer.global_step
        _relaunch.reset_loop_progress(trainer)
        _relaunch.reset_monitoring_callbacks(trainer)
        _relaunch.recreate_optimizers(trainer)
        if self.late_rewinding and self._schedule_k is not None:
            _relaunch.restore_schedule(trainer, self._schedule_k)
        self._activate_masks(trainer)
        assert self._rng_state is not None
        restore_rng_state(self._rng_state)
        _relaunch.restart_data(trainer)

    def _finish_round(self, trainer: pl.Trainer) -> None:
        sparsity, remaining, total, per_tensor = self.sparsity()
        best = self._best or {}
        record = {
            "round": self.round,
            "sparsity": sparsity,
            "remaining": remaining,
            "total": total,
            "remaining_pct": 100.0 * remaining / total if total else 100.0,
            "tensor_sparsity": per_tensor,
            "monitor": self.monitor,
            "best": best.get("value"),
            "best_step": best.get("step"),
            "best_round_step": best.get("round_step"),
            "best_epoch": best.get("epoch"),
            "metrics": best.get("metrics", {}),
            "final_metrics": dict(self._last_metrics),
            "steps": trainer.global_step,
            "epochs": trainer.current_epoch,
            "seconds": time.monotonic() - self._round_clock,  # wall time of the round (since resume, if resumed)
        }
        # Validation metrics are rank-local unless logged with sync_dist=True: every rank keeps rank 0's record.
        record = trainer.strategy.broadcast(record, src=0)
        self.history = [r for r in self.history if r["round"] != self.round] + [record]
        folder = None
        if self.save_tickets and trainer.is_global_zero:
            folder = self._write_artifacts(record)
        for callback in trainer.callbacks:
            listener = getattr(callback, "on_lottery_round_end", None)
            if callable(listener):
                listener(trainer, trainer.lightning_module, record, folder)
        self._log(trainer, {f"round_summary/{k}": v for k, v in record.items() if isinstance(v, (int, float))})

    def _write_artifacts(self, record: dict[str, Any]) -> Path:
        assert self.dirpath is not None
        folder = self.dirpath / f"round_{self.round:02d}"
        self.ticket().save(folder / "ticket.safetensors")
        summary = {"record": record, "settings": self.settings(), "ticket": "ticket.safetensors"}
        atomic_write_json(folder / "summary.json", summary)
        atomic_write_csv(folder / "curve.csv", self._curve)
        atomic_write_json(self.dirpath / "history.json", {"settings": self.settings(), "history": self.history})
        return folder

    # ------------------------------------------------------------------ helpers

    def _fresh_state(self, pl_module: pl.LightningModule, round_index: int) -> State:
        """Weights of a newly constructed copy of the module: a fresh draw from its own initialiser."""
        cls = type(pl_module)
        hparams = dict(pl_module.hparams)
        try:
            with isolate_rng():
                torch.manual_seed(derive_seed(self.seed or 0, round_index, 2))
                fresh = cls(**hparams)
        except Exception as err:
            raise ValueError(
                f"rewind='reinit' draws a fresh initialisation by constructing {cls.__name__}(**self.hparams), "
                f"which failed ({type(err).__name__}: {err}). Call self.save_hyperparameters() in __init__ with "
                "every argument needed to build the network (not a built nn.Module)."
            ) from err
        current = dict(pl_module.named_parameters())
        if any(p is current.get(n) for n, p in fresh.named_parameters()):
            raise ValueError(
                f"rewind='reinit': {cls.__name__}(**self.hparams) reuses the existing network (an nn.Module "
                "stored in hparams), so it cannot draw new weights. Store how to build the network instead."
            )
        state = dense_state(fresh)
        if problems := state_mismatches(pl_module, state):
            raise ValueError(
                f"rewind='reinit': {cls.__name__}(**self.hparams) builds a different network than the one being "
                f"trained ({'; '.join(problems)}). Save every argument that shapes the network in hparams."
            )
        return state

    def _activate_masks(self, trainer: pl.Trainer) -> None:
        for handle in self._optimizer_hooks:
            handle.remove()
        self._optimizer_hooks = []
        if self._enforcer is not None:
            self._enforcer.deactivate()
        enforcer = MaskEnforcer(trainer.lightning_module)
        self._enforcer = enforcer if len(enforcer) else None
        if self._enforcer is None:
            return
        self._enforcer.activate()
        zero = self._enforcer.zero_masked_weights
        for optimizer in trainer.optimizers:
            self._optimizer_hooks.append(optimizer.register_step_post_hook(lambda *_: zero()))

    def _release(self, trainer: pl.Trainer) -> None:
        """Back to plain torch.nn.utils.prune behaviour (multiply in the forward) outside our fit."""
        for handle in self._optimizer_hooks:
            handle.remove()
        self._optimizer_hooks = []
        if self._enforcer is not None:
            self._enforcer.deactivate()
            self._enforcer = None
        _relaunch.unwrap_fit_loop(trainer)
        bar = trainer.progress_bar_callback
        if bar is not None and "get_metrics" in vars(bar):
            del bar.get_metrics

    def _check_rewind_step(self, trainer: pl.Trainer) -> None:
        if not self.late_rewinding or self.round > 0 or self._theta_k is not None:
            return
        epoch, max_epochs = self._rewind_epoch, trainer.max_epochs
        if epoch is not None:
            if max_epochs is not None and max_epochs >= 0 and epoch > max_epochs:
                raise ValueError(
                    f"`rewind={self.rewind!r}` is beyond round 0's length: it trains max_epochs={max_epochs} epochs"
                )
            return
        k = self.rewind
        total = trainer.estimated_stepping_batches
        if math.isfinite(total) and k > total:
            raise ValueError(
                f"`rewind={k}` is beyond round 0's length: it trains {int(total)} optimizer steps "
                f"(max_epochs={trainer.max_epochs}, max_steps={trainer.max_steps}). Rewind to a step <= {int(total)}."
            )

    def _check_monitor(self, trainer: pl.Trainer) -> None:
        if self.monitor is None or self._monitor_checked:
            return
        if self.monitor not in trainer.callback_metrics:
            available = sorted(trainer.callback_metrics)
            raise ValueError(
                f"`monitor={self.monitor!r}` was not logged; logged metrics are {available}. Log it with "
                "self.log(...) in validation_step, or pass monitor=<one of those> (or monitor=None)."
            )
        self._monitor_checked = True

    def _observe(self, trainer: pl.Trainer) -> None:
        """Track the round's best ``monitor`` value (its early-stop iteration) and log per-round curves."""
        self._check_monitor(trainer)
        metrics = _scalar_metrics(trainer.callback_metrics)
        self._last_metrics = metrics
        if self.monitor is not None:
            value = metrics[self.monitor]
            best = self._best
            improved = best is None or (value < best["value"] if self.mode == "min" else value > best["value"])
            if improved and not math.isnan(value):
                self._best = {
                    "value": value,
                    "step": self._steps_done + trainer.global_step,
                    "round_step": trainer.global_step,
                    "epoch": trainer.current_epoch,
                    "metrics": metrics,
                }
        self._curve.append({"round_step": trainer.global_step, "epoch": trainer.current_epoch, **metrics})
        curves = {f"round_{self.round:02d}/{k}": v for k, v in metrics.items()}
        curves["round_step"] = float(trainer.global_step)
        self._log(trainer, curves)

    def _log(self, trainer: pl.Trainer, metrics: dict[str, float]) -> None:
        if not trainer.is_global_zero:
            return
        step = trainer.fit_loop.epoch_loop._batches_that_stepped
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    def _announce(self, trainer: pl.Trainer) -> None:
        sparsity, remaining, total, _ = self.sparsity()
        pct = 100.0 * remaining / total if total else 100.0
        self._log(trainer, {"round": float(self.round), "sparsity": sparsity, "remaining_weights": pct})
        if self.verbose:
            how = (
                f"transfer: {self.tickets.label}"
                if self.tickets is not None
                else f"rewind={self.rewind!r}, pruning={self.pruning!r}"
            )
            rank_zero_info(
                f"[lottery] round {self.round}/{self.rounds}: {pct:.2f}% of {total} prunable weights remain ({how})"
            )

    def _wrap_progress_bar(self, trainer: pl.Trainer) -> None:
        bar = trainer.progress_bar_callback
        if bar is None or "get_metrics" in vars(bar):
            return
        original = bar.get_metrics

        def get_metrics(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
            metrics = original(trainer, pl_module)
            _, remaining, total, _ = self.sparsity()
            metrics["round"] = f"{self.round}/{self.rounds}"
            metrics["weights"] = f"{100.0 * remaining / total:.1f}%" if total else "100%"
            return metrics

        bar.get_metrics = get_metrics
