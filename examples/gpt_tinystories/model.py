"""A small GPT for scaling sweeps: pre-norm, ``scaled_dot_product_attention``, tied embeddings, μP.

The size parameter is ``d_model``; heads (``d_model // head_dim``) and the MLP width
(``4·d_model``) follow from it; depth is ``num_layers``.

μP (Yang et al. 2022, "Tensor Programs V"), so that one learning rate serves every width.
With width multiplier m = d_model / base_width:

* hidden matrices (attention and MLP) start with std ``init_std / sqrt(m)`` and get Adam
  learning rate ``lr / m`` (``optimizer_groups`` tells flops-fit; see the README);
* embeddings, norms and biases keep ``lr`` and an O(1) init;
* the tied read-out is scaled by ``1 / m`` (logits = h · Eᵀ / m), and attention uses
  ``1 / head_dim`` instead of ``1 / sqrt(head_dim)``.

At m = 1 this is standard parameterisation, so ``base_width`` is where the learning rate
was tuned.  ``mup=False`` keeps m = 1 at every width: standard parameterisation (a
width-independent init std, one Adam rate for every matrix, an unscaled read-out), whose best learning rate drifts
with width (``specs/transfer_gpt_sp.toml``).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, mlp_ratio: int):
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)
        self.norm2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, mlp_ratio * d_model, bias=False)
        self.out = nn.Linear(mlp_ratio * d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0 / (C // self.n_heads))  # μP: 1/d_head
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.out(F.gelu(self.fc(self.norm2(x))))


class GPT(nn.Module):
    """``GPT(d_model, num_layers, vocab_size, seq_len)``: tokens (B, T) -> logits (B, T, vocab)."""

    def __init__(self, d_model: int, num_layers: int = 2, vocab_size: int = 1024, seq_len: int = 128,
                 head_dim: int = 16, mlp_ratio: int = 4, base_width: int = 32, init_std: float = 0.02,
                 count_embeddings: bool = True, mup: bool = True):
        super().__init__()
        self.count_embeddings = count_embeddings
        if d_model % head_dim:
            raise ValueError(f"d_model={d_model} must be a multiple of head_dim={head_dim}")
        self.width_mult = d_model / base_width if mup else 1.0
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(seq_len, d_model)
        self.blocks = nn.ModuleList(Block(d_model, d_model // head_dim, mlp_ratio) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self._init(init_std, num_layers)

    def _init(self, std: float, num_layers: int) -> None:
        nn.init.normal_(self.tok.weight, std=std)
        nn.init.normal_(self.pos.weight, std=std)
        hidden_std = std / math.sqrt(self.width_mult)
        for block in self.blocks:
            for lin in (block.qkv, block.fc):
                nn.init.normal_(lin.weight, std=hidden_std)
            for lin in (block.proj, block.out):  # residual projections, GPT-2 depth scaling
                nn.init.normal_(lin.weight, std=hidden_std / math.sqrt(2 * num_layers))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        x = self.tok(idx) + self.pos.weight[:T]
        for block in self.blocks:
            x = block(x)
        return F.linear(self.norm(x), self.tok.weight) / self.width_mult  # tied read-out, μP output multiplier

    def optimizer_groups(self) -> list[dict]:
        """μP learning rates for Adam: hidden matrices get lr / width_mult."""
        hidden = [p for n, p in self.named_parameters() if p.dim() == 2 and n.startswith("blocks.")]
        hidden_ids = {id(p) for p in hidden}
        vectors = [p for p in self.parameters() if p.dim() < 2]
        embeddings = [p for p in self.parameters() if p.dim() == 2 and id(p) not in hidden_ids]
        return [{"params": hidden, "lr_scale": 1.0 / self.width_mult},
                {"params": embeddings, "lr_scale": 1.0, "weight_decay": 0.0},
                {"params": vectors, "lr_scale": 1.0, "weight_decay": 0.0}]

    def num_params(self) -> int:
        """N: every parameter, the tied embedding once (Chinchilla), or with
        ``count_embeddings=False`` the non-embedding parameters (Kaplan et al. 2020), which
        give cleaner trends for tiny models whose embedding is most of N."""
        total = sum(p.numel() for p in self.parameters())
        return total if self.count_embeddings else self.non_embedding_params()

    def non_embedding_params(self) -> int:
        return sum(p.numel() for p in self.parameters()) - self.tok.weight.numel() - self.pos.weight.numel()
