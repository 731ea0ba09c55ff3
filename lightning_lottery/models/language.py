"""Word-level language models: a multi-layer LSTM and a causal Transformer encoder.

Both map token indices ``(batch, time)`` to next-token logits ``(batch, time, vocab)`` and start every call
from a zero hidden state / empty context (see :mod:`lightning_lottery.data.text`).

Both read every weight through a module call or a module attribute that the module's own forward pre-hooks
set, so ``torch.nn.utils.prune`` reparametrisations (a forward pre-hook that sets ``weight`` from
``weight_orig * weight_mask``) always apply:

* ``nn.LSTM`` refreshes its flat weight list whenever one of its weight attributes is assigned, so the
  hook's masked tensor is what the kernel sees.
* Stock ``nn.MultiheadAttention`` hands ``out_proj.weight`` straight to ``F.multi_head_attention_forward``
  without calling ``out_proj``, so hooks on ``out_proj`` never run and a pruned ``out_proj.weight`` stays
  whatever tensor was last assigned (stale after every optimizer step or rewind). :class:`SelfAttention`
  (a ``nn.MultiheadAttention`` with the same parameters) calls ``self.out_proj(...)`` as a module instead.
* ``nn.TransformerEncoderLayer`` has an inference "fast path" (``torch._transformer_encoder_layer_fwd``) that
  reads ``self_attn.in_proj_weight``, ``linear1.weight``, ... directly without calling the submodules.
  Recent PyTorch skips it when submodules have hooks, older releases do not. The layers here use
  ``batch_first=False``, which rules the fast path out on every PyTorch version.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

# pytorch/examples word_language_model initialises embedding and decoder uniformly in [-0.1, 0.1].
_INIT_RANGE = 0.1


def _init_embedding_and_decoder(embedding: nn.Embedding, decoder: nn.Linear) -> None:
    nn.init.uniform_(embedding.weight, -_INIT_RANGE, _INIT_RANGE)
    if decoder.weight is not embedding.weight:
        nn.init.uniform_(decoder.weight, -_INIT_RANGE, _INIT_RANGE)
    nn.init.zeros_(decoder.bias)


def _tie(embedding: nn.Embedding, decoder: nn.Linear, embedding_dim: int, output_dim: int) -> None:
    """Make the decoder weight the embedding weight (one Parameter, Press & Wolf 2017)."""
    if embedding_dim != output_dim:
        raise ValueError(
            f"tie_weights=True needs the embedding size ({embedding_dim}) to equal the decoder input size "
            f"({output_dim})"
        )
    decoder.weight = embedding.weight


class LSTMLanguageModel(nn.Module):
    """Embedding -> dropout -> multi-layer LSTM -> dropout -> linear decoder (pytorch/examples' RNNModel).

    The default is the "medium" 2x650 model of Zaremba et al. (2014) used by Yu et al. (2020).
    Prunable weights (as named in ``named_parameters``): ``lstm.weight_ih_l{k}``, ``lstm.weight_hh_l{k}``
    and ``decoder.weight`` (which *is* ``embedding.weight`` when ``tie_weights=True``).

    Args:
        vocab_size: number of words.
        embedding_dim: embedding size.
        hidden_dim: LSTM hidden size.
        num_layers: stacked LSTM layers (one ``nn.LSTM`` module).
        dropout: dropout on the embeddings, between LSTM layers and before the decoder.
        tie_weights: share the embedding matrix with the decoder (needs ``embedding_dim == hidden_dim``).
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int = 650,
        hidden_dim: int = 650,
        num_layers: int = 2,
        dropout: float = 0.5,
        tie_weights: bool = False,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.dropout = nn.Dropout(dropout)
        # nn.LSTM applies its own dropout only between layers; it warns if given dropout with one layer.
        self.lstm = nn.LSTM(
            embedding_dim, hidden_dim, num_layers, dropout=dropout if num_layers > 1 else 0.0, batch_first=True
        )
        self.decoder = nn.Linear(hidden_dim, vocab_size)
        if tie_weights:
            _tie(self.embedding, self.decoder, embedding_dim, hidden_dim)
        _init_embedding_and_decoder(self.embedding, self.decoder)

    def forward(self, tokens: Tensor) -> Tensor:
        """Next-token logits ``(batch, time, vocab)`` for ``tokens`` ``(batch, time)``, from a zero state."""
        x = self.dropout(self.embedding(tokens))
        output, _ = self.lstm(x)
        return self.decoder(self.dropout(output))


class PositionalEncoding(nn.Module):
    """Adds the fixed sinusoidal position code of Vaswani et al. (2017) to ``(time, batch, d_model)`` input."""

    def __init__(self, d_model: int, max_len: int) -> None:
        super().__init__()
        position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
        exponent = torch.arange(0, d_model, 2, dtype=torch.float32) / d_model
        frequency = torch.exp(-math.log(10000.0) * exponent)
        code = torch.zeros(max_len, 1, d_model)
        code[:, 0, 0::2] = torch.sin(position * frequency)
        code[:, 0, 1::2] = torch.cos(position * frequency[: d_model // 2])
        # Not persistent: it is a function of (max_len, d_model), not state, so checkpoints need not carry it.
        self.register_buffer("code", code, persistent=False)

    @property
    def max_len(self) -> int:
        return self.code.size(0)

    def forward(self, x: Tensor) -> Tensor:
        if x.size(0) > self.max_len:
            raise ValueError(f"Sequence of length {x.size(0)} is longer than max_len={self.max_len}")
        return x + self.code[: x.size(0)]


class SelfAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` restricted to self-attention, with the output projection run as a module.

    Same parameters and names as the stock module (``in_proj_weight``, ``in_proj_bias``, ``out_proj.weight``,
    ``out_proj.bias``) and the same maths, computed with ``F.scaled_dot_product_attention``. The difference:
    ``self.out_proj`` is *called*, so its forward pre-hooks run (the stock module reads ``out_proj.weight``
    directly; see the module docstring). Sequence-first inputs ``(time, batch, embed)`` only; no key padding
    mask and no attention weights are returned (``TransformerEncoderLayer`` asks for none).
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__(embed_dim, num_heads, dropout=dropout, batch_first=False)

    def forward(  # type: ignore[override]
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, None]:
        if key is not query or value is not query:
            raise NotImplementedError("SelfAttention computes self-attention only (query is key is value)")
        if key_padding_mask is not None or need_weights:
            raise NotImplementedError("SelfAttention supports neither key_padding_mask nor need_weights=True")
        length, batch, embed = query.shape
        heads = self.num_heads
        qkv = F.linear(query, self.in_proj_weight, self.in_proj_bias)  # (time, batch, 3 * embed)
        q, k, v = qkv.view(length, batch, 3, heads, embed // heads).permute(2, 1, 3, 0, 4).unbind(0)
        if is_causal:
            # As in F.multi_head_attention_forward: is_causal promises attn_mask is the causal mask.
            attn_mask = None
        elif attn_mask is not None and attn_mask.dtype == torch.bool:
            # MultiheadAttention's bool masks mark *forbidden* positions; SDPA's mark allowed ones.
            attn_mask = torch.zeros_like(attn_mask, dtype=q.dtype).masked_fill(attn_mask, float("-inf"))
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0, is_causal=is_causal
        )  # (batch, heads, time, head_dim)
        out = out.permute(2, 0, 1, 3).reshape(length, batch, embed)
        return self.out_proj(out), None


def _reset_encoder_layer(layer: nn.TransformerEncoderLayer) -> None:
    """Draw a layer's weights anew with PyTorch's default initialisers."""
    for module in layer.modules():
        if isinstance(module, nn.MultiheadAttention):
            module._reset_parameters()
        elif isinstance(module, (nn.Linear, nn.LayerNorm)):
            module.reset_parameters()


class TransformerLanguageModel(nn.Module):
    """Scaled token embedding + sinusoidal positions -> causal ``nn.TransformerEncoder`` -> linear decoder.

    The default (d_model 512, 8 heads, 3 pre-LN layers, feed-forward 1024) has about 6.3M parameters outside
    the embedding and decoder, close to the 6.8M of the 2x650 LSTM.
    Prunable weights: ``encoder.layers.{k}.self_attn.in_proj_weight`` (packed Q/K/V),
    ``encoder.layers.{k}.self_attn.out_proj.weight``, ``encoder.layers.{k}.linear1.weight``,
    ``encoder.layers.{k}.linear2.weight`` and ``decoder.weight`` (``embedding.weight`` when tied).

    Args:
        vocab_size: number of words.
        d_model: embedding and model width.
        nhead: attention heads.
        num_layers: encoder layers.
        dim_feedforward: hidden size of each feed-forward block.
        dropout: dropout on the embeddings and inside every layer.
        max_len: longest sequence accepted (size of the positional code).
        tie_weights: share the embedding matrix with the decoder.
        norm_first: pre-LayerNorm layers (plus a final LayerNorm), which train stably without LR warm-up;
            ``False`` gives the original post-LN layers.
        activation: ``"gelu"`` or ``"relu"`` in the feed-forward blocks.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 512,
        nhead: int = 8,
        num_layers: int = 3,
        dim_feedforward: int = 1024,
        dropout: float = 0.2,
        max_len: int = 512,
        tie_weights: bool = False,
        norm_first: bool = True,
        activation: Literal["gelu", "relu"] = "gelu",
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.positions = PositionalEncoding(d_model, max_len)
        self.dropout = nn.Dropout(dropout)
        # batch_first=False keeps every layer off the fused inference fast path, which would bypass the
        # submodules' forward pre-hooks (pruning masks) on older PyTorch; see the module docstring.
        layer = nn.TransformerEncoderLayer(
            d_model,
            nhead,
            dim_feedforward,
            dropout,
            activation=activation,
            batch_first=False,
            norm_first=norm_first,
        )
        layer.self_attn = SelfAttention(d_model, nhead, dropout)
        self.encoder = nn.TransformerEncoder(
            layer,
            num_layers,
            norm=nn.LayerNorm(d_model) if norm_first else None,
            enable_nested_tensor=False,  # only used with padding masks, and it warns for batch_first=False
        )
        # nn.TransformerEncoder deep-copies one layer, so all layers would start out identical; give each its
        # own draw, as if built separately (initialisations matter in lottery-ticket experiments).
        for encoder_layer in self.encoder.layers:
            _reset_encoder_layer(encoder_layer)
        self.decoder = nn.Linear(d_model, vocab_size)
        if tie_weights:
            _tie(self.embedding, self.decoder, d_model, d_model)
        _init_embedding_and_decoder(self.embedding, self.decoder)

    def forward(self, tokens: Tensor) -> Tensor:
        """Next-token logits ``(batch, time, vocab)`` for ``tokens`` ``(batch, time)``; step t sees steps <= t."""
        x = self.embedding(tokens.t()) * math.sqrt(self.d_model)  # (time, batch, d_model)
        x = self.dropout(self.positions(x))
        # is_causal lets SelfAttention use the fused causal kernel; the explicit mask states the same thing for
        # code that reads it (TransformerEncoder's checks, stock attention modules).
        mask = nn.Transformer.generate_square_subsequent_mask(x.size(0), device=x.device, dtype=x.dtype)
        x = self.encoder(x, mask=mask, is_causal=True)
        # Transpose the (small) hidden states, not the (vocab-sized) logits, so the logits come out contiguous.
        return self.decoder(x.transpose(0, 1))


ARCHITECTURES: dict[str, type[nn.Module]] = {
    "lstm": LSTMLanguageModel,
    "transformer": TransformerLanguageModel,
}


def build_language_model(arch: str, vocab_size: int, **kwargs: Any) -> nn.Module:
    """``LSTMLanguageModel`` (``arch="lstm"``) or ``TransformerLanguageModel`` (``"transformer"``)."""
    try:
        cls = ARCHITECTURES[arch]
    except KeyError:
        raise ValueError(f"Unknown arch {arch!r}; expected one of {sorted(ARCHITECTURES)}") from None
    return cls(vocab_size, **kwargs)


def count_parameters(model: nn.Module, exclude_embeddings: bool = False) -> int:
    """Distinct parameters (tied ones counted once); optionally without the embedding and decoder."""
    skip: set[int] = set()
    if exclude_embeddings:
        for name in ("embedding", "decoder"):
            module = getattr(model, name, None)
            if isinstance(module, nn.Module):
                skip.update(id(p) for p in module.parameters())
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)
