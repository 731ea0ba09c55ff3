"""``LotteryTicketCallback``: the whole lottery-ticket search inside one ``trainer.fit``.

The callback is an adapter: the plan of levels and branches, masks, criteria and snapshots are the pure-torch
``core``; resuming round 0 at a point is ``_resume``; the fit-loop relaunch ``_relaunch``; files ``_artifacts``;
what is shown ``_display``. Here they are tied to Lightning's hooks.
"""

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
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lightning_lottery import _artifacts, _display, _relaunch
from lightning_lottery._resume import ResumePoint, loop_state, new_iterator, reposition_after_checkpoint, resume_at
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
    select_prunable,
)
from lightning_lottery.core.levels import (
    CONTROLS,
    Branch,
    Rewind,
    SearchPlan,
    branch_start,
    check_finite,
    parse_controls,
    validate_scale,
)
from lightning_lottery.core.reparam import lottery_hooks
from lightning_lottery.core.rounds import next_masks, rewind
from lightning_lottery.core.selection import parametrized_tensors, uninitialized_parameters
from lightning_lottery.core.snapshot import state_mismatches
from lightning_lottery.ticket import Ticket, ticket_metadata
from lightning_lottery.transfer import TicketSequence

_STATE_VERSION = 2
# Settings that define a search: resuming with other values would mix two searches.
_FIXED_SETTINGS = (
    "transfer",
    "rounds",
    "amount",
    "scope",
    "layer_amounts",
    "parameters",
    "exclude",
    "rewind",
    "controls",
    "rewind_noise",
    "pruning",
    "monitor",
    "mode",
)
_BUDGET = ("max_steps", "max_epochs")


def _patterns(value: Any, argument: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    try:
        value = tuple(value)
    except TypeError:
        value = (value,)
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


def _check_type(value: Any, types: type | tuple[type, ...], argument: str, allowed: str) -> None:
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise TypeError(f"`{argument}={value!r}`: expected {allowed}")
    if not isinstance(value, types):
        raise TypeError(f"`{argument}={value!r}`: expected {allowed}")


class LotteryTicketCallback(Callback):
    r"""Find lottery tickets (Frankle & Carbin, 2019) with iterative magnitude pruning and rewinding.

    One ``trainer.fit`` runs the whole search as levels. Level 0 trains the dense model. Level r >= 1 prunes the
    trained weights of level r-1's ticket, rewinds the survivors and trains again; every control in ``controls``
    is one more branch of the level, trained on that level's mask and differing from the ticket in one thing only.

    Every branch is a real relaunch, as round 0 resumed at the rewind point: ``configure_optimizers`` runs again
    (fresh optimizer state), EarlyStopping and ModelCheckpoint start over, and global step, epoch, learning-rate
    schedule, data order and RNG continue exactly as round 0's did from that point; the budget is the trainer's
    ``max_steps`` / ``max_epochs`` (a branch rewound to step k trains T-k steps). An EarlyStopping stop ends the
    branch, not the search; ``max_time`` or SIGTERM end the search (recorded in ``history.json``).

    Masks are ``torch.nn.utils.prune`` masks (``weight_orig`` / ``weight_mask``); during training they cost
    one fused multiply on the gradients and one on the weights per optimizer step, not one per forward.

    Args:
        rounds: pruning levels after the dense level 0 (0: only train dense and snapshot θ₀).
        amount: fraction of the still-unpruned weights removed each level, in (0, 1); or one cumulative
            target per level, strictly increasing, e.g. ``[0.2, 0.52, 0.8, 0.96, 0.9996]`` (fractions of the weights
            unpruned at the start: a model that arrives pruned keeps its masks and is pruned further).
        scope: ``"global"``: one magnitude threshold across all prunable tensors; ``"layer"``: each tensor
            pruned at its own rate.
        layer_amounts: per-level rates for some tensors by name or fnmatch pattern, e.g. ``{"fc3.weight": 0.1}``
            (the paper's output layer at half rate); such tensors are pruned on their own. 0 keeps a tensor dense.
        parameters: names/patterns of the prunable tensors. Default: weights of Linear, Conv1d/2d/3d,
            RNN/LSTM/GRU and MultiheadAttention; never biases, norms or embeddings.
        exclude: names/patterns removed from the prunable tensors.
        rewind: what each level >= 1 starts from. ``"init"``: θ₀, resuming round 0 at step 0; ``k`` (int): θ_k, the
            weights after global step k of round 0, and training resumes round 0 at k (global step, learning-rate
            schedule, data from k on; T-k steps); ``"epoch:E"``: the same at the end of round 0's epoch E;
            ``"finetune"``: keep the trained, pruned weights and train at the learning rate round 0 ended with
            (prune and fine-tune, Han et al. 2015); ``"lr_rewind"``: keep the trained weights and replay round 0's
            learning-rate schedule (Renda et al. 2020).
        controls: control branches trained at every level r >= 1 on that level's ticket mask, from the same point:
            ``"reinit"``: the ticket's mask over weights drawn afresh from the module's initialiser (a new draw per
            level, by constructing the LightningModule again from its ``hparams``); ``"random"``: the ticket's
            per-tensor counts at random positions, survivors at the rewind point; ``"reshuffle"``: the survivors'
            rewind values permuted within each tensor; ``"signed_constant"``: sign of the rewind value times the
            tensor's standard deviation (Zhou et al. 2019); ``"noise"``: rewind values plus Gaussian noise.
        rewind_noise: the ``"noise"`` control's scale, in standard deviations of each tensor's rewind values.
        pruning: ``"magnitude"`` of the trained weights, or ``"random"``: iterative random pruning of the main line
            (the counts magnitude pruning would give, at random positions). This is a search mode, not the
            paper's random-pruning control; that is ``controls=["random"]``.
        monitor: validation metric whose best value defines each branch's early-stop iteration; ``None`` to
            record only the final metrics.
        mode: ``"min"`` or ``"max"``: whether lower or higher ``monitor`` is better.
        seed: seeds random pruning and the controls' draws; ``None`` draws one (kept in checkpoints).
        dirpath: folder for the artifacts (``round_XX/<branch>/ticket.safetensors``, ``summary.json``,
            ``curve.csv``, ``history.json``); default ``<trainer.log_dir>/lottery``. Written by rank zero,
            atomically. A folder holding another search's artifacts is refused.
        save_tickets: write those artifacts.
        verbose: print one line per branch.
        tickets: transfer instead of search: level r trains ticket r of a :class:`~lightning_lottery.transfer.
            TicketSequence` (masks and weights from a source search, or its random controls); ``rounds``,
            ``amount``, ``scope``, ``pruning``, ``rewind`` and ``controls`` are then not used.

    Example::

        >>> import lightning.pytorch as pl
        >>> from lightning_lottery import LotteryTicketCallback
        >>> lottery = LotteryTicketCallback(rounds=5, amount=0.2, rewind="init", controls=["reinit", "random"])
        >>> trainer = pl.Trainer(max_epochs=10, callbacks=[lottery])
        >>> # trainer.fit(model, datamodule)   # level 0 dense, then 5 levels of ticket + 2 controls
        >>> # [(r["round"], r["branch"]) for r in lottery.history][:4]
        >>> # [(0, 'ticket'), (1, 'ticket'), (1, 'reinit'), (1, 'random')]

    After ``fit``: :attr:`history` has one record per (level, branch) and :attr:`masks` the current bool masks by
    parameter name. Other callbacks may define ``on_lottery_round_end(trainer, pl_module, record, folder)``: it is
    called when a branch ends, while the module still holds that branch's masks, with its history record and
    artifact folder (``None`` off rank zero).
    """

    def __init__(
        self,
        rounds: int = 5,
        amount: float | Sequence[float] = 0.2,
        scope: Literal["global", "layer"] = "global",
        layer_amounts: Mapping[str, float] | None = None,
        parameters: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] = (),
        rewind: int | str = "init",
        controls: Sequence[str] = (),
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
        if tickets is not None and not isinstance(tickets, TicketSequence):
            raise TypeError(f"`tickets` must be a TicketSequence, got {type(tickets).__name__}")
        if tickets is not None:
            rounds = len(tickets) - 1
        _check_type(rounds, int, "rounds", "an int >= 0 (pruning levels after the dense level 0)")
        if rounds < 0:
            raise ValueError(f"`rounds={rounds!r}` must be an int >= 0 (pruning levels after the dense level 0)")
        if isinstance(amount, str):
            raise TypeError(f"`amount={amount!r}` is a string: give a float in (0, 1) or a list of floats")
        if layer_amounts is not None and not isinstance(layer_amounts, Mapping):
            raise TypeError(
                f"`layer_amounts={layer_amounts!r}` must map names or patterns to rates, e.g. {{'fc3.weight': 0.1}}"
            )
        self.schedule = SparsitySchedule.build(amount, rounds, scope, layer_amounts)
        self.parameters = _patterns(parameters, "parameters")
        self.exclude = _patterns(exclude, "exclude") or ()
        self.rewind = Rewind.parse(rewind)
        self.rewind_noise = validate_scale(rewind_noise, "rewind_noise")
        self.controls = parse_controls(controls, self.rewind_noise) if tickets is None else ()
        if pruning not in ("magnitude", "random"):
            raise ValueError(f"`pruning={pruning!r}` is not one of 'magnitude', 'random'")
        self.pruning = pruning
        if monitor is not None and not isinstance(monitor, str):
            raise TypeError(f"`monitor={monitor!r}` must be a metric name or None")
        self.monitor = monitor
        if mode not in ("min", "max"):
            raise ValueError(f"`mode={mode!r}` is not one of 'min', 'max'")
        self.mode = mode
        if seed is not None:
            _check_type(seed, int, "seed", "an int or None")
        self.seed = seed
        if dirpath is not None:
            _check_type(dirpath, (str, os.PathLike), "dirpath", "a folder path (str or os.PathLike) or None")
        self.dirpath = Path(dirpath) if dirpath is not None else None
        _check_type(save_tickets, bool, "save_tickets", "True or False")
        _check_type(verbose, bool, "verbose", "True or False")
        self.save_tickets = save_tickets
        self.verbose = verbose
        self.tickets = tickets
        self.plan = SearchPlan(rounds, self.controls)

        self.history: list[dict[str, Any]] = []
        self.position = 0  # index of the current branch in ``plan``
        self.finished = False
        self.stopped: str | None = None
        self._tensors: dict[str, PrunableTensor] = {}
        self._start_counts: dict[str, int] = {}
        self._masks: dict[str, Tensor] | None = None  # installed now (the current branch's)
        self._level_masks: dict[str, Tensor] | None = None  # the current level's ticket mask
        self._next_masks: dict[str, Tensor] | None = None  # the next level's, pruned from this level's ticket
        self._theta0: State | None = None
        self._theta_k: State | None = None
        self._start_point: ResumePoint | None = None  # round 0 at step 0
        self._rewind_point: ResumePoint | None = None  # round 0 at step k (late rewinding)
        self._pending: dict[str, Any] | None = None  # a rewind point being captured
        self._final_schedule: dict[str, Any] | None = None  # round 0's learning rates at its end (finetune)
        self._level_start: State | None = None  # finetune / lr_rewind: the weights the level starts from
        self._next_start: State | None = None
        self._branch_start: State | None = None  # what the branch started from, when not θ₀ / θ_k
        self._epoch_rng: dict[str, Any] | None = None  # the RNG the current epoch's data iterator was made from
        self._iterator_epoch: int | None = None  # the epoch that iterator belongs to
        self._best: dict[str, Any] | None = None
        self._last_metrics: dict[str, float] = {}
        self._curve: list[dict[str, float]] = []
        self._branch_start_step = 0
        self._steps_before = 0  # optimizer steps of all finished branches
        self._budget: dict[str, Any] = {}
        self._rng_resume: dict[str, Any] | None = None
        self._resumed = False
        self._ran = False
        self._monitor_checked = False
        self._clock = time.monotonic()
        self._enforcer: MaskEnforcer | None = None
        self._optimizer_hooks: list[Any] = []
        self._model_class = ""
        self._sparsity_cache: tuple[Any, tuple[float, int, int, dict[str, float]]] | None = None

    # ------------------------------------------------------------------ public state

    @property
    def rounds(self) -> int:
        return self.plan.rounds

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
    def current(self) -> Branch:
        return self.plan[min(self.position, len(self.plan) - 1)]

    @property
    def round(self) -> int:
        """The level being trained (or the last one, after the search)."""
        return self.current.round

    @property
    def branch(self) -> str:
        """``"ticket"`` or the control being trained."""
        return self.current.name

    @property
    def late_rewinding(self) -> bool:
        """Whether levels rewind to θ_k (a step or an epoch of round 0) rather than θ₀."""
        return self.rewind.late

    @property
    def masks(self) -> dict[str, Tensor]:
        """The bool masks installed now (the current branch's; ``True`` keeps the weight); empty before ``fit``."""
        return {name: mask.clone() for name, mask in (self._masks or {}).items()}

    @property
    def rewind_weights(self) -> State | None:
        """The weights the current branch started from (θ₀ in level 0)."""
        if self._branch_start is not None:
            return self._branch_start
        return self._theta_k if self.late_rewinding and self.round > 0 else self._theta0

    def ticket(self) -> Ticket:
        """The current branch's ticket: its masks and the weights its survivors started from."""
        if self._masks is None or self.rewind_weights is None:
            raise RuntimeError("No ticket yet: call trainer.fit with this callback first")
        sparsity, remaining, total, per_tensor = self.sparsity()
        branch = self.current
        record = next((r for r in self.history if (r["round"], r["branch"]) == (branch.round, branch.name)), None)
        start = self._rewind_point.step if self._rewind_point is not None and self.round > 0 else 0
        extra = {
            "settings": self.settings(),
            "branch": branch.name,
            "rewind_kind": self._rewind_label(),
            "rewind_step": start if self.late_rewinding else 0,
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
            "rewind": self.rewind.setting,
            "controls": list(self.controls),
            "rewind_noise": self.rewind_noise,
            "pruning": self.pruning,
            "monitor": self.monitor,
            "mode": self.mode,
            "seed": self.seed,
            "transfer": self.tickets.settings() if self.tickets is not None else None,
            "budget": dict(self._budget),
        }

    def sparsity(self) -> tuple[float, int, int, dict[str, float]]:
        """(overall sparsity, remaining, total, per-tensor sparsity) of the installed masks."""
        masks = self._masks or {}
        if self._sparsity_cache is None or self._sparsity_cache[0] is not masks:
            total = sum(m.numel() for m in masks.values())
            remaining = sum(counts(masks).values())
            per_tensor = {n: 1.0 - float(m.sum()) / m.numel() for n, m in masks.items()}
            overall = 1.0 - remaining / total if total else 0.0
            self._sparsity_cache = (masks, (overall, remaining, total, per_tensor))
        return self._sparsity_cache[1]

    def _rewind_label(self) -> str | int:
        if self.tickets is not None:
            return f"transfer:{self.tickets.variant}"
        return self.rewind.setting if self.round > 0 else "init"

    # ------------------------------------------------------------------ checks before training

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        _relaunch.check_trainer(trainer)
        self._resumed = False  # until Lightning hands this callback a checkpoint's state (after setup)
        if uninitialized := uninitialized_parameters(pl_module):
            raise ValueError(
                f"{pl_module.__class__.__name__} has uninitialised (lazy) parameters {uninitialized[:5]}: the "
                "search needs their shapes and θ₀ before training. Run one forward pass before trainer.fit "
                "(e.g. model(example_batch)) so lazy modules materialise."
            )
        self._select_tensors(pl_module)
        self._model_class = f"{type(pl_module).__module__}.{type(pl_module).__qualname__}"
        self._budget = {"max_steps": trainer.max_steps, "max_epochs": trainer.max_epochs}
        log_dir = trainer.log_dir  # a collective call under DDP: every rank asks
        if self.dirpath is None:
            self.dirpath = Path(log_dir or trainer.default_root_dir) / "lottery"
        if self.save_tickets and trainer.is_global_zero:
            _artifacts.check_writable(self.dirpath)
        self._check_rewind_point(trainer)
        if "reinit" in self.controls:
            self._fresh_state(pl_module, level=0)  # fail now, not after level 0

    def _select_tensors(self, pl_module: pl.LightningModule) -> None:
        if self.tickets is not None:
            fresh = self.tickets.check(pl_module)  # another architecture is refused here, before training
            masked = [n for n in self.tickets.tickets[0].masks if n not in fresh]
            self._tensors = select_prunable(pl_module, parameters=masked)
            return
        self._tensors = select_prunable(pl_module, self.parameters, self.exclude)
        self.schedule.check_names(list(self._tensors))
        if self.parameters is None and (left_out := parametrized_tensors(pl_module)):
            share = sum(n for _, n in left_out) / max(sum(p.numel() for p in pl_module.parameters()), 1)
            rank_zero_warn(
                f"{len(left_out)} parametrized weights ({', '.join(name for name, _ in left_out[:5])}; "
                f"{100 * share:.0f}% of the model's weights) use torch.nn.utils.parametrize (e.g. weight_norm) and "
                "are not prunable through torch.nn.utils.prune, so the search leaves them dense. Name the "
                "parametrization's tensors in `parameters` (e.g. 'fc1.parametrizations.weight.original1')."
            )

    def _check_rewind_point(self, trainer: pl.Trainer) -> None:
        """A rewind point round 0 never reaches is refused before round 0 trains."""
        if not self.late_rewinding or self.tickets is not None:
            return
        trainer.fit_loop.setup_data()  # what fit does first; the number of batches per epoch is known after it
        total = trainer.estimated_stepping_batches
        batches = trainer.num_training_batches
        per_epoch = math.ceil(batches / trainer.accumulate_grad_batches) if math.isfinite(batches) else math.inf
        budget = f"max_epochs={trainer.max_epochs}, max_steps={trainer.max_steps}"
        if self.rewind.kind == "epoch":
            epoch = self.rewind.value
            if math.isfinite(total) and math.isfinite(per_epoch) and epoch * per_epoch >= total:
                raise ValueError(
                    f"`rewind='epoch:{epoch}'` is not inside round 0: it trains {int(total)} optimizer steps, "
                    f"{per_epoch} per epoch ({budget}); rewind to an epoch < {math.ceil(total / per_epoch)}"
                )
            return
        k = self.rewind.value
        if math.isfinite(total) and k >= total:
            raise ValueError(
                f"`rewind={k}` is not inside round 0: it trains {int(total)} optimizer steps ({budget}); "
                f"rewind to a step k < {int(total)}"
            )

    # ------------------------------------------------------------------ starting the search

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._ran and not self._resumed:
            raise RuntimeError(
                "This LotteryTicketCallback already ran a search (its history, masks and rewind points belong to "
                "that fit). Create a new LotteryTicketCallback for a new search, or resume with ckpt_path=..."
            )
        if self.save_tickets and trainer.is_global_zero and not self._resumed:
            assert self.dirpath is not None
            _artifacts.check_unused(self.dirpath)
        self._ran = True
        if self._rng_resume is not None:
            restore_rng_state(self._rng_resume)
        if self.seed is None:
            self.seed = random.SystemRandom().randrange(2**31)
        if self._theta0 is None:
            self._theta0 = dense_state(pl_module)
        if self._masks is None:
            if self.tickets is not None:
                masks = self.tickets.masks(0, pl_module)
                state = self.tickets.weights(0, pl_module, self._theta0)
                rewind(pl_module, self._tensors, masks, state, replace=True)
                self._branch_start = state
            # A model that arrives pruned keeps its masks: the search prunes what is still unpruned.
            self._masks = {n: m.cpu() for n, m in current_masks(self._tensors).items()}
            self._level_masks = self._masks
            self._start_counts = counts(self._masks)
        if not all(bool(m.all()) for m in self._masks.values()):
            install_masks(self._tensors, self._masks, replace=True)
        self._activate_masks(trainer)
        _relaunch.wrap_fit_loop(
            trainer,
            _relaunch.LoopEvents(
                next_branch=lambda: self._next_branch(trainer, pl_module),
                before_first_run=lambda: self._before_first_run(trainer),
                before_epoch=lambda: self._before_epoch(trainer, pl_module),
                before_batch=lambda: self._before_batch(trainer),
                new_iterator=lambda rng: self._set_epoch_rng(rng, trainer.current_epoch),
                epoch_data_start=lambda: self._epoch_data_start(trainer),
            ),
        )
        _display.show_in_progress_bar(trainer, self._progress)
        self._announce(trainer)
        self._clock = time.monotonic()

    def _before_first_run(self, trainer: pl.Trainer) -> None:
        rng = collect_rng_state()  # round 0's RNG before anything draws from it
        self._check_workers(trainer)  # sets up the training data, which draws from the RNG (restored below)
        if self._resumed:
            assert self._rng_resume is not None
            positioned = reposition_after_checkpoint(trainer, self._epoch_rng, self._rng_resume)
            self._iterator_epoch = trainer.fit_loop.epoch_progress.current.processed if positioned else None
            self._rng_resume = None
            if self.round > 0 and self.rewind.kind == "finetune" and self.tickets is None:
                assert self._final_schedule is not None
                _relaunch.hold_learning_rates(trainer, self._final_schedule)
        elif self._start_point is None:
            self._start_point = ResumePoint(0, 0, 0, loop_state(trainer), _relaunch.capture_schedule(trainer), rng)
            # Round 0's first data iterator made here, from the state every branch starting at step 0 restores
            # (Lightning may have made one earlier, e.g. for ``estimated_stepping_batches``).
            new_iterator(trainer, 0, rng)
            self._set_epoch_rng(rng, 0)

    def _check_workers(self, trainer: pl.Trainer) -> None:
        trainer.fit_loop.setup_data()
        loader = trainer.fit_loop._combined_loader
        loaders = loader.flattened if loader is not None else []
        if self.late_rewinding and any(getattr(dl, "persistent_workers", False) for dl in loaders):
            raise ValueError(
                f"rewind={self.rewind.setting!r} resumes round 0 in the middle of its training, but the training "
                "DataLoader has persistent_workers=True: its workers' random state cannot be put back where round 0's "
                "was. Use persistent_workers=False (workers restart each epoch, seeded as in round 0)."
            )

    def _set_epoch_rng(self, rng: dict[str, Any], epoch: int) -> None:
        self._epoch_rng, self._iterator_epoch = rng, epoch

    def _epoch_data_start(self, trainer: pl.Trainer) -> None:
        """An epoch starting at its first batch without an iterator of its own (Lightning restarting from a
        checkpoint reuses the one made at set-up): make it now, from the RNG of this moment, as round 0 did."""
        epoch = trainer.current_epoch
        if trainer.fit_loop.epoch_loop.batch_progress.current.ready == 0 and self._iterator_epoch != epoch:
            rng = collect_rng_state()
            new_iterator(trainer, epoch, rng)
            self._set_epoch_rng(rng, epoch)

    # ------------------------------------------------------------------ round 0: the rewind point θ_k

    def _capturing(self) -> bool:
        return self.late_rewinding and self.tickets is None and self.position == 0 and self._rewind_point is None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if not self._capturing() or self._pending is not None or self.rewind.kind != "step":
            return
        if trainer.global_step < self.rewind.value:
            return
        epoch_loop = trainer.fit_loop.epoch_loop
        batch = epoch_loop.batch_progress.current.processed
        at_epoch_end = batch >= trainer.num_training_batches or epoch_loop.batch_progress.is_last_batch
        self._theta_k = dense_state(pl_module)
        self._pending = {"step": trainer.global_step, "boundary": bool(at_epoch_end)}
        if not at_epoch_end:
            self._pending.update(epoch=trainer.current_epoch, batch=batch, loops=loop_state(trainer))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.enable_validation:
            self._observe(trainer)
        if self._capturing() and self.rewind.kind == "epoch" and trainer.current_epoch + 1 >= self.rewind.value:
            self._theta_k = dense_state(pl_module)
            self._pending = {"step": trainer.global_step, "boundary": True}

    def _before_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending is not None and self._pending["boundary"]:
            self._finish_point(trainer, epoch=trainer.fit_loop.epoch_progress.current.processed, batch=0)

    def _before_batch(self, trainer: pl.Trainer) -> None:
        if self._pending is not None and not self._pending["boundary"]:
            self._finish_point(trainer, epoch=self._pending["epoch"], batch=self._pending["batch"])

    def _finish_point(self, trainer: pl.Trainer, epoch: int, batch: int) -> None:
        """θ_k's resume point, from right before round 0 goes on (the next epoch starts / the next batch is
        fetched): everything round 0 did at step k (validation, checkpoints, epoch end) is behind it."""
        pending, self._pending = self._pending, None
        assert pending is not None
        loops = pending.get("loops") or loop_state(trainer)
        self._rewind_point = ResumePoint(
            step=pending["step"],
            epoch=epoch,
            batch=batch,
            loops=loops,
            schedule=_relaunch.capture_schedule(trainer),
            rng=collect_rng_state(),
            epoch_rng=self._epoch_rng if batch else None,
            reload_epoch=trainer.fit_loop._last_train_dl_reload_epoch,
        )

    # ------------------------------------------------------------------ during training

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
        """Track the branch's best ``monitor`` value (its early-stop iteration) and log its curves."""
        self._check_monitor(trainer)
        metrics = _scalar_metrics(trainer.callback_metrics)
        self._last_metrics = metrics
        step = trainer.global_step
        if self.monitor is not None:
            value = metrics[self.monitor]
            best = self._best
            improved = best is None or (value < best["value"] if self.mode == "min" else value > best["value"])
            if improved and not math.isnan(value):
                self._best = {"value": value, "step": step, "epoch": trainer.current_epoch, "metrics": metrics}
        round_step = step - self._branch_start_step
        self._curve.append({"round_step": round_step, "step": step, "epoch": trainer.current_epoch, **metrics})
        prefix = _display.curve_prefix(self.round, self.branch)
        _display.log_metrics(trainer, {**{prefix + k: v for k, v in metrics.items()}, "round_step": float(round_step)})

    # ------------------------------------------------------------------ between branches

    def _next_branch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        """Close the branch that just ended; start the next one if any. Called between fit-loop runs."""
        if self._pending is not None:  # round 0 ended right at the rewind point
            self._finish_point(trainer, epoch=trainer.fit_loop.epoch_progress.current.processed, batch=0)
        if self.position == 0 and self._final_schedule is None:
            self._final_schedule = _relaunch.capture_schedule(trainer)
        self._finish_branch(trainer)
        if self.current.is_ticket and self.round < self.rounds:
            self._prepare_next_level(trainer, pl_module)
        if reason := _relaunch.search_interrupted(trainer):
            self.stopped = f"{reason} after {self.current}"
            rank_zero_warn(f"The lottery search stopped at {reason} after {self.current}; the history records it.")
            self._write_history(trainer)
            return False
        if self.position + 1 >= len(self.plan):
            self.finished = True
            self._write_history(trainer)
            return False
        if self.late_rewinding and self.tickets is None and self._rewind_point is None:
            raise RuntimeError(
                f"rewind={self.rewind.setting!r} cannot be honoured: round 0 stopped after {self.history[0]['steps']} "
                f"optimizer steps ({self.history[0]['epochs']} epochs), before reaching that point "
                "(EarlyStopping?). Rewind to an earlier point."
            )
        self.position += 1
        self._start_branch(trainer, pl_module)
        return True

    def _prepare_next_level(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The next level's ticket mask, pruned from this ticket's trained weights (controls never change it)."""
        level = self.round + 1
        if self.tickets is not None:
            masks = self.tickets.masks(level, pl_module)
        else:
            assert self._masks is not None
            generator = torch.Generator().manual_seed(derive_seed(self.seed or 0, level, 1))
            masks = next_masks(
                self._tensors, self._masks, self.schedule, level, self.pruning, generator, self._start_counts
            )
        self._next_masks = trainer.strategy.broadcast(masks, src=0)
        self._next_start = dense_state(pl_module) if self.rewind.keeps_trained_weights else None

    def _level_state(self) -> State:
        if self.rewind.keeps_trained_weights:
            assert self._level_start is not None
            return self._level_start
        state = self._theta_k if self.late_rewinding else self._theta0
        assert state is not None
        return state

    def _start_branch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        branch = self.current
        if branch.is_ticket:
            assert self._next_masks is not None
            self._level_masks, self._next_masks = self._next_masks, None
            self._level_start, self._next_start = self._next_start, None
        assert self._level_masks is not None
        if self.tickets is not None:
            assert self._theta0 is not None
            masks, state = self._level_masks, self.tickets.weights(branch.round, pl_module, self._theta0)
        else:
            purpose = 10 + CONTROLS.index(branch.name) if not branch.is_ticket else 3
            generator = torch.Generator().manual_seed(derive_seed(self.seed or 0, branch.round, purpose))
            masks, state = branch_start(
                branch.name,
                self._level_masks,
                self._level_state(),
                generator,
                fresh_state=lambda: trainer.strategy.broadcast(self._fresh_state(pl_module, branch.round), src=0),
                noise=self.rewind_noise,
            )
            masks = trainer.strategy.broadcast(masks, src=0)
        check_finite(state, f"The start of {branch}")
        rewind(pl_module, self._tensors, masks, state, replace=True)
        self._masks = masks
        derived = branch.is_ticket and not self.rewind.keeps_trained_weights and self.tickets is None
        self._branch_start = None if derived else state
        self._relaunch(trainer)
        self._best, self._last_metrics, self._curve = None, {}, []
        self._announce(trainer)
        self._clock = time.monotonic()

    def _relaunch(self, trainer: pl.Trainer) -> None:
        _relaunch.reset_monitoring_callbacks(trainer)
        _relaunch.recreate_optimizers(trainer)
        self._activate_masks(trainer)
        late = self.late_rewinding and self.tickets is None
        point = self._rewind_point if late else self._start_point
        assert point is not None
        finetune = self.rewind.kind == "finetune" and self.tickets is None
        resume_at(trainer, point, schedule=not finetune)
        if finetune:
            assert self._final_schedule is not None
            _relaunch.hold_learning_rates(trainer, self._final_schedule)
        if point.batch:
            assert point.epoch_rng is not None
            self._set_epoch_rng(point.epoch_rng, point.epoch)
        elif point.epoch == 0:
            self._set_epoch_rng(point.rng, 0)
        self._branch_start_step = point.step

    def _finish_branch(self, trainer: pl.Trainer) -> None:
        sparsity, remaining, total, per_tensor = self.sparsity()
        best = self._best or {}
        steps = trainer.global_step - self._branch_start_step
        record = {
            "round": self.round,
            "branch": self.branch,
            "sparsity": sparsity,
            "remaining": remaining,
            "total": total,
            "remaining_pct": 100.0 * remaining / total if total else 100.0,
            "tensor_sparsity": per_tensor,
            "monitor": self.monitor,
            "best": best.get("value"),
            "best_step": best.get("step"),
            "best_round_step": best["step"] - self._branch_start_step if best else None,
            "best_epoch": best.get("epoch"),
            "metrics": best.get("metrics", {}),
            "final_metrics": dict(self._last_metrics),
            "start_step": self._branch_start_step,
            "end_step": trainer.global_step,
            "steps": steps,
            "epochs": trainer.current_epoch,
            "cumulative_steps": self._steps_before + steps,
            "seconds": time.monotonic() - self._clock,  # wall time of the branch (since resume, if resumed)
        }
        self._steps_before += steps
        # Validation metrics are rank-local unless logged with sync_dist=True: every rank keeps rank 0's record.
        record = trainer.strategy.broadcast(record, src=0)
        key = (record["round"], record["branch"])
        self.history = [r for r in self.history if (r["round"], r["branch"]) != key] + [record]
        folder = None
        if self.save_tickets and trainer.is_global_zero:
            assert self.dirpath is not None
            folder = _artifacts.write_branch(self.dirpath, self.ticket(), record, self._curve, self.settings())
            self._write_history(trainer)
        for callback in trainer.callbacks:
            listener = getattr(callback, "on_lottery_round_end", None)
            if callable(listener):
                listener(trainer, trainer.lightning_module, record, folder)
        summary = {f"round_summary/{k}": v for k, v in record.items() if isinstance(v, (int, float))}
        _display.log_metrics(trainer, summary)

    def _write_history(self, trainer: pl.Trainer) -> None:
        if self.save_tickets and trainer.is_global_zero:
            assert self.dirpath is not None
            status = {"finished": self.finished, "stopped": self.stopped, "branches": len(self.plan)}
            _artifacts.write_history(self.dirpath, self.settings(), self.history, status)

    # ------------------------------------------------------------------ helpers

    def _fresh_state(self, pl_module: pl.LightningModule, level: int) -> State:
        """Weights of a newly constructed copy of the module: a fresh draw from its own initialiser."""
        cls = type(pl_module)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derive_seed(self.seed or 0, level, 2))
                fresh = cls(**dict(pl_module.hparams))
        except Exception as err:
            raise ValueError(
                f"controls=['reinit'] draws a fresh initialisation by constructing {cls.__name__}(**self.hparams), "
                f"which failed ({type(err).__name__}: {err}). Call self.save_hyperparameters() in __init__ with "
                "every argument needed to build the network (not a built nn.Module)."
            ) from err
        current = dict(pl_module.named_parameters())
        if any(p is current.get(n) for n, p in fresh.named_parameters()):
            raise ValueError(
                f"controls=['reinit']: {cls.__name__}(**self.hparams) reuses the existing network (an nn.Module "
                "stored in hparams), so it cannot draw new weights. Store how to build the network instead."
            )
        state = dense_state(fresh)
        if problems := state_mismatches(pl_module, state):
            raise ValueError(
                f"controls=['reinit']: {cls.__name__}(**self.hparams) builds a different network than the one being "
                f"trained ({'; '.join(problems)}). Save every argument that shapes the network in hparams."
            )
        return state

    def _activate_masks(self, trainer: pl.Trainer) -> None:
        self._deactivate_masks()
        enforcer = MaskEnforcer(trainer.lightning_module)
        self._enforcer = enforcer if len(enforcer) else None
        if self._enforcer is None:
            return
        self._enforcer.activate()
        zero = self._enforcer.zero_masked_weights
        for optimizer in trainer.optimizers:
            self._optimizer_hooks.append(optimizer.register_step_post_hook(lambda *_: zero()))

    def _deactivate_masks(self) -> None:
        for handle in self._optimizer_hooks:
            handle.remove()
        self._optimizer_hooks = []
        if self._enforcer is not None:
            self._enforcer.deactivate()
            self._enforcer = None

    def _release(self, trainer: pl.Trainer) -> None:
        """Back to plain torch.nn.utils.prune behaviour (multiply in the forward) outside our fit."""
        self._deactivate_masks()
        _relaunch.unwrap_fit_loop(trainer)
        _display.hide_from_progress_bar(trainer)

    def _progress(self) -> dict[str, str]:
        _, remaining, total, _ = self.sparsity()
        return {
            "round": f"{self.round}/{self.rounds}",
            "branch": self.branch,
            "weights": f"{100.0 * remaining / total:.1f}%" if total else "100%",
        }

    def _announce(self, trainer: pl.Trainer) -> None:
        sparsity, remaining, total, _ = self.sparsity()
        pct = 100.0 * remaining / total if total else 100.0
        _display.log_metrics(trainer, {"round": float(self.round), "sparsity": sparsity, "remaining_weights": pct})
        if self.verbose:
            how = (
                f"transfer: {self.tickets.label}"
                if self.tickets is not None
                else f"rewind={self.rewind.setting!r}, pruning={self.pruning!r}"
            )
            _display.announce(self.round, self.rounds, self.branch, pct, total, how)

    # ------------------------------------------------------------------ end of fit, checkpoints

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
        point = self._rewind_point.to_state() if self._rewind_point is not None else None
        start = self._start_point.to_state() if self._start_point is not None else None
        return {
            "version": _STATE_VERSION,
            "settings": self.settings(),
            "position": self.position,
            "finished": self.finished,
            "stopped": self.stopped,
            "start_counts": self._start_counts,
            "masks": self._masks,
            "level_masks": self._level_masks,
            "next_masks": self._next_masks,
            "theta0": self._theta0,
            "theta_k": self._theta_k,
            "start_point": start,
            "rewind_point": point,
            "pending": self._pending,
            "final_schedule": self._final_schedule,
            "level_start": self._level_start,
            "next_start": self._next_start,
            "branch_start": self._branch_start,
            "epoch_rng": self._epoch_rng,
            "iterator_epoch": self._iterator_epoch,
            "history": self.history,
            "best": self._best,
            "last_metrics": self._last_metrics,
            "curve": self._curve,
            "branch_start_step": self._branch_start_step,
            "steps_before": self._steps_before,
            # The RNG as of this checkpoint: a resumed run draws the same shuffles and dropout masks.
            "rng_now": collect_rng_state(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("version") != _STATE_VERSION:
            raise ValueError(
                f"The checkpoint's lottery state has version {state_dict.get('version')}, this version reads "
                f"{_STATE_VERSION}: resume it with the lightning_lottery version that wrote it"
            )
        saved, ours = state_dict["settings"], self.settings()
        keys = _FIXED_SETTINGS + (("budget",) if ours["budget"] else ())
        different = [f"{k}: checkpoint {saved.get(k)!r} vs now {ours[k]!r}" for k in keys if saved.get(k) != ours[k]]
        if different:
            raise ValueError(
                "The checkpoint belongs to a different lottery search; resume it with the same settings "
                f"({'; '.join(different)})"
            )
        self.seed = saved["seed"]
        self.position = state_dict["position"]
        self.finished = state_dict["finished"]
        self.stopped = state_dict["stopped"]
        self._start_counts = dict(state_dict["start_counts"])
        self._masks = state_dict["masks"]
        self._level_masks = state_dict["level_masks"]
        self._next_masks = state_dict["next_masks"]
        self._theta0 = state_dict["theta0"]
        self._theta_k = state_dict["theta_k"]
        start, point = state_dict["start_point"], state_dict["rewind_point"]
        self._start_point = ResumePoint.from_state(start) if start is not None else None
        self._rewind_point = ResumePoint.from_state(point) if point is not None else None
        self._pending = state_dict["pending"]
        self._final_schedule = state_dict["final_schedule"]
        self._level_start = state_dict["level_start"]
        self._next_start = state_dict["next_start"]
        self._branch_start = state_dict["branch_start"]
        self._epoch_rng = state_dict["epoch_rng"]
        self._iterator_epoch = state_dict["iterator_epoch"]
        self.history = list(state_dict["history"])
        self._best = state_dict["best"]
        self._last_metrics = dict(state_dict["last_metrics"])
        self._curve = list(state_dict["curve"])
        self._branch_start_step = state_dict["branch_start_step"]
        self._steps_before = state_dict["steps_before"]
        self._rng_resume = state_dict["rng_now"]
        self._resumed = True
