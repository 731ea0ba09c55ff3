"""Exports: permanent zeros in a file standard loaders read, and 2:4 semi-structured Linear weights (GPU) or one clear
warning and dense masked weights (no capable GPU)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from lightning_lottery import export_pruned
from lightning_lottery.core import NMStructure, install_masks, nm_masks, select_prunable
from lightning_lottery.export import (
    semi_structured_candidates,
    semi_structured_unavailable,
    to_semi_structured,
)

TWO_FOUR = NMStructure(2, 4)


def _pruned_mlp(width: int = 64, seed: int = 0) -> nn.Sequential:
    """An MLP whose three Linear weights carry 2:4 masks (torch.nn.utils.prune hooks), as after Ticket.apply."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(width, 2 * width), nn.ReLU(), nn.Linear(2 * width, width), nn.Linear(width, 32))
    tensors = select_prunable(model)
    weights = {n: t.tensor.detach() for n, t in tensors.items()}
    install_masks(
        tensors, nm_masks(weights, {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}, TWO_FOUR)
    )
    return model


def _gpu_reason() -> str | None:
    reason = semi_structured_unavailable()
    return (
        None
        if reason is None
        else f"2:4 semi-structured kernels need a CUDA GPU of compute capability >= 8.0: {reason}"
    )


def test_plain_export_writes_a_file_standard_loaders_read(tmp_path: Path):
    model = _pruned_mlp()
    expected = {k: v.detach().clone() for k, v in model.state_dict().items() if not k.endswith(("_orig", "_mask"))}
    expected.update({f"{i}.weight": model[i].weight.detach().clone() for i in (0, 2, 3)})
    summary = export_pruned(model, tmp_path / "model.safetensors")
    assert summary.semi_structured == () and dict(summary.kept_dense) == {}
    assert summary.nonzero_parameters == sum(int((p != 0).sum()) for p in model.parameters())
    state = load_file(tmp_path / "model.safetensors")
    assert set(state) == set(expected) and all(torch.equal(state[k], v) for k, v in expected.items())
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "pt" and meta["lightning_lottery"] == "export"
    assert int(meta["nonzero_parameters"]) == summary.nonzero_parameters


def test_semi_structured_without_a_gpu_warns_once_and_exports_dense_masked_weights(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = _pruned_mlp()
    masked = {i: model[i].weight.detach().clone() for i in (0, 2, 3)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = export_pruned(model, tmp_path / "model.safetensors", semi_structured=True)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert "need a CUDA GPU of compute capability >= 8.0 (Ampere or newer), and no CUDA GPU is available" in messages[0]
    assert "keeps its dense masked weights; 3 Linear layers are 2:4" in messages[0]
    assert summary.semi_structured == ()
    assert dict(summary.kept_dense) == dict.fromkeys(["0", "2", "3"], "no CUDA GPU is available")
    for i, weight in masked.items():
        assert type(model[i].weight) is nn.Parameter and torch.equal(model[i].weight, weight)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["semi_structured_layers"]) == ["0", "2", "3"]


def test_an_older_gpu_is_named_with_its_compute_capability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    assert semi_structured_unavailable() == "Tesla T4 has compute capability 7.5"
    with pytest.raises(RuntimeError, match=r"compute capability >= 8.0 \(Ampere or newer\): Tesla T4 has compute"):
        to_semi_structured(_pruned_mlp())


def test_only_2_4_linear_layers_that_no_fused_kernel_reads_are_candidates():
    model = nn.ModuleDict(
        {
            "sparse": nn.Linear(8, 4),
            "dense": nn.Linear(8, 4),
            "odd": nn.Linear(6, 4),
            "attn": nn.MultiheadAttention(8, 2),
            "embed": nn.Embedding(5, 8),
            "head": nn.Linear(8, 5),
        }
    )
    with torch.no_grad():
        model["sparse"].weight.copy_(torch.tensor([[1.0, 0.0, 2.0, 0.0] * 2] * 4))
        model["odd"].weight.zero_()
        model["attn"].out_proj.weight.zero_()
    model["head"].weight = model["embed"].weight  # tied output layer
    eligible, reasons = semi_structured_candidates(model)
    assert list(eligible) == ["sparse"]
    assert reasons["dense"] == "not 2:4: 8 of 8 groups of 4 input weights hold more than 2 nonzeros"
    assert reasons["odd"] == "in_features 6 is not a multiple of 4"
    assert reasons["attn.out_proj"].startswith("inside a module with a fused native forward")
    assert reasons["head"].startswith("its weight is tied to another module")
    install_masks(
        select_prunable(model, parameters=["sparse.weight"]), {"sparse.weight": torch.ones(4, 8, dtype=torch.bool)}
    )
    assert semi_structured_candidates(model)[1]["sparse"].startswith("still pruned by a mask hook")


def test_conversion_replaces_eligible_weights_and_keeps_outputs(monkeypatch):
    """The plumbing of to_semi_structured on the CPU, with torch's compression replaced by a dense copy (the real
    kernels are checked by the GPU test below)."""
    import lightning_lottery.export as export

    compressed = []

    def fake_compress(weight: torch.Tensor) -> torch.Tensor:
        compressed.append((weight.dtype, weight.is_contiguous()))
        return weight.clone()

    monkeypatch.setattr(export, "semi_structured_unavailable", lambda: None)
    monkeypatch.setattr(export, "_compress", fake_compress)
    model = _pruned_mlp()
    export_pruned(model)
    model.append(nn.Linear(32, 6))  # dense: stays as it is
    x = torch.randn(16, 64)
    expected = model.to(torch.bfloat16)(x.bfloat16())
    converted, dense = to_semi_structured(model, torch.bfloat16, device="cpu")
    assert converted == ("0", "2", "3") and list(dense) == ["4"]
    assert compressed == [(torch.bfloat16, True)] * 3
    assert all(not model[i].weight.requires_grad for i in (0, 2, 3)) and model[4].weight.requires_grad
    assert not model.training
    torch.testing.assert_close(model(x.bfloat16()), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.int8])
def test_semi_structured_dtypes_are_checked_first(dtype):
    model = _pruned_mlp()
    with pytest.raises(ValueError, match=r"run in torch.float16 or torch.bfloat16"):
        export_pruned(model, semi_structured=True, dtype=dtype)
    assert hasattr(model[0], "weight_mask"), "nothing changed"


@pytest.mark.skipif(_gpu_reason() is not None, reason=_gpu_reason() or "")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_semi_structured_outputs_match_the_masked_dense_model(tmp_path: Path, dtype):
    from torch.sparse import SparseSemiStructuredTensor

    model = _pruned_mlp(width=256)
    reference = _pruned_mlp(width=256)
    export_pruned(reference)
    reference = reference.to("cuda", dtype).eval()
    summary = export_pruned(model, tmp_path / "model.safetensors", semi_structured=True, dtype=dtype)
    assert summary.semi_structured == ("0", "2", "3"), dict(summary.kept_dense)
    assert all(isinstance(model[i].weight, SparseSemiStructuredTensor) for i in (0, 2, 3))
    x = torch.randn(128, 256, device="cuda", dtype=dtype)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), reference(x), atol=2e-2, rtol=2e-2)
    state = load_file(tmp_path / "model.safetensors")
    assert state["0.weight"].dtype == torch.float32 and not state["0.weight"].is_cuda, "the file holds dense weights"
