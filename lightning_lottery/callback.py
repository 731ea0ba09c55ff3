"""``LotteryTicketCallback``: the whole lottery-ticket search inside one ``trainer.fit``.

The callback is an adapter: the settings, the plan of levels and branches, masks, criteria and snapshots are the
pure-torch ``core``; resuming round 0 at a point is ``_resume``; the fit-loop relaunch ``_relaunch``; validations
``_metrics``; files ``_artifacts``; what is shown ``_display``. Here they are tied to Lightning's hooks.
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
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lightning_lottery import _artifacts, _display, _relaunch, io
from lightning_lottery._at_init import masks_at_init
from lightning_lottery._auto_rewind import AutoRewind
from lightning_lottery._metrics import BranchMetrics
from lightning_lottery._reinit import fresh_initialisation
from lightning_lottery._resume import (
    ResumePoint,
    RewindPointRecorder,
    check_rewind_point,
    check_workers,
    loop_state,
    new_iterator,
    reposition_after_checkpoint,
    resume_at,
)
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
from lightning_lottery.core.early_bird import EarlyBirdTracker
from lightning_lottery.core.levels import CONTROLS, Branch, Rewind, SearchPlan, branch_start, check_finite
from lightning_lottery.core.progress import SearchProgress, upgrade_search_state
from lightning_lottery.core.reparam import lottery_hooks
from lightning_lottery.core.rounds import next_masks, rewind
from lightning_lottery.core.search import DEFINING, SearchSettings, check_type
from lightning_lottery.core.selection import parametrized_tensors, uninitialized_parameters
from lightning_lottery.core.structure import check_structure
from lightning_lottery.ticket import Ticket, ticket_metadata
from lightning_lottery.transfer import TicketSequence

_STATE_VERSION = 3
_CALLBACK_METRICS = "lottery_callback_metrics"  # checkpoint key
# What a checkpoint holds of the search besides its parts' own state (saved under the names without "_").
_STATE = ("_theta0", "_final_schedule", "_epoch_rng", "_iterator_epoch", "_early_bird_step")


def _epochs_begun(trainer: pl.Trainer) -> int:
    """Epochs the branch has begun by its last step. A run that stops at ``max_steps`` inside an epoch counts it
    (as Lightning's ``current_epoch`` does after the epoch end); computed from the step, so a run resumed from a
    checkpoint taken at its last step, whose loop never reaches that epoch end, counts the same."""
    batches = trainer.num_training_batches
    if not math.isfinite(batches) or not batches:
        return trainer.current_epoch
    per_epoch = math.ceil(batches / trainer.accumulate_grad_batches)
    return max(trainer.current_epoch, math.ceil(trainer.global_step / per_epoch))


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
    one multiply per gradient as backward accumulates it (and one on the weights after steps of optimizers
    that are not element-wise), not one per forward.

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
        pruning: how each level's ticket mask is chosen. ``"magnitude"`` of the trained weights; ``"random"``:
            iterative random pruning of the main line (the counts magnitude pruning would give, at random
            positions; a search mode, not the paper's random-pruning control, which is ``controls=["random"]``);
            or pruning at initialisation, each level's mask chosen at θ₀ for that level's sparsity and trained from
            θ₀ (``rewind="init"``): ``"snip"`` (Lee et al. 2019), ``"grasp"`` (Wang et al. 2020), ``"synflow"``
            (Tanaka et al. 2020, data-free), ``"magnitude_init"``. SNIP and GraSP score ``pruning_batches`` training
            batches ``(x, y)`` with the cross-entropy of ``model(x)``; SynFlow needs ``input_shape``.
        pruning_batches: training batches SNIP / GraSP score.
        input_shape: the shape of one input without the batch dimension, for SynFlow (default: the DataModule's
            ``input_shape`` attribute).
        structure: ``"N:M"`` (e.g. ``"2:4"``): level 1 keeps N of every M consecutive weights along each weight's
            input dimension (magnitude within each group); later levels prune ``amount`` inside that pattern. The
            ``random`` control keeps the pattern. Tensors whose input dimension is not a multiple of M are refused.
        early_bird: draw each level's next mask early (You et al. 2020): ``{"every": steps, "patience": 5,
            "threshold": 0.1}`` computes the next level's prospective mask every ``every`` optimizer steps of a
            ticket branch and ends the branch once the last ``patience`` normalised Hamming distances between
            consecutive masks are all below ``threshold``; the history records ``early_bird_step`` and
            ``steps_saved``. The last level trains in full.
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
        pruning: str = "magnitude",
        pruning_batches: int = 1,
        input_shape: Sequence[int] | None = None,
        structure: str | None = None,
        early_bird: Mapping[str, Any] | None = None,
        auto_rewind: Mapping[str, Any] | None = None,
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
        self.search = SearchSettings.build(
            rounds=len(tickets) - 1 if tickets is not None else rounds,
            amount=amount,
            scope=scope,
            layer_amounts=layer_amounts,
            parameters=parameters,
            exclude=exclude,
            rewind=rewind,
            controls=controls if tickets is None else (),
            rewind_noise=rewind_noise,
            pruning=pruning,
            pruning_batches=pruning_batches,
            input_shape=input_shape,
            structure=structure,
            early_bird=early_bird,
            auto_rewind=auto_rewind,
            monitor=monitor,
            mode=mode,
        )
        if seed is not None:
            check_type(seed, int, "seed", "an int or None")
        if dirpath is not None:
            check_type(dirpath, (str, os.PathLike), "dirpath", "a folder path (str or os.PathLike) or None")
        check_type(save_tickets, bool, "save_tickets", "True or False")
        check_type(verbose, bool, "verbose", "True or False")
        self.seed = seed
        self.dirpath = _artifacts.folder(dirpath) if dirpath is not None else None
        self.save_tickets = save_tickets
        self.verbose = verbose
        self.tickets = tickets
        self.plan: SearchPlan = self.search.plan

        self.progress = SearchProgress(self.plan)
        self._metrics = BranchMetrics(self.search)
        self._recorder = RewindPointRecorder(self.search.rewind)
        self._auto = AutoRewind(self.search.auto_rewind) if self.search.auto_rewind is not None else None
        settings = self.search.early_bird
        self._early_bird = EarlyBirdTracker(settings["patience"], settings["threshold"]) if settings else None
        self._early_bird_step: int | None = None
        self._tensors: dict[str, PrunableTensor] = {}
        self._theta0: State | None = None
        self._start_point: ResumePoint | None = None  # round 0 at step 0
        self._final_schedule: dict[str, Any] | None = None  # round 0's learning rates at its end (finetune)
        self._epoch_rng: dict[str, Any] | None = None  # the RNG the current epoch's data iterator was made from
        self._iterator_epoch: int | None = None  # the epoch that iterator belongs to
        self._budget: dict[str, Any] = {}
        self._rng_resume: dict[str, Any] | None = None
        self._checkpoint_state: dict[str, Any] | None = None  # handed over by Lightning, applied when a fit starts
        self._callback_metrics: dict[str, Tensor] | None = None  # the checkpoint's, restored when a fit resumes
        self._resumed = False
        self._ran = False
        self._clock = time.monotonic()
        self._enforcer: MaskEnforcer | None = None
        self._model_class = ""
        self._sparsity_cache: tuple[Any, tuple[float, int, int, dict[str, float]]] | None = None

    # ------------------------------------------------------------------ public state

    @property
    def rounds(self) -> int:
        return self.search.rounds

    @property
    def schedule(self) -> SparsitySchedule:
        return self.search.schedule

    @property
    def amount(self) -> float | tuple[float, ...]:
        return self.search.schedule.amount

    @property
    def scope(self) -> str:
        return self.search.schedule.scope

    @property
    def layer_amounts(self) -> dict[str, float]:
        return dict(self.search.schedule.layer_amounts)

    @property
    def rewind(self) -> Rewind:
        return self.search.rewind

    @property
    def controls(self) -> tuple[str, ...]:
        return self.search.controls

    @property
    def pruning(self) -> str:
        return self.search.pruning

    @property
    def monitor(self) -> str | None:
        return self.search.monitor

    @property
    def current(self) -> Branch:
        return self.progress.current

    @property
    def history(self) -> list[dict[str, Any]]:
        """One record per finished (level, branch)."""
        return self.progress.history

    @property
    def position(self) -> int:
        """Index of the branch being trained in :attr:`plan`."""
        return self.progress.position

    @property
    def finished(self) -> bool:
        return self.progress.finished

    @property
    def stopped(self) -> str | None:
        """Why the search ended before its last branch (``max_time``, SIGTERM), if it did."""
        return self.progress.stopped

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
        return self.rewind.late and self.tickets is None

    @property
    def theta_k(self) -> State | None:
        """θ_k, round 0's weights at the rewind point (late rewinding), once round 0 reached it."""
        return self._recorder.weights

    @property
    def masks(self) -> dict[str, Tensor]:
        """The bool masks installed now (the current branch's; ``True`` keeps the weight); empty before ``fit``."""
        return {name: mask.clone() for name, mask in (self.progress.masks or {}).items()}

    @property
    def rewind_weights(self) -> State | None:
        """The weights the current branch started from (θ₀ in level 0)."""
        if self.progress.branch_start is not None:
            return self.progress.branch_start
        return self.theta_k if self.late_rewinding and self.round > 0 else self._theta0

    def ticket(self) -> Ticket:
        """The current branch's ticket: its masks and the weights its survivors started from."""
        if self.progress.masks is None or self.rewind_weights is None:
            raise RuntimeError("No ticket yet: call trainer.fit with this callback first")
        sparsity, remaining, total, per_tensor = self.sparsity()
        branch = self.current
        record = next((r for r in self.history if (r["round"], r["branch"]) == (branch.round, branch.name)), None)
        point = self._recorder.point
        extra = {
            "settings": self.settings(),
            "branch": branch.name,
            "rewind_kind": self._rewind_label(),
            "rewind_step": point.step if point is not None and self.late_rewinding and self.round > 0 else 0,
            "sparsity": sparsity,
            "remaining": remaining,
            "total": total,
            "tensor_sparsity": per_tensor,
            "record": record,
            **(
                {"auto_rewind": self._auto.summary()}
                if self._auto is not None and self._auto.chosen is not None
                else {}
            ),
        }
        metadata = ticket_metadata(self._model_class, self.progress.masks, extra)
        weights = {n: w.clone() for n, w in self.rewind_weights.items()}
        return Ticket({n: m.clone() for n, m in self.progress.masks.items()}, weights, self.round, metadata)

    def settings(self) -> dict[str, Any]:
        """The search's settings as plain values (stored with checkpoints, tickets and ``history.json``)."""
        return {
            **self.search.as_dict(),
            "seed": self.seed,
            "transfer": self.tickets.settings() if self.tickets is not None else None,
            "budget": dict(self._budget),
        }

    def sparsity(self) -> tuple[float, int, int, dict[str, float]]:
        """(overall sparsity, remaining, total, per-tensor sparsity) of the installed masks."""
        masks = self.progress.masks or {}
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
        self._checkpoint_state = None
        if uninitialized := uninitialized_parameters(pl_module):
            raise ValueError(
                f"{pl_module.__class__.__name__} has uninitialised (lazy) parameters {uninitialized[:5]}: the "
                "search needs their shapes and θ₀ before training. Run one forward pass before trainer.fit "
                "(e.g. model(example_batch)) so lazy modules materialise."
            )
        self._select_tensors(pl_module)
        if self.search.structure is not None:
            check_structure(self.search.structure, {n: t.shape for n, t in self._tensors.items()}, self.schedule)
        self._model_class = f"{type(pl_module).__module__}.{type(pl_module).__qualname__}"
        self._budget = {"max_steps": trainer.max_steps, "max_epochs": trainer.max_epochs}
        log_dir = trainer.log_dir  # a collective call under DDP: every rank asks
        if self.dirpath is None:
            self.dirpath = _artifacts.folder(io.join(log_dir or trainer.default_root_dir, "lottery"))
        if self.save_tickets and trainer.is_global_zero:
            _artifacts.check_writable(self.dirpath)
            io.cleanup_stale_temp(self.dirpath)  # left by a killed run's interrupted writes
        if self._auto is not None:
            self._plan_auto_rewind(trainer, pl_module)
        elif self.late_rewinding:
            check_rewind_point(trainer, self.rewind)
        if "reinit" in self.controls:
            self._fresh_state(pl_module, level=0)  # fail now, not after level 0

    def _select_tensors(self, pl_module: pl.LightningModule) -> None:
        if self.tickets is not None:
            fresh = self.tickets.check(pl_module)  # another architecture is refused here, before training
            masked = [n for n in self.tickets.tickets[0].masks if n not in fresh]
            self._tensors = select_prunable(pl_module, parameters=masked)
            return
        self._tensors = select_prunable(pl_module, self.search.parameters, self.search.exclude)
        self.schedule.check_names(list(self._tensors))
        if self.search.parameters is None and (left_out := parametrized_tensors(pl_module)):
            share = sum(n for _, n in left_out) / max(sum(p.numel() for p in pl_module.parameters()), 1)
            rank_zero_warn(
                f"{len(left_out)} parametrized weights ({', '.join(name for name, _ in left_out[:5])}; "
                f"{100 * share:.0f}% of the model's weights) use torch.nn.utils.parametrize (e.g. weight_norm) and "
                "are not prunable through torch.nn.utils.prune, so the search leaves them dense. Name the "
                "parametrization's tensors in `parameters` (e.g. 'fc1.parametrizations.weight.original1')."
            )

    # ------------------------------------------------------------------ starting the search

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._checkpoint_state is not None:
            self._restore(self._checkpoint_state)
            self._checkpoint_state = None
        if self._ran and not self._resumed:
            raise RuntimeError(
                "This LotteryTicketCallback already ran a search (its history, masks and rewind points belong to "
                "that fit). Create a new LotteryTicketCallback for a new search, or resume with ckpt_path=..."
            )
        if self.save_tickets and trainer.is_global_zero and not self._resumed:
            assert self.dirpath is not None
            _artifacts.check_unused(self.dirpath)
        for checkpoint in trainer.checkpoint_callbacks if trainer.is_global_zero else []:
            if isinstance(checkpoint, ModelCheckpoint) and checkpoint.dirpath is not None:
                _artifacts.check_writable(checkpoint.dirpath, "ModelCheckpoint(dirpath)")  # fail before level 0
        self._ran = True
        if self._rng_resume is not None:
            restore_rng_state(self._rng_resume)
        if self.seed is None:
            self.seed = random.SystemRandom().randrange(2**31)
        if self._theta0 is None:
            self._theta0 = dense_state(pl_module)
        if self.progress.masks is None:
            if self.tickets is not None:
                masks = self.tickets.masks(0, pl_module)
                state = self.tickets.weights(0, pl_module, self._theta0)
                rewind(pl_module, self._tensors, masks, state, replace=True)
                self.progress.branch_start = state
            # A model that arrives pruned keeps its masks: the search prunes what is still unpruned.
            self.progress.masks = {n: m.cpu() for n, m in current_masks(self._tensors).items()}
            self.progress.level_masks = self.progress.masks
            self.progress.start_counts = counts(self.progress.masks)
        if not all(bool(m.all()) for m in self.progress.masks.values()):
            install_masks(self._tensors, self.progress.masks, replace=True)
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
        epoch_rng = self._epoch_rng  # a checkpoint's: setting up the data below reports an iterator of its own
        check_workers(trainer, self.late_rewinding)  # sets up the training data: draws from the RNG (restored below)
        if self._resumed:
            assert self._rng_resume is not None
            trainer.callback_metrics.update(self._callback_metrics or {})
            self._epoch_rng = epoch_rng
            positioned = reposition_after_checkpoint(trainer, epoch_rng, self._rng_resume)
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
            if self._auto is not None:
                self._auto.save(trainer, 0, self._auto_folder())

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

    def _recording(self) -> bool:
        return self.late_rewinding and self.progress.position == 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._watch_early_bird(trainer)
        if self._recording():
            self._recorder.after_batch(trainer, pl_module)
            if self._auto is not None:
                self._auto.after_batch(trainer, pl_module, self._auto_folder())

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.enable_validation:
            self._observe(trainer)
        if self._recording():
            self._recorder.after_epoch(trainer, pl_module)

    def _before_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._recorder.before_epoch(trainer)
        if self._auto is not None and self._recording():
            self._auto.before_epoch(trainer)

    def _before_batch(self, trainer: pl.Trainer) -> None:
        self._recorder.before_batch(trainer, self._epoch_rng)
        if self._auto is not None and self._recording():
            self._auto.before_batch(trainer, self._epoch_rng)

    # ------------------------------------------------------------------ during training

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if self._enforcer is not None:
            self._enforcer.mask_gradients()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            # With several validation loaders Lightning keeps the sanity check's metrics to itself: check then
            # only if it shared some, else at the first real validation.
            if trainer.callback_metrics:
                self._metrics.check_monitor(trainer.callback_metrics)
            return
        self._observe(trainer)

    def _observe(self, trainer: pl.Trainer) -> None:
        """Track the branch's best ``monitor`` value (its early-stop iteration) and log its curves."""
        step, start = trainer.global_step, self.progress.branch_start_step
        metrics = self._metrics.observe(trainer.callback_metrics, step, trainer.current_epoch, start)
        prefix = _display.curve_prefix(self.round, self.branch)
        _display.log_metrics(
            trainer, {**{prefix + k: v for k, v in metrics.items()}, "round_step": float(step - start)}
        )

    def _watch_early_bird(self, trainer: pl.Trainer) -> None:
        """Every ``every`` steps of a ticket branch: the next level's prospective mask; stop once it has settled."""
        tracker = self._early_bird
        if tracker is None or not self.current.is_ticket or self.round >= self.rounds or self.tickets is not None:
            return
        steps = trainer.global_step - self.progress.branch_start_step
        if self._early_bird_step is not None or steps == 0 or steps % self.search.early_bird["every"]:
            return
        tracker.update(self._prospective_masks(self.round + 1))
        if tracker.converged:
            self._early_bird_step = trainer.global_step
            trainer.should_stop = True

    # ------------------------------------------------------------------ rewind="auto"

    def _plan_auto_rewind(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The candidate grid of round 0, and what the children need, checked before round 0 trains."""
        assert self._auto is not None
        if trainer.world_size > 1:
            raise ValueError("rewind='auto' trains its instability children on one device: run it without DDP")
        if self.dirpath is None or not io.is_local(self.dirpath):
            raise ValueError("rewind='auto' keeps round 0's candidate checkpoints in a local `dirpath`")
        self._fresh_state(pl_module, level=0)  # the children are new copies of the module: it must rebuild
        trainer.fit_loop.setup_data()
        total = trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError("rewind='auto' places its candidates at fractions of round 0's budget: give max_steps")
        self._auto.plan(int(total))

    def _auto_folder(self) -> Path:
        assert self.dirpath is not None
        return Path(io.join(self.dirpath, "auto_rewind"))

    def _choose_rewind_point(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """After round 0: measure the candidates' instability, rewind the levels to the earliest stable one."""
        assert self._auto is not None and self._start_point is not None and self._theta0 is not None
        self._auto.finish_round_0(trainer)
        before = sum(r["steps_trained"] for r in self._auto.results.values())
        chosen = self._auto.measure(trainer, pl_module, self.seed or 0, self._auto_folder())
        self.progress.steps_before += sum(r["steps_trained"] for r in self._auto.results.values()) - before
        self._recorder.point, self._recorder.weights = self._auto.point(self._start_point, self._theta0)
        summary = self._auto.summary()
        if not summary["stable"]:
            rank_zero_warn(
                f"rewind='auto': no candidate of {self._auto.steps} was stable (barriers {summary['barriers']}); "
                f"rewinding to the last one measured, step {chosen}"
            )
        elif self.verbose:
            _display.announce_text(
                f"rewind='auto' chose step {chosen} (validation error barriers {summary['barriers']})"
            )
        self._write_history(trainer)

    # ------------------------------------------------------------------ between branches

    def _next_branch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        """Close the branch that just ended; start the next one if any. Called between fit-loop runs."""
        if self._recording():  # round 0 may have ended right at the rewind point
            self._recorder.finish(trainer, epoch=trainer.fit_loop.epoch_progress.current.processed, batch=0)
        if self.progress.position == 0 and self._final_schedule is None:
            self._final_schedule = _relaunch.capture_schedule(trainer)
        self._finish_branch(trainer)
        if self._auto is not None and self.progress.position == 0 and self.rounds > 0:
            self._choose_rewind_point(trainer, pl_module)
        if self.current.is_ticket and self.round < self.rounds:
            self._prepare_next_level(trainer, pl_module)
        if reason := _relaunch.search_interrupted(trainer):
            self.progress.stopped = f"{reason} after {self.current}"
            rank_zero_warn(f"The lottery search stopped at {reason} after {self.current}; the history records it.")
            self._write_history(trainer)
            return False
        if self.progress.last:
            self.progress.finished = True
            self._write_history(trainer)
            return False
        if self.late_rewinding and self._recorder.point is None:
            raise RuntimeError(
                f"rewind={self.rewind.setting!r} cannot be honoured: round 0 stopped after {self.history[0]['steps']} "
                f"optimizer steps ({self.history[0]['epochs']} epochs), before reaching that point "
                "(EarlyStopping?). Rewind to an earlier point."
            )
        self.progress.advance()
        self._start_branch(trainer, pl_module)
        return True

    def _prepare_next_level(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The next level's ticket mask, pruned from this ticket's trained weights (controls never change it)."""
        level = self.round + 1
        self.progress.next_start = dense_state(pl_module) if self.rewind.keeps_trained_weights else None
        if self.tickets is not None:
            masks = self.tickets.masks(level, pl_module)
        elif self.search.at_init:
            assert self._theta0 is not None
            groups = self.schedule.groups(self.progress.start_counts, level)
            masks = masks_at_init(
                trainer,
                pl_module,
                self.pruning,
                self._tensors,
                groups,
                self._theta0,
                self.search.pruning_batches,
                self.search.input_shape,
            )
        else:
            masks = self._prospective_masks(level)
        self.progress.next_masks = trainer.strategy.broadcast(masks, src=0)

    def _prospective_masks(self, level: int) -> dict[str, Tensor]:
        """Level ``level``'s ticket mask, from the weights the model holds now."""
        assert self.progress.masks is not None
        generator = torch.Generator().manual_seed(derive_seed(self.seed or 0, level, 1))
        return next_masks(
            self._tensors,
            self.progress.masks,
            self.schedule,
            level,
            self.pruning,
            generator,
            self.progress.start_counts,
            self.search.structure,
        )

    def _level_state(self) -> State:
        if self.rewind.keeps_trained_weights:
            assert self.progress.level_start is not None
            return self.progress.level_start
        state = self.theta_k if self.late_rewinding else self._theta0
        assert state is not None
        return state

    def _start_branch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        branch = self.current
        assert self.progress.level_masks is not None
        if self.tickets is not None:
            assert self._theta0 is not None
            masks, state = self.progress.level_masks, self.tickets.weights(branch.round, pl_module, self._theta0)
        else:
            purpose = 10 + CONTROLS.index(branch.name) if not branch.is_ticket else 3
            generator = torch.Generator().manual_seed(derive_seed(self.seed or 0, branch.round, purpose))
            masks, state = branch_start(
                branch.name,
                self.progress.level_masks,
                self._level_state(),
                generator,
                fresh_state=lambda: trainer.strategy.broadcast(self._fresh_state(pl_module, branch.round), src=0),
                noise=self.search.rewind_noise,
                structure=self.search.structure,
            )
            masks = trainer.strategy.broadcast(masks, src=0)
        check_finite(state, f"The start of {branch}")
        rewind(pl_module, self._tensors, masks, state, replace=True)
        self.progress.masks = masks
        derived = branch.is_ticket and not self.rewind.keeps_trained_weights and self.tickets is None
        self.progress.branch_start = None if derived else state
        self._relaunch(trainer)
        self._metrics.reset()
        self._resumed = False  # from here on, the search runs as if never interrupted
        self._early_bird_step = None
        if self._early_bird is not None:
            self._early_bird.reset()
        self._announce(trainer)
        self._clock = time.monotonic()

    def _relaunch(self, trainer: pl.Trainer) -> None:
        _relaunch.reset_monitoring_callbacks(trainer)
        _relaunch.reset_logged_metrics(trainer)
        _relaunch.recreate_optimizers(trainer)
        self._activate_masks(trainer)
        point = self._recorder.point if self.late_rewinding else self._start_point
        assert point is not None
        finetune = self.rewind.kind == "finetune" and self.tickets is None
        resume_at(trainer, point, logger_step=self.progress.steps_before, schedule=not finetune)
        if finetune:
            assert self._final_schedule is not None
            _relaunch.hold_learning_rates(trainer, self._final_schedule)
        if point.batch:
            assert point.epoch_rng is not None
            self._set_epoch_rng(point.epoch_rng, point.epoch)
        elif point.epoch == 0:
            self._set_epoch_rng(point.rng, 0)
        self.progress.branch_start_step = point.step

    def _finish_branch(self, trainer: pl.Trainer) -> None:
        sparsity, remaining, total, per_tensor = self.sparsity()
        steps = trainer.global_step - self.progress.branch_start_step
        record = {
            "round": self.round,
            "branch": self.branch,
            "sparsity": sparsity,
            "remaining": remaining,
            "total": total,
            "remaining_pct": 100.0 * remaining / total if total else 100.0,
            "tensor_sparsity": per_tensor,
            **self._metrics.record(self.progress.branch_start_step),
            "start_step": self.progress.branch_start_step,
            "end_step": trainer.global_step,
            "steps": steps,
            "epochs": _epochs_begun(trainer),
            "cumulative_steps": self.progress.steps_before + steps,
            "early_bird_step": self._early_bird_step,
            "steps_saved": self._planned_steps(trainer) - steps if self._early_bird_step is not None else 0,
            "seconds": time.monotonic() - self._clock,  # wall time of the branch (since resume, if resumed)
        }
        # Validation metrics are rank-local unless logged with sync_dist=True: every rank keeps rank 0's record.
        record = trainer.strategy.broadcast(record, src=0)
        self.progress.record(record)
        folder = None
        if self.save_tickets and trainer.is_global_zero:
            assert self.dirpath is not None
            folder = _artifacts.write_branch(self.dirpath, self.ticket(), record, self._metrics.curve, self.settings())
            self._write_history(trainer)
        for callback in trainer.callbacks:
            listener = getattr(callback, "on_lottery_round_end", None)
            if callable(listener):
                listener(trainer, trainer.lightning_module, record, folder)
        summary = {f"round_summary/{k}": v for k, v in record.items() if isinstance(v, (int, float))}
        _display.log_metrics(trainer, summary, step=self.progress.steps_before)  # the search's steps so far

    def _planned_steps(self, trainer: pl.Trainer) -> int:
        """The steps the branch would have trained without early-bird (its budget from its start)."""
        total = trainer.estimated_stepping_batches
        return int(total) - self.progress.branch_start_step if math.isfinite(total) else 0

    def _write_history(self, trainer: pl.Trainer) -> None:
        if self.save_tickets and trainer.is_global_zero:
            assert self.dirpath is not None
            status = {"finished": self.progress.finished, "stopped": self.progress.stopped, "branches": len(self.plan)}
            if self._auto is not None:
                status["auto_rewind"] = self._auto.summary()
            _artifacts.write_history(self.dirpath, self.settings(), self.progress.history, status)

    # ------------------------------------------------------------------ helpers

    def _fresh_state(self, pl_module: pl.LightningModule, level: int) -> State:
        return fresh_initialisation(pl_module, derive_seed(self.seed or 0, level, 2))

    def _activate_masks(self, trainer: pl.Trainer) -> None:
        self._deactivate_masks()
        enforcer = MaskEnforcer(trainer.lightning_module)
        self._enforcer = enforcer.attach(trainer.optimizers) if len(enforcer) else None

    def _deactivate_masks(self) -> None:
        if self._enforcer is not None:
            self._enforcer.detach()
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
        if not self._resumed:  # a resumed branch was announced to the loggers when it started
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
        """Store dense weights: the checkpoint loads into a fresh, unpruned model (masks live in our state), and
        the optimizer state as training without the enforcer has it. Also the metrics callbacks see now, which
        Lightning does not checkpoint: a resumed run sees them too."""
        checkpoint[_CALLBACK_METRICS] = {k: v.detach().cpu() for k, v in trainer.callback_metrics.items()}
        if self._enforcer is not None and "optimizer_states" in checkpoint:
            self._enforcer.stock_optimizer_states(trainer.optimizers, checkpoint["optimizer_states"])
        state = checkpoint.get("state_dict")
        if state is None:
            return
        for module_name, module in pl_module.named_modules():
            prefix = f"{module_name}." if module_name else ""
            for _, hook in ((m, h) for m, h in lottery_hooks(module) if m is module):
                name = prefix + hook._tensor_name
                if name + "_orig" in state and name + "_mask" in state:
                    state[name] = state.pop(name + "_orig") * state.pop(name + "_mask")

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self._callback_metrics = checkpoint.get(_CALLBACK_METRICS)

    def state_dict(self) -> dict[str, Any]:
        start = self._start_point.to_state() if self._start_point is not None else None
        return {
            "version": _STATE_VERSION,
            "settings": self.settings(),
            "progress": self.progress.state_dict(),
            **{name.lstrip("_"): getattr(self, name) for name in _STATE},
            "start_point": start,
            "rewind_point": self._recorder.state_dict(),
            "metrics": self._metrics.state_dict(),
            "auto_rewind": self._auto.state_dict() if self._auto is not None else None,
            "early_bird": self._early_bird.state_dict() if self._early_bird is not None else None,
            # The RNG as of this checkpoint: a resumed run draws the same shuffles and dropout masks.
            "rng_now": collect_rng_state(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning hands checkpoints' callback states over for validate/test/predict too: only a fit resumes the
        # search (in on_fit_start); evaluating a checkpoint after a search leaves its history and masks alone.
        self._checkpoint_state = state_dict

    def _restore(self, state_dict: dict[str, Any]) -> None:
        state_dict = upgrade_search_state(state_dict)
        if state_dict.get("version") != _STATE_VERSION:
            raise ValueError(
                f"The checkpoint's lottery state has version {state_dict.get('version')}, this version reads "
                f"{_STATE_VERSION}: resume it with the lightning_lottery version that wrote it"
            )
        saved, ours = state_dict["settings"], self.settings()
        keys = (*DEFINING, "transfer", *(("budget",) if ours["budget"] else ()))
        different = [f"{k}: checkpoint {saved.get(k)!r} vs now {ours[k]!r}" for k in keys if saved.get(k) != ours[k]]
        if different:
            raise ValueError(
                "The checkpoint belongs to a different lottery search; resume it with the same settings "
                f"({'; '.join(different)})"
            )
        self.seed = saved["seed"]
        self.progress.load_state_dict(state_dict["progress"])
        for name in _STATE:
            setattr(self, name, state_dict[name.lstrip("_")])
        start = state_dict["start_point"]
        self._start_point = ResumePoint.from_state(start) if start is not None else None
        self._recorder.load_state_dict(state_dict["rewind_point"])
        self._metrics.load_state_dict(state_dict["metrics"])
        if self._auto is not None:
            self._auto.load_state_dict(state_dict["auto_rewind"])
        if self._early_bird is not None:
            self._early_bird.load_state_dict(state_dict["early_bird"])
        self._rng_resume = state_dict["rng_now"]
        self._resumed = True
