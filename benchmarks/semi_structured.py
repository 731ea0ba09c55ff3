"""Inference speed of 2:4 tickets exported semi-structured vs. the same masked weights run dense (GPU only).

Workloads (random weights; the masks are 2:4 by magnitude, as a ticket's level 1 is):
  linear_stack   ``--layers`` Linear(4096, 4096) layers with ReLU between, ``--tokens`` rows per forward
  transformer    one pre-norm Transformer block (d_model 1024, 16 heads, FFN 4096; q/k/v/out and both FFN
                 projections are nn.Linear, so all six are 2:4), batch 8 x sequence 512
Variants: ``dense`` = the exported model with its zeros, run as dense matmuls (what an unstructured ticket costs);
``2:4`` = the same model after ``export_pruned(semi_structured=True)``. Each timing is ``--iters`` forwards under
``torch.inference_mode``, synchronised; the variants alternate within each repeat; reported: median time per forward
and the median of the per-repeat ratios dense / 2:4 (> 1: the 2:4 model is faster). Also checked: the largest
output difference between the variants, relative to the output's scale.

    python -m benchmarks semi_structured [--dtypes float16 bfloat16] [--tokens 4096] [--repeats 15]

Needs a CUDA GPU of compute capability >= 8.0 (Ampere, Hopper); elsewhere it says so and exits with code 2.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import emit, interleaved, machine, paired_ratios, table
from lightning_lottery.core import NMStructure, install_masks, nm_masks, select_prunable
from lightning_lottery.export import export_pruned, semi_structured_unavailable


class Block(nn.Module):
    """A pre-norm Transformer block built from nn.Linear only (no fused attention module)."""

    def __init__(self, d_model: int = 1024, heads: int = 16, ffn: int = 4096) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.q, self.k, self.v, self.out = (nn.Linear(d_model, d_model) for _ in range(4))
        self.up, self.down = nn.Linear(d_model, ffn), nn.Linear(ffn, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.norm1(x)
        q, k, v = (p(h).view(b, t, self.heads, d // self.heads).transpose(1, 2) for p in (self.q, self.k, self.v))
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.out(attn)
        return x + self.down(F.gelu(self.up(self.norm2(x))))


def linear_stack(layers: int, width: int = 4096) -> nn.Module:
    modules: list[nn.Module] = []
    for i in range(layers):
        modules += [nn.Linear(width, width)] + ([nn.ReLU()] if i < layers - 1 else [])
    return nn.Sequential(*modules)


def two_four_pair(
    build: Callable[[], nn.Module], dtype: torch.dtype, device: str = "cuda"
) -> tuple[nn.Module, nn.Module, tuple[str, ...]]:
    """The dense-with-zeros model and its semi-structured export, from one 2:4 magnitude ticket."""
    torch.manual_seed(0)
    model = build()
    tensors = select_prunable(model)
    weights = {n: t.tensor.detach() for n, t in tensors.items()}
    ones = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    install_masks(tensors, nm_masks(weights, ones, NMStructure(2, 4)))
    export_pruned(model)
    dense = copy.deepcopy(model).to(device, dtype).eval()
    summary = export_pruned(model, semi_structured=True, dtype=dtype)
    if summary.kept_dense:
        print(f"kept dense: {dict(summary.kept_dense)}", file=sys.stderr)
    return dense, model, summary.semi_structured


def timer(model: nn.Module, x: torch.Tensor, iters: int) -> Callable[[], float]:
    def run() -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.inference_mode():
            start.record()
            for _ in range(iters):
                model(x)
            end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000 / iters

    return run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", nargs="+", default=["float16", "bfloat16"], choices=["float16", "bfloat16"])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args(argv)
    reason = semi_structured_unavailable()
    if reason is not None:
        print(
            f"semi_structured: needs a CUDA GPU of compute capability >= 8.0 (Ampere or newer): {reason}",
            file=sys.stderr,
        )
        sys.exit(2)
    info = {
        **machine(),
        "capability": ".".join(map(str, torch.cuda.get_device_capability())),
        "cusparselt": torch.backends.cusparselt.version() if torch.backends.cusparselt.is_available() else None,
    }
    print(
        f"device: {info['cuda']} (compute capability {info['capability']}), torch {info['torch']}, "
        f"cuSPARSELt {info['cusparselt'] or 'absent: CUTLASS kernels'}",
        file=sys.stderr,
    )
    workloads: dict[str, tuple[Callable[[], nn.Module], Callable[[int], tuple[int, ...]]]] = {
        "linear_stack": (lambda: linear_stack(args.layers), lambda tokens: (tokens, 4096)),
        "transformer": (Block, lambda tokens: (8, 512, 1024)),
    }
    rows = []
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        for name, (build, shape) in workloads.items():
            for tokens in args.tokens if name == "linear_stack" else [8 * 512]:
                dense, sparse, converted = two_four_pair(build, dtype)
                x = torch.randn(shape(tokens), device="cuda", dtype=dtype)
                with torch.inference_mode():
                    reference, output = dense(x).float(), sparse(x).float()
                error = float((output - reference).abs().max() / reference.abs().max().clamp_min(1e-6))
                times = interleaved(
                    {"dense": timer(dense, x, args.iters), "2:4": timer(sparse, x, args.iters)}, args.repeats, warmup=3
                )
                speedup = 1 / paired_ratios(times, "dense")["2:4"]
                record = {
                    "benchmark": "semi_structured",
                    "workload": name,
                    "dtype": dtype_name,
                    "tokens": tokens,
                    "layers_2_4": len(converted),
                    "dense_ms": 1000 * statistics.median(times["dense"]),
                    "semi_structured_ms": 1000 * statistics.median(times["2:4"]),
                    "speedup": speedup,
                    "max_rel_error": error,
                    "repeats": args.repeats,
                    "iters": args.iters,
                    "machine": info,
                }
                emit(record)
                rows.append(
                    [
                        name,
                        dtype_name,
                        tokens,
                        len(converted),
                        f"{record['dense_ms']:.3f}",
                        f"{record['semi_structured_ms']:.3f}",
                        f"{speedup:.2f}x",
                        f"{error:.1e}",
                    ]
                )
                del dense, sparse
                torch.cuda.empty_cache()
    table(
        f"2:4 semi-structured vs dense on {info['cuda']} (median of {args.repeats} repeats x {args.iters} forwards)",
        rows,
        ["workload", "dtype", "tokens", "2:4 layers", "dense ms", "2:4 ms", "speed-up", "max rel err"],
    )


if __name__ == "__main__":
    main()
