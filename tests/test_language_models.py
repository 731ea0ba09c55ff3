"""LSTM / Transformer language models and their LightningModule: shapes, masking by prune hooks, metrics."""

from __future__ import annotations

import copy
import json
import math
import random
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils import prune

from lightning_lottery import LotteryTicketCallback
from lightning_lottery.data.text import WikiText2DataModule
from lightning_lottery.models.language import (
    LSTMLanguageModel,
    SelfAttention,
    TransformerLanguageModel,
    build_language_model,
    count_parameters,
)
from lightning_lottery.modules.language_model import LanguageModelModule

TINY_LSTM = {"embedding_dim": 16, "hidden_dim": 16, "num_layers": 2, "dropout": 0.3}
TINY_TRANSFORMER = {"d_model": 16, "nhead": 2, "num_layers": 2, "dim_feedforward": 32, "dropout": 0.1, "max_len": 64}
TINY = {"lstm": TINY_LSTM, "transformer": TINY_TRANSFORMER}


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    """Tiny models run several times faster on one intra-op thread than on two contending ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_tiny_corpus(root: Path) -> Path:
    """A small, very predictable corpus (a few sentence templates), so a tiny model learns it in steps."""
    rng = random.Random(0)
    subjects, verbs, objects = ["the cat", "a dog", "the bird"], ["sees", "eats", "likes"], ["the fish", "a bone"]

    def text(lines: int) -> str:
        out = [f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} ." for _ in range(lines)]
        return "\n".join(out) + "\n"

    folder = root / "wikitext-2"
    folder.mkdir(parents=True)
    for split, lines in (("train", 300), ("valid", 40), ("test", 50)):
        (folder / f"{split}.txt").write_text(text(lines), encoding="utf8")
    return root


def tiny_datamodule(root: Path, **kwargs: Any) -> WikiText2DataModule:
    return WikiText2DataModule(root=root, batch_size=8, bptt=12, eval_batch_size=3, **kwargs)


def trainer(**kwargs: Any) -> pl.Trainer:
    defaults: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }
    return pl.Trainer(**{**defaults, **kwargs})


# ---------------------------------------------------------------------------------------------- networks


@pytest.mark.parametrize("arch", ["lstm", "transformer"])
def test_shapes_and_init(arch: str) -> None:
    model = build_language_model(arch, 50, **TINY[arch])
    logits = model(torch.randint(0, 50, (4, 9)))
    assert logits.shape == (4, 9, 50)
    assert model.embedding.weight.abs().max() <= 0.1 and model.decoder.weight.abs().max() <= 0.1
    assert torch.count_nonzero(model.decoder.bias) == 0
    with pytest.raises(ValueError, match="Unknown arch"):
        build_language_model("gru", 50)


@pytest.mark.parametrize("arch", ["lstm", "transformer"])
def test_tied_weights_are_one_parameter(arch: str) -> None:
    model = build_language_model(arch, 50, **TINY[arch], tie_weights=True)
    assert model.decoder.weight is model.embedding.weight
    assert len([n for n, _ in model.named_parameters() if n.endswith(".weight") and "decoder" in n]) == 0
    model(torch.randint(0, 50, (2, 5))).sum().backward()
    assert model.embedding.weight.grad is not None
    with pytest.raises(ValueError, match="tie_weights"):
        LSTMLanguageModel(50, embedding_dim=8, hidden_dim=16, tie_weights=True)


def test_default_parameter_counts() -> None:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        lstm = LSTMLanguageModel(33_278)
        tied = LSTMLanguageModel(33_278, tie_weights=True)
        transformer = TransformerLanguageModel(33_278)
    assert count_parameters(lstm, exclude_embeddings=True) == 6_770_400  # 2 x 4 x 650 x (650 + 650 + 2)
    assert count_parameters(lstm) == 50_065_078
    assert count_parameters(tied) == 28_434_378
    assert count_parameters(transformer, exclude_embeddings=True) == 6_309_376
    assert count_parameters(transformer) == 40_419_326


def test_transformer_is_causal() -> None:
    model = TransformerLanguageModel(30, **TINY_TRANSFORMER).eval()
    tokens = torch.randint(0, 30, (2, 10))
    changed = tokens.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % 30
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])
    with pytest.raises(ValueError, match="max_len"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_self_attention_matches_stock_multihead_attention() -> None:
    stock = nn.MultiheadAttention(16, 4).eval()
    ours = SelfAttention(16, 4).eval()
    ours.load_state_dict(stock.state_dict())
    x = torch.randn(7, 3, 16)
    causal = nn.Transformer.generate_square_subsequent_mask(7)
    forbidden = torch.rand(7, 7) < 0.3
    forbidden.fill_diagonal_(False)
    for kwargs in (
        {"attn_mask": causal, "is_causal": True},
        {"attn_mask": causal},
        {"attn_mask": forbidden},
        {},
    ):
        expected = stock(x, x, x, need_weights=False, **kwargs)[0]
        torch.testing.assert_close(ours(x, x, x, need_weights=False, **kwargs)[0], expected)
    with pytest.raises(NotImplementedError):
        ours(x, x, x)  # need_weights=True
    with pytest.raises(NotImplementedError):
        ours(x, x.clone(), x, need_weights=False)


def test_transformer_layers_start_from_independent_draws() -> None:
    layers = TransformerLanguageModel(30, **TINY_TRANSFORMER).encoder.layers
    assert isinstance(layers[0].self_attn, SelfAttention)
    for name in ("self_attn.in_proj_weight", "self_attn.out_proj.weight", "linear1.weight", "linear2.weight"):
        assert not torch.equal(layers[0].get_parameter(name), layers[1].get_parameter(name)), name


# ------------------------------------------------------------------------------ masks via prune hooks


def _manual_twin(dense: nn.Module, pruned: nn.Module, sites: list[tuple[str, str]]) -> nn.Module:
    """A copy of the unpruned ``dense`` model whose pruned tensors are set to ``orig * mask`` by hand."""
    # (A pruned model cannot be deep-copied: its ``weight`` attributes are non-leaf tensors.)
    twin = copy.deepcopy(dense)
    for module_name, attr in sites:
        source = pruned.get_submodule(module_name)
        with torch.no_grad():
            weight = getattr(source, attr + "_orig") * getattr(source, attr + "_mask")
            getattr(twin.get_submodule(module_name), attr).copy_(weight)
    return twin


def _outputs(model: nn.Module, tokens: Tensor, train: bool, context: Any) -> Tensor:
    model.train(train)
    torch.manual_seed(7)  # the same dropout masks for both models
    with context():
        return model(tokens).clone()


def _check_masked_forward(model: nn.Module, sites: list[tuple[str, str]], vocab: int) -> None:
    """Forward of the pruned ``model`` == forward of a hand-zeroed twin, in train and eval modes.

    Also after the pruned model's ``*_orig`` tensors change in place (as an optimizer step or a rewind does):
    a forward that skipped the hooks would then use stale weights.
    """
    dense = copy.deepcopy(model)
    torch.manual_seed(0)
    for module_name, attr in sites:
        prune.random_unstructured(model.get_submodule(module_name), attr, amount=0.5)
    tokens = torch.randint(0, vocab, (3, 11))
    for step in range(2):
        twin = _manual_twin(dense, model, sites)
        for module_name, attr in sites:
            mask = getattr(model.get_submodule(module_name), attr + "_mask")
            assert 0 < int(mask.sum()) < mask.numel()
            assert torch.all(getattr(twin.get_submodule(module_name), attr)[mask == 0] == 0)
        for train, context in ((True, torch.enable_grad), (False, torch.no_grad), (False, torch.inference_mode)):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                got = _outputs(model, tokens, train, context)
            assert not caught, [str(w.message) for w in caught]  # e.g. no RNN "contiguous chunk" warning on CPU
            torch.testing.assert_close(got, _outputs(twin, tokens, train, context), rtol=1e-5, atol=1e-5)
        if step == 0:
            with torch.no_grad():  # an "optimizer step" on the underlying tensors, masked entries included
                for module_name, attr in sites:
                    getattr(model.get_submodule(module_name), attr + "_orig").add_(0.5)

    model.train()
    model(tokens).sum().backward()
    for module_name, attr in sites:
        module = model.get_submodule(module_name)
        grad, mask = getattr(module, attr + "_orig").grad, getattr(module, attr + "_mask")
        assert torch.all(grad[mask == 0] == 0) and torch.any(grad[mask == 1] != 0)


def test_lstm_forward_uses_pruned_weights() -> None:
    model = LSTMLanguageModel(40, **TINY_LSTM)
    sites = [("lstm", "weight_hh_l0"), ("lstm", "weight_ih_l0"), ("lstm", "weight_ih_l1"), ("decoder", "weight")]
    _check_masked_forward(model, sites, 40)


def test_transformer_forward_uses_pruned_weights_in_train_and_eval(monkeypatch: pytest.MonkeyPatch) -> None:
    # The fused inference path reads the layer's weights without running the submodules' pre-hooks;
    # it must never be taken by these layers (whatever the PyTorch version's own checks).
    def fused_path(*args: Any, **kwargs: Any) -> Tensor:
        raise AssertionError("torch._transformer_encoder_layer_fwd was called")

    monkeypatch.setattr(torch, "_transformer_encoder_layer_fwd", fused_path)
    model = TransformerLanguageModel(40, **TINY_TRANSFORMER)
    sites = [
        ("encoder.layers.0.self_attn", "in_proj_weight"),
        ("encoder.layers.0.self_attn.out_proj", "weight"),
        ("encoder.layers.1.self_attn", "in_proj_weight"),
        ("encoder.layers.1.linear1", "weight"),
        ("encoder.layers.1.linear2", "weight"),
    ]
    _check_masked_forward(model, sites, 40)
    assert not isinstance(model.encoder.layers[0].self_attn.in_proj_weight, nn.Parameter)
    # Unpruned layers (no hooks at all) stay off the fused path too.
    fresh = TransformerLanguageModel(40, **TINY_TRANSFORMER).eval()
    with torch.inference_mode():
        fresh(torch.randint(0, 40, (2, 5)))


# ------------------------------------------------------------------------------------ LightningModule


@pytest.fixture
def corpus_root(tmp_path: Path) -> Path:
    return write_tiny_corpus(tmp_path)


def _module(arch: str, vocab_size: int, **kwargs: Any) -> LanguageModelModule:
    return LanguageModelModule(vocab_size, arch=arch, arch_kwargs=TINY[arch], lr=1e-2, **kwargs)


@pytest.mark.parametrize("arch", ["lstm", "transformer"])
def test_trains_and_logs_exact_metric_names(arch: str, corpus_root: Path) -> None:
    dm = tiny_datamodule(corpus_root, eval_test=True)
    torch.manual_seed(0)
    model = _module(arch, dm.vocab_size)
    before = trainer().validate(model, datamodule=dm, verbose=False)
    fit = trainer(max_epochs=4)  # validation at each epoch end: the last one sees the final weights
    fit.fit(model, datamodule=dm)
    assert set(fit.callback_metrics) == {"train_loss", "val_loss", "val_ppl", "test_loss", "test_ppl"}
    after = trainer().validate(model, datamodule=dm, verbose=False)
    assert after[0]["val_loss"] < before[0]["val_loss"] - 1.0
    assert after[0]["val_ppl"] == pytest.approx(math.exp(after[0]["val_loss"]), rel=1e-5)

    tester = trainer()
    (tested,) = tester.test(model, datamodule=dm, verbose=False)
    assert set(tested) == {"test_loss", "test_ppl"}
    # The last validation ran on the final weights, so its test metrics equal test_step's.
    assert tested["test_loss"] == pytest.approx(fit.callback_metrics["test_loss"].item(), rel=1e-5)
    assert tested["test_loss"] < math.log(dm.vocab_size)


def test_split_loss_is_token_weighted(corpus_root: Path) -> None:
    dm = tiny_datamodule(corpus_root)
    dm.setup("validate")
    model = _module("lstm", dm.vocab_size).eval()
    windows = dm.windows("valid")
    assert windows[len(windows) - 1][1].size(1) != windows[0][1].size(1)  # a shorter last window
    with torch.no_grad():
        total = sum(
            F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="sum").item()
            for x, y in (windows[i] for i in range(len(windows)))
        )
    (metrics,) = trainer().validate(model, datamodule=dm, verbose=False)
    assert metrics["val_loss"] == pytest.approx(total / windows.num_targets, rel=1e-6)
    assert metrics["val_ppl"] == pytest.approx(math.exp(total / windows.num_targets), rel=1e-6)


@pytest.mark.parametrize("arch", ["lstm", "transformer"])
def test_rebuild_from_hparams_draws_new_weights(arch: str) -> None:
    model = _module(arch, 30)
    again = type(model)(**model.hparams)
    first, second = dict(model.named_parameters()), dict(again.named_parameters())
    assert list(first) == list(second)
    assert all(first[n].shape == second[n].shape for n in first)
    assert not torch.equal(first["model.embedding.weight"], second["model.embedding.weight"])
    weight = "model.lstm.weight_hh_l0" if arch == "lstm" else "model.encoder.layers.0.self_attn.in_proj_weight"
    assert not torch.equal(first[weight], second[weight])
    assert dict(again.hparams) == dict(model.hparams)


def test_optimizers() -> None:
    adam = _module("lstm", 30, adam_eps=1e-6, weight_decay=0.1).configure_optimizers()
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["eps"] == 1e-6
    sgd = _module("lstm", 30, optimizer="sgd", momentum=0.9).configure_optimizers()
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9
    with pytest.raises(ValueError, match="optimizer"):
        _module("lstm", 30, optimizer="adagrad")


class _PrunedRoundStart(pl.Callback):
    """Copies every ``*_orig`` tensor at the first training batch of the pruned level's last branch (reinit)."""

    def __init__(self, lottery: LotteryTicketCallback) -> None:
        self.lottery = lottery
        self.start: dict[str, Tensor] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, *args: Any) -> None:
        if (self.lottery.round, self.lottery.branch) == (1, "reinit") and not self.start:
            self.start = {n: p.detach().clone() for n, p in module.named_parameters() if n.endswith("_orig")}


@pytest.mark.parametrize("arch", ["lstm", "transformer"])
def test_lottery_callback_prunes_and_trains_the_language_models(arch: str, corpus_root: Path) -> None:
    dm = tiny_datamodule(corpus_root, eval_test=True)
    torch.manual_seed(0)
    model = _module(arch, dm.vocab_size)
    lottery = LotteryTicketCallback(rounds=1, amount=0.5, controls=["reinit"], seed=0, verbose=False)
    spy = _PrunedRoundStart(lottery)
    trainer(max_epochs=1, callbacks=[lottery, spy]).fit(model, datamodule=dm)
    assert [(r["round"], r["branch"]) for r in lottery.history] == [(0, "ticket"), (1, "ticket"), (1, "reinit")]
    expected = (
        {"model.lstm.weight_ih_l0", "model.lstm.weight_hh_l1", "model.decoder.weight"}
        if arch == "lstm"
        else {
            "model.encoder.layers.0.self_attn.in_proj_weight",
            "model.encoder.layers.0.self_attn.out_proj.weight",
            "model.encoder.layers.1.linear2.weight",
        }
    )
    assert expected <= set(lottery.masks)
    assert lottery.sparsity()[0] == pytest.approx(0.5, abs=0.01)
    for record in lottery.history:
        assert set(record["metrics"]) >= {"val_loss", "val_ppl", "test_loss", "test_ppl"}
        assert record["best"] == record["metrics"]["val_loss"] < math.log(dm.vocab_size)
    # Every pruned tensor was trained in the pruned round (out_proj included: stock MultiheadAttention would
    # leave it frozen, its pre-hook never running), and its pruned entries stayed zero.
    params = dict(model.named_parameters())
    assert {n[: -len("_orig")] for n in spy.start} == set(lottery.masks)
    for name, before in spy.start.items():
        mask = lottery.masks[name[: -len("_orig")]]
        assert not torch.equal(params[name].detach()[mask], before[mask]), name
        assert torch.all(params[name].detach()[~mask] == 0), name


DDP_SCRIPT = """
import json, sys
from pathlib import Path
import lightning.pytorch as pl
import torch
from lightning_lottery.data.text import WikiText2DataModule
from lightning_lottery.modules.language_model import LanguageModelModule

out = Path(sys.argv[1])
torch.set_num_threads(1)
dm = WikiText2DataModule(root=out, batch_size=8, bptt=12, eval_batch_size=5, eval_test=True)
pl.seed_everything(0)
model = LanguageModelModule(dm.vocab_size, arch="lstm", arch_kwargs=%r, lr=1e-2)
trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False,
                     enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False)
trainer.fit(model, datamodule=dm)
rank = trainer.global_rank
metrics = {k: v.item() for k, v in trainer.callback_metrics.items()}
metrics["val_batches"] = trainer.num_val_batches
(out / f"metrics{rank}.json").write_text(json.dumps(metrics))
if rank == 0:
    torch.save(model.state_dict(), out / "model.pt")
"""


@pytest.mark.ddp
@pytest.mark.slow
def test_ddp_split_perplexity_counts_every_window_once(corpus_root: Path) -> None:
    script = corpus_root / "ddp_run.py"
    script.write_text(DDP_SCRIPT % (TINY_LSTM,))
    proc = subprocess.run([sys.executable, str(script), str(corpus_root)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dm = WikiText2DataModule(root=corpus_root, batch_size=8, bptt=12, eval_batch_size=5, eval_test=True)
    windows = {split: dm.windows(split) for split in ("valid", "test")}
    assert len(windows["valid"]) % 2 == 1  # a padding DistributedSampler would count one window twice
    model = LanguageModelModule(dm.vocab_size, arch="lstm", arch_kwargs=TINY_LSTM, lr=1e-2).eval()
    model.load_state_dict(torch.load(corpus_root / "model.pt"))
    ranks = [json.loads((corpus_root / f"metrics{rank}.json").read_text()) for rank in (0, 1)]
    assert sum(b for r in ranks for b in r["val_batches"]) == len(windows["valid"]) + len(windows["test"])
    for split, prefix in (("valid", "val"), ("test", "test")):
        w = windows[split]
        with torch.no_grad():
            total = sum(
                F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="sum").item()
                for x, y in (w[i] for i in range(len(w)))
            )
        for metrics in ranks:
            assert metrics[f"{prefix}_loss"] == pytest.approx(total / w.num_targets, rel=1e-5)
